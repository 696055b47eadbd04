"""Per-measurement summary table of a reduced store (`uqc report STORE`), with a verdict.

Reads the ``summary/`` group that :func:`uqcampaign.pipeline.reduce.reduce_store`
writes (DESIGN §4) and condenses each measurement into one row: draws done out of
planned, coverage of the credible interval (when the truth is known), the worst
R̂ (per chain and over chain groups) and the smallest bulk/tail ESS over pixels, the mean
data-fidelity χ², the hallucination flags of single draws (χ² outside its reference law,
prior-plausibility score above its reference's 99% quantile, when ``reduce`` scored them), and
the **verdict** of :mod:`~uqcampaign.pipeline.verdict` (``ok``, ``not converged``, ``too few
draws``, ``data misfit``, ``miscalibrated``) with its reasons. :func:`campaign_row` gives the
campaign's verdict.

The calibration on record (``miscalibrated`` and the measured coverage) is found by
:func:`find_calibration`: the store given with ``--calibration``, else the calibration store
beside the campaign's (``x.zarr`` → ``x.calibration.zarr``, what ``uqc calibrate`` writes by
default); it counts only when it calibrated the same operator, noise, prior and sampler.

:func:`open_summary` is also the entry point of :mod:`uqcampaign.pipeline.maps`:
it checks that the store holds draws and an up-to-date summary (a missing or stale one is a
one-line error naming ``uqc reduce``), and reduces first when asked (``--reduce``).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.diagnostics import MIN_DRAWS
from uqcampaign.pipeline.location import Location
from uqcampaign.pipeline.store import json_attr, obs_array, open_store, store_location
from uqcampaign.pipeline.summary import SummaryStatus, open_summary_group, summary_status
from uqcampaign.pipeline.until import until_report_fields

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "RHAT_WARN",
    "RHAT_BAD",
    "DRAW_PVALUE",
    "SummaryView",
    "open_summary",
    "find_calibration",
    "report_rows",
    "campaign_row",
    "report_table",
    "print_report",
    "REPORT_FORMATS",
    "format_rows",
]

RHAT_WARN = 1.01
"""R̂ above this fails a pixel (Vehtari et al. 2021 recommend R̂ < 1.01); see :mod:`~uqcampaign.pipeline.verdict`."""
RHAT_BAD = 1.1
"""R̂ above this means the chains clearly disagree (drawn in dark red on the maps)."""
DRAW_PVALUE = 0.01
"""A single draw is listed as a hallucination when its χ² (two-sided, under χ²_k/m) or its
prior-plausibility score (upper tail among the reference prior draws) has a p-value below this:
about 1% of a calibrated sampler's draws are listed by chance."""


@dataclass(frozen=True)
class SummaryView:
    """What maps and report read from one store.

    ``root`` is the store's root group, ``summary`` its ``summary/`` group, ``campaign``
    the validated campaign config (``{}`` when the attrs lack it), ``level`` the
    credible level of ``ci_lower``/``ci_upper``, ``name`` a printable store name,
    ``status`` what the summary summarises.
    """

    root: zarr.Group
    summary: zarr.Group
    campaign: dict[str, Any]
    level: float
    name: str
    status: SummaryStatus | None = None

    @property
    def n_measurements(self) -> int:
        return int(self.summary["mean"].shape[0])

    @property
    def has_truth(self) -> bool:
        return "x_true" in self.root and "coverage" in self.summary

    def describe(self, key: str) -> dict[str, Any]:
        """Root attr ``key`` (``operator``, ``sampler``, ``prior``) as a dict, else the campaign's entry, else ``{}``."""
        return _json_attr(json_attr(self.root, key, {})) or _json_attr(self.campaign.get(key, {}))

    @property
    def draws_used(self) -> np.ndarray | None:
        """Draws per chain each measurement's summary counts `(M,)`, None when not recorded."""
        return np.asarray(self.summary["draws_used"][...]) if "draws_used" in self.summary else None

    def array(self, key: str) -> np.ndarray:
        """``summary/<key>`` read whole; meant for the per-measurement arrays `(M,)` (images: index by measurement)."""
        return np.asarray(self.summary[key][...])


