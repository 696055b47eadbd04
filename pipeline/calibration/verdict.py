"""One word from the three calibration tools: ``calibrated``, ``miscalibrated`` or ``inconclusive``.

Rules (thresholds are the module constants):

* **miscalibrated** when any tool rejects at ``ALPHA = 0.01``: the SBC p-value (Bonferroni over
  pixels and projections), the TARP p-value (exact KS test of ECP = α), or the coverage p-value
  (Bonferroni over the score tests of every level, per-pixel and joint). A rejection is evidence
  at any number of trials. Each tool has a false-alarm rate of about 1% on a calibrated sampler
  (exact for TARP; up to the χ² and normal approximations for SBC and coverage. Measured over 300
  synthetic calibrated experiments of 200 trials: SBC 1.7%, TARP 0.7%, the coverage score tests at
  0.9 2.0% per pixel and 1.0% joint), so the verdict's is about 3% at most (union bound).
* **calibrated** when no tool rejects *and* the experiment could have seen a miscalibration:
  every tool given had at least ``MIN_TRIALS = 100`` trials (the order sbi and Talts et al.
  recommend for SBC), and the per-pixel coverage interval at the highest level is at most
  ``MAX_HALF_WIDTH = 0.05`` on each side (a 90% interval covering 0.85 would have been seen).
* **inconclusive** otherwise (too few trials, too wide an interval, or no tool given).
"""

from __future__ import annotations

from typing import Any

from uqcampaign.pipeline.calibration.coverage import CoverageResult
from uqcampaign.pipeline.calibration.sbc import SBCResult, bonferroni
from uqcampaign.pipeline.calibration.tarp import TARPResult

__all__ = ["ALPHA", "MIN_TRIALS", "MAX_HALF_WIDTH", "VERDICTS", "coverage_pvalue", "calibration_verdict", "calibration_summary"]

ALPHA = 0.01
MIN_TRIALS = 100
MAX_HALF_WIDTH = 0.05
VERDICTS = ("calibrated", "miscalibrated", "inconclusive")


def coverage_pvalue(coverage: CoverageResult) -> float:
    """Bonferroni p-value over the per-pixel and joint score tests of every level."""
    return bonferroni([p for entry in coverage.levels for p in (entry.pixel_pvalue, entry.joint_pvalue)])


def calibration_verdict(
    sbc: SBCResult | None = None, tarp: TARPResult | None = None, coverage: CoverageResult | None = None
) -> tuple[str, list[str]]:
    """``(verdict, reasons)``: the verdict of the module docstring and one line per finding behind it."""
    rejected: list[str] = []
    weak: list[str] = []
    if sbc is not None:
        if sbc.pvalue < ALPHA:
            worst = int(sbc.pvalues.argmin())
            rejected.append(f"SBC ranks not uniform: p = {sbc.pvalue:.2g} < {ALPHA} (worst: {sbc.labels[worst]}, p = {sbc.pvalues[worst]:.2g})")
        if sbc.n_trials < MIN_TRIALS:
            weak.append(f"SBC has {sbc.n_trials} trials < {MIN_TRIALS}")
    if tarp is not None:
        if tarp.pvalue < ALPHA:
            rejected.append(f"TARP coverage off the diagonal: p = {tarp.pvalue:.2g} < {ALPHA} (largest gap {tarp.max_deviation:.3f})")
        if tarp.n_trials < MIN_TRIALS:
            weak.append(f"TARP has {tarp.n_trials} trials < {MIN_TRIALS}")
    if coverage is not None:
        p = coverage_pvalue(coverage)
        if p < ALPHA:
            off = [
                f"{kind} {entry.level:g}: {value:.3f} (expected {target:.3f}, {100 * coverage.confidence:g}% interval [{lo:.3f}, {hi:.3f}])"
                for entry in coverage.levels
                for kind, value, target, (lo, hi), pv in (
                    ("pixel", entry.pixel, entry.pixel_level, entry.pixel_interval, entry.pixel_pvalue),
                    ("joint", entry.joint, entry.joint_level, entry.joint_interval, entry.joint_pvalue),
                )
                if pv * 2 * len(coverage.levels) < ALPHA
            ]
            rejected.append(f"coverage off its level: p = {p:.2g} < {ALPHA} ({'; '.join(off)})")
        if coverage.n_trials < MIN_TRIALS:
            weak.append(f"coverage has {coverage.n_trials} trials < {MIN_TRIALS}")
        top = max(coverage.levels, key=lambda entry: entry.level)
        lo, hi = top.pixel_interval
        if max(top.pixel - lo, hi - top.pixel) > MAX_HALF_WIDTH:
            weak.append(f"pixel coverage at {top.level:g} is known only to [{lo:.3f}, {hi:.3f}], wider than ±{MAX_HALF_WIDTH}")
    if rejected:
        return "miscalibrated", rejected
    if sbc is None and tarp is None and coverage is None:
        return "inconclusive", ["no calibration tool was run"]
    if weak:
        return "inconclusive", weak
    return "calibrated", ["no tool rejects at p < 0.01 and every one had enough trials"]


def calibration_summary(
    sbc: SBCResult | None = None, tarp: TARPResult | None = None, coverage: CoverageResult | None = None
) -> dict[str, Any]:
    """The JSON-able result of a calibration (plain floats, lists and strings).

    Keys: ``sbc_pvalue``, ``tarp_pvalue``, ``tarp_alpha``, ``tarp_ecp``, ``tarp_band`` (``[lower, upper]``),
    ``coverage`` (``{"0.5": per-pixel coverage, …}``), ``coverage_level`` (the level each attains with
    ``L`` draws), ``coverage_interval``, ``joint_coverage``, ``joint_coverage_interval``,
    ``coverage_pvalue``, ``trials`` (per tool), ``draws`` (per tool), ``verdict``, ``reasons``; a tool
    not run gives ``None`` values.
    """
    verdict, reasons = calibration_verdict(sbc, tarp, coverage)

    def by_level(get: Any) -> dict[str, Any] | None:
        return None if coverage is None else {f"{entry.level:g}": get(entry) for entry in coverage.levels}

    return {
        "sbc_pvalue": None if sbc is None else float(sbc.pvalue),
        "tarp_pvalue": None if tarp is None else float(tarp.pvalue),
        "tarp_alpha": None if tarp is None else [float(a) for a in tarp.alpha],
        "tarp_ecp": None if tarp is None else [float(e) for e in tarp.ecp],
        "tarp_band": None if tarp is None else [[float(v) for v in tarp.lower], [float(v) for v in tarp.upper]],
        "coverage": by_level(lambda e: float(e.pixel)),
        "coverage_level": by_level(lambda e: float(e.pixel_level)),
        "coverage_interval": by_level(lambda e: [float(v) for v in e.pixel_interval]),
        "joint_coverage": by_level(lambda e: float(e.joint)),
        "joint_coverage_interval": by_level(lambda e: [float(v) for v in e.joint_interval]),
        "coverage_pvalue": None if coverage is None else float(coverage_pvalue(coverage)),
        "trials": {name: (None if r is None else int(r.n_trials)) for name, r in (("sbc", sbc), ("tarp", tarp), ("coverage", coverage))},
        "draws": {name: (None if r is None else int(r.n_draws)) for name, r in (("sbc", sbc), ("tarp", tarp), ("coverage", coverage))},
        "verdict": verdict,
        "reasons": reasons,
    }
