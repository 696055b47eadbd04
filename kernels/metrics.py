"""Sample-quality and image-quality metrics: sliced Wasserstein, equal-tailed intervals, PSNR, SSIM.

Sample sets are ``(n, d)`` or ``(n, C, H, W)`` (flattened to ``(n, C·H·W)``); images are
``(C, H, W)`` or ``(B, C, H, W)``. Everything is computed in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from uqcampaign.kernels.errors import require

__all__ = ["sliced_wasserstein", "equal_tailed_interval", "interval_coverage", "psnr", "ssim", "mixture_moment_z"]

_QUANTILE_MAX_ELEMENTS = 2**24 - 1  # torch.quantile refuses larger inputs


def _flat_samples(x: Tensor, name: str) -> Tensor:
    require(isinstance(x, Tensor) and x.dim() >= 2, f"{name} must be a tensor of samples (n, d) or (n, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 64, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets.

    ``SW₂(a, b) = sqrt(mean_θ W₂²(θᵀa, θᵀb))`` over ``n_projections`` random unit directions θ
    (drawn from ``generator``; a generator seeded 0 when ``None``). In 1-D with equal ``n``,
    ``W₂² = mean_i (a_(i) − b_(i))²`` over the sorted projections.
    """
    fa, fb = _flat_samples(a, "a"), _flat_samples(b, "b")
    require(fa.shape == fb.shape, f"sliced_wasserstein needs two sample sets of equal shape (n, d), got {tuple(fa.shape)} and {tuple(fb.shape)}")
    require(isinstance(n_projections, int) and n_projections >= 1, f"n_projections = {n_projections!r} must be an integer >= 1")
    if generator is None:
        generator = torch.Generator(device=fa.device).manual_seed(0)
    theta = torch.randn(fa.shape[1], n_projections, generator=generator, device=generator.device, dtype=torch.float64).to(fa.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa = (fa @ theta).sort(dim=0).values  # (n, P)
    pb = (fb @ theta).sort(dim=0).values
    return float((pa - pb).square().mean().sqrt())


def equal_tailed_interval(samples: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
    """Per-coordinate equal-tailed ``level`` interval of ``samples (n, ...)`` → ``(lower, upper)``, each ``(...)``.

    The empirical ``(1 − level)/2`` and ``(1 + level)/2`` quantiles (``torch.quantile``, linear interpolation).
    """
    require(isinstance(level, (int, float)) and 0 < level < 1, f"interval level = {level!r} must be in (0, 1)")
    flat = _flat_samples(samples, "samples")
    require(flat.shape[0] >= 2, f"an interval needs at least 2 samples, got {flat.shape[0]}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device=flat.device)
    step = max(1, _QUANTILE_MAX_ELEMENTS // flat.shape[0])  # coordinates per torch.quantile call
    bounds = torch.cat([torch.quantile(flat[:, i : i + step], q, dim=0) for i in range(0, flat.shape[1], step)], dim=1)
    shape = samples.shape[1:]
    return bounds[0].reshape(shape), bounds[1].reshape(shape)


def interval_coverage(samples: Tensor, truth: Tensor, level: float = 0.9) -> float:
    """Fraction of the coordinates of ``truth (...)`` inside the equal-tailed ``level`` interval of ``samples (n, ...)``."""
    lower, upper = equal_tailed_interval(samples, level)
    truth = truth.to(device=lower.device, dtype=torch.float64)
    return float(((truth >= lower.double()) & (truth <= upper.double())).to(torch.float64).mean())


def _images(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    require(
        isinstance(x, Tensor) and isinstance(ref, Tensor) and x.shape == ref.shape and x.dim() in (3, 4),
        f"image metrics need two tensors of equal shape (C, H, W) or (B, C, H, W), got {getattr(x, 'shape', x)} and {getattr(ref, 'shape', ref)}",
    )
    return x.detach().to(torch.float64), ref.detach().to(torch.float64)


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(range² / MSE)`` in dB, per image: ``()`` or ``(B,)``."""
    x, ref = _images(x, ref)
    require(data_range > 0, f"data_range = {data_range!r} must be > 0")
    mse = (x - ref).square().mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    """Normalised 2-D Gaussian window ``(size, size)``."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image: ``()`` or ``(B,)``.

    Gaussian-weighted local statistics over ``window × window`` patches (valid positions only),
    ``SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with
    ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``, averaged over positions and channels.
    Equal to ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, channel_axis=0)`` when ``window = 2·int(3.5·sigma + 0.5) + 1``
    (scikit-image's window for Gaussian weights): ``window = 11, sigma = 1.5`` (Wang et al.'s
    setting) or ``window = 7, sigma = 0.8`` for small images (tested); the default pair (7, 1.5) has
    no scikit-image equivalent.
    """
    x, ref = _images(x, ref)
    require(isinstance(window, int) and window >= 1 and window % 2 == 1, f"ssim window = {window!r} must be an odd integer")
    require(min(x.shape[-2:]) >= window, f"images of size {tuple(x.shape[-2:])} are smaller than the ssim window {window}; pass window=7 or smaller")
    squeeze = x.dim() == 3
    if squeeze:
        x, ref = x[None], ref[None]
    channels = x.shape[1]
    kernel = _gaussian_window(window, sigma).to(x.device).expand(channels, 1, window, window)

    def local_mean(img: Tensor) -> Tensor:
        return F.conv2d(img, kernel, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = local_mean(x), local_mean(ref)
    vx = local_mean(x * x) - mx * mx
    vy = local_mean(ref * ref) - my * my
    cxy = local_mean(x * ref) - mx * my
    ssim_map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    result = ssim_map.mean(dim=(-3, -2, -1))
    return result[0] if squeeze else result


def mixture_moment_z(samples: Tensor, weights: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel z-scores ``(d,)`` of the sample mean and sample std of ``samples (n, ...)`` against a diagonal
    Gaussian mixture (``weights (K,)``, ``means``/``variances (K, ...)``).

    Mean: SE = σ / √n. Std: the delta method, SE = sqrt((μ₄ − σ⁴) / (4σ² n)), with the mixture's exact fourth
    central moment ``μ₄ = Σ_k w_k (d_k⁴ + 6 d_k² v_k + 3 v_k²)``, ``d_k = m_k − μ``.
    """
    x = _flat_samples(samples, "samples")
    n = x.shape[0]
    w = weights.to(torch.float64).reshape(-1, 1)
    m, v = means.to(torch.float64).reshape(w.shape[0], -1), variances.to(torch.float64).reshape(w.shape[0], -1)
    require(m.shape[1] == x.shape[1], f"samples have {x.shape[1]} values each but the mixture has {m.shape[1]}")
    mean = (w * m).sum(0)
    var = (w * (v + m**2)).sum(0) - mean**2
    dev = m - mean
    mu4 = (w * (dev**4 + 6 * dev**2 * v + 3 * v**2)).sum(0)
    z_mean = (x.mean(0) - mean) / (var / n).sqrt()
    z_std = (x.std(0) - var.sqrt()) / ((mu4 - var**2) / (4 * var * n)).sqrt()
    return z_mean, z_std
