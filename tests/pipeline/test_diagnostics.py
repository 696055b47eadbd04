"""Sort-based diagnostics equal ArviZ 0.23 (R̂, bulk/tail ESS, MCSE) and numpy.quantile, pixel by pixel."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline import diagnostics as D

az = pytest.importorskip("arviz")
logging.getLogger("arviz").setLevel(logging.ERROR)  # "Array contains NaN-value" on the degenerate pixels

RTOL = 1e-6


def ar1(rng: np.random.Generator, pixels: int, chains: int, draws: int, phi: float) -> np.ndarray:
    """``(pixels, chains, draws)`` AR(1) chains ``x_t = φ x_{t−1} + ε_t`` started at stationarity."""
    eps = rng.standard_normal((pixels, chains, draws))
    x = np.empty_like(eps)
    x[..., 0] = eps[..., 0] / np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[..., t] = phi * x[..., t - 1] + eps[..., t]
    return x


def arviz_reference(draws: np.ndarray) -> dict[str, np.ndarray]:
    """ArviZ on each pixel's ``(chain, draw)`` float64 array."""
    out: dict[str, list[float]] = {"rhat": [], "ess_bulk": [], "ess_tail": [], "mcse_mean": [], "rhat_group": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for pixel in np.asarray(draws, dtype=np.float64):
            out["rhat"].append(az.rhat(pixel, method="rank"))
            out["ess_bulk"].append(az.ess(pixel, method="bulk"))
            out["ess_tail"].append(az.ess(pixel, method="tail"))
            out["mcse_mean"].append(az.mcse(pixel, method="mean"))
            out["rhat_group"].append(az.rhat(D.group_chains(pixel[None])[0], method="rank"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def assert_equals_arviz(draws: np.ndarray) -> D.BlockSummary:
    ours = D.summarize(draws)
    ref = arviz_reference(draws)
    for key, expected in ref.items():
        got = getattr(ours, key)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{key}: NaN pattern")
        np.testing.assert_allclose(got, expected, rtol=RTOL, err_msg=key)
    return ours


def test_well_mixed_ar1_equals_arviz() -> None:
    rng = np.random.default_rng(0)
    draws = ar1(rng, 200, 4, 200, phi=0.6).astype(np.float32)  # float32 like the store
    ours = assert_equals_arviz(draws)
    assert np.all(ours.rhat < 1.1) and np.all(ours.ess_bulk > 50)


def test_multimodal_offsets_equal_arviz_and_flag_rhat() -> None:
    rng = np.random.default_rng(1)
    offsets = rng.choice([-2.0, 2.0], size=(200, 6, 1))  # chains stuck in one of two modes
    offsets[:, :2] = [[-2.0], [2.0]]  # both modes visited in every pixel
    draws = ar1(rng, 200, 6, 101, phi=0.9) * 0.3 + offsets  # odd draw count: ArviZ drops the middle draw
    ours = assert_equals_arviz(draws)
    assert np.all(ours.rhat > 1.1)


def test_group_rhat_equals_arviz_and_separates_short_chains_from_a_trend() -> None:
    """``rhat_group`` = ArviZ's R̂ of the chain groups (12 chains: 4 groups of 3; 10 chains: 2 left out).

    64 stationary AR(1) chains of 100 draws, φ = 0.8 (ESS ≈ 11 per chain, 700 in all): every chain's
    R̂ is far above 1.01 (R̂² − 1 ≈ chains/ESS), the group R̂ is not (≈ 1 + 4/ESS); the same chains
    with a decaying offset common to all (an unfinished burn-in) have a group R̂ far above 1.01.
    """
    rng = np.random.default_rng(4)
    for chains in (12, 10):
        assert_equals_arviz(ar1(rng, 60, chains, 30, phi=0.8))
    stationary = ar1(rng, 200, 64, 100, phi=0.8)
    ours = D.summarize(stationary)
    print(f"\n[group R-hat] stationary: R̂ < 1.01 on {np.mean(ours.rhat < 1.01):.3f} of pixels, group R̂ on {np.mean(ours.rhat_group < 1.01):.3f}")
    assert np.mean(ours.rhat < 1.01) < 0.05 and np.mean(ours.rhat_group < 1.01) > 0.9
    trend = stationary + 3.0 * np.exp(-np.arange(100) / 40.0)  # every chain still relaxing from a common start
    assert np.mean(D.summarize(trend).rhat_group < 1.01) < 0.05
    assert D.group_chains(np.arange(2 * 8 * 6).reshape(2, 8, 6)).shape == (2, 4, 12)
    np.testing.assert_array_equal(D.group_chains(np.arange(8 * 6).reshape(1, 8, 6))[0, 0], [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11])


def test_multimodal_ula_fixture_equals_arviz_and_flags_rhat() -> None:
    torch = pytest.importorskip("torch")
    from uqcampaign.kernels.problems import multimodal_problem
    from uqcampaign.kernels.samplers.registry import build_sampler

    problem = multimodal_problem(torch.float64)
    sampler = build_sampler({"kind": "ula", "burn_in": 30, "thin": 1})
    run = sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, 12, 40, torch.Generator().manual_seed(0))
    x = torch.stack([d.x for d in run], dim=1).numpy()  # (chain, draw, 1, 4, 4)
    draws = x.reshape(12, 40, -1).transpose(2, 0, 1)  # (pixels, chain, draw)
    ours = assert_equals_arviz(draws)
    assert ours.rhat.max() > 1.1


def test_ties_and_small_shapes_equal_arviz() -> None:
    rng = np.random.default_rng(2)
    coarse = np.round(ar1(rng, 60, 4, 30, phi=0.5), 1)  # many exact ties, in x and in |x − median|
    assert_equals_arviz(coarse)
    assert_equals_arviz(ar1(rng, 20, 3, 9, phi=0.3))  # split chains of 4 draws
    assert_equals_arviz(ar1(rng, 20, 2, 4, phi=0.3))  # the smallest ArviZ accepts


def test_degenerate_pixels_like_arviz() -> None:
    rng = np.random.default_rng(3)
    draws = rng.standard_normal((4, 4, 20))
    draws[0] = 2.5  # constant: NaN R̂, ESS = chains · draws, MCSE 0
    draws[1, 2, 3] = np.nan  # one NaN: NaN everywhere
    draws[2, :, :10] = 1.0  # half constant
    ours = assert_equals_arviz(draws)
    assert np.isnan(ours.rhat[0]) and ours.ess_bulk[0] == 80 and ours.mcse_mean[0] == 0
    assert all(np.isnan(getattr(ours, f)[1]) for f in D.BlockSummary._fields)
    one_chain = assert_equals_arviz(rng.standard_normal((3, 1, 40)))
    assert np.all(np.isnan(one_chain.rhat)) and np.all(np.isfinite(one_chain.ess_bulk))
    few = D.summarize(rng.standard_normal((2, 4, 3)))
    assert np.all(np.isnan(few.rhat)) and np.all(np.isnan(few.ess_tail)) and np.all(np.isfinite(few.mean))


@pytest.mark.parametrize("draw_count", [50, 51])
def test_quantiles_mean_std_equal_numpy(draw_count: int) -> None:
    rng = np.random.default_rng(4)
    draws = rng.gamma(2.0, size=(40, 5, draw_count)).astype(np.float32)
    flat = draws.reshape(40, -1).astype(np.float64)
    probs = [0.0, 0.05, 0.25, 0.5, 0.95, 1.0]
    np.testing.assert_allclose(D.quantiles(draws, probs), np.quantile(flat, probs, axis=1), rtol=1e-12)
    s = D.summarize(draws, level=0.8)
    np.testing.assert_allclose(s.ci_lower, np.quantile(flat, 0.1, axis=1), rtol=1e-12)
    np.testing.assert_allclose(s.ci_upper, np.quantile(flat, 0.9, axis=1), rtol=1e-12)
    np.testing.assert_allclose(s.mean, flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(s.std, flat.std(axis=1, ddof=1), rtol=1e-12)


def test_batches_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = ar1(np.random.default_rng(5), 30, 4, 50, phi=0.7)
    whole = D.summarize(draws)
    monkeypatch.setattr(D, "_BATCH_DRAWS", 4 * 50 * 7)  # 7 pixels per batch
    for a, b in zip(whole, D.summarize(draws)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: D.summarize(np.zeros((4, 10))), r"shape \(pixels, chain, draw\)"),
        (lambda: D.summarize(np.zeros((2, 2, 10)), level=1.0), "outside"),
        (lambda: D.quantiles(np.zeros((2, 2, 10)), [1.5]), "outside"),
        (lambda: D.summarize(np.zeros((2, 2, 10), dtype=complex)), "real-valued"),
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(UQError, match=match):
        call()


def test_tiny_scale_draws_like_arviz() -> None:
    """Draws spread over less than ArviZ's constant threshold (1e-15): raw ESS is `N`, bulk ESS is not."""
    draws = ar1(np.random.default_rng(6), 5, 4, 30, phi=0.3) * 1e-18
    ours = assert_equals_arviz(draws)
    assert np.all(ours.ess_bulk != 120)
