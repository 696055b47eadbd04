"""The calibration tools (SBC, TARP, replicated coverage, verdict) against samplers known right and known wrong.

Known right: the ``exact`` sampler on an exact GMM problem (``random_problem("blur", "gmm", seed=3)``,
1×4×4 images, K = 4). Known wrong: the same exact draws with their spread about the posterior mean
scaled by 0.7, and PnP-ULA stopped after a fifth of the burn-in it needs. The samplers run directly
(no campaign); every trial draws its truth from the prior and simulates its own ``y``. Figures are
printed (``pytest -s``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_problem
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.langevin import ChainState, start
from uqcampaign.kernels.samplers.ula import ULAConfig, step, ula_parameters
from uqcampaign.pipeline.calibration.coverage import interval_index, replicated_coverage, wilson_interval
from uqcampaign.pipeline.calibration.plots import coverage_figure, sbc_figure, tarp_figure
from uqcampaign.pipeline.calibration.ranks import random_directions, thin_draws, truth_ranks
from uqcampaign.pipeline.calibration.sbc import MIN_SBC_TRIALS, rank_bins, rank_histogram, sbc
from uqcampaign.pipeline.calibration.tarp import tarp, tarp_credibility, tarp_ecp
from uqcampaign.pipeline.calibration.verdict import calibration_summary, calibration_verdict

TRIALS = 200  # the minimum for SBC
DRAWS = 99  # L + 1 = 100: the 0.5 and 0.9 order-statistic intervals attain their levels exactly


def simulate(problem, truths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``y = A x + σ ε`` for every truth ``(T, C, H, W)`` → ``(T, *obs_shape)``."""
    clean = problem.operator.A(truths)
    return clean + problem.sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)


def exact_trials(problem, truths: torch.Tensor, spread: float = 1.0, seed: int = 0) -> np.ndarray:
    """``(T, L, C, H, W)``: ``DRAWS`` draws of the ``exact`` sampler per trial, their spread about the
    exact posterior mean scaled by ``spread`` (1 = the exact sampler itself)."""
    generator = torch.Generator().manual_seed(seed)
    ys = simulate(problem, truths, generator)
    sampler = build_sampler({"kind": "exact"})
    out = []
    for y in ys:
        draws = next(iter(sampler.run(y, problem.operator, problem.prior, problem.sigma, DRAWS, 1, generator))).x
        mean = problem.prior.posterior(problem.operator, y, problem.sigma).mean()
        out.append(mean + spread * (draws - mean))
    return torch.stack(out).numpy()


@pytest.fixture(scope="module")
def gmm_problem():
    return random_problem("blur", "gmm", seed=3)


@pytest.fixture(scope="module")
def prior_truths(gmm_problem) -> torch.Tensor:
    return gmm_problem.prior.sample(TRIALS, torch.Generator().manual_seed(100))


def replicated_truths(problem, truths: int = 25, replicates: int = 8) -> tuple[torch.Tensor, np.ndarray]:
    """``truths`` fixed prior draws, each repeated ``replicates`` times, and the group of each trial."""
    fixed = problem.prior.sample(truths, torch.Generator().manual_seed(200))
    return fixed.repeat_interleave(replicates, 0), np.repeat(np.arange(truths), replicates)


def _print(name: str, summary: dict, tarp_result) -> None:
    cov = summary["coverage"]
    print(
        f"\n[calibration] {name}: SBC p = {summary['sbc_pvalue']:.3g}  TARP p = {summary['tarp_pvalue']:.3g} "
        f"(max |ECP − α| = {tarp_result.max_deviation:.3f}, diagonal in band: {tarp_result.in_band})  "
        f"coverage 0.5: {cov['0.5']:.3f} {np.round(summary['coverage_interval']['0.5'], 3)}  "
        f"0.9: {cov['0.9']:.3f} {np.round(summary['coverage_interval']['0.9'], 3)}  "
        f"joint 0.9: {summary['joint_coverage']['0.9']:.3f} {np.round(summary['joint_coverage_interval']['0.9'], 3)}  → {summary['verdict']}"
    )


# --------------------------------------------------------------------------- the reference: the tarp package