def _json_attr(value: Any) -> dict[str, Any]:
    """A root attr that holds a dict, either as such or as a JSON string."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def _require_draws(root: zarr.Group, name: str) -> None:
    if "draws_done" not in root or int(np.asarray(root["draws_done"][...]).sum()) == 0:
        raise UQError(f"store {name} holds no draws yet (draws_done is 0 everywhere): run `uqc run CAMPAIGN.yaml` first")


def _level(summary: zarr.Group, campaign: dict[str, Any]) -> float:
    """Credible level: attr ``level`` of ``ci_lower``, else of ``summary/``, else the campaign's ``reduce.level``."""
    for attrs in (summary["ci_lower"].attrs, summary.attrs):
        if "level" in attrs:
            return float(attrs["level"])
    return float(campaign.get("reduce", {}).get("level", 0.9))


def open_summary(store: Any, *, reduce: bool = False, say: Any = None, storage_options: Any = None) -> SummaryView:
    """Open ``store`` for reading its summary.

    Raises :class:`UQError` (one line, naming ``uqc reduce``) when the store holds no draws, or
    its summary is missing or stale (computed from other draws than the store holds, see
    :mod:`~uqcampaign.pipeline.summary`). With ``reduce`` a missing or stale summary is first
    recomputed with :func:`~uqcampaign.pipeline.reduce.reduce_store`, after telling ``say``
    (e.g. ``console.print``).
    """
    root = open_store(store, storage_options=storage_options)
    name = store_location(root)
    _require_draws(root, name)
    status = summary_status(root)
    if reduce and status.state != "fresh":
        if say is not None:
            why = "has no summary" if status.state == "missing" else f"has a stale summary ({status.summarised} of {status.stored} chain-draws)"
            say(f"store {name} {why}: reducing it first (--reduce)")
        from uqcampaign.pipeline.reduce import reduce_store

        reduce_store(Location.of(root), progress=False)
    summary, status = open_summary_group(root)
    campaign = _json_attr(json_attr(root, "campaign", {}))
    return SummaryView(root=root, summary=summary, campaign=campaign, level=_level(summary, campaign), name=name, status=status)


