"""Pre-flight: will a campaign fit? Memory per worker and store size, before anything big exists.

``uqc run`` (in process and on Ray) and ``uqc validate`` call :func:`check_campaign` once the
prior, operator and sampler are built and checked, and *before* the measurements are simulated
or read, the store is created, or any chain tensor is allocated. A worker holds, per unit:

* the chunk buffer ``(chunks.chains, chunks.draws, C, H, W)`` float32 where the draws wait for
  their Zarr write, and what Zarr makes of it while it writes: the serialised bytes and their
  compressed copy (two more chunks; measured, ``tests/pipeline/test_preflight.py``);
* the sampler's state: ``STATE_COPIES`` float32 copies of ``(chunks.chains, C, H, W)``, which
  the sampler names (:meth:`~uqcampaign.kernels.samplers.base.ConfiguredSampler.state_size`;
  the ``exact`` sampler adds its ``(d × d)`` posterior matrices); network activations are not
  counted (``uqc validate`` measures them in its probe);
* the prior's parameters and the operator's buffers (their tensors, measured).

The store holds ``samples`` (M, chains, draws, C, H, W) float32, the measurements, the sampler's
facts (:func:`fact_bytes`: a latent prior's condition trace is ``iterations × 1 × L × D`` per
measurement) and the ``summary/`` that ``uqc reduce`` adds (per-pixel statistics in float64 and the
per-draw χ²); an ``until`` campaign is sized at ``until.max_draws`` (the most its store can grow to).
Sizes are uncompressed: an upper bound, since posterior draws compress little.

What does not fit is refused with a :class:`UQError` that gives the figures and the fix.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqcampaign.kernels.errors import UQError, UQErrors
from uqcampaign.pipeline.config import Campaign, is_url

__all__ = [
    "Footprint",
    "Budget",
    "footprint",
    "start_calls",
    "object_bytes",
    "check_fits",
    "check_campaign",
    "check_stored_campaign",
    "fact_bytes",
    "local_budget",
    "human_bytes",
]

FLOAT32 = 4
FLOAT64 = 8


def human_bytes(n: float) -> str:
    """``1024000000000`` → ``"1.02 TB"`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


@dataclass(frozen=True)
class Footprint:
    """What one campaign needs, in bytes, and the parts it is the sum of.

    Per worker: ``chunk_buffer`` (one unit's ``(chunks.chains, chunks.draws, C, H, W)`` float32),
    ``chunk_write`` (Zarr's serialised and compressed copies while it writes a chunk), ``sampler_state`` (``state_what`` says which
    tensors), ``prior``, ``operator``. ``chains``: per measurement. Store: ``samples``, ``measurements`` (``y``, truth),
    ``summary``. ``nfe_per_draw``/``nfe_per_unit``: network calls per chain (a unit's include its start: a learned
    prior's ``sample_calls`` under ``init: prior``).
    """

    campaign: str
    n_measurements: int
    n_units: int
    chains: int
    chains_per_unit: int
    draws_per_chunk: int
    img_shape: tuple[int, ...]
    obs_shape: tuple[int, ...]
    sampler: str
    chunk_buffer: int
    chunk_write: int
    sampler_state: int
    state_what: str
    prior: int
    operator: int
    samples: int
    measurements: int
    summary: int
    nfe_per_draw: float = 0.0
    nfe_per_unit: float = 0.0
    facts: int = 0  # the sampler's fact arrays (smc/, condition*, units/outside_box, map/)

    @property
    def worker(self) -> int:
        """Bytes one worker holds while it runs a unit."""
        return self.chunk_buffer + self.chunk_write + self.sampler_state + self.prior + self.operator

    @property
    def store(self) -> int:
        """Bytes of the finished, reduced store (uncompressed)."""
        return self.samples + self.measurements + self.summary + self.facts

    @property
    def nfe_total(self) -> float:
        """Network calls per chain summed over every chain of the campaign (M × chains × NFE per unit)."""
        return self.nfe_per_unit * self.n_measurements * self.chains

    @property
    def batched_calls(self) -> float:
        """Network calls as a worker makes them, one per unit step for all its chains (units × NFE per unit)."""
        return self.nfe_per_unit * self.n_units

    def worker_parts(self) -> str:
        """The per-worker sum, spelled out."""
        buffer = f"({self.chains_per_unit}, {self.draws_per_chunk}, {', '.join(map(str, self.img_shape))})"
        return (
            f"chunk buffer {buffer} float32 {human_bytes(self.chunk_buffer)} + Zarr's 2 copies as it writes {human_bytes(self.chunk_write)} + "
            f"{self.sampler} state {human_bytes(self.sampler_state)} [{self.state_what}] + prior {human_bytes(self.prior)} + "
            f"operator {human_bytes(self.operator)}"
        )

    def store_parts(self) -> str:
        facts = f" + sampler facts {human_bytes(self.facts)}" if self.facts else ""
        return f"samples {human_bytes(self.samples)} + measurements {human_bytes(self.measurements)} + summary {human_bytes(self.summary)}{facts}"


def object_bytes(obj: Any) -> int:
    """Bytes of the tensors and ``torch.nn.Module`` parameters/buffers held by ``obj``'s attributes (one level).

    Each storage is counted once (views and shared tensors are not double counted).
    """
    import torch

    seen: dict[int, int] = {}

    def add(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr() or id(storage)] = storage.nbytes()

    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, torch.Tensor):
            add(value)
        elif isinstance(value, torch.nn.Module):
            for tensor in (*value.parameters(), *value.buffers()):
                add(tensor)
    return sum(seen.values())


def footprint(
    campaign: Campaign,
    *,
    img_shape: tuple[int, ...],
    obs_shape: tuple[int, ...],
    n_measurements: int,
    sampler: Any,
    prior_description: dict[str, Any],
    prior_bytes: int,
    operator_bytes: int,
    has_truth: bool,
) -> Footprint:
    """The :class:`Footprint` of ``campaign`` on images ``img_shape`` and measurements ``obs_shape``."""
    from uqcampaign.pipeline.reduce import PIXEL_STATS

    image = math.prod(img_shape)
    cc, cd = campaign.chunks.chains, campaign.chunks.draws
    state = sampler.state_size(cc, tuple(img_shape), prior_description)
    m, chains, draws = n_measurements, campaign.chains, campaign.draws_limit  # an `until` store may grow to max_draws
    pixel_arrays = len(PIXEL_STATS) + (1 if has_truth else 0)  # + error
    summary = m * image * (pixel_arrays * FLOAT64 + (1 if has_truth else 0)) + m * chains * draws * FLOAT64 + 3 * m * FLOAT64
    measurements = m * math.prod(obs_shape) * FLOAT32 + (m * image * FLOAT32 if has_truth else 0)
    chunk = cc * cd * image * FLOAT32
    return Footprint(
        campaign=campaign.name,
        n_measurements=m,
        n_units=m * campaign.n_blocks,
        chains=chains,
        chains_per_unit=cc,
        draws_per_chunk=cd,
        img_shape=tuple(img_shape),
        obs_shape=tuple(obs_shape),
        sampler=str(getattr(sampler, "kind", "?")),
        chunk_buffer=chunk,
        chunk_write=2 * chunk,
        sampler_state=state.bytes,
        state_what=state.what,
        prior=int(prior_bytes),
        operator=int(operator_bytes),
        samples=m * chains * draws * image * FLOAT32,
        measurements=measurements,
        summary=summary,
        nfe_per_draw=float(sampler.nfe_per_draw()),
        nfe_per_unit=float(sampler.nfe_per_unit(draws)) + start_calls(sampler, prior_description),
        facts=fact_bytes(campaign, sampler, prior_description, m),
    )


def fact_bytes(campaign: Campaign, sampler: Any, prior_description: dict[str, Any], n_measurements: int) -> int:
    """Bytes of the sampler's fact arrays (``unit_arrays``) in a store of ``n_measurements``: one value per
    measurement, or per unit (a ``chain`` block dimension counted as ``chains`` entries)."""
    import numpy as np

    try:
        arrays = sampler.unit_arrays(campaign.chunks.chains, prior_description)
    except UQError:  # a description without what the sampler needs: the sampler check names it
        return 0
    total = 0
    for array in arrays:
        entries = math.prod(array.shape)
        if array.block_dim == "chain":
            entries = entries // campaign.chunks.chains * campaign.chains
        elif array.block_dim is not None:
            entries *= campaign.n_blocks
        total += entries * np.dtype(array.dtype).itemsize
    return n_measurements * total


def start_calls(sampler: Any, prior_description: dict[str, Any]) -> float:
    """Network calls per chain of a unit's start: the prior's ``sample_calls`` (``describe()``) when the sampler
    starts its chains at prior draws (``init: prior``, as :func:`~uqcampaign.kernels.samplers.langevin.start_calls`), else 0."""
    if getattr(getattr(sampler, "config", None), "init", None) != "prior":
        return 0.0
    return float(prior_description.get("sample_calls", 0) or 0)


@dataclass(frozen=True)
class Budget:
    """What the workers may use: ``memory`` bytes on ``where``, shared by ``workers`` workers (None: not checked)."""

    memory: int | None
    where: str
    workers: int = 1


def local_budget(workers: int = 1) -> Budget:
    """This machine's available memory (psutil), shared by ``workers`` workers."""
    import psutil

    return Budget(int(psutil.virtual_memory().available), "this machine", workers)


def _free_disk(location: str) -> tuple[int, int] | None:
    """``(free bytes, bytes already there)`` for a local store path; None for a URL or a place this
    process cannot write (creating the store says so, naming the place)."""
    if is_url(location):
        return None
    path = Path(location)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    if not os.access(probe, os.W_OK) or usage.total == 0:  # read-only, or a pseudo file system such as /sys
        return None
    existing = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
    return usage.free, existing


#: a campaign whose workers need more than this fraction of the memory they may use is refused
MEMORY_LIMIT = 0.9
#: the smaller chunks a refusal suggests leave the workers this fraction of that memory
MEMORY_TARGET = 0.5


def _largest(fits: Any, upper: int) -> int:
    """The largest n in [1, upper] with ``fits(n)`` (monotone), rounded down to 1, 2 or 5 × 10^k; 0 when none."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    if lo < 1:
        return 0
    nice = [m * 10**k for k in range(len(str(lo))) for m in (1, 2, 5) if m * 10**k <= lo]
    return max(nice)


def _memory_fix(fp: Footprint, budget: Budget, sampler: Any, prior_description: dict[str, Any]) -> str:
    """The smaller chunks that fit, said as YAML keys."""
    assert budget.memory is not None
    per_worker = int(MEMORY_TARGET * budget.memory) // max(1, budget.workers)
    image = math.prod(fp.img_shape)
    fixed = fp.prior + fp.operator

    def need(chains: int, draws: int) -> int:
        return 3 * chains * draws * image * FLOAT32 + sampler.state_size(chains, fp.img_shape, prior_description).bytes + fixed

    draws = _largest(lambda d: need(fp.chains_per_unit, d) <= per_worker, fp.draws_per_chunk)
    more = " or fewer workers (--workers)" if budget.workers > 1 else ""
    if draws >= 1:
        return (
            f"lower chunks.draws from {fp.draws_per_chunk} to {draws} (a worker then needs {human_bytes(need(fp.chains_per_unit, draws))}), "
            f"or chunks.chains{more}"
        )
    chains = _largest(lambda c: need(c, 1) <= per_worker, fp.chains_per_unit)
    if chains >= 1:
        return f"lower chunks.chains from {fp.chains_per_unit} to {chains} and chunks.draws to 1 (or a little more){more}"
    return f"even one chain and one draw per chunk needs {human_bytes(need(1, 1))}: use a machine with more memory or a smaller prior"


def check_fits(fp: Footprint, budget: Budget, *, store: str, sampler: Any, prior_description: dict[str, Any]) -> None:
    """UQError (or UQErrors, one line each) when the workers' memory or the store's disk cannot hold ``fp``."""
    problems = []
    if budget.memory is not None and fp.worker * budget.workers > MEMORY_LIMIT * budget.memory:
        share = f" x {budget.workers} workers" if budget.workers > 1 else ""
        problems.append(
            f"campaign '{fp.campaign}' does not fit in memory: a worker needs {human_bytes(fp.worker)} ({fp.worker_parts()}){share}, "
            f"more than {MEMORY_LIMIT:.0%} of the {human_bytes(budget.memory)} available on {budget.where}; "
            f"{_memory_fix(fp, budget, sampler, prior_description)}"
        )
    disk = _free_disk(store)
    if disk is not None:
        free, existing = disk
        needed = fp.store - existing
        if needed > free:
            problems.append(
                f"campaign '{fp.campaign}' does not fit on disk: its store needs {human_bytes(fp.store)} ({fp.store_parts()}; uncompressed) "
                f"but {store} has {human_bytes(free)} free; lower draws, chains or the number of measurements, or put the store on a larger disk"
            )
    if len(problems) == 1:
        raise UQError(problems[0])
    if problems:
        raise UQErrors(problems)


def check_campaign(campaign: Campaign, prior: Any, operator: Any, sampler: Any, budget: Budget | None = None) -> Footprint:
    """The campaign's :class:`Footprint` from its built components, refused (UQError) when it cannot fit ``budget``.

    Reads no data: M comes from ``data.simulate.count`` or the header of the ``data.y`` file.
    """
    from uqcampaign.pipeline.units import count_measurements

    description = prior.describe() if hasattr(prior, "describe") else {}
    fp = footprint(
        campaign,
        img_shape=tuple(prior.img_shape),
        obs_shape=tuple(operator.obs_shape),
        n_measurements=count_measurements(campaign),
        sampler=sampler,
        prior_description=description,
        prior_bytes=object_bytes(prior),
        operator_bytes=object_bytes(operator),
        has_truth=campaign.data.simulate is not None or campaign.data.truth is not None,
    )
    check_fits(fp, budget or local_budget(), store=campaign.store_location, sampler=sampler, prior_description=description)
    return fp


def _attr(attrs: dict[str, Any], key: str) -> Any:
    """A store attribute, decoded when it is kept as a JSON string."""
    import json

    value = attrs.get(key)
    if isinstance(value, str) and value[:1] in "[{":
        value = json.loads(value)
    return value


def check_stored_campaign(campaign: Campaign, attrs: dict[str, Any], budget: Budget | None = None) -> Footprint:
    """The pre-flight of a campaign continued from its store, without loading the prior (the Ray driver's case).

    Shapes come from the store's attrs (``img_shape``, ``obs_shape``); the prior's bytes from its
    description (``parameters`` float32 of a network, or a mixture's means and variances).
    """
    from uqcampaign.kernels.samplers.registry import build_sampler
    from uqcampaign.pipeline.units import count_measurements

    img_shape = tuple(int(s) for s in _attr(attrs, "img_shape"))
    obs_shape = tuple(int(s) for s in _attr(attrs, "obs_shape"))
    description = _attr(attrs, "prior") or {}
    image = math.prod(img_shape)
    if "parameters" in description:
        prior_bytes = int(description["parameters"]) * FLOAT32
    else:
        prior_bytes = int(description.get("components", 1) or 1) * 2 * image * FLOAT64
    sampler = build_sampler(dict(campaign.sampler))
    fp = footprint(
        campaign,
        img_shape=img_shape,
        obs_shape=obs_shape,
        n_measurements=count_measurements(campaign),
        sampler=sampler,
        prior_description=description,
        prior_bytes=prior_bytes,
        operator_bytes=0,
        has_truth=campaign.data.simulate is not None or campaign.data.truth is not None,
    )
    check_fits(fp, budget or local_budget(), store=campaign.store_location, sampler=sampler, prior_description=description)
    return fp
