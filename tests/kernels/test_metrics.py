"""Metrics: sliced Wasserstein, empirical equal-tailed intervals, PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uqcampaign.kernels import metrics
from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.metrics import equal_tailed_interval, interval_coverage, psnr, sliced_wasserstein, ssim

F64 = torch.float64


def normal(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_is_zero_for_identical_sets_and_symmetric() -> None:
    a, b = normal(500, 6, 0), normal(500, 6, 1)
    assert sliced_wasserstein(a, a, 16, torch.Generator().manual_seed(0)) == 0.0
    ab = sliced_wasserstein(a, b, 16, torch.Generator().manual_seed(2))
    ba = sliced_wasserstein(b, a, 16, torch.Generator().manual_seed(2))
    assert ab > 0 and math.isclose(ab, ba, rel_tol=1e-12)
    # Images (n, C, H, W) are flattened: same value as (n, d).
    assert sliced_wasserstein(a.reshape(500, 1, 2, 3), b.reshape(500, 1, 2, 3), 16, torch.Generator().manual_seed(2)) == ab


def test_sliced_wasserstein_of_a_shift() -> None:
    """In 1-D, W2 of a shifted copy is the shift; in d-D, SW2² → |s|²/d (E[(θ·s)²] over the sphere)."""
    a = normal(300, 1, 3)
    assert math.isclose(sliced_wasserstein(a, a + 0.7, 5, torch.Generator().manual_seed(0)), 0.7, rel_tol=1e-12)
    d, shift = 4, torch.tensor([0.3, -0.4, 1.2, 0.0], dtype=F64)
    b = normal(100, d, 4)
    sw = sliced_wasserstein(b, b + shift, 5_000, torch.Generator().manual_seed(5))
    # (θ·s)²/|s|² ~ Beta(1/2, (d-1)/2): std of the mean over P directions = sqrt(2(d-1)/(d²(d+2)P)) relative to 1/d.
    rel_se = math.sqrt(2 * (d - 1) / (d + 2) / 5_000)
    assert abs(sw**2 / (shift.square().sum().item() / d) - 1) <= 4 * rel_se


def test_sliced_wasserstein_between_samples_of_one_law_shrinks_with_n() -> None:
    def mean_sw(n: int) -> float:
        return sum(sliced_wasserstein(normal(n, 8, 10 + s), normal(n, 8, 20 + s), 16, torch.Generator().manual_seed(s)) for s in range(3)) / 3

    small, large = mean_sw(100), mean_sw(6400)
    assert large < small / 3  # ~ n^{-1/2} (up to log factors): 8× more theory, 3× asserted


def test_sliced_wasserstein_rejects_unequal_sets() -> None:
    with pytest.raises(UQError, match=r"equal shape .* got \(10, 3\) and \(11, 3\)"):
        sliced_wasserstein(normal(10, 3, 0), normal(11, 3, 0), 4, torch.Generator())
    with pytest.raises(UQError, match=r"n_projections = 0"):
        sliced_wasserstein(normal(10, 3, 0), normal(10, 3, 1), 0, torch.Generator())


# --------------------------------------------------------------------------- intervals


def test_equal_tailed_interval_matches_numpy_and_is_chunked_consistently(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = normal(1000, 12, 6).reshape(1000, 1, 3, 4)
    lower, upper = equal_tailed_interval(samples, 0.9)
    assert lower.shape == upper.shape == (1, 3, 4)
    ref = np.quantile(samples.numpy(), [0.05, 0.95], axis=0)
    assert np.abs(lower.numpy() - ref[0]).max() < 1e-12 and np.abs(upper.numpy() - ref[1]).max() < 1e-12
    monkeypatch.setattr(metrics, "_QUANTILE_MAX_ELEMENTS", 2500)  # 2 pixels per torch.quantile call
    chunked = equal_tailed_interval(samples, 0.9)
    assert torch.equal(chunked[0], lower) and torch.equal(chunked[1], upper)
    with pytest.raises(UQError, match=r"level = 1\.5 must be in \(0, 1\)"):
        equal_tailed_interval(samples, 1.5)


def test_interval_coverage_counts_the_coordinates_inside() -> None:
    """Draws 0..100 per pixel: the 90% interval is [5, 95]; truths 0, 5, 50, 95, 96, 100 → 3 of 6 inside."""
    samples = torch.arange(101, dtype=torch.float32)[:, None, None, None].expand(101, 1, 2, 3)
    truth = torch.tensor([[[0.0, 5.0, 50.0], [95.0, 96.0, 100.0]]], dtype=torch.float64)
    assert interval_coverage(samples, truth, 0.9) == 0.5
    assert interval_coverage(samples, truth, 0.99) == 4 / 6  # [0.5, 99.5]: 5, 50, 95, 96


def test_equal_tailed_interval_of_normal_samples_has_the_normal_quantiles() -> None:
    lower, upper = equal_tailed_interval(normal(100_000, 2, 7), 0.9)
    # SE of a sample quantile: sqrt(p(1-p)/n)/φ(z) = sqrt(0.05·0.95/1e5)/0.103 ≈ 0.0067.
    assert (lower + 1.6449).abs().max() < 4 * 0.0067 and (upper - 1.6449).abs().max() < 4 * 0.0067


# --------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_of_a_known_error() -> None:
    ref = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(8), dtype=F64)
    x = ref + 0.1  # MSE = 0.01 -> 20 dB at range 1, 26.02 dB at range 2
    assert torch.allclose(psnr(x, ref), torch.full((2,), 20.0, dtype=F64), rtol=0, atol=1e-10)
    assert math.isclose(float(psnr(x[0], ref[0], data_range=2.0)), 20 + 20 * math.log10(2), rel_tol=1e-12)


def ssim_by_windows(x: np.ndarray, y: np.ndarray, window: int, sigma: float, data_range: float = 1.0) -> float:
    """SSIM of two (H, W) images straight from the definition, one window position at a time."""
    r = np.arange(window) - (window - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            px, py = x[i : i + window, j : j + window], y[i : i + window, j : j + window]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("window", [7, 11])
def test_ssim_matches_the_definition(window: int) -> None:
    g = torch.Generator().manual_seed(9)
    ref = torch.rand(2, 2, 16, 16, generator=g, dtype=F64)
    x = (ref + 0.2 * torch.randn(2, 2, 16, 16, generator=g, dtype=F64)).clamp(0, 1)
    got = ssim(x, ref, window=window)
    assert got.shape == (2,)
    for b in range(2):
        expected = np.mean([ssim_by_windows(x[b, c].numpy(), ref[b, c].numpy(), window, 1.5) for c in range(2)])
        assert abs(float(got[b]) - expected) < 1e-12
    assert float(ssim(ref[0], ref[0], window=window)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("window, sigma", [(11, 1.5), (7, 0.8)])
def test_ssim_matches_scikit_image(window: int, sigma: float) -> None:
    """scikit-image (a dependency) with Gaussian weights uses the window 2·int(3.5σ + 0.5) + 1: 11 for
    σ = 1.5 (Wang et al. 2004), 7 for σ = 0.8; per channel, then the mean over channels."""
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(10)
    ref = torch.rand(2, 3, 32, 32, generator=g, dtype=F64)
    x = (ref + 0.1 * torch.randn(2, 3, 32, 32, generator=g, dtype=F64)).clamp(0, 1)
    got = ssim(x, ref, window=window, sigma=sigma)
    for b in range(2):
        expected = structural_similarity(
            x[b].numpy(), ref[b].numpy(), data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=sigma, use_sample_covariance=False
        )
        assert float(got[b]) == pytest.approx(expected, abs=1e-10)


def test_image_metrics_reject_bad_shapes() -> None:
    a = torch.zeros(1, 8, 8, dtype=F64)
    with pytest.raises(UQError, match=r"equal shape"):
        psnr(a, torch.zeros(1, 8, 9, dtype=F64))
    with pytest.raises(UQError, match=r"smaller than the ssim window 11"):
        ssim(a, a, window=11)
