"""TARP expected coverage probability (Lemos, Coogan, Hezaveh & Perreault-Levasseur 2023, ICML, arXiv:2302.03026).

For trial ``t`` with truth ``x_t``, draws ``x_{t,l}`` and a random reference point ``r_t``, the
credibility of the truth is the fraction of draws closer to the reference than the truth
(Algorithm 2 of the paper)::

    f_t = (1/L) #{l : ||x_{t,l} − r_t|| < ||x_t − r_t||}

The expected coverage probability ``ECP(α) = (1/T) #{t : f_t < α}`` on the grid ``α_j = j/B``
equals ``α`` for every α when the posterior is right (their Theorem 3), so the curve lies on the
diagonal. ``B`` defaults to ``T // 10`` bins (the ``tarp`` package's default).

This is the ``tarp`` package's :func:`tarp.get_tarp_coverage` (Euclidean metric, no bootstrap)
on the same samples and references; the tests check equality with ``tarp`` 0.1.1, which bins
``f`` over ``[min f, max f]`` instead of ``[0, 1]`` (fixed upstream later): the two agree when
some ``f`` are 0 and some are 1. Two choices differ from the package, both for exactness:

* default references ``r_t ~ U(box)``, the box spanned by all draws and truths of all trials
  (``tarp`` draws from the unit cube, ``sbi`` from the box of the truths): a symmetric function
  of each trial's truth and draws, so they stay exchangeable; ``norm="pooled"`` likewise rescales
  every coordinate by that box (``norm="truths"`` is ``tarp``'s ``norm=True``, the truths' box);
* the test. ``L f_t`` is the rank of the truth's distance among the draws' distances, uniform on
  ``{0 … L}`` under calibration; randomised to ``u_t = (L f_t + U_t)/(L + 1)``, ``U_t ~ U(0, 1)``,
  it is exactly ``U(0, 1)``, so the Kolmogorov–Smirnov test of the ``u_t`` is exact, and it is
  the test of "ECP(α) = α for all α" (the KS statistic is the largest gap between the empirical
  CDF of the ``u_t`` and the diagonal).

Bootstrap band (what the figure draws): the trials are resampled with replacement ``n_boot`` times
(their ``f_t`` kept); ``ŝ_j`` is the bootstrap std of ``ECP(α_j)`` and ``c`` the ``confidence``
quantile of ``max_j |ECP*(α_j) − ECP(α_j)| / ŝ_j`` over the resamples: ``ECP(α_j) ± c ŝ_j`` is a
simultaneous band (studentised sup-norm bootstrap band; the endpoints, where ``ŝ = 0``, excluded).
``in_band`` says whether the diagonal lies inside it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from uqcampaign.kernels.errors import require
from uqcampaign.pipeline.calibration.ranks import as_trials

__all__ = ["TARPResult", "tarp_references", "tarp_credibility", "tarp_ecp", "tarp_band", "tarp"]

_NORMS = ("pooled", "truths", None)


@dataclass(frozen=True)
class TARPResult:
    """One TARP run.

    ``alpha (B + 1,)`` credibility grid ``0, 1/B, …, 1``; ``ecp (B + 1,)`` the expected coverage;
    ``lower, upper (B + 1,)`` the simultaneous bootstrap band at ``confidence``; ``credibility (T,)``
    the ``f_t``; ``n_draws = L``; ``pvalue`` the exact KS p-value of "ECP = α"; ``max_deviation``
    ``max_j |ECP(α_j) − α_j|``; ``in_band`` whether the diagonal lies inside the band.
    """

    alpha: np.ndarray
    ecp: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    credibility: np.ndarray
    n_draws: int
    pvalue: float
    max_deviation: float
    in_band: bool
    confidence: float

    @property
    def n_trials(self) -> int:
        return int(self.credibility.shape[0])


def _box(samples: np.ndarray, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate ``(low (d,), high (d,))`` over every draw and truth of every trial."""
    return np.minimum(samples.min(axis=(0, 1)), truths.min(axis=0)), np.maximum(samples.max(axis=(0, 1)), truths.max(axis=0))


def tarp_references(samples: Any, truths: Any, seed: int = 0) -> np.ndarray:
    """One reference point per trial, ``(T, d)``, uniform in the box of all draws and truths (see the module docstring)."""
    s, x = as_trials(samples, truths)
    low, high = _box(s, x)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 14]))
    return low + (high - low) * rng.random(x.shape)


