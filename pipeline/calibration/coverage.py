"""Replicated-experiment coverage (Thong, Kemajou Mbakam & Pereyra 2024, arXiv:2405.08179).

Fixed truths ``x_g`` (``G`` of them), each measured many times (``y = A x_g + σ ε`` with fresh
noise); every measurement is one trial with ``L`` posterior draws. At each credibility level ``a``
the experiment counts how often the sampler's credible regions contain the truth, per pixel and
jointly, and compares with ``a``.

Regions, defined from the ranks so that exact posterior draws cover exactly (for any ``L``):

* **per-pixel interval**: ``[x_(j), x_(L+1−j)]``, the order statistics of the pixel's draws (1-based)
  with ``j = ⌊(L + 1)(1 − a)/2⌋``; the truth is inside iff its rank ``r`` (draws below it) satisfies
  ``j ≤ r ≤ L − j``, which has probability ``a' = (L + 1 − 2j)/(L + 1)`` for exchangeable draws.
  ``a' = a`` when ``(L + 1)(1 − a)/2`` is an integer (``L = 99`` for ``a = 0.5, 0.9``), else ``a' > a``
  is the level attained; it is the one tested. (An interpolated quantile interval of ``L`` draws
  covers less: about ``(L − 1)a/(L + 1)``, 0.84 for ``a = 0.9``, ``L = 31``.) Needs ``j ≥ 1``:
  ``L ≥ 2/(1 − a) − 1``.
* **joint highest-posterior-density region over random projections**: ``P`` fixed random unit
  directions ``θ_1 … θ_P`` (:func:`random_directions`, ``P`` small, default 3); the truth and the
  draws of a trial are projected, ``z_i = Θ x_i ∈ R^P`` (``L + 1`` points), whitened by their
  covariance, and each point gets the leave-one-out Gaussian kernel density of the other ``L``
  (bandwidth ``h = (L + 1)^{−1/(P+4)}``, Scott's rule). The ``a``-HPD region is the set of points
  whose density is at least the ``j``-th smallest, ``j = ⌊(1 − a)(L + 1)⌋``: a sample version of
  ``{z : p(z | y) ≥ τ_a}`` (Hyndman 1996, "Computing and graphing highest density regions"), built
  symmetrically in the truth and the draws (as full conformal prediction does), so exchangeable
  draws put the truth inside with probability exactly ``(L + 1 − j)/(L + 1)``. Density ties are
  broken at random.

Intervals on the coverage (``confidence``, default 0.99): Wilson's score interval for a binomial
proportion, with the number of trials replaced by an effective count ``n_eff = p̂(1 − p̂)/Var̂(p̂)``
(Kish's design effect) because the indicators are not independent Bernoulli draws: the pixels of
one trial share a measurement, the replicates of one truth share the truth. ``p̂`` is the mean over
trials of the per-trial covered fraction ``c_t`` (per pixel) or indicator (joint). Two estimands:

* ``estimand="prior"`` (the calibration question): the truths are a sample from the prior and
  ``p̂`` estimates the coverage averaged over the prior, which exact posterior draws attain
  exactly. ``Var̂(p̂)`` is the cluster-robust (Liang–Zeger) variance with one cluster per truth,
  ``G/(G − 1) · Σ_g (Σ_{t ∈ g} (c_t − p̂))² / T²``, so the spread between truths counts as sampling
  noise; without ``groups`` every trial is its own cluster (``s²/T``), and the joint indicators,
  independent then, use ``n = T``.
* ``estimand="truths"`` (Thong et al.'s frequentist coverage): ``p̂`` estimates the coverage
  averaged over the given truths only; ``Var̂(p̂)`` is the pooled within-truth variance over ``T``.
  Exact posteriors need not attain the level here: a Bayesian interval covers with probability
  ``a`` on average over the prior, not at every truth (a truth in the prior's tail is covered less
  often), which is what this estimand measures.

``pvalue`` is the score test of ``coverage = a'`` with the same ``n``: ``a'`` lies outside the
Wilson interval exactly when ``pvalue < 1 − confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from uqcampaign.kernels.errors import require
from uqcampaign.pipeline.calibration.ranks import as_trials, random_directions, truth_ranks

__all__ = ["CoverageLevel", "CoverageResult", "interval_index", "hpd_ranks", "wilson_interval", "score_pvalue", "replicated_coverage"]

_MEMORY_FLOATS = 2**24  # pairwise kernel entries computed at once by hpd_ranks


@dataclass(frozen=True)
class CoverageLevel:
    """Coverage at one credibility level ``level``.

    ``pixel``: fraction of pixel intervals holding the truth (mean over trials), ``pixel_level`` the
    level those intervals attain with ``L`` draws, ``pixel_interval (lo, hi)`` its Wilson interval,
    ``pixel_n`` the effective number of trials, ``pixel_pvalue`` the score test of ``pixel_level``;
    ``joint*`` the same for the joint HPD regions.
    """

    level: float
    pixel: float
    pixel_level: float
    pixel_interval: tuple[float, float]
    pixel_n: float
    pixel_pvalue: float
    joint: float
    joint_level: float
    joint_interval: tuple[float, float]
    joint_n: float
    joint_pvalue: float


@dataclass(frozen=True)
class CoverageResult:
    """Replicated coverage: one :class:`CoverageLevel` per level, and the design.

    ``n_trials = T``, ``n_groups`` distinct truths (``T`` when no groups were given), ``estimand``, ``n_draws = L``,
    ``projections = P``, ``confidence`` of the intervals; ``pixel_covered (T, levels)`` and
    ``joint_covered (T, levels)`` the per-trial covered fraction and indicator.
    """

    levels: tuple[CoverageLevel, ...]
    n_trials: int
    n_groups: int
    estimand: str
    n_draws: int
    projections: int
    confidence: float
    pixel_covered: np.ndarray
    joint_covered: np.ndarray

    def at(self, level: float) -> CoverageLevel:
        """The :class:`CoverageLevel` of ``level``."""
        for entry in self.levels:
            if abs(entry.level - level) < 1e-12:
                return entry
        raise KeyError(level)


def interval_index(n_draws: int, level: float) -> int:
    """``j = ⌊(L + 1)(1 − a)/2⌋``: the per-pixel interval is ``[x_(j), x_(L+1−j)]``; UQError when ``j < 1``."""
    require(0 < level < 1, f"credibility level = {level!r} must be in (0, 1)")
    j = int(np.floor((n_draws + 1) * (1 - level) / 2 + 1e-9))
    need = int(np.ceil(2 / (1 - level) - 1 - 1e-9))
    require(j >= 1, f"{n_draws} draws per trial cannot make a {level:g} credible interval from order statistics; use at least {need}")
    return j


def hpd_ranks(samples: np.ndarray, truths: np.ndarray, directions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of the truth's leave-one-out density among the draws' ones, per trial: ``(T,)`` in ``[0, L]``.

    ``samples (T, L, d)``, ``truths (T, d)``, ``directions (P, d)``. See the module docstring.
    """
    n_trials, n_draws, _ = samples.shape
    n_points, dim = n_draws + 1, directions.shape[0]
    bandwidth = n_points ** (-1.0 / (dim + 4))
    ranks = np.empty(n_trials, dtype=np.int64)
    block = max(1, _MEMORY_FLOATS // (n_points * n_points))
    for start in range(0, n_trials, block):
        stop = min(n_trials, start + block)
        z = np.concatenate([samples[start:stop], truths[start:stop, None, :]], axis=1) @ directions.T  # (b, L + 1, P)
        z = z - z.mean(axis=1, keepdims=True)
        cov = np.einsum("bip,biq->bpq", z, z) / (n_points - 1)
        ridge = 1e-12 * np.trace(cov, axis1=1, axis2=2) / dim  # keeps identical draws (a point estimate) factorable
        ridge[ridge == 0] = 1.0
        cov = cov + ridge[:, None, None] * np.eye(dim)
        w = np.linalg.solve(np.linalg.cholesky(cov), z.transpose(0, 2, 1)).transpose(0, 2, 1)  # whitened (b, L + 1, P)
        sq = (w * w).sum(-1)
        dist2 = sq[:, :, None] + sq[:, None, :] - 2 * np.einsum("bip,bjp->bij", w, w)
        kernel = np.exp(-0.5 * np.maximum(dist2, 0.0) / bandwidth**2)
        kernel[:, np.arange(n_points), np.arange(n_points)] = 0.0
        density = kernel.sum(-1)  # (b, L + 1); the truth is the last point
        ranks[start:stop] = truth_ranks(density[:, :-1, None], density[:, -1:], rng)[:, 0]
    return ranks


def wilson_interval(p: float, n: float, confidence: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` observed over ``n`` (possibly effective) trials."""
    if n <= 0:
        return 0.0, 1.0
    z = stats.norm.ppf(0.5 + confidence / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def score_pvalue(p: float, n: float, target: float) -> float:
    """Two-sided score test of "proportion = ``target``" from ``p`` over ``n`` trials (the test Wilson's interval inverts)."""
    if n <= 0:
        return 1.0
    z = (p - target) / np.sqrt(target * (1 - target) / n)
    return float(2 * stats.norm.sf(abs(z)))


def _effective_trials(covered: np.ndarray, groups: np.ndarray | None, estimand: str, binary: bool, cap: int) -> float:
    """Effective number of Bernoulli trials behind ``mean(covered)``, ``covered (T,)``, at most ``cap`` (see the module docstring)."""
    n = covered.shape[0]
    p = covered.mean()
    if groups is None and binary:
        return float(n)
    if groups is None:
        var = covered.var(ddof=1) / n
    else:
        labels, index = np.unique(groups, return_inverse=True)
        n_groups = labels.shape[0]
        if estimand == "prior":
            totals = np.bincount(index, weights=covered - p)
            var = n_groups / max(n_groups - 1, 1) * (totals**2).sum() / n**2
        else:
            means = np.bincount(index, weights=covered) / np.bincount(index)
            dof = n - n_groups
            var = (((covered - means[index]) ** 2).sum() / dof if dof > 0 else covered.var(ddof=1)) / n
    if var <= 0:  # every trial covered the same fraction: no spread to scale by
        return float(n)
    return float(min(p * (1 - p) / var, cap))


def replicated_coverage(
    samples: Any,
    truths: Any,
    levels: tuple[float, ...] = (0.5, 0.9),
    groups: Any = None,
    estimand: str = "prior",
    projections: int = 3,
    confidence: float = 0.99,
    seed: int = 0,
) -> CoverageResult:
    """Coverage of per-pixel intervals and joint HPD regions of ``samples (T, L, ...)`` at ``levels``.

    ``truths (T, ...)``: the truth of each trial (repeated for the replicates of one truth).
    ``groups (T,)``: which truth each trial measures (any labels), or ``None`` when every trial
    has its own truth drawn from the prior. ``estimand``: ``"prior"`` or ``"truths"`` (module
    docstring). ``projections``: ``P`` for the joint regions (the first
    ``P`` of :func:`random_directions` with ``seed``). ``confidence``: of the Wilson intervals.
    """
    s, x = as_trials(samples, truths)
    n_trials, n_draws, d = s.shape
    require(isinstance(projections, int) and projections >= 1, f"projections = {projections!r} must be an integer >= 1")
    require(0 < confidence < 1, f"confidence = {confidence!r} must be in (0, 1)")
    require(len(levels) >= 1, "give at least one credibility level")
    require(estimand in ("prior", "truths"), f"coverage estimand = {estimand!r} must be 'prior' or 'truths'")
    group_labels = None
    if groups is not None:
        group_labels = np.asarray(groups)
        require(group_labels.shape == (n_trials,), f"groups must give one label per trial ({n_trials}), got shape {group_labels.shape}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    pixel_ranks = truth_ranks(s, x, rng)  # (T, d)
    density_ranks = hpd_ranks(s, x, random_directions(d, projections, seed), rng)  # (T,)
    entries, pixel_cols, joint_cols = [], [], []
    for level in levels:
        j = interval_index(n_draws, level)
        pixel_level = (n_draws + 1 - 2 * j) / (n_draws + 1)
        covered = ((pixel_ranks >= j) & (pixel_ranks <= n_draws - j)).mean(axis=1)  # (T,)
        k = int(np.floor((1 - level) * (n_draws + 1) + 1e-9))
        joint_level = (n_draws + 1 - k) / (n_draws + 1)
        inside = (density_ranks >= k).astype(np.float64)
        p_pix, p_joint = float(covered.mean()), float(inside.mean())
        n_pix = _effective_trials(covered, group_labels, estimand, binary=False, cap=n_trials * d)
        n_joint = _effective_trials(inside, group_labels, estimand, binary=True, cap=n_trials)
        entries.append(
            CoverageLevel(
                float(level),
                p_pix, pixel_level, wilson_interval(p_pix, n_pix, confidence), n_pix, score_pvalue(p_pix, n_pix, pixel_level),
                p_joint, joint_level, wilson_interval(p_joint, n_joint, confidence), n_joint, score_pvalue(p_joint, n_joint, joint_level),
            )
        )
        pixel_cols.append(covered)
        joint_cols.append(inside)
    n_groups = n_trials if group_labels is None else int(np.unique(group_labels).shape[0])
    return CoverageResult(
        tuple(entries), n_trials, n_groups, estimand, n_draws, projections, float(confidence), np.stack(pixel_cols, 1), np.stack(joint_cols, 1)
    )