def test_tarp_equals_the_tarp_package() -> None:
    """Our ECP equals ``tarp.get_tarp_coverage`` (0.1.1) on the same samples and references."""
    tarp_pkg = pytest.importorskip("tarp")
    rng = np.random.default_rng(0)
    n_trials, n_draws, d = 300, 50, 5
    theta = rng.uniform(-5, 5, (n_trials, d))
    sigma = np.exp(rng.uniform(-2, 0, (n_trials, d)))
    samples = rng.normal(theta, 1.3 * sigma, (n_draws, n_trials, d))  # tarp's layout (draws, trials, d); a wide posterior
    truths = rng.normal(theta, sigma)
    references = rng.uniform(-6, 6, (n_trials, d))
    ours_layout = samples.transpose(1, 0, 2)
    for norm_ours, norm_pkg, refs in ((None, False, references), ("truths", True, (references + 6) / 12)):
        f = tarp_credibility(ours_layout, truths, refs, norm=norm_ours)
        assert f.min() == 0.0 and f.max() == 1.0  # tarp 0.1.1 bins over [min f, max f]: equal to [0, 1] only then
        expected_ecp, expected_alpha = tarp_pkg.get_tarp_coverage(samples, truths, references=refs, norm=norm_pkg, bootstrap=False)
        alpha, ecp = tarp_ecp(f, n_trials // 10)
        np.testing.assert_allclose(alpha, expected_alpha, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ecp, expected_ecp, rtol=0, atol=1e-12)
        result = tarp(ours_layout, truths, references=refs, norm=norm_ours, n_boot=20)  # default bins = T // 10, as the package
        np.testing.assert_allclose(result.ecp, expected_ecp, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- building blocks


def test_rank_bins_rule_and_expected_counts() -> None:
    assert rank_bins(99, 200) == 7  # round((2·200)^{1/3}) = round(7.37)
    assert rank_bins(99, 1000) == 13
    assert rank_bins(3, 1000) == 4  # never more bins than rank values
    with pytest.raises(UQError, match=r"at least 50 trials"):
        rank_bins(99, MIN_SBC_TRIALS - 1)
    ranks = np.random.default_rng(1).integers(0, 100, size=(200, 3))
    counts, expected = rank_histogram(ranks, 99, 7)  # 100 rank values in 7 bins: 14 or 15 each
    assert counts.sum(axis=0).tolist() == [200, 200, 200]
    assert expected.sum() == pytest.approx(200)
    assert sorted(set(np.round(expected * 100 / 200).astype(int))) == [14, 15]


def test_ranks_break_ties_at_random_and_thinning_keeps_even_spacing() -> None:
    draws = np.zeros((4000, 9, 1))
    ranks = truth_ranks(draws, np.zeros((4000, 1)), np.random.default_rng(0))  # every draw ties with the truth
    counts = np.bincount(ranks[:, 0], minlength=10)
    assert counts.min() > 300 and counts.max() < 500  # uniform on {0..9}, not all 0 or all 9
    samples = np.arange(20.0).reshape(1, 20, 1)
    assert thin_draws(samples, 5)[0, :, 0].tolist() == [0, 4, 8, 12, 16]
    theta = random_directions(16, 4, seed=3)
    assert np.allclose(np.linalg.norm(theta, axis=1), 1.0)
    assert np.array_equal(random_directions(16, 2, seed=3), theta[:2])  # fewer projections: the same first ones


def test_interval_index_and_wilson() -> None:
    assert interval_index(99, 0.9) == 5 and interval_index(99, 0.5) == 25
    assert interval_index(19, 0.9) == 1
    with pytest.raises(UQError, match=r"use at least 19"):
        interval_index(10, 0.9)
    lo, hi = wilson_interval(0.9, 1000, 0.99)
    assert lo < 0.9 < hi and hi - lo == pytest.approx(0.0488, abs=0.001)


# --------------------------------------------------------------------------- known right and known wrong


def test_exact_sampler_is_calibrated(gmm_problem, prior_truths, tmp_path: Path) -> None:
    """Exact posterior draws: SBC uniform (p > 0.01 over 200 trials), the TARP diagonal inside its band,
    coverage at 0.9 inside its binomial interval, and the verdict says so; the figures are written."""
    samples = exact_trials(gmm_problem, prior_truths)
    truths = prior_truths.numpy()
    s, t, c = sbc(samples, truths), tarp(samples, truths), replicated_coverage(samples, truths)
    summary = calibration_summary(s, t, c)
    _print("exact", summary, t)
    assert s.pvalue > 0.01
    assert t.pvalue > 0.01 and t.in_band
    for entry in c.levels:
        assert entry.pixel_interval[0] <= entry.pixel_level <= entry.pixel_interval[1]
        assert entry.joint_interval[0] <= entry.joint_level <= entry.joint_interval[1]
    assert summary["verdict"] == "calibrated"
    assert json.loads(json.dumps(summary)) == summary
    for name, fig in (("sbc", sbc_figure(s)), ("tarp", tarp_figure(t)), ("coverage", coverage_figure(c))):
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_sampler_replicated_coverage(gmm_problem) -> None:
    """Thong et al.'s design: 25 fixed truths × 8 noisy measurements; exact draws cover at their level."""
    truths, groups = replicated_truths(gmm_problem)
    samples = exact_trials(gmm_problem, truths, seed=1)
    c = replicated_coverage(samples, truths.numpy(), groups=groups)
    entry = c.at(0.9)
    print(f"\n[calibration] exact, replicated: pixel 0.9 → {entry.pixel:.3f} {np.round(entry.pixel_interval, 3)}, joint {entry.joint:.3f} {np.round(entry.joint_interval, 3)}")
    assert entry.pixel_interval[0] <= 0.9 <= entry.pixel_interval[1]
    assert entry.joint_interval[0] <= 0.9 <= entry.joint_interval[1]


def test_spread_scaled_by_0_7_is_miscalibrated(gmm_problem, prior_truths) -> None:
    """The same exact draws pulled to 0.7 × their spread about the posterior mean: every tool flags it."""
    samples = exact_trials(gmm_problem, prior_truths, spread=0.7)
    truths = prior_truths.numpy()
    s, t, c = sbc(samples, truths), tarp(samples, truths), replicated_coverage(samples, truths)
    summary = calibration_summary(s, t, c)
    _print("exact spread × 0.7", summary, t)
    assert s.pvalue < 0.01
    assert t.pvalue < 0.01 and not t.in_band
    assert c.at(0.9).pixel_interval[1] < 0.9 and c.at(0.9).pixel_pvalue < 0.01
    assert summary["verdict"] == "miscalibrated"
    replicated, groups = replicated_truths(gmm_problem)
    rc = replicated_coverage(exact_trials(gmm_problem, replicated, spread=0.7, seed=1), replicated.numpy(), groups=groups)
    assert rc.at(0.9).pixel_interval[1] < 0.9 and rc.at(0.9).joint_interval[1] < 0.9


ULA_DRAWS = 19  # L + 1 = 20: the 0.9 order-statistic interval [x_(1), x_(19)] attains 0.9 exactly
ULA_RELAXATIONS = 8  # the burn-in ULA needs: 8 relaxation times (tests/kernels/test_ula.py)


def ula_trials(problem, truths: torch.Tensor, burn_in: int, params) -> np.ndarray:
    """``(T, L, C, H, W)``: one ULA chain per draw, started at ``pinv(y)``, its state after ``burn_in`` steps.

    All trials' chains run as one batch through the kernel's ``start``/``step`` (each chain has its own ``y``).
    """
    generator = torch.Generator().manual_seed(5)
    ys = simulate(problem, truths, generator).repeat_interleave(ULA_DRAWS, 0)
    with torch.no_grad():
        state = ChainState(start("pinv", ys, problem.operator, problem.prior, generator), 0)
        for _ in range(burn_in):
            state, _ = step(generator, state, ys, problem.operator, problem.prior, problem.sigma, params)
    return state.x.reshape(truths.shape[0], ULA_DRAWS, *truths.shape[1:]).numpy()


def test_ula_with_a_fifth_of_its_burn_in_is_miscalibrated() -> None:
    """PnP-ULA (no box) on inpainting with a Gaussian prior (a one-component GMM, diagonal covariance).

    The posterior is Gaussian and does not depend on ``y`` but through its mean, so the relaxation
    time is the same in every trial: ``τ = λ_max / δ`` steps (λ_max: largest posterior variance, a
    missing pixel's). The chains start at ``pinv(y)``, 0 on the missing pixels, about 2–3 prior stds
    from the posterior there; ULA needs 8 τ (``tests/kernels/test_ula.py``); after a fifth, 1.6 τ,
    ``e^{-1.6} ≈ 0.2`` of that offset is left on the slowest pixels.
    """
    problem = random_problem("inpaint", "gmm", seed=2, components=1)
    params = ula_parameters(ULAConfig(box=None), problem.operator, problem.prior, problem.sigma)
    slowest = float(torch.linalg.eigvalsh(problem.posterior.covariances)[:, -1].max())
    needed = math.ceil(ULA_RELAXATIONS * slowest / params.delta)
    truths = problem.prior.sample(TRIALS, torch.Generator().manual_seed(300))
    samples = ula_trials(problem, truths, needed // 5, params)
    s, t, c = sbc(samples, truths.numpy()), tarp(samples, truths.numpy()), replicated_coverage(samples, truths.numpy())
    summary = calibration_summary(s, t, c)
    print(f"\n[calibration] ULA burn-in {needed // 5} of the {needed} needed (τ = {slowest / params.delta:.0f} steps)", end="")
    _print("ula, a fifth of its burn-in", summary, t)
    assert s.pvalue < 0.01
    assert summary["verdict"] == "miscalibrated"


# --------------------------------------------------------------------------- the verdict's rules


def test_verdict_needs_enough_trials_to_say_calibrated() -> None:
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(60, 16))
    truths = mean + rng.normal(size=(60, 16))
    samples = mean[:, None, :] + rng.normal(size=(60, 99, 16))  # exchangeable: calibrated, but only 60 trials
    verdict, reasons = calibration_verdict(sbc(samples, truths), tarp(samples, truths, n_boot=50), replicated_coverage(samples, truths))
    assert verdict == "inconclusive"
    assert any("60 trials < 100" in r for r in reasons)
    assert calibration_verdict() == ("inconclusive", ["no calibration tool was run"])
    with pytest.raises(UQError, match=r"truths have shape"):
        sbc(samples, truths[:, :4])
