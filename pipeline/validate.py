"""``uqc validate``: every check of ``uqc run``, the campaign's size and an estimated time, nothing written.

:func:`validate_campaign` builds the prior, operator and sampler, checks the sampler against
them and the noise, runs the pre-flight (:mod:`.preflight`: memory per worker, store size),
reads or simulates the measurements and checks them, then probes the speed: the first unit
(measurement 0, the first ``chunks.chains`` chains, the unit's own generator) runs in memory
for a few seconds; its network calls (``denoise``/``consistency``) and its draws are timed and
the campaign's time is extrapolated from them. Nothing is written: no store, no file.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uqcampaign.pipeline.config import Campaign
from uqcampaign.pipeline.preflight import Footprint, human_bytes

__all__ = ["Probe", "Validation", "validate_campaign", "probe_unit", "report_lines", "human_seconds"]

#: the probe stops after this many draws of the unit (enough for a steady-state time per draw)
PROBE_DRAWS = 3
#: prior methods that are one network call (one NFE) each
NETWORK_CALLS = ("denoise", "consistency")


def human_seconds(seconds: float) -> str:
    """``5400`` → ``"1.5 h"``."""
    if not math.isfinite(seconds):
        return "unknown"
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.2g} s" if seconds >= 0.1 else f"{seconds * 1000:.2g} ms"


@dataclass(frozen=True)
class Probe:
    """What the probe measured: ``unit_seconds`` (one unit, extrapolated), ``how`` (said to the user), and the
    growth of this process's peak resident memory while it ran (``peak_memory``, bytes)."""

    unit_seconds: float
    how: str
    peak_memory: int


@dataclass(frozen=True)
class Validation:
    """The outcome of :func:`validate_campaign` (everything checked; nothing written)."""

    campaign: Campaign
    footprint: Footprint
    probe: Probe
    data: str
    store_state: str
    components: dict[str, Any]


class _ProbeStop(Exception):
    """Raised from inside a timed network call when the probe has seen enough."""


class _TimedPrior:
    """A prior whose network calls are timed; ``stop()`` (checked after each call) ends the probe.

    Everything else is delegated, so samplers see the real prior (its kind, shapes, schedule).
    """

    def __init__(self, prior: Any, stop: Callable[[], bool]) -> None:
        self._prior = prior
        self._stop = stop
        self.calls: list[float] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._prior, name)
        if name not in NETWORK_CALLS or not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            out = value(*args, **kwargs)
            self.calls.append(time.perf_counter())
            if self._stop():
                raise _ProbeStop
            return out

        return timed