def _chi2_per_measurement(view: SummaryView) -> np.ndarray:
    """Mean χ² per measurement `(M,)`: ``summary/chi2``, else the NaN-skipping mean of ``chi2_draws`` `(M, chain, draw)`."""
    if "chi2" in view.summary:
        return view.array("chi2").astype(np.float64)
    if "chi2_draws" not in view.summary:
        return np.full(view.n_measurements, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN measurement: NaN, said in the table
        return np.array([np.nanmean(np.asarray(view.summary["chi2_draws"][m], dtype=np.float64)) for m in range(view.n_measurements)])


def _nan_reduce(func: Any, values: np.ndarray) -> float:
    """``func`` over finite entries of ``values``; NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(func(finite)) if finite.size else math.nan


def _planned(view: SummaryView) -> int | None:
    """Draws planned per measurement: ``chains × draws`` of the campaign, else of the ``samples`` array."""
    chains, draws = view.campaign.get("chains"), view.campaign.get("draws")
    if (chains is None or draws is None) and "samples" in view.root:
        chains, draws = view.root["samples"].shape[1:3]
    return None if chains is None or draws is None else int(chains) * int(draws)


# ----------------------------------------------------------------------------- calibration on record


def find_calibration(view: SummaryView, explicit: str | None = None, say: Any = None) -> dict[str, Any] | None:
    """The ``uqc calibrate`` result that stands for this campaign, or None.

    ``explicit`` (``--calibration STORE``): that store must hold a complete, current calibration of
    the same operator, noise, prior and sampler (else a one-line UQError naming what differs).
    Without it the calibration store beside the campaign's is used when it exists and matches
    (a mismatch is told to ``say`` and ignored).
    """
    from uqcampaign.pipeline.calibrate import calibration_differences, calibration_location, read_calibration

    where = explicit if explicit is not None else calibration_location(view.name)
    if explicit is None and not Location.of(where).exists():
        return None
    result = read_calibration(where)
    if result is None:
        if explicit is not None:
            raise UQError(f"{where} holds no finished, current calibration; run `uqc calibrate CAMPAIGN.yaml --trials N --store {where}`")
        if say is not None:
            say(f"{where}: no finished, current calibration there (rerun `uqc calibrate`); the verdict has no calibration")
        return None
    differences = calibration_differences(result, view.campaign)
    if differences:
        message = f"{where} calibrated another configuration: {'; '.join(differences)}"
        if explicit is not None:
            raise UQError(f"{message}; calibrate this campaign's configuration or give its calibration store")
        if say is not None:
            say(f"{message}: not used")
        return None
    return result


# ----------------------------------------------------------------------------- verdict facts


@dataclass(frozen=True)
class _Context:
    """What every row of a store shares: the sampler's nature, chains, the measurement space."""

    markov: bool
    chains: int
    dim_y: int
    silent_rows: np.ndarray  # (*obs_shape) bool: entries no pixel reaches (a y of exact 0 there carries no noise)
    calibration: dict[str, Any] | None


def _context(view: SummaryView, calibration: dict[str, Any] | None) -> _Context:
    import torch

    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.samplers.registry import MARKOV_CHAIN_KINDS

    img_shape = tuple(int(n) for n in view.summary["mean"].shape[1:])
    chains = int(view.root["samples"].shape[1]) if "samples" in view.root else int(view.root["draws_done"].shape[1])
    obs = obs_array(view.root)
    obs_shape = tuple(int(n) for n in obs.shape[1:])
    silent = np.zeros(obs_shape, dtype=bool)
    spec = view.describe("operator")
    if spec:
        root = view.root.attrs.get("campaign_root")
        operator = build_operator(spec, img_shape, None if root is None else Path(root)).to(dtype=torch.float64)
        probe = torch.randn((1, *obs_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            reach = operator.A(operator.A_T(probe))[0].abs().numpy()  # row i of A is zero iff (A Aᵀ r)_i = 0 for a random r
        silent = reach <= 1e-12 * max(float(reach.max()), 1e-300)
    kind = view.describe("sampler").get("kind")
    return _Context(kind in MARKOV_CHAIN_KINDS, chains, int(np.prod(obs_shape)), silent, calibration)


def _dof(context: _Context, y: np.ndarray) -> int:
    """Entries of ``y`` that carry noise: all but those no pixel reaches and that hold an exact 0."""
    return max(1, context.dim_y - int((context.silent_rows & (y == 0)).sum()))


def _image(view: SummaryView, key: str, m: int) -> np.ndarray:
    return np.asarray(view.summary[key][m], dtype=np.float64).ravel()


def measurement_facts(view: SummaryView, m: int, context: _Context, chi2: float, used: int, extra: tuple[tuple[str, str], ...] = ()) -> Any:
    """The :class:`~uqcampaign.pipeline.verdict.MeasurementFacts` of measurement ``m``."""
    from uqcampaign.pipeline.verdict import MeasurementFacts

    group = "rhat_group" in view.summary
    y = np.asarray(obs_array(view.root)[m])
    return MeasurementFacts(
        rhat=_image(view, "rhat_group" if group else "rhat", m),
        ess_bulk=_image(view, "ess_bulk", m),
        ess_tail=_image(view, "ess_tail", m),
        mcse_mean=_image(view, "mcse_mean", m),
        std=_image(view, "std", m),
        chains=context.chains,
        markov=context.markov,
        used=used,
        chi2_mean=chi2,
        dim_y=context.dim_y,
        dof=_dof(context, y),
        calibration=context.calibration,
        rhat_kind="group" if group else "chain",
        extra=extra,
    )


def _draw_flags(view: SummaryView, m: int, dim_y: int, dof: int) -> dict[str, Any]:
    """Hallucination flags of the draws of measurement ``m``: counts and the worst draw on each axis."""
    from uqcampaign.kernels.plausibility import fidelity_pvalue, plausibility_pvalue

    out: dict[str, Any] = {"chi2_outliers": None, "chi2_worst": None, "implausible": None, "plausibility_worst": None}
    if "chi2_draws" in view.summary:
        chi2 = np.asarray(view.summary["chi2_draws"][m], dtype=np.float64)  # (chain, draw), NaN past the draws used
        seen = np.isfinite(chi2)
        if seen.any():
            p = np.where(seen, fidelity_pvalue(np.where(seen, chi2, 1.0), dim_y, dof), np.nan)
            out["chi2_outliers"] = int((p[seen] < DRAW_PVALUE).sum())
            c, d = np.unravel_index(np.nanargmin(p), p.shape)
            out["chi2_worst"] = f"chain {c} draw {d}: χ² {chi2[c, d]:.3f} (p {p[c, d]:.1e})"
    if "plausibility" in view.summary and "plausibility_reference" in view.summary:
        scores = np.asarray(view.summary["plausibility"][m], dtype=np.float64)  # (chain, scored draw)
        reference = np.asarray(view.summary["plausibility_reference"][...], dtype=np.float64)
        seen = np.isfinite(scores)
        if seen.any() and np.isfinite(reference).any():
            p = np.where(seen, plausibility_pvalue(np.where(seen, scores, 0.0), reference[np.isfinite(reference)]), np.nan)
            out["implausible"] = int((p[seen] < DRAW_PVALUE).sum())
            c, k = np.unravel_index(np.nanargmax(np.where(seen, scores, -np.inf)), scores.shape)
            draw = int(view.summary["plausibility_draw"][m, k]) if "plausibility_draw" in view.summary else k
            out["plausibility_worst"] = f"chain {c} draw {draw}: score {scores[c, k]:.3g} (p {p[c, k]:.1e})"
    return out


def _rows(view: SummaryView, calibration: dict[str, Any] | None = None, extra: dict[int, tuple[tuple[str, str], ...]] | None = None) -> list[dict[str, Any]]:
    """The rows of :func:`report_rows`, reading one measurement's images at a time."""
    from uqcampaign.pipeline.verdict import convergence_reasons, measurement_verdict

    done = np.asarray(view.root["draws_done"][...]).reshape(view.n_measurements, -1).sum(axis=1)
    planned = _planned(view)
    coverage = view.array("coverage") if view.has_truth else None
    chi2 = _chi2_per_measurement(view)
    used = view.draws_used
    if used is None:
        used = np.asarray(view.root["draws_done"][...]).min(axis=1)
    context = _context(view, calibration)
    until = until_report_fields(view.root)  # None unless an `until` campaign wrote the store
    rows = []
    for m in range(view.n_measurements):
        facts = measurement_facts(view, m, context, float(chi2[m]), int(used[m]), (extra or {}).get(m, ()))
        verdict = measurement_verdict(facts)
        rows.append(
            {
                "measurement": m,
                "draws_done": int(done[m]),
                "draws_planned": planned,
                "coverage": None if coverage is None else float(coverage[m]),
                "rhat_max": _nan_reduce(np.max, np.asarray(view.summary["rhat"][m])),
                "rhat_group_max": _nan_reduce(np.max, facts.rhat) if facts.rhat_kind == "group" else None,
                "ess_bulk_min": _nan_reduce(np.min, facts.ess_bulk),
                "ess_tail_min": _nan_reduce(np.min, facts.ess_tail),
                "chi2_mean": float(chi2[m]),
                **_draw_flags(view, m, facts.dim_y, facts.dof),
                "converged": (None if not context.markov else not convergence_reasons(facts)),
                "verdict": verdict.word,
                "reasons": "; ".join(verdict.reasons),
            }
        )
        if until is not None:
            _with_until(rows[-1], until[m])
    _add_sampler_facts(view, rows)
    return rows


def _with_until(row: dict[str, Any], fields: dict[str, Any]) -> None:
    """Add an ``until`` store's fields (:func:`~uqcampaign.pipeline.until.until_report_fields`) to a row:
    the planned draws at the measurement's stop, its state, and its flag."""
    fields = dict(fields)
    flag = fields.pop("until_flag")
    row.update(fields)
    row["flag"] = ", ".join(part for part in (row.get("flag", ""), flag) if part)


def _add_sampler_facts(view: SummaryView, rows: list[dict[str, Any]]) -> None:
    """The sampler's facts per measurement (:func:`~uqcampaign.pipeline.unit_facts.measurement_facts`) into ``rows``, their flags into ``flag`` ("" when none)."""
    from uqcampaign.pipeline.unit_facts import fact_flags, measurement_facts

    for row, facts in zip(rows, measurement_facts(view.root, len(rows))):
        row.update(facts)
        row["flag"] = ", ".join(part for part in (row.get("flag", ""), *fact_flags(facts)) if part)


def report_rows(
    store: Any, *, reduce: bool = False, say: Any = None, calibration: str | None = None, extra: dict[int, tuple[tuple[str, str], ...]] | None = None
) -> list[dict[str, Any]]:
    """One dict per measurement of a reduced store.

    Keys: ``measurement``, ``draws_done`` and ``draws_planned`` (summed over chains),
    ``coverage`` (fraction of pixels whose truth lies in the interval; None without
    truth), ``rhat_max`` (per-chain R̂), ``rhat_group_max`` (over chain groups; None for an older
    summary), ``ess_bulk_min``, ``ess_tail_min`` (over channels and pixels, NaN pixels ignored),
    ``chi2_mean``, the hallucination flags ``chi2_outliers`` / ``chi2_worst`` (draws whose χ²
    has p < :data:`DRAW_PVALUE` under its reference law, the worst one) and ``implausible`` /
    ``plausibility_worst`` (draws scored by ``reduce`` whose prior-plausibility p < :data:`DRAW_PVALUE`;
    None when not scored), ``converged`` (Markov chains: the convergence check; None otherwise),
    ``verdict`` (one word) and ``reasons``, the sampler's facts where the store keeps them
    (``log_evidence``/``log_evidence_se``/``log_evidence_runs``, ``outside_box``,
    ``condition_shift``/``objective_first``/``objective_last``/``objective_trend``:
    :func:`~uqcampaign.pipeline.unit_facts.measurement_facts`) and ``flag`` (their flags, "" when fine).
    A store of an ``until`` campaign adds ``until``, ``until_round``, ``until_draws`` and plans each
    measurement at the draws it stopped at (:func:`~uqcampaign.pipeline.until.until_report_fields`;
    its flag joins ``flag``). ``calibration``: a ``uqc calibrate`` store (see :func:`find_calibration`); ``extra``: more
    ``(word, reason)`` per measurement from other flags.
    Raises :class:`UQError` when the store has no draws or its summary is missing or stale,
    unless ``reduce`` (see :func:`open_summary`).
    """
    view = open_summary(store, reduce=reduce, say=say)
    return _rows(view, find_calibration(view, calibration, say), extra)


def campaign_row(rows: list[dict[str, Any]], calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The campaign's row: totals and extremes of ``rows``, and its verdict (:func:`~uqcampaign.pipeline.verdict.campaign_verdict`)."""
    from uqcampaign.pipeline.verdict import Verdict, campaign_verdict

    def finite(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]

    verdict = campaign_verdict([Verdict(r["verdict"]) for r in rows], calibration)
    planned = [r["draws_planned"] for r in rows]
    return {
        "measurement": "campaign",
        "draws_done": sum(int(r["draws_done"]) for r in rows),
        "draws_planned": None if any(p is None for p in planned) else sum(planned),
        "coverage": float(np.mean(finite("coverage"))) if finite("coverage") else None,
        "rhat_max": max(finite("rhat_max"), default=math.nan),
        "rhat_group_max": max(finite("rhat_group_max"), default=None),
        "ess_bulk_min": min(finite("ess_bulk_min"), default=math.nan),
        "ess_tail_min": min(finite("ess_tail_min"), default=math.nan),
        "chi2_mean": float(np.mean(finite("chi2_mean"))) if finite("chi2_mean") else math.nan,
        "chi2_outliers": sum(int(r["chi2_outliers"]) for r in rows if r.get("chi2_outliers") is not None) if any(r.get("chi2_outliers") is not None for r in rows) else None,
        "chi2_worst": None,
        "implausible": sum(int(r["implausible"]) for r in rows if r.get("implausible") is not None) if any(r.get("implausible") is not None for r in rows) else None,
        "plausibility_worst": None,
        "converged": None if all(r.get("converged") is None for r in rows) else all(bool(r.get("converged")) for r in rows),
        "verdict": verdict.word,
        "reasons": "; ".join(verdict.reasons),
    }


def report_table(store: Any, *, reduce: bool = False, say: Any = None, calibration: str | None = None) -> list[dict[str, Any]]:
    """:func:`report_rows` and, last, :func:`campaign_row` (what ``uqc report --format json|csv`` prints)."""
    view = open_summary(store, reduce=reduce, say=say)
    record = find_calibration(view, calibration, say)
    rows = _rows(view, record)
    return rows + [campaign_row(rows, record)]


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def print_report(store: Any, console: Console | None = None, *, reduce: bool = False, say: Any = None, calibration: str | None = None) -> None:
    """Print the rows of :func:`report_rows` as a ``rich`` table on ``console`` (stdout by default), the
    reasons of every verdict under it, and the campaign's verdict."""
    from rich.console import Console
    from rich.table import Table

    from uqcampaign.pipeline.verdict import CHI2_LEVEL, ESS_PER_GROUP, MCSE_FRACTION, PIXEL_FRACTION

    view = open_summary(store, reduce=reduce, say=say)
    record = find_calibration(view, calibration, say)
    rows = _rows(view, record)
    total = campaign_row(rows, record)
    level = f"{view.level * 100:g}%"
    name = view.campaign.get("name", Path(view.name).stem)
    sampler = view.describe("sampler").get("kind", "?")
    table = Table(
        title=f"{name} · sampler {sampler} · {level} credible intervals",
        caption=(
            f"draws: done/planned over all chains · coverage: fraction of pixels whose truth lies in the {level} interval · "
            f"R̂ max: worst rank-normalised split R̂ over pixels, over chain groups (per chain in brackets) · ESS min: smallest "
            f"bulk/tail effective sample size · χ²: mean ||y − Ax||²/(σ²·dim y) of the draws (≈ 1) · χ² out / implausible: draws whose "
            f"χ² or prior-plausibility score has p < {DRAW_PVALUE} (≈ 1% by chance) · verdict: not converged (Markov chains: "
            f"< {PIXEL_FRACTION:.0%} of pixels with R̂ < {RHAT_WARN} and ESS ≥ {ESS_PER_GROUP} per chain group), too few draws "
            f"(MCSE ≥ {MCSE_FRACTION} std), data misfit (mean χ² outside the {CHI2_LEVEL:.0%} band of χ²_k/m), miscalibrated "
            f"(`uqc calibrate` on record says so)"
            + (
                " · until: converged, max_draws (stopped there without converging: flagged) or running, with the round and "
                "draws per chain of its last convergence check"
                if any("until" in row for row in rows)
                else ""
            )
        ),
        caption_justify="left",
    )
    until = any("until" in row for row in rows)
    from uqcampaign.pipeline.unit_facts import fact_columns

    facts = fact_columns(rows)
    for column, justify in (("meas.", "right"), ("draws", "right"), ("coverage", "right"), ("R̂ max", "right"), ("ESS bulk min", "right"),
                            ("ESS tail min", "right"), ("χ² mean", "right"), ("χ² out", "right"), ("implausible", "right")):
        table.add_column(column, justify=justify, no_wrap=column in ("draws", "R̂ max"))
    if until:
        table.add_column("until", overflow="fold")
    for header, _, caption in facts:
        table.add_column(header, justify="right")
        table.caption = f"{table.caption} · {caption}"
    table.add_column("verdict", justify="left", no_wrap=True)
    for row in rows + [total]:
        planned = "?" if row["draws_planned"] is None else str(row["draws_planned"])
        style = "green" if row["verdict"] == "ok" else "bold red"
        rhat = _fmt(row["rhat_group_max"], ".3f") + f" ({_fmt(row['rhat_max'], '.3f')})" if row["rhat_group_max"] is not None else _fmt(row["rhat_max"], ".3f")
        table.add_row(
            str(row["measurement"]),
            f"{row['draws_done']}/{planned}",
            _fmt(row["coverage"], ".3f"),
            rhat,
            _fmt(row["ess_bulk_min"], ".0f"),
            _fmt(row["ess_tail_min"], ".0f"),
            _fmt(row["chi2_mean"], ".3f"),
            "—" if row["chi2_outliers"] is None else str(row["chi2_outliers"]),
            "—" if row["implausible"] is None else str(row["implausible"]),
            *([_until_cell(row)] if until else []),
            *(text(row) for _, text, _ in facts),
            f"[{style}]{row['verdict']}[/]",
            end_section=row is rows[-1],
        )
    out = console or Console()
    out.print(table)
    for row in rows + [total]:
        details = [row["reasons"]] if row["reasons"] else []
        details += [f"worst χ² {row['chi2_worst']}"] if row.get("chi2_worst") and row.get("chi2_outliers") else []
        details += [f"least plausible {row['plausibility_worst']}"] if row.get("plausibility_worst") and row.get("implausible") else []
        details += [row["flag"]] if row.get("flag") else []
        if details:
            out.print(f"{row['measurement']}: {row['verdict']}: {'; '.join(details)}", markup=False, soft_wrap=True)
    if record is not None:
        cov = record.get("coverage") or {}
        out.print(f"calibration on record: {record.get('verdict')} ({', '.join(f'{k}: {v:.3f}' for k, v in cov.items())}; {record.get('store')})", markup=False, soft_wrap=True)


def _until_cell(row: dict[str, Any]) -> str:
    """The ``until`` column: converged / max_draws / running, with the round (1-based) and draws per chain."""
    if row.get("until_round") is None:
        return row.get("until", "")
    return f"{row['until']} (round {row['until_round'] + 1}, {row['until_draws']} draws)"


REPORT_FORMATS = ("table", "json", "csv")
"""What ``uqc report --format`` takes: ``table`` (rich, for reading), ``json`` and ``csv`` (for programs)."""


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """The rows of :func:`report_rows` as ``json`` (a list of objects, NaN/inf as null) or ``csv`` (header + one line each).

    Every key of the rows becomes a field, in the order met, so new row keys need no change here.
    """
    import csv
    import io

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, np.generic):
            return plain(value.item())
        return value

    clean = [{key: plain(value) for key, value in row.items()} for row in rows]
    if fmt == "json":
        return json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if fmt == "csv":
        fields = list(dict.fromkeys(key for row in clean for key in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in clean)
        return out.getvalue()
    raise UQError(f"report format {fmt!r} is not one of {', '.join(REPORT_FORMATS)}")
