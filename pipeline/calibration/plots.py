"""Figures of the three calibration tools (PNG through ``Figure.savefig``).

Built with ``matplotlib.figure.Figure`` on the Agg canvas, as :mod:`uqcampaign.pipeline.maps`:
no ``pyplot`` state, nothing left open.

* :func:`sbc_figure`: rank histograms of every projection and of the pixels with the smallest
  p-values, each with the pointwise binomial 99% band of a bin count under uniformity
  (``Binomial(T, n_b/(L + 1))`` quantiles 0.005 and 0.995, Talts et al. 2018, Fig. 1);
* :func:`tarp_figure`: ECP against α with the simultaneous bootstrap band and the diagonal;
* :func:`coverage_figure`: coverage against the level attained, per pixel and joint, with the
  Wilson intervals, and the diagonal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from uqcampaign.pipeline.calibration.coverage import CoverageResult
from uqcampaign.pipeline.calibration.sbc import SBCResult
from uqcampaign.pipeline.calibration.tarp import TARPResult

__all__ = ["sbc_figure", "tarp_figure", "coverage_figure", "BAND_LEVEL"]

BAND_LEVEL = 0.99
"""Level of the binomial band drawn on each rank histogram."""


def sbc_figure(result: SBCResult, pixels: int = 4, title: str = "") -> Figure:
    """Rank histograms: every projection, then the ``pixels`` pixels with the smallest p-values."""
    n_proj = len(result.labels) - result.n_pixels
    worst = list(np.argsort(result.pvalues[: result.n_pixels])[:pixels])
    columns = list(range(result.n_pixels, len(result.labels))) + [int(i) for i in worst]
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.4 * nrows + 0.6), dpi=110, layout="constrained")
    q = result.expected / result.n_trials
    lower = stats.binom.ppf((1 - BAND_LEVEL) / 2, result.n_trials, q)
    upper = stats.binom.ppf((1 + BAND_LEVEL) / 2, result.n_trials, q)
    edges = np.arange(result.bins + 1)
    for k, column in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.fill_between(edges, np.append(lower, lower[-1]), np.append(upper, upper[-1]), step="post", color="#c6dbef", label=f"{BAND_LEVEL:.0%} band")
        ax.stairs(result.expected, edges, color="#08519c", linewidth=1.0, linestyle="--")
        ax.stairs(result.counts[:, column], edges, color="#d94801", linewidth=1.6, label="ranks")
        ax.set_title(f"{result.labels[column]}\np = {result.pvalues[column]:.2g}", fontsize=8)
        ax.set_xticks([0, result.bins])
        ax.set_xticklabels(["0", str(result.n_draws)])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("rank of the truth", fontsize=7)
    head = f"SBC: {result.n_trials} trials, L = {result.n_draws} draws, {result.bins} bins, {n_proj} projections; Bonferroni p = {result.pvalue:.2g}"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    return fig


def _square_axes(xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    """A figure with one ``[0, 1]²`` axes, its dashed diagonal ("calibrated") and the labels."""
    fig = Figure(figsize=(4.2, 4.0), dpi=110, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def _finish(ax: Any, title: str, head: str) -> None:
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=8)


def tarp_figure(result: TARPResult, title: str = "") -> Figure:
    """ECP(α) with its simultaneous bootstrap band, and the diagonal."""
    fig, ax = _square_axes("credibility level α", "expected coverage")
    ax.fill_between(result.alpha, result.lower, result.upper, color="#c6dbef", label=f"{result.confidence:.0%} bootstrap band")
    ax.plot(result.alpha, result.ecp, color="#d94801", linewidth=1.6, label="ECP")
    _finish(ax, title, f"TARP: {result.n_trials} trials, L = {result.n_draws}; KS p = {result.pvalue:.2g}, max |ECP − α| = {result.max_deviation:.3f}")
    return fig


def coverage_figure(result: CoverageResult, title: str = "") -> Figure:
    """Per-pixel and joint coverage against the attained level, with Wilson intervals."""
    fig, ax = _square_axes("credibility level", "coverage")
    for kind, colour, offset in (("pixel", "#d94801", -0.006), ("joint", "#2171b5", 0.006)):
        level = np.array([getattr(e, f"{kind}_level") for e in result.levels])
        value = np.array([getattr(e, kind) for e in result.levels])
        interval = np.array([getattr(e, f"{kind}_interval") for e in result.levels])
        err = np.abs(interval.T - value)
        ax.errorbar(level + offset, value, yerr=err, fmt="o", color=colour, capsize=3, markersize=4, label=f"{kind} ({result.confidence:.0%} interval)")
    design = f"{result.n_trials} trials of {result.n_groups} truths" if result.n_groups < result.n_trials else f"{result.n_trials} trials"
    _finish(ax, title, f"Replicated coverage: {design}, L = {result.n_draws}, {result.projections} projections")
    return fig