def tarp_credibility(samples: Any, truths: Any, references: Any, norm: str | None = "pooled") -> np.ndarray:
    """``f_t`` ``(T,)``: fraction of the draws of trial ``t`` closer (Euclidean) to ``r_t`` than the truth.

    ``references (T, ...)`` in the units of the samples. ``norm``: ``"pooled"`` rescales every
    coordinate of samples, truths and references to ``[0, 1]`` over the box of all draws and truths,
    ``"truths"`` over the box of the truths (``tarp``'s ``norm=True``, which leaves references as
    given: pass them already normalised to compare), ``None`` leaves them.
    """
    require(norm in _NORMS, f"tarp norm = {norm!r} must be one of 'pooled', 'truths' or None")
    s, x = as_trials(samples, truths)
    r = np.asarray(references, dtype=np.float64).reshape(x.shape[0], -1)
    require(r.shape == x.shape, f"references have shape {np.shape(references)} but the truths flatten to {x.shape}; give one reference per trial")
    if norm is not None:
        low, high = _box(s, x) if norm == "pooled" else (x.min(axis=0), x.max(axis=0))
        scale = high - low + 1e-10  # the tarp package's guard against a constant coordinate
        s, x = (s - low) / scale, (x - low) / scale
        if norm == "pooled":
            r = (r - low) / scale
    draw_dist = np.sqrt(((s - r[:, None, :]) ** 2).sum(-1))  # (T, L)
    truth_dist = np.sqrt(((x - r) ** 2).sum(-1))  # (T,)
    return (draw_dist < truth_dist[:, None]).sum(axis=1) / s.shape[1]


def tarp_ecp(credibility: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha (B + 1,), ecp (B + 1,))``: ``ecp[0] = 0`` and ``ecp[j]`` the fraction of ``f`` in the first ``j`` of ``B`` equal bins of ``[0, 1]``.

    The ``tarp`` package's histogram-and-cumsum, as exact counts.
    """
    require(isinstance(bins, int) and bins >= 1, f"TARP bins = {bins!r} must be an integer >= 1")
    counts, alpha = np.histogram(credibility, bins=bins, range=(0.0, 1.0))
    return alpha, np.concatenate([[0.0], np.cumsum(counts) / credibility.shape[0]])


def tarp_band(credibility: np.ndarray, bins: int, n_boot: int, confidence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous bootstrap band ``(lower, upper)``, each ``(B + 1,)``, around the ECP of ``credibility (T,)``."""
    require(isinstance(n_boot, int) and n_boot >= 10, f"TARP bootstrap resamples = {n_boot!r} must be an integer >= 10")
    require(0 < confidence < 1, f"TARP band confidence = {confidence!r} must be in (0, 1)")
    ecp = tarp_ecp(credibility, bins)[1]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15]))
    n = credibility.shape[0]
    boot = np.stack([tarp_ecp(credibility[rng.integers(0, n, n)], bins)[1] for _ in range(n_boot)])  # (n_boot, B + 1)
    spread = boot.std(axis=0)
    inner = spread > 0
    if not inner.any():
        return ecp.copy(), ecp.copy()
    sup = (np.abs(boot[:, inner] - ecp[inner]) / spread[inner]).max(axis=1)
    half = np.quantile(sup, confidence) * spread
    return np.clip(ecp - half, 0.0, 1.0), np.clip(ecp + half, 0.0, 1.0)


def tarp(
    samples: Any,
    truths: Any,
    references: Any = None,
    bins: int | None = None,
    norm: str | None = "pooled",
    n_boot: int = 500,
    confidence: float = 0.99,
    seed: int = 0,
) -> TARPResult:
    """TARP of ``samples (T, L, ...)`` against ``truths (T, ...)``.

    ``references``: ``(T, ...)`` reference points, or ``None`` for :func:`tarp_references` with
    ``seed``. ``bins``: ``B`` (default ``max(1, T // 10)``). ``norm``: see :func:`tarp_credibility`.
    ``n_boot``, ``confidence``: the bootstrap band. ``seed`` also draws the KS randomisation.
    """
    s, x = as_trials(samples, truths)
    n_trials, n_draws = s.shape[:2]
    bins = max(1, n_trials // 10) if bins is None else bins
    refs = tarp_references(s, x, seed) if references is None else references
    f = tarp_credibility(s, x, refs, norm)
    alpha, ecp = tarp_ecp(f, bins)
    lower, upper = tarp_band(f, bins, n_boot, confidence, seed)
    u = (np.rint(f * n_draws) + np.random.default_rng(np.random.SeedSequence([seed, 16])).random(n_trials)) / (n_draws + 1)
    pvalue = float(stats.kstest(u, "uniform").pvalue)
    in_band = bool(np.all((alpha >= lower - 1e-12) & (alpha <= upper + 1e-12)))
    return TARPResult(alpha, ecp, lower, upper, f, n_draws, pvalue, float(np.abs(ecp - alpha).max()), in_band, float(confidence))
