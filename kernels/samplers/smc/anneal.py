"""``smc-anneal``: likelihood-annealed SMC over the reverse diffusion, gradient-free.

The twist is the likelihood of ``y`` seen from ``x_t`` alone, without the prior:
``p̃_t(y | x_t) = N(y; A x_t/√ᾱ_t, σ² I + c_t A Aᵀ)``, ``c_t = (1 − ᾱ_t)/ᾱ_t`` (``x_t/√ᾱ_t = x_0 + √c_t ε``;
the potentials of Cardoso, Janati, Le Corff & Moulines 2024, ICLR, "Monte Carlo guided diffusion",
for a noisy ``y``): flat at ``t = T``, the likelihood itself at ``t = 0``, so it anneals the likelihood
in along the reverse chain. Because this twist is linear-Gaussian in ``x_t``, the locally optimal
proposal is exact and needs no network gradient (the fully adapted particle filter, Pitt &
Shephard 1999): with the prior's ancestral move ``x_{t'} ~ N(μ, v)``, ``μ = c1 x̂₀(x_t) + c2 x_t``,

* weight (known before the move): ``Z(x_t) / p̃_t(y | x_t)``, ``Z = N(y; A μ/√ᾱ_{t'}, σ² I + (c_{t'} + v/ᾱ_{t'}) A Aᵀ)``;
* move: ``x_{t'}`` from ``N(μ, v) · p̃_{t'}(y | x_{t'})``, exactly, in two Gaussian draws: first
  ``u = x_{t'}/√ᾱ_{t'} + √c_{t'} ε`` given ``y`` (prior ``N(μ/√ᾱ_{t'}, δ)``, ``δ = v/ᾱ_{t'} + c_{t'}``; one
  perturb-and-MAP ``prox_data(μ/√ᾱ + √δ ξ, y + σ ξ', σ, δ)``, exact for any operator), then
  ``z = x_{t'}/√ᾱ_{t'}`` given ``u`` (elementwise Gaussian).

The first weight is ``p̃_T(y | x_T)`` at ``x_T ~ N(0, I)``, the last ``N(y; A x̂₀, σ² I) / p̃_{t_0}(y | x_{t_0})``
at the output ``x̂₀(x_{t_0})``, as in ``tds``. One denoiser call per particle and position, no
backward pass: ``steps`` forward network calls per particle.

Where it stands (``benchmarks/bench_smc.py``, the ``tds`` defaults): 1.0–1.6 × floor on 16 pixels and
2.6–3.0 × on 64, 90% mass 0.89–0.90, but its log p(y) is 1–10 nats low. The twist is too informative far
from ``t = 0``: at ``t = T`` it multiplies ``N(0, I)`` by a factor as narrow as the prior itself on every
observed coordinate (``x_T/√ᾱ_T`` has variance ``≈ c_T``), while the true ``p(y | x_T)`` is flat; later
weights undo it, so the weights' variance grows with the number of observed coordinates and the runs'
evidence is heavy-tailed. Tempering that twist adaptively (BlackJAX ``adaptive_tempered``) is the next step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from uqcampaign.kernels.samplers.smc.base import ReverseSchedule, SMCInfo, SMCState, gather, resample, reweight
from uqcampaign.kernels.samplers.smc.twist import gaussian_log_density

__all__ = ["AnnealCache", "AnnealState", "State", "evaluate", "step"]


class AnnealCache(NamedTuple):
    """``denoised`` x̂₀ ``(R·N, C, H, W)``; ``log_twist`` ``log p̃_t(y | x_t)`` and ``log_predictive``
    ``log Z(x_t)`` (the next move's evidence; 0 at position 0), both ``(R·N,)`` float64."""

    denoised: Tensor
    log_twist: Tensor
    log_predictive: Tensor


class AnnealState(NamedTuple):
    """``smc``: particles and weights at position ``i``; ``cache``: what the weights need."""

    smc: SMCState
    cache: AnnealCache
    i: int


State = AnnealState  # the state type the SMC loop builds after ``base.init``


def _scale(schedule: ReverseSchedule, i: int) -> tuple[float, float]:
    """``(√ᾱ_{t_i}, c_{t_i} = (1 − ᾱ)/ᾱ)``."""
    ab = float(schedule.alpha_bar[i])
    return math.sqrt(ab), (1.0 - ab) / ab


def _move_mean(cache: AnnealCache, x: Tensor, schedule: ReverseSchedule, i: int) -> Tensor:
    """The prior's ancestral mean ``μ = c1 x̂₀ + c2 x`` of the move from position ``i``."""
    return float(schedule.c1[i]) * cache.denoised + float(schedule.c2[i]) * x


def evaluate(x: Tensor, i: int, y: Tensor, operator: Any, prior: Any, sigma: float, schedule: ReverseSchedule, batch: int | None) -> AnnealCache:
    """x̂₀ (one network call per particle, no gradient), ``log p̃`` and the next move's ``log Z`` at ``x``, position ``i``."""
    t = schedule.timesteps[i]
    with torch.no_grad():
        denoised = torch.cat([prior.denoise(chunk, t) for chunk in x.split(batch or x.shape[0])])
    root, c = _scale(schedule, i)
    log_twist, _ = gaussian_log_density(y.unsqueeze(0) - operator.A(x / root), operator, sigma, c)
    cache = AnnealCache(denoised, log_twist, torch.zeros_like(log_twist))
    if i == 0:
        return cache
    root_next, c_next = _scale(schedule, i - 1)
    v = float(schedule.std[i]) ** 2
    mean = _move_mean(cache, x, schedule, i)
    log_predictive, _ = gaussian_log_density(y.unsqueeze(0) - operator.A(mean / root_next), operator, sigma, c_next + v / root_next**2)
    return cache._replace(log_predictive=log_predictive)



def step(
    generator: torch.Generator,
    state: AnnealState,
    y: Tensor,
    operator: Any,
    prior: Any,
    sigma: float,
    schedule: ReverseSchedule,
    threshold: float,
    batch: int | None,
) -> tuple[AnnealState, SMCInfo]:
    """Position ``i ≥ 1`` → ``i − 1``: reweight by ``Z/p̃`` (known before the move), resample, move exactly."""
    i = state.i
    # 1. reweight: the next move's evidence over the current twist
    smc, increment, ess = reweight(state.smc, state.cache.log_predictive - state.cache.log_twist)
    # 2. resample the runs whose ESS < threshold · N
    smc, ancestors, resampled = resample(generator, smc, threshold)
    cache = AnnealCache(*(gather(v, ancestors) for v in state.cache))
    x = smc.particles
    # 3. u = x'/√ᾱ' + √c' ε given y: perturb-and-MAP with the prior N(μ/√ᾱ', δ)
    root, c = _scale(schedule, i - 1)
    v = float(schedule.std[i]) ** 2
    prior_mean = _move_mean(cache, x, schedule, i) / root
    prior_var = v / root**2
    delta = prior_var + c
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    xi_y = torch.randn((x.shape[0], *operator.obs_shape), generator=generator, dtype=x.dtype, device=x.device)
    u = operator.prox_data(prior_mean + math.sqrt(delta) * xi, y.unsqueeze(0) + sigma * xi_y, sigma, delta)
    # 4. z = x'/√ᾱ' given u: prior N(prior_mean, prior_var), u = z + √c ε
    precision = 1.0 / prior_var + 1.0 / c
    z_mean = (prior_mean / prior_var + u / c) / precision
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    x_new = root * (z_mean + noise / math.sqrt(precision))
    # 5. the network at the new particles, for their twist and the next move
    new_cache = evaluate(x_new, i - 1, y, operator, prior, sigma, schedule, batch)
    return AnnealState(SMCState(x_new, smc.log_weights), new_cache, i - 1), SMCInfo(ancestors, resampled, increment, ess)
