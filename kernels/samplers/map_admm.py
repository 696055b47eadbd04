"""``map-admm``: MAP point estimate by plug-and-play ADMM (the other splitting baseline of seed 000).

For every chain at once, iteration ``k`` of the schedule of :mod:`~uqcampaign.kernels.samplers.pnp`
(Venkatakrishnan, Bouman & Wohlberg 2013; with the continuation of Chan, Wang & Elgendy 2017,
IEEE TCI 3(1), Algorithm 1: a penalty ``ρ_k = 1/δ_k`` that grows as the noise level falls)::

    x_k = prox_data(v_{k−1} − u_{k−1}, y, σ, δ_k)          (data step)
    v_k = D_{ε_k}(x_k + u_{k−1})                           (prior step, δ_k = ε_k / λ)
    u_k = (u_{k−1} + x_k − v_k) · δ_{k+1} / δ_k             (scaled dual; rescaled when ρ changes,
                                                             Boyd et al. 2011, Section 3.4.1)

Objective. The MMSE denoiser is the proximal map of a penalty ``φ_ε`` (Gribonval 2011, IEEE TSP
59(5)): ``D_ε = prox_{ε φ_ε}``, so at a fixed level PnP-ADMM is plain ADMM on
``f(x) + λ φ_ε(x)``, ``f = ||y − A x||²/(2σ²)``, and its fixed point (``x = v``) is a stationary
point of it. For a Gaussian prior ``φ_ε = −log p`` exactly, for every ε (the prox of the quadratic
``−log p`` is the Gaussian MMSE denoiser), so the fixed point is the exact MAP; for a mixture
``φ_ε → −log p`` as ε → 0 and the fixed point is the MAP up to ``O(ε_min)``. ADMM is not a descent
method on ``F = f − λ log p``: what the tests check is that ``F`` at the iterates falls to the
value at the scipy mode, and that the primal residual ``||x_k − v_k||`` vanishes.

The draw is ``x_K``. ``nfe`` = ``iterations`` denoiser calls per chain. Info on the draw:
``residual`` ``(iterations,)`` float64: per iteration the largest over chains of the RMS primal
residual ``||x_k − v_k|| / sqrt(d)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from uqcampaign.kernels.samplers.pnp import PnPConfig, PnPLevels, PnPSampler, denoise_at, start_point

__all__ = ["ADMMConfig", "ADMMState", "ADMMInfo", "init", "step", "ADMMSampler"]


@dataclass(frozen=True)
class ADMMConfig(PnPConfig):
    """MAP estimate by plug-and-play ADMM with the prior's denoiser and an increasing penalty: one draw per chain.

    Reference: Chan, Wang & Elgendy 2017, IEEE Trans. Comput. Imaging 3(1), "Plug-and-play ADMM for image
        restoration: fixed-point convergence and applications", Algorithm 1 (Venkatakrishnan, Bouman &
        Wohlberg 2013); noise-level schedule of DPIR (Zhang et al. 2021, IEEE TPAMI 44(10), Section 4.2).

    Keys:
        iterations: total iterations K = denoiser calls per chain.
        anneal: iterations over which the denoiser's noise std falls log-uniformly from sigma_max to
            sigma_min (the penalty ρ = λ/σ_k² grows geometrically, Chan et al.'s continuation); the
            remaining iterations stay at sigma_min.
        sigma_max: first denoiser noise std (49/255 for images in [0, 1]).
        sigma_min: last denoiser noise std: "noise" (the measurement's σ) or a number; smaller is closer
            to the MAP and slower to converge.
        lam: prior weight λ (1: the posterior's MAP).
        start_noise: std of the Gaussian noise added to pinv(y) for each chain's start (0: every chain
            starts at pinv(y) and returns the same estimate).
    """

    KIND: ClassVar[str] = "map-admm"


class ADMMState(NamedTuple):
    """``x, v, u: (chains, C, H, W)`` (estimate, split copy, scaled dual) after ``k`` iterations."""

    x: torch.Tensor
    v: torch.Tensor
    u: torch.Tensor
    k: int


class ADMMInfo(NamedTuple):
    """Diagnostics of one iteration: ``primal (chains,)`` RMS of ``x_k − v_k``; ``nfe`` denoiser calls."""

    primal: torch.Tensor
    nfe: int


def init(y_chains: torch.Tensor, operator: Any, start_noise: float, generator: torch.Generator) -> ADMMState:
    """``x = v = pinv(y)`` (plus ``start_noise``), ``u = 0``; ``y_chains: (chains, *obs_shape)``."""
    x = start_point(operator.pinv(y_chains), start_noise, generator)
    return ADMMState(x, x.clone(), torch.zeros_like(x), 0)


def step(state: ADMMState, y_chains: torch.Tensor, operator: Any, prior: Any, sigma: float, levels: PnPLevels) -> tuple[ADMMState, ADMMInfo]:
    """ADMM iteration ``k = state.k`` for all chains."""
    k = state.k
    # 1. data step x = prox_{δ f}(v − u)
    x = operator.prox_data(state.v - state.u, y_chains, sigma, levels.delta[k])
    # 2. prior step v = D_ε(x + u) = prox_{δ λ φ_ε}(x + u)
    v = denoise_at(prior, x + state.u, levels, k)
    # 3. scaled dual ascent, rescaled to the next penalty 1/δ_{k+1}
    u = state.u + x - v
    if k + 1 < len(levels.delta):
        u = u * (levels.delta[k + 1] / levels.delta[k])
    primal = (x - v).reshape(x.shape[0], -1).square().mean(dim=1).sqrt()
    return ADMMState(x, v, u, k + 1), ADMMInfo(primal, 1)


@dataclass(frozen=True)
class ADMMSampler(PnPSampler):
    """PnP-ADMM point estimate over a batch of chains (one draw each)."""

    config: ADMMConfig = ADMMConfig()
    kind: str = "map-admm"
    STATE_COPIES: ClassVar[int] = 7
    STATE_TENSORS: ClassVar[str] = "x, v, u, prox input, denoiser input and output, residual"
    init = staticmethod(init)
    step = staticmethod(step)
