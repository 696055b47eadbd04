"""The SMC step pieces shared by ``tds`` and ``smc-anneal``: state, info, resample, reweight, schedule.

BlackJAX's ``blackjax/smc/base.py`` shape, batched over runs: ``SMCState(particles, log_weights)``
with particles ``(R·N, C, H, W)`` (run-major: run ``r`` holds rows ``r·N … r·N + N − 1``) and
normalised log-weights ``(R, N)`` (float64, ``logsumexp`` over ``N`` is 0). A step reports an
:class:`SMCInfo` with its ancestors and the log-likelihood increment ``log Σ_i W_i w_i`` per run;
the sum of the increments over a run is its estimate of ``log p(y)`` (Del Moral 2004; Chopin &
Papaspiliopoulos 2020, §10.3). Resampling is adaptive: a run is resampled (systematic) when its
ESS falls below ``threshold · N``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from uqcampaign.kernels.samplers.dps import respaced_schedule
from uqcampaign.kernels.samplers.smc.resampling import ess, normalize, systematic
from uqcampaign.kernels.samplers.smc.twist import gaussian_log_density

__all__ = [
    "SMCState",
    "SMCInfo",
    "ReverseSchedule",
    "VARIANCES",
    "reverse_schedule",
    "init",
    "first_weights",
    "resample",
    "gather",
    "reweight",
    "finish",
]


class SMCState(NamedTuple):
    """``particles: (R·N, C, H, W)``; ``log_weights: (R, N)`` normalised, float64."""

    particles: Tensor
    log_weights: Tensor


class SMCInfo(NamedTuple):
    """One step's diagnostics (never fed back).

    ``ancestors: (R, N)`` parent of each particle within its run (``arange(N)`` where not resampled);
    ``resampled: (R,)`` bool; ``log_likelihood_increment: (R,)`` float64; ``ess: (R,)`` after the reweighting.
    """

    ancestors: Tensor
    resampled: Tensor
    log_likelihood_increment: Tensor
    ess: Tensor


class ReverseSchedule(NamedTuple):
    """The DDPM reverse chain on ``n`` (respaced) steps, ascending in position ``i``, all ``(n,)``.

    ``timesteps[i]``: the denoiser step at position ``i``; ``alpha_bar[i] = ᾱ_{t_i}`` (float64);
    the ancestral move from position ``i`` to ``i − 1`` is ``N(c1[i] x̂₀ + c2[i] x, std[i]²)``, and
    position 0 returns ``x̂₀`` (``c1 = 1, c2 = std = 0``): ``n`` denoiser calls per particle.
    """

    timesteps: tuple[int, ...]
    alpha_bar: Tensor
    c1: Tensor
    c2: Tensor
    std: Tensor


VARIANCES = ("small", "large")


def reverse_schedule(alphas_cumprod: Tensor, steps: int | None, variance: str = "small") -> ReverseSchedule:
    """``steps`` evenly spaced positions of ``alphas_cumprod (T,)`` (all ``T`` when None), as DPS's.

    ``variance``: the move's variance (Ho et al. 2020, §3.2): ``small`` = ``β̃_i = β_i (1 − ᾱ_{i−1})/(1 − ᾱ_i)``
    (DPS's; exact when ``x_0`` is known), ``large`` = ``β_i = 1 − ᾱ_i/ᾱ_{i−1}`` (exact for a flat prior).
    The exact move's variance ``β̃ + c1² Cov(x_0 | x_t)`` lies between them: ``small`` makes the chain too
    narrow, ``large`` too wide, both by ``O(1/steps)``.
    """
    dps = respaced_schedule(alphas_cumprod, steps)
    alpha_bar = alphas_cumprod.to(torch.float64)[torch.tensor(dps.timesteps)]
    if variance == "small":
        std = dps.std
    else:
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        std = (1.0 - alpha_bar / alpha_bar_prev).sqrt()
        std[0] = 0.0  # position 0 returns x̂₀
    return ReverseSchedule(dps.timesteps, alpha_bar, dps.c1, dps.c2, std)


def init(
    generator: torch.Generator, evaluate: Any, y: Tensor, operator: Any, prior: Any, sigma: float, schedule: ReverseSchedule, runs: int, particles: int, batch: int | None
) -> tuple[SMCState, Any, SMCInfo]:
    """``x_T ~ N(0, I)`` for ``R·N`` particles (the DDPM start, as DPS's; ``y``'s dtype and device), the kernel's
    ``evaluate`` at the last position (a cache with ``log_twist (R·N,)``), weighted by ``p̃_T(y | x_T)``:
    ``(state, cache, info)``."""
    i = len(schedule.timesteps) - 1
    x = torch.randn((runs * particles, *operator.img_shape), generator=generator, dtype=y.dtype, device=y.device)
    cache = evaluate(x, i, y, operator, prior, sigma, schedule, batch)
    smc, info = first_weights(x, cache.log_twist, runs)
    return smc, cache, info


def _unmoved(runs: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(ancestors = arange(N) per run, resampled = False)`` of a step that does not resample."""
    return torch.arange(n, device=device).expand(runs, n), torch.zeros(runs, dtype=torch.bool, device=device)


def first_weights(particles: Tensor, log_twist: Tensor, runs: int) -> tuple[SMCState, SMCInfo]:
    """The first SMC state: ``particles (R·N, C, H, W)`` weighted by ``exp(log_twist (R·N,))`` from uniform weights."""
    n = particles.shape[0] // runs
    uniform = torch.full((runs, n), -math.log(n), dtype=torch.float64, device=particles.device)
    smc, increment, ess_now = reweight(SMCState(particles, uniform), log_twist)
    return smc, SMCInfo(*_unmoved(runs, n, particles.device), increment, ess_now)


def resample(generator: torch.Generator, state: SMCState, threshold: float) -> tuple[SMCState, Tensor, Tensor]:
    """Resample (systematic) every run whose ESS is below ``threshold · N``: ``(state, ancestors (R, N), resampled (R,))``.

    Resampled runs get uniform weights; the others keep particles and weights (``ancestors = arange(N)``).
    One uniform is drawn per run whether or not it is resampled, so the stream does not depend on the weights.
    """
    runs, n = state.log_weights.shape
    drawn = systematic(generator, state.log_weights)
    resampled = ess(state.log_weights) < threshold * n
    identity = torch.arange(n, device=drawn.device).expand(runs, n)
    ancestors = torch.where(resampled[:, None], drawn, identity)
    uniform = torch.full_like(state.log_weights, -math.log(n))
    log_weights = torch.where(resampled[:, None], uniform, state.log_weights)
    return SMCState(gather(state.particles, ancestors), log_weights), ancestors, resampled


def gather(values: Tensor, ancestors: Tensor) -> Tensor:
    """Rows of ``values (R·N, ...)`` picked by ``ancestors (R, N)`` within each run."""
    runs, n = ancestors.shape
    offset = torch.arange(runs, device=ancestors.device)[:, None] * n
    return values[(ancestors + offset).reshape(-1).to(values.device)]


def reweight(state: SMCState, log_increment: Tensor) -> tuple[SMCState, Tensor, Tensor]:
    """Multiply the weights by ``exp(log_increment (R·N,) or (R, N))``: ``(state, log_likelihood_increment (R,), ess (R,))``.

    The increment of run ``r`` is ``log Σ_i W_i w_i`` (``W``: its normalised weights before the step).
    """
    log_w = state.log_weights + log_increment.reshape(state.log_weights.shape).to(torch.float64)
    log_w_new, _ = normalize(log_w)
    increment = torch.logsumexp(log_w, dim=-1)
    return SMCState(state.particles, log_w_new), increment, ess(log_w_new)


def finish(smc: SMCState, denoised: Tensor, log_twist: Tensor, y: Tensor, operator: Any, sigma: float) -> tuple[SMCState, SMCInfo]:
    """The last weight, at position 0: the particles become their ``x̂₀ (R·N, C, H, W)``, reweighted by
    ``N(y; A x̂₀, σ² I) / p̃_{t_0}`` (``log_twist (R·N,)``): the twists telescope to the likelihood."""
    log_likelihood, _ = gaussian_log_density(y.unsqueeze(0) - operator.A(denoised), operator, sigma, 0.0)
    smc, increment, ess_now = reweight(SMCState(denoised, smc.log_weights), log_likelihood - log_twist)
    runs, n = smc.log_weights.shape
    return smc, SMCInfo(*_unmoved(runs, n, denoised.device), increment, ess_now)
