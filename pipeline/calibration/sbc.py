"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018, arXiv:1804.06788).

For each trial the rank of the truth among ``L`` (thinned) draws is computed for every pixel and
for ``P`` fixed random projections ``θ_pᵀ x`` (seeded, :func:`random_directions`); a calibrated
sampler gives ranks uniform on ``{0, …, L}`` (Talts et al., Theorem 1). Each statistic gets a
χ² test of its rank histogram; one p-value over all of them decides.

Number of bins (a stated rule). The rank ``r ∈ {0 … L}`` falls in bin ``⌊r B / (L + 1)⌋``, so the
expected count of bin ``b`` is exactly ``T · n_b / (L + 1)`` with ``n_b`` the ranks it holds (no
need for ``B`` to divide ``L + 1``). ``B = min(L + 1, max(2, round((2T)^{1/3})))``: the
Terrell–Scott (1985) oversmoothed number of bins for ``T`` values, the fewest bins that still
resolve the shape of a density — few bins keep the χ² test powerful against the smooth deviations
a miscalibrated sampler makes (a shifted, too narrow or too wide posterior: a slope, a ∪ or a ∩ in
the histogram, Talts et al. Figs. 3–5). Every bin holds at least half the average number of rank
values, so it expects at least ``T / (2B) ≥ 5`` ranks for ``T ≥ 50`` (Cochran's rule for the χ²
approximation); fewer trials are refused.

Combined p-value (a stated correction). Pixels are correlated and projections mix all pixels, so
the ``m = d + P`` tests are dependent: Fisher's or Stouffer's combinations assume independence and
would reject a calibrated sampler too often. Bonferroni's ``p = min(1, m · min_i p_i)`` is valid
under any dependence (it bounds the family-wise false alarm by ``α``); it loses power only when
many weak deviations are spread over many pixels, which the projections (each one sums over every
pixel) are there to catch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from uqcampaign.kernels.errors import require
from uqcampaign.pipeline.calibration.ranks import as_trials, random_directions, thin_draws, truth_ranks

__all__ = ["MIN_SBC_TRIALS", "SBCResult", "rank_bins", "rank_histogram", "chi2_uniformity", "bonferroni", "sbc"]

MIN_SBC_TRIALS = 50
"""Fewest trials :func:`sbc` accepts: the bin rule then keeps ≥ 5 expected ranks per bin."""


@dataclass(frozen=True)
class SBCResult:
    """Ranks and uniformity tests of one SBC run.

    ``ranks (T, m)``: rank of the truth per trial and statistic, pixels (C-order) first, then the
    projections; ``labels (m,)`` name them. ``n_draws = L``; ``bins = B``; ``counts (B, m)`` the rank
    histograms, ``expected (B,)`` the count each bin expects under uniformity; ``pvalues (m,)`` the χ²
    p-values; ``pvalue`` the Bonferroni-combined p-value; ``n_pixels = d``; ``img_shape`` the image
    shape when the samples had one, else ``(d,)``.
    """

    ranks: np.ndarray
    labels: tuple[str, ...]
    n_draws: int
    bins: int
    counts: np.ndarray
    expected: np.ndarray
    pvalues: np.ndarray
    pvalue: float
    n_pixels: int
    img_shape: tuple[int, ...]

    @property
    def n_trials(self) -> int:
        return int(self.ranks.shape[0])


def rank_bins(n_draws: int, n_trials: int) -> int:
    """The number of rank-histogram bins ``B = min(L + 1, max(2, round((2T)^{1/3})))`` (see the module docstring)."""
    require(isinstance(n_draws, int) and n_draws >= 1, f"draws per trial L = {n_draws!r} must be an integer >= 1")
    require(
        isinstance(n_trials, int) and n_trials >= MIN_SBC_TRIALS,
        f"SBC needs at least {MIN_SBC_TRIALS} trials for its χ² test (>= 5 ranks per bin), got {n_trials!r}; run more trials",
    )
    return int(min(n_draws + 1, max(2, round((2 * n_trials) ** (1 / 3)))))


def rank_histogram(ranks: np.ndarray, n_draws: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts ``(B, m)`` of ``ranks (T, m)`` in bins ``⌊r B / (L + 1)⌋``, and the expected counts ``(B,)``.

    ``expected[b] = T · n_b / (L + 1)``, ``n_b`` = number of rank values ``r ∈ {0 … L}`` in bin ``b``.
    """
    ranks = np.asarray(ranks)
    require(ranks.ndim == 2 and ranks.min() >= 0 and ranks.max() <= n_draws, f"ranks must be (trials, statistics) integers in [0, {n_draws}]")
    index = (ranks * bins) // (n_draws + 1)  # (T, m)
    counts = np.stack([np.bincount(index[:, j], minlength=bins) for j in range(ranks.shape[1])], axis=1)
    per_bin = np.bincount((np.arange(n_draws + 1) * bins) // (n_draws + 1), minlength=bins)
    return counts, ranks.shape[0] * per_bin / (n_draws + 1)


def chi2_uniformity(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Pearson χ² p-values ``(m,)`` of rank histograms ``counts (B, m)`` against ``expected (B,)``, ``B − 1`` dof."""
    statistic = ((counts - expected[:, None]) ** 2 / expected[:, None]).sum(axis=0)
    return stats.chi2.sf(statistic, df=counts.shape[0] - 1)


def bonferroni(pvalues: np.ndarray) -> float:
    """``min(1, m · min p)``: a p-value for "every one of the ``m`` nulls holds", valid under any dependence."""
    p = np.asarray(pvalues, dtype=np.float64)
    require(p.size >= 1, "bonferroni needs at least one p-value")
    return float(min(1.0, p.size * p.min()))


def sbc(samples: Any, truths: Any, projections: int = 4, seed: int = 0, draws: int | None = None) -> SBCResult:
    """Simulation-based calibration of ``samples (T, L, ...)`` against ``truths (T, ...)``.

    ``projections``: number ``P`` of fixed random unit directions ``θ_p`` (:func:`random_directions`
    with ``seed``) whose ``θ_pᵀ x`` are ranked beside the pixels. ``draws``: keep that many draws
    per trial, evenly spaced (:func:`thin_draws`); ``None`` keeps all ``L``. ``seed`` also breaks
    rank ties. The draws must be (nearly) independent: thin Markov chains first.
    """
    img_shape = tuple(np.shape(truths)[1:])
    s, x = as_trials(samples, truths)
    if draws is not None:
        s = thin_draws(s, draws)
    n_trials, n_draws, d = s.shape
    bins = rank_bins(n_draws, n_trials)
    theta = random_directions(d, projections, seed)
    draw_stats = np.concatenate([s, s @ theta.T], axis=2)  # (T, L, d + P)
    truth_stats = np.concatenate([x, x @ theta.T], axis=1)  # (T, d + P)
    ranks = truth_ranks(draw_stats, truth_stats, np.random.default_rng(np.random.SeedSequence([seed, 13])))
    counts, expected = rank_histogram(ranks, n_draws, bins)
    pvalues = chi2_uniformity(counts, expected)
    pixel_labels = [f"pixel {tuple(int(i) for i in np.unravel_index(k, img_shape))}" for k in range(d)] if len(img_shape) > 1 else [f"value {k}" for k in range(d)]
    labels = tuple(pixel_labels + [f"projection {p}" for p in range(projections)])
    return SBCResult(ranks, labels, n_draws, bins, counts, expected, pvalues, bonferroni(pvalues), d, img_shape if len(img_shape) > 1 else (d,))
