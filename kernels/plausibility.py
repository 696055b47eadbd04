"""Hallucination scores of single draws: data fidelity and prior plausibility (seed 000's two axes).

Seed 000: "realism is not the same as truth"; a reconstruction is judged on prior plausibility
*and* data fidelity. Each draw ``x (B, C, H, W)`` gets one number per axis, and each number a
reference distribution under the model, so that a threshold can be stated as a quantile:

**Data fidelity** ``χ²(x) = ||y − A x||² / (σ² m)``, ``m = dim y`` (:func:`data_fidelity`; the
reductions' per-draw ``chi2`` is this function). Reference: if ``y = A x_0 + σ ε`` with ``x_0`` from
the prior and ``x`` a draw of the exact posterior, the pair ``(x, y)`` has the law of ``(x_0, y)``,
so over measurements ``χ²(x) ~ χ²_m / m`` exactly, the law of the truth's own misfit
(:func:`fidelity_pvalue`, two-sided: a draw can misfit the data, ``χ²`` too large, or fit its
noise, too small). A measurement given without noise on some entries (inpainting data with exact
zeros where the mask hides pixels) has fewer degrees of freedom: pass ``dof``.

**Prior plausibility** (:func:`prior_plausibility`), small noise level ``ε = s²``:

* pixel priors: the denoiser residual ``r(x) = ||D_ε(x) − x||² / (d ε)``, ``d = C·H·W``, with
  ``D_ε(x) = E[x_0 | x_0 + sqrt(ε) n = x]`` (the prior's VP denoiser at the step of additive std
  ``s``, :func:`~uqcampaign.kernels.schedule.additive_step`). By Tweedie ``D_ε(x) − x = ε ∇log p_ε(x)``,
  so ``r = ε ||∇log p_ε(x)||² / d``: how hard the smoothed prior pulls ``x`` back towards its
  typical set (0 at a mode, large off the image manifold). Default ``s = 5/255`` (Laumont et al.
  2022's denoiser level, the ULA default).
* latent priors: the learned prior's own denoising loss in latent space, ``z = E(x)``,
  ``r(x) = ||G(sqrt(ᾱ_t) z + sqrt(1 − ᾱ_t) n, t, c) − z||² / (d_z ε_t)`` with ``n ~ N(0, I)`` from
  ``generator``, ``ε_t = (1 − ᾱ_t)/ᾱ_t`` and ``G`` the consistency map (at ``t ≥ 1`` its boundary
  weight ``c_skip`` is below 0.003, so ``G`` is the network's ``x̂_0``: the ε-prediction loss
  ``||ε̂ − ε||² / d_z`` the network was trained on, averaged over ``repeats`` noise draws). The
  clean residual of the pixel case would be degenerate here: a consistency map is the identity
  at small ``t`` by construction. Default latent std ``s = 0.1`` (latents have unit scale).

Reference for both: the scores of images known to be typical — draws of the prior
(``prior.sample``) or held-out training images — and :func:`plausibility_pvalue` gives the upper-tail
p-value ``(1 + #{reference ≥ r}) / (n + 1)`` (exactly uniform for a draw exchangeable with the
reference images). A draw of the exact posterior, averaged over measurements, *is* a prior draw, so
a calibrated sampler's draws are flagged at 1% about 1% of the time; ``score_quantiles`` gives the
thresholds to state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.schedule import additive_step

__all__ = [
    "PIXEL_NOISE_STD",
    "LATENT_NOISE_STD",
    "data_fidelity",
    "fidelity_pvalue",
    "fidelity_quantiles",
    "prior_plausibility",
    "plausibility_pvalue",
    "score_quantiles",
]

PIXEL_NOISE_STD = 5.0 / 255.0
LATENT_NOISE_STD = 0.1


def data_fidelity(x: Tensor, y: Tensor, operator: Any, sigma: float) -> Tensor:
    """``χ² = ||y − A x||² / (σ² m)`` per draw, float64 ``(B,)``.

    ``x (B, C, H, W)``; ``y (*obs_shape)`` (one measurement, broadcast) or ``(B, *obs_shape)``; ``m = prod(obs_shape)``.
    """
    require(sigma > 0, f"noise sigma = {sigma!r} must be > 0")
    resid = operator.A(x.to(torch.float64)) - y.to(device=x.device, dtype=torch.float64)
    m = math.prod(operator.obs_shape)
    return resid.square().reshape(x.shape[0], -1).sum(dim=1) / (sigma**2 * m)


def fidelity_quantiles(dim_y: int, levels: Any = (0.005, 0.995), dof: int | None = None) -> np.ndarray:
    """Quantiles of the reference law ``χ²_k / m`` of :func:`data_fidelity` (``m = dim_y``, ``k = dof or m``)."""
    k = dim_y if dof is None else dof
    require(1 <= k <= dim_y, f"degrees of freedom {k!r} must be in [1, dim y = {dim_y}]")
    return stats.chi2.ppf(np.asarray(levels, dtype=np.float64), k) / dim_y


def fidelity_pvalue(chi2: Any, dim_y: int, dof: int | None = None) -> np.ndarray:
    """Two-sided p-value ``2 min(F, 1 − F)`` of each ``χ²`` under ``χ²_k / m`` (see the module docstring)."""
    k = dim_y if dof is None else dof
    require(1 <= k <= dim_y, f"degrees of freedom {k!r} must be in [1, dim y = {dim_y}]")
    value = np.asarray(chi2, dtype=np.float64) * dim_y
    return np.minimum(1.0, 2.0 * np.minimum(stats.chi2.cdf(value, k), stats.chi2.sf(value, k)))


def prior_plausibility(
    x: Tensor, prior: Any, noise_std: float | None = None, generator: torch.Generator | None = None, repeats: int = 1
) -> Tensor:
    """The plausibility score ``r(x)`` per draw (module docstring), float64 ``(B,)``; large = implausible.

    ``x (B, C, H, W)`` in campaign units. ``noise_std``: ``s`` (default :data:`PIXEL_NOISE_STD` for
    pixel priors, :data:`LATENT_NOISE_STD` for latent ones). Latent priors draw their noise from
    ``generator`` (required) and average ``repeats`` draws; pixel priors use neither.
    """
    require(isinstance(repeats, int) and repeats >= 1, f"repeats = {repeats!r} must be an integer >= 1")
    latent = bool(getattr(prior, "is_latent", False))
    std = (LATENT_NOISE_STD if latent else PIXEL_NOISE_STD) if noise_std is None else float(noise_std)
    require(std > 0, f"plausibility noise_std = {noise_std!r} must be > 0")
    level = additive_step(prior.alphas_cumprod, std)
    with torch.no_grad():
        if not latent:
            residual = prior.denoise(level.sqrt_alpha_bar * x, level.t) - x
            return residual.to(torch.float64).square().reshape(x.shape[0], -1).sum(1) / (residual[0].numel() * level.epsilon)
        require(generator is not None, "a latent prior's plausibility score draws noise: pass a torch.Generator")
        z = prior.encode(x)
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=z.device)
        ab = level.sqrt_alpha_bar**2
        for _ in range(repeats):
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=generator.device).to(z.device)
            residual = prior.consistency(math.sqrt(ab) * z + math.sqrt(1.0 - ab) * noise, level.t) - z
            total += residual.to(torch.float64).square().reshape(z.shape[0], -1).sum(1)
        return total / (repeats * z[0].numel() * level.epsilon)


def plausibility_pvalue(scores: Any, reference: Any) -> np.ndarray:
    """Upper-tail p-value of each score among ``reference`` scores of typical images: ``(1 + #{ref ≥ r}) / (n + 1)``."""
    ref = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    require(ref.size >= 1, "plausibility_pvalue needs at least one reference score")
    r = np.asarray(scores, dtype=np.float64)
    at_least = ref.size - np.searchsorted(ref, r, side="left")
    return (1.0 + at_least) / (ref.size + 1.0)


def score_quantiles(reference: Any, levels: Any = (0.5, 0.9, 0.99)) -> np.ndarray:
    """Quantiles of reference scores: the thresholds a report states (``r`` above the 0.99 one: flagged)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    require(ref.size >= 1, "score_quantiles needs at least one reference score")
    return np.quantile(ref, np.asarray(levels, dtype=np.float64))
