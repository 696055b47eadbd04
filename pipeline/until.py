"""Campaigns that run until converged: ``until: {rhat, ess_bulk, ess_tail, max_draws}`` (DESIGN §3).

**Rounds.** Round ``r`` brings every measurement still running to ``D_r = min(draws · 2^r,
max_draws)`` draws per chain (:func:`round_schedule`; ``draws`` of the campaign file is the first
round): the store grows along ``draw`` with :func:`~uqcampaign.pipeline.store.grow_store`, the
pending units of the running measurements run (in process or on Ray: the caller gives
``run_units``), then each running measurement is checked on all its stored draws
``samples[m, :, :D_r]`` with the diagnostics of ``uqc reduce``
(:func:`~uqcampaign.pipeline.diagnostics.summarize`, one spatial tile at a time, memory bounded by
:data:`CHECK_MEMORY`). It stops, *converged*, when every pixel has R̂ < ``rhat``, bulk ESS ≥
``ess_bulk`` and tail ESS ≥ ``ess_tail`` (default: the bulk target; 0 switches it off); a NaN
diagnostic fails (a pixel that cannot be judged is not vouched for). At ``max_draws`` it stops
anyway, *not converged*, and is flagged. Stopped measurements are never sampled again.

**Why tail ESS counts.** The campaign's product is the equal-tailed credible interval, whose
ends are the 5% and 95% quantiles for a 90% interval; ArviZ's tail ESS is the ESS of exactly
those two quantile indicators (Vehtari et al. 2021, §4.3), which a fast-mixing bulk can hide.

**Deterministic, resumable.** The schedule depends only on the campaign file, a unit's draws
only on the seed, and each decision only on stored draws, so the rounds of a killed campaign,
rerun, end bit-identical to an uninterrupted run. The decisions are kept in group ``until/``
(all ``(measurement,)``, CF ``long_name``):

==================  =======  ==================================================================
array               dtype    meaning
==================  =======  ==================================================================
``checked_round``   int16    last round whose check is recorded (-1: none); written last: the commit
``stop_round``      int16    round the measurement stopped at (-1: still running)
``converged``       int8     1: met the targets at its last check; 0: did not
``draws_used``      int32    draws per chain its last check counted (its final draws once stopped)
``rhat_max``        float64  worst R̂ over pixels at the last check
``ess_bulk_min``    float64  smallest bulk ESS over pixels at the last check
``ess_tail_min``    float64  smallest tail ESS over pixels at the last check
==================  =======  ==================================================================

A measurement is stopped when ``stop_round == checked_round >= 0``; a run killed between the
writes of one record leaves ``checked_round`` behind, and the check (deterministic) is redone.
The group's attr ``targets`` (JSON: the targets, ``draws``, ``chains`` and the schedule) keys
the records: a campaign file with other targets, schedule or chains checks every measurement
again from its stored draws (the draws are kept; a measurement that an earlier, stricter
campaign drew past its new stopping point keeps those draws, and ``reduce`` counts them).

**Schedule and cost.** A Markov chain cannot be extended from its last stored draw (its state is
not stored), so a unit that grows from ``D_{r-1}`` to ``D_r`` draws recomputes its done draws and
its burn-in without writing them (as a resume does). Round ``r`` then costs ``B + thin · D_r``
steps per chain, and stopping at round ``R`` costs ``(R + 1) B + thin · (2 D_R − D_0)`` with
doubling: at most **2 ×** the steps of one run of the final draws (plus one burn-in per round).
Since the draws actually needed, ``N*``, exceed ``D_{R−1} = D_R / 2``, that is at most **4 ×** the
steps of an oracle run of ``N*`` draws. With a growth factor ``g`` the bound is ``g² / (g − 1)``:
2 minimises it. The checks read ``Σ D_r ≤ 2 D_R`` draws per chain of each measurement.

**Different draw counts per measurement.** ``draws_done`` holds each measurement's own count; the
store's ``draw`` size is the largest round reached; a stopped measurement's later draws stay NaN.
``reduce`` counts each measurement's own complete draws (``summary/draws_used``), ``report`` and
``inspect`` plan each measurement at its stopping draws (:func:`planned_draws`), ``export`` of
several measurements cuts them to the smallest (``--measurement M`` keeps all of one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from uqcampaign.pipeline.config import Campaign, UntilSpec
from uqcampaign.pipeline.diagnostics import summarize
from uqcampaign.pipeline.location import Location, io_errors
from uqcampaign.pipeline.reduce import _BATCH_BYTES_PER_DRAW, _TILE_OVERHEAD, choose_tile
from uqcampaign.pipeline.store import ArraySpec, existing_store_info, grow_store, store_sizes, sync_coordinates
from uqcampaign.pipeline.units import Unit, pending_units

__all__ = [
    "UNTIL_GROUP",
    "GROWTH",
    "CHECK_MEMORY",
    "RECORDS",
    "RunUnits",
    "Check",
    "Records",
    "UntilResult",
    "round_schedule",
    "round_campaign",
    "opening_campaign",
    "check_measurement",
    "read_records",
    "planned_draws",
    "until_report_fields",
    "run_rounds",
]

UNTIL_GROUP = "until"
GROWTH = 2
"""Round sizes double: the growth factor that minimises the worst-case cost ``g² / (g − 1)``."""
CHECK_MEMORY = 128 * 2**20
"""Bytes one convergence check may hold (a spatial tile of all chains × draws, as in ``reduce``)."""

_M = ("measurement",)
RECORDS = (
    ArraySpec(f"{UNTIL_GROUP}/rhat_max", _M, "float64", np.nan, {"long_name": "worst rank-normalized split R-hat over pixels at the last check", "units": "1"}),
    ArraySpec(f"{UNTIL_GROUP}/ess_bulk_min", _M, "float64", np.nan, {"long_name": "smallest bulk effective sample size over pixels at the last check", "units": "1"}),
    ArraySpec(f"{UNTIL_GROUP}/ess_tail_min", _M, "float64", np.nan, {"long_name": "smallest tail effective sample size over pixels at the last check", "units": "1"}),
    ArraySpec(f"{UNTIL_GROUP}/draws_used", _M, "int32", 0, {"long_name": "draws per chain counted by the last convergence check", "units": "1"}),
    ArraySpec(f"{UNTIL_GROUP}/converged", _M, "int8", 0, {"long_name": "1 when the last check met the until targets, else 0"}),
    ArraySpec(f"{UNTIL_GROUP}/stop_round", _M, "int16", -1, {"long_name": "round the measurement stopped at (-1: still running)"}),
    ArraySpec(f"{UNTIL_GROUP}/checked_round", _M, "int16", -1, {"long_name": "last round whose convergence check is recorded (-1: none)"}),
)
"""The ``until/`` arrays, in the order a record is written (``checked_round`` last: the commit)."""

RunUnits = Callable[[Campaign, list[Unit], str], int]
"""``run_units(round_campaign, units, name) -> chain-draws written``: run ``units`` of one round
(``round_campaign.draws`` = the round's draws per chain) in process or on Ray; ``name`` labels the
progress bar."""


# -- schedule ----------------------------------------------------------------------------------


def round_schedule(campaign: Campaign) -> list[int]:
    """Draws per chain of each round: ``draws, 2 draws, 4 draws, …, max_draws`` (the last clipped)."""
    spec = _spec(campaign)
    sizes = [min(campaign.draws, spec.max_draws)]
    while sizes[-1] < spec.max_draws:
        sizes.append(min(sizes[-1] * GROWTH, spec.max_draws))
    return sizes


def round_campaign(campaign: Campaign, draws: int) -> Campaign:
    """``campaign`` with ``draws`` per chain (the same root): what one round's units run."""
    return campaign.with_draws(draws)


def opening_campaign(campaign: Campaign) -> Campaign:
    """The campaign to create or reopen the store with: ``draws`` raised to the draws its store of
    the same campaign already has (sizes, or the target of an interrupted grow), so that reopening
    an ``until`` store grown by earlier rounds never reads as shrinking it. Call it under the lease."""
    attrs = existing_store_info(Location.of(campaign.store_location, campaign.storage_options))
    if attrs is None or attrs.get("config_hash") != campaign.config_hash():
        return campaign
    held = [campaign.draws] + [int(v["draw"]) for v in (attrs.get("sizes"), attrs.get("growing")) if isinstance(v, dict) and "draw" in v]
    return round_campaign(campaign, max(held))


def _spec(campaign: Campaign) -> UntilSpec:
    if campaign.until is None:
        raise ValueError(f"campaign '{campaign.name}' has no until: section")
    return campaign.until


def _targets(campaign: Campaign) -> dict[str, Any]:
    """What the records depend on besides the draws: the targets, the schedule and the chains."""
    spec = _spec(campaign)
    return {
        "rhat": spec.rhat,
        "ess_bulk": spec.ess_bulk,
        "ess_tail": spec.tail_target,
        "max_draws": spec.max_draws,
        "chains": campaign.chains,
        "schedule": round_schedule(campaign),
    }


# -- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """The worst diagnostics over the pixels of one measurement's first ``draws`` draws per chain (NaN propagates)."""

    draws: int
    rhat_max: float
    ess_bulk_min: float
    ess_tail_min: float

    def meets(self, spec: UntilSpec) -> bool:
        """R̂ < rhat, bulk ESS ≥ ess_bulk and (unless its target is 0) tail ESS ≥ ess_tail; NaN fails."""
        tail_ok = spec.tail_target == 0 or self.ess_tail_min >= spec.tail_target
        return bool(self.rhat_max < spec.rhat and self.ess_bulk_min >= spec.ess_bulk and tail_ok)


def check_measurement(samples: zarr.Array, measurement: int, draws: int, memory: int = CHECK_MEMORY) -> Check:
    """R̂ max, bulk and tail ESS min over the pixels of ``samples[measurement, :, :draws]``.

    ``samples``: the store's `(measurement, chain, draw, C, H, W)` array. Reads one spatial tile of
    all chains × ``draws`` at a time (the largest that fits ``memory`` with ``reduce``'s memory
    model, a function of the shapes only) and reduces it with
    :func:`~uqcampaign.pipeline.diagnostics.summarize`: ArviZ's numbers.
    """
    _, chains, _, c, h, w = samples.shape
    task = memory // _TILE_OVERHEAD
    _, ty, tx = choose_tile((c, h, w), chains * draws, task)
    rhat, bulk, tail = [], [], []
    for y0 in range(0, h, ty):
        for x0 in range(0, w, tx):
            block = np.asarray(samples[measurement, :, :draws, :, y0 : y0 + ty, x0 : x0 + tx])  # (chain, draw, C, ty, tx)
            pixels = np.ascontiguousarray(block.transpose(2, 3, 4, 0, 1)).reshape(-1, chains, block.shape[1])
            stats = summarize(pixels, batch_draws=max(1, task // _BATCH_BYTES_PER_DRAW))
            rhat.append(np.max(stats.rhat))
            bulk.append(np.min(stats.ess_bulk))
            tail.append(np.min(stats.ess_tail))
    return Check(int(draws), float(np.max(rhat)), float(np.min(bulk)), float(np.min(tail)))


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Records:
    """The ``until/`` arrays read whole, `(measurement,)` each (see the module docstring)."""

    checked_round: np.ndarray
    stop_round: np.ndarray
    converged: np.ndarray
    draws_used: np.ndarray
    rhat_max: np.ndarray
    ess_bulk_min: np.ndarray
    ess_tail_min: np.ndarray
    targets: dict[str, Any] = field(default_factory=dict)

    @property
    def stopped(self) -> np.ndarray:
        """`(measurement,)` bool: stopped at its last recorded check."""
        return (self.checked_round >= 0) & (self.stop_round == self.checked_round)


def _name(spec: ArraySpec) -> str:
    return spec.path.rpartition("/")[2]


def read_records(group: zarr.Group) -> Records | None:
    """The ``until/`` records of a store, None when it has none (not an ``until`` campaign)."""
    if UNTIL_GROUP not in group:
        return None
    until = group[UNTIL_GROUP]
    if not all(_name(spec) in until for spec in RECORDS):
        return None
    values = {_name(spec): np.asarray(until[_name(spec)][...]) for spec in RECORDS}
    raw = until.attrs.get("targets")
    return Records(**values, targets=json.loads(raw) if isinstance(raw, str) else {})


def _open_records(group: zarr.Group, campaign: Campaign, say: Callable[[str], None]) -> zarr.Group:
    """The ``until/`` group, created if missing, reset when its ``targets`` differ from the campaign's."""
    n = int(group["draws_done"].shape[0])
    targets = _targets(campaign)
    with io_errors(group, "write the until/ records"):
        until = group.require_group(UNTIL_GROUP)
        for spec in RECORDS:
            if _name(spec) not in until:
                until.create_array(
                    _name(spec), shape=(n,), chunks=(max(n, 1),), dtype=spec.dtype, fill_value=spec.fill,
                    dimension_names=list(spec.dims), attributes=dict(spec.attrs),
                )
        raw = until.attrs.get("targets")
        stored = json.loads(raw) if isinstance(raw, str) else None
        if stored != targets:
            checked = np.asarray(until["checked_round"][...])
            if stored is not None and (checked >= 0).any():
                changed = sorted(k for k in targets if stored.get(k) != targets[k])
                say(f"until: {', '.join(changed)} changed since the last run: every measurement is checked again from its stored draws")
            for spec in RECORDS:  # the commit field last
                until[_name(spec)][...] = np.full(n, spec.fill, dtype=spec.dtype)
            until.attrs["targets"] = json.dumps(targets)
        sync_coordinates(group)
    return until


def _write_record(until: zarr.Group, m: int, round_index: int, check: Check, met: bool, stop: bool) -> None:
    """One measurement's decision, in :data:`RECORDS` order (``checked_round`` last)."""
    values = {
        "rhat_max": check.rhat_max,
        "ess_bulk_min": check.ess_bulk_min,
        "ess_tail_min": check.ess_tail_min,
        "draws_used": check.draws,
        "converged": int(met),
        "stop_round": round_index if stop else -1,
        "checked_round": round_index,
    }
    for spec in RECORDS:
        until[_name(spec)][m] = values[_name(spec)]


def planned_draws(group: zarr.Group) -> np.ndarray:
    """Draws per chain each measurement is planned to reach `(measurement,)`: the store's draws,
    or, for a stopped measurement of an ``until`` campaign, the draws it stopped at."""
    planned = np.full(int(group["draws_done"].shape[0]), store_sizes(group).draws, dtype=np.int64)
    records = read_records(group)
    if records is not None and records.stopped.shape == planned.shape:
        planned[records.stopped] = records.draws_used[records.stopped]
    return planned


def until_report_fields(group: zarr.Group) -> list[dict[str, Any]] | None:
    """Per measurement, what ``uqc report`` adds for an ``until`` store (None for another store).

    Keys: ``until`` (``converged``, ``max_draws`` = stopped there not converged, ``running``),
    ``until_round`` (the round it stopped at, or the last round checked; None before any),
    ``until_draws`` (draws per chain of that check), ``draws_planned`` (over all chains, at the
    stopping draws) and ``until_flag`` (``""`` or why the measurement is flagged).
    """
    records = read_records(group)
    if records is None:
        return None
    chains = int(group["draws_done"].shape[1])
    planned = planned_draws(group)
    max_draws = records.targets.get("max_draws")
    rows = []
    for m in range(planned.shape[0]):
        checked = int(records.checked_round[m])
        draws = int(records.draws_used[m]) if checked >= 0 else None
        if records.stopped[m]:
            state = "converged" if records.converged[m] else "max_draws"
        else:
            state = "running"
        flag = f"until: stopped at max_draws {max_draws} without converging" if state == "max_draws" else ""
        rows.append(
            {
                "until": state,
                "until_round": checked if checked >= 0 else None,
                "until_draws": draws,
                "draws_planned": int(planned[m]) * chains,
                "until_flag": flag,
            }
        )
    return rows


# -- the round loop ----------------------------------------------------------------------------


@dataclass
class UntilResult:
    """What :func:`run_rounds` did: units run and chain-draws written over all rounds, rounds that
    ran units, and per measurement whether it converged (None: still running)."""

    units_run: int = 0
    draws_written: int = 0
    rounds_run: int = 0
    converged: list[bool | None] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _describe(check: Check) -> str:
    return f"R̂ max {check.rhat_max:.4f}, ESS bulk min {check.ess_bulk_min:.0f}, tail min {check.ess_tail_min:.0f}"


def run_rounds(campaign: Campaign, group: zarr.Group, run_units: RunUnits, *, say: Callable[[str], None] | None = None) -> UntilResult:
    """Run the rounds of an ``until`` campaign into its opened store (see the module docstring).

    ``group``: the store opened for writing (by :func:`opening_campaign` + the runner's
    create/reopen step), under the caller's lease. ``run_units`` runs one round's units. Rounds
    already recorded are replayed from the records without sampling or checking; each message
    (round started, measurement stopped) goes to ``say`` and into the result.
    """
    result = UntilResult()

    def tell(text: str) -> None:
        result.messages.append(text)
        if say is not None:
            say(text)

    spec = _spec(campaign)
    schedule = round_schedule(campaign)
    until = _open_records(group, campaign, tell)
    n_meas = int(group["draws_done"].shape[0])
    for r, draws in enumerate(schedule):
        records = read_records(group)
        assert records is not None
        todo = [m for m in range(n_meas) if not records.stopped[m] and records.checked_round[m] < r]
        if not todo:
            continue
        this = round_campaign(campaign, draws)
        if store_sizes(group).draws < draws:
            grow_store(group, draws=draws, campaign=this)
        with io_errors(group, "read draws_done"):
            done = np.asarray(group["draws_done"][...])
        wanted = set(todo)
        units = [Unit(u.measurement, u.block, draws) for u in pending_units(this, done) if u.measurement in wanted]
        if units:
            running = n_meas - int(records.stopped.sum())
            tell(f"until round {r + 1}/{len(schedule)}: {draws} draws per chain for {len(todo)} of {n_meas} measurements ({running} running)")
            result.draws_written += run_units(this, units, f"{campaign.name} round {r + 1}/{len(schedule)}")
            result.units_run += len(units)
            result.rounds_run += 1
        samples = group["samples"]  # after the grow: its new shape
        last = draws >= spec.max_draws
        for m in todo:
            with io_errors(group, f"read the draws of measurement {m}"):
                check = check_measurement(samples, m, draws)
            met = check.meets(spec)
            with io_errors(group, "write the until/ records"):
                _write_record(until, m, r, check, met, met or last)
            if met:
                tell(f"measurement {m}: converged at round {r + 1} ({draws} draws per chain: {_describe(check)})")
            elif last:
                tell(f"measurement {m}: stopped at max_draws {draws} without converging ({_describe(check)}); flagged")
    final = read_records(group)
    assert final is not None
    result.converged = [bool(final.converged[m]) if final.stopped[m] else None for m in range(n_meas)]
    converged = sum(1 for c in result.converged if c)
    unconverged = [m for m, c in enumerate(result.converged) if c is False]
    tell(
        f"until: {converged} of {n_meas} measurements converged (R̂ < {spec.rhat}, ESS bulk >= {spec.ess_bulk:g}, tail >= {spec.tail_target:g})"
        + (f"; measurements {unconverged} stopped at max_draws {spec.max_draws} without converging (flagged)" if unconverged else "")
    )
    return result
