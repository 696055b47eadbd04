"""``map-hqs``: MAP point estimate by plug-and-play half-quadratic splitting (the baseline of seed 000).

For every chain at once (``x: (chains, C, H, W)``), iteration ``k`` of the schedule of
:mod:`~uqcampaign.kernels.samplers.pnp` (DPIR, Zhang et al. 2021, IEEE TPAMI 44(10), eqs. 6–7)::

    z_k = D_{ε_k}(x_{k−1})                              (prior step: the denoiser at variance ε_k)
    x_k = prox_data(z_k, y, σ, δ_k),  δ_k = ε_k / λ      (data step, exact or CG)

Objective (what decreases). Tweedie's formula ``D_ε(x) = x + ε ∇log p_ε(x)`` (``p_ε`` the prior
smoothed by ``N(0, ε I)``) makes the prior step a gradient step of size ``δ = ε/λ`` on ``λ g_ε``,
``g_ε = −log p_ε``, so at a fixed level HQS is proximal-gradient descent on

    F_ε(x) = ||y − A x||² / (2σ²) + λ g_ε(x).

The Hessian of ``g_ε`` is ``(I − Cov[x_0 | x]/ε)/ε ≤ I/ε``, so ``∇(λ g_ε)`` has upper curvature
``λ/ε = 1/δ`` and the step ``δ`` is exactly the one for which the descent lemma holds: ``F_ε``
decreases at every iteration of a constant level (any prior, convex or not; tested on exact GMMs
with ``log_prob`` of the smoothed mixture). The fixed point is a stationary point of ``F_ε``: for
``λ = 1`` the MAP of the posterior with the prior smoothed by ``ε_min = sigma_min²``, which tends to
the posterior's MAP as ``sigma_min → 0`` (the shift is ``O(ε_min)``). The annealing from
``sigma_max`` first (graduated non-convexity: ``p_ε`` of a large ε has fewer modes) steers the
chains towards the global mode. Without a data term (``A = 0``) a mixture's smoothed mode at
small ε converges slowly: a posterior direction of variance ``v`` relaxes by ``ε/(v + ε)`` per
iteration, so ``iterations`` should exceed a few ``v/ε_min``.

The draw is ``x_K`` (data-consistent). ``nfe`` = ``iterations`` denoiser calls per chain. Info on
the draw: ``residual`` ``(iterations,)`` float64: per iteration the largest over chains of the RMS
change ``||x_k − x_{k−1}|| / sqrt(d)`` (the fixed-point residual).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from uqcampaign.kernels.samplers.pnp import PnPConfig, PnPLevels, PnPSampler, denoise_at, start_point

__all__ = ["HQSConfig", "HQSState", "HQSInfo", "init", "step", "HQSSampler"]


@dataclass(frozen=True)
class HQSConfig(PnPConfig):
    """MAP estimate by plug-and-play half-quadratic splitting with the prior's denoiser: one draw per chain.

    Reference: Zhang, Li, Zuo, Zhang, Van Gool & Timofte 2021, IEEE TPAMI 44(10), "Plug-and-play image
        restoration with deep denoiser prior" (DPIR), eqs. 6–7 and the noise-level schedule of Section 4.2.

    Keys:
        iterations: total iterations K = denoiser calls per chain.
        anneal: iterations over which the denoiser's noise std falls log-uniformly from sigma_max to
            sigma_min (DPIR: 8); the remaining iterations stay at sigma_min and converge to the fixed point.
        sigma_max: first denoiser noise std (DPIR: 49/255 for images in [0, 1]).
        sigma_min: last denoiser noise std: "noise" (the measurement's σ, DPIR's choice) or a number;
            the fixed point is the MAP with the prior smoothed by sigma_min², so smaller is closer to the
            MAP and slower to converge.
        lam: prior weight λ (1: the posterior's MAP; DPIR tunes λ per task for PSNR, e.g. 0.23).
        start_noise: std of the Gaussian noise added to pinv(y) for each chain's start (0: every chain
            starts at pinv(y) and returns the same estimate).
    """

    KIND: ClassVar[str] = "map-hqs"


class HQSState(NamedTuple):
    """``x: (chains, C, H, W)`` after ``k`` iterations."""

    x: torch.Tensor
    k: int


class HQSInfo(NamedTuple):
    """Diagnostics of one iteration: ``change (chains,)`` RMS of ``x_k − x_{k−1}``; ``nfe`` denoiser calls."""

    change: torch.Tensor
    nfe: int


def init(y_chains: torch.Tensor, operator: Any, start_noise: float, generator: torch.Generator) -> HQSState:
    """Every chain at ``pinv(y)`` (plus ``start_noise``); ``y_chains: (chains, *obs_shape)``."""
    return HQSState(start_point(operator.pinv(y_chains), start_noise, generator), 0)


def step(state: HQSState, y_chains: torch.Tensor, operator: Any, prior: Any, sigma: float, levels: PnPLevels) -> tuple[HQSState, HQSInfo]:
    """HQS iteration ``k = state.k`` for all chains: denoise at ``ε_k``, then the data prox with ``δ_k``."""
    k = state.k
    # 1. prior step z = D_ε(x) = x + ε ∇log p_ε(x)
    z = denoise_at(prior, state.x, levels, k)
    # 2. data step x = argmin ||A x − y||²/(2σ²) + ||x − z||²/(2δ)
    x = operator.prox_data(z, y_chains, sigma, levels.delta[k])
    change = (x - state.x).reshape(x.shape[0], -1).square().mean(dim=1).sqrt()
    return HQSState(x, k + 1), HQSInfo(change, 1)


@dataclass(frozen=True)
class HQSSampler(PnPSampler):
    """PnP-HQS point estimate over a batch of chains (one draw each)."""

    config: HQSConfig = HQSConfig()
    kind: str = "map-hqs"
    STATE_COPIES: ClassVar[int] = 5
    STATE_TENSORS: ClassVar[str] = "x, denoiser input and output, prox output, change"
    init = staticmethod(init)
    step = staticmethod(step)
