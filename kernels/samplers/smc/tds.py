"""``tds``: the twisted diffusion sampler (Wu, Trippe, Naesseth, Blei & Cunningham 2023, NeurIPS, Algorithm 1).

Sequential Monte Carlo over the DDPM reverse chain of the prior, every particle of ``R`` runs
of ``N`` particles in one batch ``x: (R·N, C, H, W)``. With the reverse schedule of
:func:`~uqcampaign.kernels.samplers.smc.base.reverse_schedule` (position ``i``, step ``t = t_i``,
``c_t = (1 − ᾱ_t)/ᾱ_t``) and the linear-Gaussian likelihood ``y = A x_0 + σ ε``:

* twist ``p̃_t(y | x_t) = N(y; A x̂₀(x_t), σ² I + c_t A Aᵀ)``, ``x̂₀`` the prior's Tweedie denoiser
  (the paper's App. D twist for linear inverse problems; ``c_t`` as their reference code);
* proposal ``x_{t'} ~ N(μ + κ_t ∇ log p̃_t(y | x_t), v)``: the prior's ancestral move
  ``μ = c1 x̂₀ + c2 x_t``, ``v = std²`` shifted by the twist gradient with ``κ_t = c1 (1 − ᾱ_t)/√ᾱ_t``
  (the denoiser's ``x̂₀`` moved by ``(1 − ᾱ_t)/√ᾱ_t ∇ log p̃``, as the reference code does);
* weight ``w = N(x_{t'}; μ, v) p̃_{t'}(y | x_{t'}) / [N(x_{t'}; μ + κ∇, v) p̃_t(y | x_t)]``; the first
  weight is ``p̃_T(y | x_T)`` at ``x_T ~ N(0, I)`` and the last is ``N(y; A x̂₀, σ² I) / p̃_{t_0}(y | x_{t_0})``
  at the output ``x̂₀(x_{t_0})`` (position 0 returns ``x̂₀``, as DPS does): the weights telescope to
  the likelihood, so the particles target ``p(x_0 | y)`` under the model's reverse chain and the
  increments sum to ``log p(y)``.

Each position costs one denoiser call per particle with one backward pass (the twist gradient;
none at position 0): ``steps`` network calls per particle.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from uqcampaign.kernels.samplers.smc.base import ReverseSchedule, SMCInfo, SMCState, gather, resample, reweight
from uqcampaign.kernels.samplers.smc.twist import gaussian_log_density

__all__ = ["TwistCache", "TDSState", "State", "evaluate", "step"]


class TwistCache(NamedTuple):
    """What the particles' last network call gave: ``denoised`` x̂₀ ``(R·N, C, H, W)``,
    ``log_twist`` ``log p̃_t(y | x_t)`` ``(R·N,)`` float64, ``grad`` ``∇ log p̃_t`` ``(R·N, C, H, W)`` (zeros at position 0)."""

    denoised: Tensor
    log_twist: Tensor
    grad: Tensor


class TDSState(NamedTuple):
    """``smc``: particles and weights at position ``i`` of the schedule; ``cache``: their twist."""

    smc: SMCState
    cache: TwistCache
    i: int


State = TDSState  # the state type the SMC loop builds after ``base.init``


def evaluate(x: Tensor, i: int, y: Tensor, operator: Any, prior: Any, sigma: float, schedule: ReverseSchedule, batch: int | None) -> TwistCache:
    """x̂₀, ``log p̃`` and (for ``i > 0``) its gradient at ``x (B, C, H, W)``, position ``i``; ``batch`` particles per call.

    ``∇_x log p̃ = J_{x̂₀}ᵀ Aᵀ Σ⁻¹ r`` (``Σ`` held fixed): the gradient of ``<A x̂₀(x), Σ⁻¹ r>`` with ``Σ⁻¹ r``
    treated as a constant, one vector-Jacobian product through the denoiser.
    """
    t = schedule.timesteps[i]
    ab = float(schedule.alpha_bar[i])
    c = (1.0 - ab) / ab
    with_grad = i > 0
    parts = []
    for chunk in x.split(batch or x.shape[0]):
        with torch.enable_grad():
            x_t = chunk.detach().requires_grad_(with_grad)
            x0 = prior.denoise(x_t, t)
            a_x0 = operator.A(x0)
            log_p, solved = gaussian_log_density(y.unsqueeze(0) - a_x0.detach(), operator, sigma, c)
            grad = torch.autograd.grad((a_x0 * solved).sum(), x_t)[0] if with_grad else torch.zeros_like(chunk)
        parts.append((x0.detach(), log_p, grad.detach()))
    return TwistCache(*(torch.cat(p) for p in zip(*parts)))



def step(
    generator: torch.Generator,
    state: TDSState,
    y: Tensor,
    operator: Any,
    prior: Any,
    sigma: float,
    schedule: ReverseSchedule,
    threshold: float,
    batch: int | None,
) -> tuple[TDSState, SMCInfo]:
    """Position ``i ≥ 1`` → ``i − 1``: resample, move by the twisted proposal, reweight."""
    i = state.i
    # 1. resample the runs whose ESS < threshold · N, with their cached twist
    smc, ancestors, resampled = resample(generator, state.smc, threshold)
    cache = TwistCache(*(gather(v, ancestors) for v in state.cache))
    x = smc.particles
    # 2. proposal N(μ + κ ∇log p̃, v) around the prior's ancestral mean μ
    ab = float(schedule.alpha_bar[i])
    c1, c2, std = float(schedule.c1[i]), float(schedule.c2[i]), float(schedule.std[i])
    mean = c1 * cache.denoised + c2 * x
    shift = c1 * (1.0 - ab) / math.sqrt(ab) * cache.grad
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    x_new = mean + shift + std * noise
    # 3. the twist at the new particles (one network call with gradient)
    new_cache = evaluate(x_new, i - 1, y, operator, prior, sigma, schedule, batch)
    # 4. w = N(x'; μ, v) p̃'(y|x') / (N(x'; μ + κ∇, v) p̃(y|x)); the Gaussians' constants cancel
    to_prior = (std * noise + shift).to(torch.float64).flatten(1).square().sum(1)
    to_proposal = (std * noise).to(torch.float64).flatten(1).square().sum(1)
    log_w = -(to_prior - to_proposal) / (2.0 * std**2) + new_cache.log_twist - cache.log_twist
    smc, increment, ess = reweight(SMCState(x_new, smc.log_weights), log_w)
    return TDSState(smc, new_cache, i - 1), SMCInfo(ancestors, resampled, increment, ess)
