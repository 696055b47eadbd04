"""Sampler facts in the store: what a sampler reports in ``Draw.info`` beside its draws, kept per work unit.

A sampler declares its facts with ``unit_arrays(n_chains, prior_description)``
(:class:`~uqcampaign.kernels.samplers.facts.UnitArray`); the store creates one array per fact with
the others (:func:`~uqcampaign.pipeline.store.unit_array_spec`), :func:`~uqcampaign.pipeline.units.run_unit`
collects them from the unit's draws (:class:`UnitFacts`) and writes them into the unit's own chunk
(:func:`write_unit_facts`) just before the ``draws_done`` write that completes the unit. So:

* one writer per chunk, no lock (as for ``samples``);
* a unit killed before it completes is recomputed whole, from its seed, and writes the same
  facts again (a resumed campaign is bit-identical to an uninterrupted one); a complete unit
  already holds them;
* every sampler goes through this one path: per-unit arrays come from the unit's **last** draw;
  per-draw scalars (``per_draw``) from every draw, kept as their mean weighted by the draws'
  network calls (``Draw.nfe``: for ula/skrock the draw's iterations, so ``units/outside_box`` is the
  fraction of all the unit's pixel-updates, burn-in included).

The readers at the end condense the facts per measurement for ``uqc report``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.samplers.facts import BLOCK, UnitArray
from uqcampaign.pipeline.location import io_errors

__all__ = [
    "OUTSIDE_BOX_WARN",
    "UnitFacts",
    "write_unit_facts",
    "smc_evidence",
    "outside_box",
    "condition_facts",
    "measurement_facts",
    "fact_flags",
    "fact_columns",
    "condition_rows",
]

OUTSIDE_BOX_WARN = 1e-3
"""``units/outside_box`` above this (one pixel-update in a thousand outside the box C) flags a
measurement in ``uqc report``: the box then holds back posterior mass the chains try to visit, which
truncates the tails the credible intervals are made of (``box: auto`` takes C from the prior and
stays near 0; ``tests/pipeline/test_unit_facts.py`` measures both)."""


def _as_array(value: Any) -> np.ndarray:
    """A reported value as numpy (CPU tensors, floats, arrays)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class UnitFacts:
    """The facts of one unit, collected from its draws (:meth:`observe` each, in order; :meth:`values` at the end)."""

    def __init__(self, arrays: tuple[UnitArray, ...], kind: str) -> None:
        self.arrays = arrays
        self.kind = kind
        self._weighted = {a.name: 0.0 for a in arrays if a.per_draw}
        self._plain = dict(self._weighted)
        self._weight = 0.0
        self._count = 0
        self._last: Mapping[str, Any] = {}

    def _missing(self, name: str, where: str) -> UQError:
        return UQError(f"sampler {self.kind!r} declares the fact {name!r} but did not report it on {where} (Draw.info); a bug in the sampler")

    def observe(self, draw: Any) -> None:
        """Take ``draw.info``: add its per-draw scalars, keep it as the last draw's facts."""
        info = draw.info or {}
        for name in self._weighted:
            if name not in info:
                raise self._missing(name, f"draw {draw.index}")
            value = float(_as_array(info[name]))
            self._weighted[name] += value * draw.nfe
            self._plain[name] += value
        self._weight += draw.nfe
        self._count += 1
        self._last = info

    def values(self, n_chains: int) -> dict[str, np.ndarray]:
        """``{name: value}`` with each declared shape (a ``chain`` block dimension: ``n_chains`` entries)."""
        out: dict[str, np.ndarray] = {}
        for array in self.arrays:
            if array.per_draw:
                total, norm = (self._weighted, self._weight) if self._weight > 0 else (self._plain, float(self._count))
                value = np.asarray(total[array.name] / norm if norm else math.nan)
            else:
                if array.name not in self._last:
                    raise self._missing(array.name, "its last draw")
                value = _as_array(self._last[array.name])
            expected = tuple(n_chains if d == "chain" == array.block_dim else n for d, n in zip(array.dims, array.shape))
            if value.shape != expected:
                raise UQError(
                    f"sampler {self.kind!r} reported {array.name!r} of shape {value.shape}, but declares {expected} "
                    f"({', '.join(array.dims) or 'a scalar'}); a bug in the sampler"
                )
            out[array.name] = value.astype(array.dtype, copy=False)
        return out


