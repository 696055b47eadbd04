"""Per-measurement summary table of a reduced store (`uqc report STORE`).

Reads the ``summary/`` group that :func:`uqcampaign.pipeline.reduce.reduce_store`
writes (DESIGN §4) and condenses each measurement into one row: draws done out of
planned, coverage of the credible interval (when the truth is known), the worst
R̂ and the smallest bulk/tail ESS over pixels, and the mean data-fidelity χ².

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
from uqcampaign.pipeline.store import json_attr, open_store, store_location
from uqcampaign.pipeline.summary import SummaryStatus, open_summary_group, summary_status
from uqcampaign.pipeline.until import until_report_fields

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "RHAT_WARN",
    "RHAT_BAD",
    "CHI2_BAND",
    "SummaryView",
    "open_summary",
    "report_rows",
    "print_report",
    "REPORT_FORMATS",
    "format_rows",
]

RHAT_WARN = 1.01
"""R̂ above this flags a measurement (Vehtari et al. 2021 recommend R̂ < 1.01)."""
RHAT_BAD = 1.1
"""R̂ above this means the chains clearly disagree (drawn in dark red on the maps)."""
CHI2_BAND = (0.5, 2.0)
"""Mean χ² = ||y − A x||²/(σ² · dim y) outside this band flags a measurement: a well-fitted
posterior sample has χ² ≈ 1; far below means over-fitting the noise, far above a hallucination."""


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


def _flag(rhat_max: float, chi2: float, used: int | None = None) -> str:
    if used is not None and used < MIN_DRAWS:
        return f"not reduced: {used} draws complete in every chain (< {MIN_DRAWS})"
    reasons = []
    if not math.isfinite(rhat_max) or rhat_max > RHAT_WARN:
        reasons.append(f"R̂>{RHAT_WARN}" if math.isfinite(rhat_max) else "R̂ NaN")
    if not math.isfinite(chi2) or not CHI2_BAND[0] <= chi2 <= CHI2_BAND[1]:
        reasons.append("χ² far from 1" if math.isfinite(chi2) else "χ² NaN")
    return ", ".join(reasons)


def _planned(view: SummaryView) -> int | None:
    """Draws planned per measurement: ``chains × draws`` of the campaign, else of the ``samples`` array."""
    chains, draws = view.campaign.get("chains"), view.campaign.get("draws")
    if (chains is None or draws is None) and "samples" in view.root:
        chains, draws = view.root["samples"].shape[1:3]
    return None if chains is None or draws is None else int(chains) * int(draws)


def _rows(view: SummaryView) -> list[dict[str, Any]]:
    """The rows of :func:`report_rows`, reading one measurement's images at a time."""
    done = np.asarray(view.root["draws_done"][...]).reshape(view.n_measurements, -1).sum(axis=1)
    planned = _planned(view)
    coverage = view.array("coverage") if view.has_truth else None
    chi2 = _chi2_per_measurement(view)
    used = view.draws_used
    until = until_report_fields(view.root)  # None unless an `until` campaign wrote the store
    rows = []
    for m in range(view.n_measurements):
        rhat_max = _nan_reduce(np.max, np.asarray(view.summary["rhat"][m]))
        chi2_m = float(chi2[m])
        rows.append(
            {
                "measurement": m,
                "draws_done": int(done[m]),
                "draws_planned": planned,
                "coverage": None if coverage is None else float(coverage[m]),
                "rhat_max": rhat_max,
                "ess_bulk_min": _nan_reduce(np.min, np.asarray(view.summary["ess_bulk"][m])),
                "ess_tail_min": _nan_reduce(np.min, np.asarray(view.summary["ess_tail"][m])),
                "chi2_mean": chi2_m,
                "flag": _flag(rhat_max, chi2_m, None if used is None else int(used[m])),
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
    row["flag"] = ", ".join(part for part in (row["flag"], flag) if part)


def _add_sampler_facts(view: SummaryView, rows: list[dict[str, Any]]) -> None:
    """The sampler's facts per measurement (:func:`~uqcampaign.pipeline.unit_facts.measurement_facts`) into ``rows``, their flags into ``flag``."""
    from uqcampaign.pipeline.unit_facts import fact_flags, measurement_facts

    for row, facts in zip(rows, measurement_facts(view.root, len(rows))):
        row.update(facts)
        row["flag"] = ", ".join(filter(None, [row["flag"], *fact_flags(facts)]))


def report_rows(store: Any, *, reduce: bool = False, say: Any = None) -> list[dict[str, Any]]:
    """One dict per measurement of a reduced store.

    Keys: ``measurement``, ``draws_done`` and ``draws_planned`` (summed over chains),
    ``coverage`` (fraction of pixels whose truth lies in the interval; None without
    truth), ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min`` (over channels and pixels,
    NaN pixels ignored), ``chi2_mean``, ``flag`` ("" when fine, else the reasons; a
    measurement with fewer than 4 draws in every chain says it was not reduced), and the
    sampler's facts where the store keeps them (``log_evidence``/``log_evidence_se``/``log_evidence_runs``,
    ``outside_box``, ``condition_shift``/``objective_first``/``objective_last``/``objective_trend``:
    :func:`~uqcampaign.pipeline.unit_facts.measurement_facts`). A store of an ``until`` campaign
    adds ``until``, ``until_round``, ``until_draws`` and plans each measurement at the draws it
    stopped at (:func:`~uqcampaign.pipeline.until.until_report_fields`).
    Raises :class:`UQError` when the store has no draws or its summary is missing or stale,
    unless ``reduce`` (see :func:`open_summary`).
    """
    return _rows(open_summary(store, reduce=reduce, say=say))


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def print_report(store: Any, console: Console | None = None, *, reduce: bool = False, say: Any = None) -> None:
    """Print the rows of :func:`report_rows` as a ``rich`` table on ``console`` (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    view = open_summary(store, reduce=reduce, say=say)
    rows = _rows(view)
    level = f"{view.level * 100:g}%"
    name = view.campaign.get("name", Path(view.name).stem)
    sampler = view.describe("sampler").get("kind", "?")
    table = Table(
        title=f"{name} · sampler {sampler} · {level} credible intervals",
        caption=(
            f"draws: done/planned over all chains · coverage: fraction of pixels whose truth lies in the "
            f"{level} interval · R̂ max: worst split rank-normalised R̂ over pixels (flag > {RHAT_WARN}) · "
            f"ESS min: smallest bulk/tail effective sample size over pixels · χ²: mean ||y − Ax||²/(σ²·dim y) "
            f"over draws (≈ 1 expected, flag outside [{CHI2_BAND[0]}, {CHI2_BAND[1]}])"
            + (
                " · until: converged, max_draws (stopped there without converging: flagged) or running, with the round and "
                "draws per chain of its last convergence check"
                if any("until" in row for row in rows)
                else ""
            )
        ),
        caption_justify="left",
    )
    table.add_column("meas.", justify="right")
    table.add_column("draws", justify="right", no_wrap=True)
    table.add_column("coverage", justify="right", no_wrap=True)
    table.add_column("R̂ max", justify="right", no_wrap=True)
    table.add_column("ESS bulk min", justify="right")
    table.add_column("ESS tail min", justify="right")
    table.add_column("χ² mean", justify="right")
    until = any("until" in row for row in rows)
    if until:
        table.add_column("until", overflow="fold")
    from uqcampaign.pipeline.unit_facts import fact_columns

    facts = fact_columns(rows)
    for header, _, caption in facts:
        table.add_column(header, justify="right")
        table.caption = f"{table.caption} · {caption}"
    table.add_column("flag", style="bold red", overflow="fold")
    for row in rows:
        planned = "?" if row["draws_planned"] is None else str(row["draws_planned"])
        rhat_style = "red" if not math.isfinite(row["rhat_max"]) or row["rhat_max"] > RHAT_WARN else "green"
        table.add_row(
            str(row["measurement"]),
            f"{row['draws_done']}/{planned}",
            _fmt(row["coverage"], ".3f"),
            f"[{rhat_style}]{_fmt(row['rhat_max'], '.4f')}[/]",
            _fmt(row["ess_bulk_min"], ".0f"),
            _fmt(row["ess_tail_min"], ".0f"),
            _fmt(row["chi2_mean"], ".3f"),
            *([_until_cell(row)] if until else []),
            *(text(row) for _, text, _ in facts),
            row["flag"],
        )
    (console or Console()).print(table)


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
