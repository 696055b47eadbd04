"""The verdict of ``uqc report``: one word per measurement and for the campaign, with its reasons.

Words, in order of precedence (a row takes the first that applies and lists every reason):

1. ``not converged`` — Markov-chain samplers (``ula``, ``skrock``) only: fewer than
   :data:`PIXEL_FRACTION` of the pixels have **all three** of Vehtari et al. (2021)'s conditions
   (Bayesian Analysis 16(2), "Rank-normalization, folding, and localization", Section 4):
   R̂ < :data:`RHAT_MAX` = 1.01, bulk ESS and tail ESS ≥ :data:`ESS_PER_GROUP` = 100 per chain
   group. **Chain groups**: the chains of a measurement form ``G = min(4, chains)`` groups of
   consecutive chains (Vehtari et al. run four chains and ask 100 effective draws of each); the
   ESS threshold is ``100 G`` (400 from four chains on) and the R̂ is ``rhat_group``, the
   rank-normalised split R̂ computed with each group as one chain, early halves against late
   halves (:mod:`~uqcampaign.pipeline.diagnostics`; a store reduced before it existed falls back to the
   per-chain ``rhat``). Why groups: many short chains started at dispersed points (a campaign's
   shape) have a per-chain R̂ above 1.01 until each chain alone holds ~100 effective draws
   (R̂² − 1 ≈ chains/ESS when they are stationary), which says nothing about the pooled draws;
   the group R̂ tends to 1 as the pooled ESS grows and still sees a trend shared by the chains
   (an unfinished burn-in) and chains that disagree.
   Samplers whose draws are independent runs (every other kind) cannot fail to converge in this
   sense: their between-chain R̂ is sampling noise (≈ 1 + G/ESS) and is not used.
2. ``too few draws`` — fewer than :data:`PIXEL_FRACTION` of the pixels have an MCSE of the
   posterior mean below :data:`MCSE_FRACTION` = 0.1 of the posterior std (the mean known to a
   tenth of its uncertainty: an ESS of the mean of about 100), or fewer than 4 draws in every
   chain (no summary).
3. ``data misfit`` — the measurement's mean χ² = ||y − A x||²/(σ² m) over its draws lies outside the
   central :data:`CHI2_LEVEL` = 99% band of its reference law χ²_k/m (``k`` = entries of ``y`` that
   carry noise, ``m`` = dim y; :func:`~uqcampaign.kernels.plausibility.fidelity_quantiles`): under the
   model a draw of the exact posterior has that law, and the mean over draws varies less than one
   draw (law of total variance). Above: the draws do not explain the data (hallucination, wrong
   operator or σ); below: they fit its noise.
4. ``miscalibrated`` — the campaign's sampler has a calibration on record (``uqc calibrate`` of
   the same operator, noise, prior and sampler) whose verdict is ``miscalibrated``; its measured
   coverage is the reason.
5. ``ok`` — none of these.

:data:`PIXEL_FRACTION` = 0.95: R̂ and ESS are estimates with their own noise (an ESS of a few
hundred is known to 10–20%) and an image has thousands of them, so "every pixel" would fail
exact i.i.d. draws; a measurement passes when at most 5% of its pixels fail, and the reason names
the fraction that fails and the worst values, so a local problem stays visible.

Other flags join through ``extra`` (a list of ``(word, reason)``, e.g. a campaign stopped
unconverged by its ``until:`` rounds): their word competes by the same precedence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "WORDS",
    "RHAT_MAX",
    "ESS_PER_GROUP",
    "PIXEL_FRACTION",
    "MCSE_FRACTION",
    "CHI2_LEVEL",
    "Verdict",
    "MeasurementFacts",
    "chain_groups",
    "ess_threshold",
    "convergence_reasons",
    "precision_reasons",
    "fidelity_reasons",
    "calibration_reasons",
    "measurement_verdict",
    "campaign_verdict",
]

WORDS = ("not converged", "too few draws", "data misfit", "miscalibrated", "ok")
RHAT_MAX = 1.01
ESS_PER_GROUP = 100
PIXEL_FRACTION = 0.95
MCSE_FRACTION = 0.1
CHI2_LEVEL = 0.99


@dataclass(frozen=True)
class Verdict:
    """``word`` (one of :data:`WORDS`) and every ``reason`` found, most important first."""

    word: str
    reasons: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """``word: reason; reason`` (``ok`` alone when there is none)."""
        return self.word if not self.reasons else f"{self.word}: {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class MeasurementFacts:
    """What the verdict of one measurement is made of (pixel arrays flattened, ``(pixels,)``).

    ``rhat`` is the group R̂ (or the per-chain R̂ of an older summary: ``rhat_kind`` says which);
    ``chains`` the measurement's chains; ``markov`` whether its draws are Markov-chain states;
    ``used`` the draws per chain summarised; ``chi2_mean`` the mean χ² of its draws, ``dim_y`` and
    ``dof`` for its reference law; ``calibration`` the result of a matching ``uqc calibrate``
    (None when none is on record); ``extra`` more ``(word, reason)`` from other flags.
    """

    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    mcse_mean: np.ndarray
    std: np.ndarray
    chains: int
    markov: bool
    used: int
    chi2_mean: float
    dim_y: int
    dof: int
    calibration: dict[str, Any] | None = None
    rhat_kind: str = "group"
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def chain_groups(chains: int) -> int:
    """``G = min(4, chains)``: the chain groups of the convergence check."""
    return max(1, min(4, int(chains)))


def ess_threshold(chains: int) -> float:
    """Bulk and tail ESS a pixel needs: :data:`ESS_PER_GROUP` per chain group."""
    return float(ESS_PER_GROUP * chain_groups(chains))


def _share(mask: np.ndarray, valid: np.ndarray) -> float:
    n = int(valid.sum())
    return float(mask[valid].sum()) / n if n else 0.0


def convergence_reasons(facts: MeasurementFacts) -> list[str]:
    """Why a Markov-chain measurement is not converged (empty when it is, or for independent draws)."""
    if not facts.markov:
        return []
    valid = np.isfinite(facts.ess_bulk)  # constant pixels (NaN R̂, ESS = chains × draws) count as converged
    rhat_bad = ~(np.nan_to_num(facts.rhat, nan=1.0) < RHAT_MAX)
    need = ess_threshold(facts.chains)
    bulk_bad, tail_bad = ~(facts.ess_bulk >= need), ~(facts.ess_tail >= need)
    failing = _share(rhat_bad | bulk_bad | tail_bad, valid)
    if failing <= 1.0 - PIXEL_FRACTION:
        return []
    parts = []
    name = "R̂ over chain groups" if facts.rhat_kind == "group" else "R̂"
    if _share(rhat_bad, valid):
        parts.append(f"{name} ≥ {RHAT_MAX} on {_share(rhat_bad, valid):.0%} of pixels (max {np.nanmax(facts.rhat[valid]):.3f})")
    for label, bad, values in (("bulk", bulk_bad, facts.ess_bulk), ("tail", tail_bad, facts.ess_tail)):
        if _share(bad, valid):
            parts.append(f"{label} ESS < {need:.0f} on {_share(bad, valid):.0%} (min {np.nanmin(values[valid]):.0f})")
    groups = chain_groups(facts.chains)
    return [
        f"{failing:.0%} of pixels fail R̂ < {RHAT_MAX} and ESS ≥ {ESS_PER_GROUP} per chain group ({groups} groups of {facts.chains // groups} chains): "
        + ", ".join(parts)
    ]


def precision_reasons(facts: MeasurementFacts) -> list[str]:
    """Why the posterior mean is not known precisely enough (empty when it is)."""
    from uqcampaign.pipeline.diagnostics import MIN_DRAWS

    if facts.used < MIN_DRAWS:
        return [f"{facts.used} draws complete in every chain (< {MIN_DRAWS}): no summary"]
    valid = np.isfinite(facts.mcse_mean) & (facts.std > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = facts.mcse_mean / facts.std
    bad = ~(ratio < MCSE_FRACTION)
    share = _share(bad, valid)
    if share <= 1.0 - PIXEL_FRACTION:
        return []
    return [f"MCSE of the mean ≥ {MCSE_FRACTION} × posterior std on {share:.0%} of pixels (worst {np.nanmax(ratio[valid]):.2f}; median ESS {np.nanmedian(facts.ess_bulk):.0f})"]


def fidelity_band(dim_y: int, dof: int) -> tuple[float, float]:
    """The central :data:`CHI2_LEVEL` band of χ²_k/m."""
    from uqcampaign.kernels.plausibility import fidelity_quantiles

    lo, hi = fidelity_quantiles(dim_y, ((1 - CHI2_LEVEL) / 2, (1 + CHI2_LEVEL) / 2), dof)
    return float(lo), float(hi)


def fidelity_reasons(facts: MeasurementFacts) -> list[str]:
    """Why the draws misfit the data (empty when the mean χ² is inside its band)."""
    if not math.isfinite(facts.chi2_mean):  # no draw summarised: said by precision_reasons
        return []
    lo, hi = fidelity_band(facts.dim_y, facts.dof)
    if lo <= facts.chi2_mean <= hi:
        return []
    side = "the draws do not explain the data" if facts.chi2_mean > hi else "the draws fit the noise"
    return [f"mean χ² {facts.chi2_mean:.3f} outside [{lo:.3f}, {hi:.3f}] (99% of χ²_{facts.dof}/{facts.dim_y}): {side}"]


def calibration_reasons(calibration: dict[str, Any] | None) -> list[str]:
    """The measured coverage of a calibration on record whose verdict is ``miscalibrated``."""
    if not calibration or calibration.get("verdict") != "miscalibrated":
        return []
    cov, interval = calibration.get("coverage") or {}, calibration.get("coverage_interval") or {}
    parts = [f"{level} interval covers {value:.3f} [{interval.get(level, [math.nan] * 2)[0]:.3f}, {interval.get(level, [math.nan] * 2)[1]:.3f}]" for level, value in cov.items()]
    return [f"uqc calibrate ({(calibration.get('trials') or {}).get('sbc')} trials): {', '.join(parts)}; SBC p = {calibration.get('sbc_pvalue', math.nan):.2g}"]


def _combine(found: list[tuple[str, list[str]]], extra: tuple[tuple[str, str], ...] = ()) -> Verdict:
    by_word: dict[str, list[str]] = {}
    for word, reasons in found:
        if reasons:
            by_word.setdefault(word, []).extend(reasons)
    for word, reason in extra:
        if word not in WORDS:
            raise ValueError(f"verdict word {word!r} is not one of {WORDS}")
        if word != "ok":
            by_word.setdefault(word, []).append(reason)
    if not by_word:
        return Verdict("ok")
    word = min(by_word, key=WORDS.index)
    reasons = [reason for w in WORDS if w in by_word for reason in by_word[w]]
    return Verdict(word, tuple(reasons))


def measurement_verdict(facts: MeasurementFacts) -> Verdict:
    """The verdict of one measurement (module docstring)."""
    return _combine(
        [
            ("not converged", convergence_reasons(facts)),
            ("too few draws", precision_reasons(facts)),
            ("data misfit", fidelity_reasons(facts)),
            ("miscalibrated", calibration_reasons(facts.calibration)),
        ],
        facts.extra,
    )


def campaign_verdict(verdicts: list[Verdict], calibration: dict[str, Any] | None = None) -> Verdict:
    """The campaign's word: the first word of :data:`WORDS` any measurement has; reasons count the measurements per word."""
    if not verdicts:
        return Verdict("too few draws", ("no measurement summarised",))
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict.word] = counts.get(verdict.word, 0) + 1
    found = [(word, [f"{counts[word]} of {len(verdicts)} measurements {word}"]) for word in WORDS[:-1] if word in counts]
    verdict = _combine(found)
    if verdict.word == "miscalibrated" or (calibration and calibration.get("verdict") == "miscalibrated"):
        extra = calibration_reasons(calibration)
        if extra and not any(r.startswith("uqc calibrate") for r in verdict.reasons):
            verdict = Verdict(verdict.word, verdict.reasons + tuple(extra))
    return verdict