def write_unit_facts(group: zarr.Group, measurement: int, block: int, arrays: tuple[UnitArray, ...], values: Mapping[str, np.ndarray]) -> None:
    """Write one unit's ``values`` into its own chunk of each fact's array (see the module docstring)."""
    for array in arrays:
        value = values[array.name]
        index: list[Any] = [measurement]
        if array.block_dim == BLOCK:
            index.append(block)
        elif array.block_dim is None and block != 0:
            raise UQError(f"{array.name!r} is one value per measurement but unit ({measurement}, {block}) is not a whole measurement; set chunks.chains = chains")
        for d, n, size in zip(array.dims, value.shape, array.shape):
            start = block * size if d == array.block_dim else 0
            index.append(slice(start, start + n))
        with io_errors(group, f"write {array.path} of unit ({measurement}, {block})"):
            group[array.path][tuple(index)] = value


# -- readers (uqc report) ------------------------------------------------------------------------


def smc_evidence(root: zarr.Group) -> list[tuple[float, float, int]] | None:
    """Per measurement ``(log p̂(y), its standard error, runs)`` from ``smc/log_evidence`` `(measurement, run)`,
    the runs of all its units pooled (:func:`~uqcampaign.kernels.samplers.smc.sampler.pooled_log_evidence`);
    runs not yet done are left out (NaN, and ``runs`` 0 for a measurement with none); None without SMC facts."""
    if "smc" not in root or "log_evidence" not in root["smc"]:
        return None
    from uqcampaign.kernels.samplers.smc.sampler import pooled_log_evidence

    table = np.asarray(root["smc"]["log_evidence"][...], dtype=np.float64)
    out = []
    for row in table:
        done = row[np.isfinite(row)]
        out.append((*pooled_log_evidence(done), int(done.size)) if done.size else (math.nan, math.nan, 0))
    return out


def outside_box(root: zarr.Group, chunk_chains: int) -> np.ndarray | None:
    """Per measurement `(M,)`: ``units/outside_box`` `(measurement, block)` averaged over the blocks run,
    weighted by their chains; None without the fact."""
    if "units" not in root or "outside_box" not in root["units"]:
        return None
    values = np.asarray(root["units"]["outside_box"][...], dtype=np.float64)
    chains = int(root["draws_done"].shape[1])
    weights = np.array([min(chunk_chains, chains - b * chunk_chains) for b in range(values.shape[1])], dtype=np.float64)
    run = np.isfinite(values)
    total = (np.where(run, values, 0.0) * weights).sum(axis=1)
    norm = (run * weights).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, total / norm, np.nan)


def condition_facts(root: zarr.Group) -> list[dict[str, Any]] | None:
    """Per measurement: ``condition_shift`` = ‖ĉ − c₀‖ (over all the condition's entries), ``objective``
    `(iterations,)` (the marginal-likelihood proxy per SAPG iteration) and ``condition_steps`` `(iterations,)` =
    ‖c_m − c₀‖ per iteration; None without latino-pro facts."""
    if "condition" not in root or "condition_start" not in root:
        return None
    out = []
    for m in range(root["condition"].shape[0]):
        c = np.asarray(root["condition"][m], dtype=np.float64)
        start = np.asarray(root["condition_start"][m], dtype=np.float64)
        trace = np.asarray(root["condition_trace"][m], dtype=np.float64) if "condition_trace" in root else np.empty((0, *c.shape))
        objective = np.asarray(root["objective_trace"][m], dtype=np.float64) if "objective_trace" in root else np.empty(0)
        steps = np.sqrt(((trace - start) ** 2).reshape(trace.shape[0], -1).sum(axis=1))
        out.append({"condition_shift": float(np.sqrt(((c - start) ** 2).sum())), "objective": objective, "condition_steps": steps})
    return out