def _peak_rss() -> int:
    """This process's peak resident memory so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def probe_unit(campaign: Campaign, prior: Any, operator: Any, sampler: Any, y: np.ndarray, *, seconds: float = 3.0) -> Probe:
    """Run unit (0, 0) in memory for about ``seconds`` (or :data:`PROBE_DRAWS` draws) and extrapolate one unit's time.

    ``y``: the first measurement ``(*obs_shape)``. Two or more draws give the time of the first
    draw (set-up and burn-in included) plus a steady time per draw; otherwise the time per
    network call is taken from the calls made and multiplied by the unit's calls
    (``sampler.nfe_per_unit``). The draws are dropped.
    """
    from uqcampaign.kernels.rng import unit_generator

    n_chains = campaign.block_chains(0).stop
    draws: list[float] = []
    start = time.perf_counter()
    timed = _TimedPrior(prior, lambda: time.perf_counter() - start > seconds and len(timed.calls) >= 2)
    rss = _peak_rss()
    generator = unit_generator(campaign.seed, 0, 0)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    try:
        for draw in sampler.run(y_t, operator, timed, campaign.noise.sigma, n_chains, campaign.draws, generator):
            draws.append(time.perf_counter())
            if len(draws) >= min(PROBE_DRAWS, campaign.draws) or (draws[-1] - start > seconds and len(draws) >= 2):
                break
    except _ProbeStop:
        pass
    elapsed = time.perf_counter() - start
    peak = max(0, _peak_rss() - rss)
    calls = timed.calls
    where = f"unit (0, 0): measurement 0, {n_chains} chains, in memory, {torch.get_num_threads()} torch threads"
    if len(draws) >= 2 or len(draws) == campaign.draws:
        first = draws[0] - start
        steady = (draws[-1] - draws[0]) / (len(draws) - 1) if len(draws) >= 2 else 0.0
        unit = first + (campaign.draws - 1) * steady
        how = f"{len(draws)} draws of {where}, {human_seconds(elapsed)}: first draw {human_seconds(first)}, then {human_seconds(steady)} per draw"
        return Probe(unit, how, peak)
    if len(calls) >= 2:
        per_call = (calls[-1] - calls[0]) / (len(calls) - 1)
        setup = max(0.0, calls[0] - start - per_call)
        unit = setup + sampler.nfe_per_unit(campaign.draws) * per_call
        how = (
            f"{len(calls)} network calls of {where}, {human_seconds(elapsed)}: {human_seconds(per_call)} per call "
            f"x {sampler.nfe_per_unit(campaign.draws):g} calls per unit"
        )
        return Probe(unit, how, peak)
    if draws:
        return Probe((draws[0] - start) * campaign.draws, f"1 draw of {where} in {human_seconds(elapsed)}, times {campaign.draws} draws", peak)
    return Probe(math.nan, f"{where}: no draw and fewer than 2 network calls in {human_seconds(elapsed)}", peak)


def _store_state(campaign: Campaign) -> str:
    """What is at the store location now (read only)."""
    from uqcampaign.kernels.errors import UQError
    from uqcampaign.pipeline.store import existing_store_info

    location = campaign.store_location
    try:
        attrs = existing_store_info(location)
    except UQError as exc:
        return str(exc)
    if attrs is None:
        return f"{location} (absent: `uqc run` creates it)"
    if attrs.get("config_hash") == campaign.config_hash():
        return f"{location} (holds this campaign: `uqc run` continues it)"
    name = attrs.get("campaign", {}).get("name", "?") if isinstance(attrs.get("campaign"), dict) else "?"
    return f"{location} (holds another campaign, '{name}': `uqc run` says what it would do)"


def validate_campaign(campaign: Campaign, *, probe_seconds: float = 3.0, probe: bool = True) -> Validation:
    """Every check of ``uqc run`` on ``campaign`` plus its size, memory, NFE and probed time; writes nothing.

    Raises :class:`~uqcampaign.kernels.errors.UQError` where ``uqc run`` would refuse.
    """
    from uqcampaign.pipeline.data import load_or_simulate
    from uqcampaign.pipeline.preflight import check_campaign
    from uqcampaign.pipeline.runner import check_sampler
    from uqcampaign.pipeline.units import load_components

    prior, operator, sampler = load_components(campaign)
    check_sampler(campaign, prior, operator, sampler)
    fp = check_campaign(campaign, prior, operator, sampler)
    y, truth = load_or_simulate(campaign, prior, operator)
    if campaign.data.simulate is not None:
        data = f"{y.shape[0]} measurements simulated from the prior (truth kept)"
    else:
        data = f"{y.shape[0]} measurements from {campaign.data.y}" + (f", truth from {campaign.data.truth}" if truth is not None else ", no truth")
    result = probe_unit(campaign, prior, operator, sampler, y[0], seconds=probe_seconds) if probe else Probe(math.nan, "not probed", 0)
    components = {"operator": operator.describe(), "prior": prior.describe(), "sampler": sampler.describe()}
    return Validation(campaign, fp, result, data, _store_state(campaign), components)


def _workers(campaign: Campaign) -> int | None:
    """How many workers ``uqc run`` would use, when the file says (None for ``auto`` on a cluster)."""
    cluster = campaign.cluster
    if cluster.address == "in-process":
        return 1
    if isinstance(cluster.workers, int):
        return cluster.workers
    if cluster.address == "local" and cluster.gpus_per_worker == 0:
        return os.cpu_count() or 1
    return None


def report_lines(result: Validation, source: str) -> list[str]:
    """The lines ``uqc validate`` prints."""
    fp, campaign = result.footprint, result.campaign
    blocks = campaign.n_blocks
    total = result.probe.unit_seconds * fp.n_units
    workers = _workers(campaign)
    spread = (
        f"; ≈ {human_seconds(total / min(workers, fp.n_units))} over {min(workers, fp.n_units)} workers if they are as fast"
        if workers and workers > 1 and math.isfinite(total)
        else ""
    )
    describe = result.components
    return [
        f"{source}: valid (every check of `uqc run` passed; nothing written)",
        f"campaign:  {campaign.name} (config hash {campaign.config_hash()[:12]})",
        f"data:      {result.data}; images {fp.img_shape}, measurements {fp.obs_shape}",
        f"operator:  {describe['operator']}",
        f"prior:     {describe['prior']}",
        f"sampler:   {describe['sampler']}",
        f"units:     {fp.n_units} ({fp.n_measurements} measurements x {blocks} chain block{'s' if blocks > 1 else ''} of up to {fp.chains_per_unit} chains); "
        f"{campaign.chains} chains x {campaign.draws} draws per measurement, chunks of {fp.chains_per_unit} chains x {fp.draws_per_chunk} draws",
        f"store:     {human_bytes(fp.store)} uncompressed ({fp.store_parts()}) at {result.store_state}",
        f"memory:    {human_bytes(fp.worker)} per worker ({fp.worker_parts()}); network activations not counted, "
        f"the probe's peak memory grew by {human_bytes(result.probe.peak_memory)}",
        f"NFE:       {fp.nfe_per_draw:g} network calls per draw per chain, {fp.nfe_per_unit:g} per chain per unit (burn-in included); "
        f"{fp.nfe_total:.4g} in total over {campaign.chains * fp.n_measurements} chains, made as {fp.batched_calls:.4g} batched calls",
        f"time:      ≈ {human_seconds(total)} for the {fp.n_units} units one after the other{spread} "
        f"(probe: {result.probe.how}; ≈ {human_seconds(result.probe.unit_seconds)} per unit)",
        *_until_lines(campaign),
    ]


def _until_lines(campaign: Campaign) -> list[str]:
    """What ``until:`` adds: the rounds, and what the figures above count."""
    if campaign.until is None:
        return []
    from uqcampaign.pipeline.until import round_schedule

    spec, schedule = campaign.until, round_schedule(campaign)
    return [
        f"until:     rounds of {', '.join(map(str, schedule))} draws per chain; a measurement stops when every pixel has R̂ < {spec.rhat}, "
        f"bulk ESS >= {spec.ess_bulk:g} and tail ESS >= {spec.tail_target:g}, or at {spec.max_draws} (flagged); store and NFE above are "
        f"for {spec.max_draws} draws, time for the first round; each round recomputes the draws done, so stopping at round R costs "
        f"up to 2 x one run of its draws"
    ]
