"""Variance-preserving noise schedules: ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["linear_alphas_cumprod", "timestep_for_noise_std", "noise_std", "AdditiveStep", "additive_step"]


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t of the DDPM linear schedule (Ho et al. 2020), float64, shape ``(T,)``.

    The same as diffusers' ``DDPMScheduler(beta_schedule="linear")``.
    """
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def noise_std(alphas_cumprod: torch.Tensor, t: int) -> float:
    """The additive-noise std equivalent to step ``t``: ``sqrt((1 - ᾱ_t) / ᾱ_t)``.

    ``x_t / sqrt(ᾱ_t) = x_0 + sqrt((1-ᾱ_t)/ᾱ_t) ε``: a VP step is a scaled VE step.
    """
    a = float(alphas_cumprod[t])
    return ((1.0 - a) / a) ** 0.5


def timestep_for_noise_std(alphas_cumprod: torch.Tensor, std: float) -> int:
    """The step whose equivalent additive-noise std (see :func:`noise_std`) is nearest ``std``."""
    stds = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
    return int(torch.argmin((stds - std).abs()))


class AdditiveStep(NamedTuple):
    """The VP step standing in for additive noise ``x = x_0 + sqrt(ε) n``: ``t``, its exact ``epsilon``
    ``= (1 − ᾱ_t)/ᾱ_t`` and ``sqrt_alpha_bar``; ``E[x_0 | x] = prior.denoise(sqrt_alpha_bar · x, t)``."""

    t: int
    epsilon: float
    sqrt_alpha_bar: float


def additive_step(alphas_cumprod: torch.Tensor, std: float) -> AdditiveStep:
    """The step whose additive-noise std is nearest ``std`` (:func:`timestep_for_noise_std`), with its exact ε."""
    t = timestep_for_noise_std(alphas_cumprod, std)
    a = float(alphas_cumprod[t])
    return AdditiveStep(t, (1.0 - a) / a, math.sqrt(a))