def _trend(values: np.ndarray) -> float:
    """Mean change per iteration over the last quarter of ``values`` (at least 2 of them): ≈ 0 once SAPG has settled."""
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return math.nan
    tail = finite[-max(2, finite.size // 4) :]
    return float((tail[-1] - tail[0]) / (tail.size - 1))


def measurement_facts(root: zarr.Group, n_measurements: int) -> list[dict[str, Any]]:
    """The report's sampler columns, one dict per measurement (empty dicts when the store has none):
    ``log_evidence``, ``log_evidence_se``, ``log_evidence_runs`` (SMC); ``outside_box`` (Langevin);
    ``condition_shift``, ``objective_first``, ``objective_last``, ``objective_trend`` (latino-pro)."""
    rows: list[dict[str, Any]] = [{} for _ in range(n_measurements)]
    evidence = smc_evidence(root)
    if evidence is not None:
        for row, (value, se, runs) in zip(rows, evidence):
            row.update(log_evidence=value, log_evidence_se=se, log_evidence_runs=runs)
    chunk_chains = int(root["draws_done"].chunks[1])
    box = outside_box(root, chunk_chains)
    if box is not None:
        for row, value in zip(rows, box):
            row["outside_box"] = float(value)
    condition = condition_facts(root)
    if condition is not None:
        for row, facts in zip(rows, condition):
            objective = facts["objective"]
            finite = objective[np.isfinite(objective)]
            row.update(
                condition_shift=facts["condition_shift"],
                objective_first=float(finite[0]) if finite.size else math.nan,
                objective_last=float(finite[-1]) if finite.size else math.nan,
                objective_trend=_trend(objective),
            )
    return rows


def fact_flags(row: Mapping[str, Any]) -> list[str]:
    """The reasons a row's sampler facts flag it: the box's share of updates above :data:`OUTSIDE_BOX_WARN`."""
    value = row.get("outside_box")
    if value is not None and math.isfinite(value) and value > OUTSIDE_BOX_WARN:
        return [f"box: {value:.2g} of updates outside C (> {OUTSIDE_BOX_WARN:g})"]
    return []


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def fact_columns(rows: list[dict[str, Any]]) -> list[tuple[str, Any, str]]:
    """``(header, row -> text, caption)`` of the sampler columns the rows hold (``uqc report``'s table)."""
    columns: list[tuple[str, Any, str]] = []
    keys = {key for row in rows for key in row}
    if "log_evidence" in keys:
        columns.append((
            "log p(y) ± SE",
            lambda r: f"{_fmt(r.get('log_evidence'), '.3f')} ± {_fmt(r.get('log_evidence_se'), '.3f')}",
            "log p(y) ± SE: the SMC runs' pooled estimate of the log evidence (log of their mean p(y)) and its standard error over runs",
        ))
    if "outside_box" in keys:
        columns.append((
            "outside box",
            lambda r: _fmt(r.get("outside_box"), ".2g"),
            f"outside box: fraction of the Langevin updates outside the box C (flag > {OUTSIDE_BOX_WARN:g})",
        ))
    if "condition_shift" in keys:
        columns.append(("‖ĉ − c₀‖", lambda r: _fmt(r.get("condition_shift"), ".3g"), "‖ĉ − c₀‖: distance of the estimated condition from its start"))
        columns.append((
            "objective",
            lambda r: f"{_fmt(r.get('objective_first'), '.4g')}→{_fmt(r.get('objective_last'), '.4g')} ({_fmt(r.get('objective_trend'), '+.2g')}/it)",
            "objective: the marginal-likelihood proxy SAPG ascends, first→last iteration (mean change per iteration over the "
            "last quarter: ≈ 0 once settled; `uqc report --condition` lists every iteration)",
        ))
    return columns


def condition_rows(root: zarr.Group) -> list[dict[str, Any]]:
    """``uqc report --condition``: one row per (measurement, SAPG iteration): ``objective`` (the proxy) and
    ``condition_distance`` = ‖c_m − c₀‖; UQError when the store holds no latino-pro facts."""
    facts = condition_facts(root)
    if facts is None:
        from uqcampaign.pipeline.store import store_location

        raise UQError(f"store {store_location(root)} holds no estimated condition (no `condition` array): --condition is for latino-pro campaigns")
    rows = []
    for m, f in enumerate(facts):
        for i, (objective, distance) in enumerate(zip(f["objective"], f["condition_steps"])):
            rows.append({"measurement": m, "iteration": i, "objective": float(objective), "condition_distance": float(distance)})
    return rows
