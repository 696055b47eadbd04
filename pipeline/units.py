"""Work units: one (measurement, block of ``chunks.chains`` chains) run of the sampler.

:func:`run_unit` is a plain function with no global state: the in-process runner and the Ray
workers call it alike (a worker passes the prior it loaded once). It seeds the unit's own
generator (``unit_generator(seed, m, block, device)``), streams the sampler's draws into a
buffer of ``chunks.draws`` draws and writes each full buffer as one Zarr chunk, then updates
``draws_done``. Chunks already done (a resumed unit) are recomputed — the chain must pass
through them — but never written again: the draws are deterministic, so what is on storage
is what would have been written. The sampler's facts (``Draw.info``, declared by its
``unit_arrays``) are collected from every draw and written into the unit's own chunk of their
arrays just before the last ``draws_done`` write (:mod:`~uqcampaign.pipeline.unit_facts`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uqcampaign.kernels.rng import unit_generator
from uqcampaign.pipeline.config import Campaign
from uqcampaign.pipeline.store import DrawWriter, UnitStats, json_attr, obs_array, open_store, sampler_arrays, write_unit_stats
from uqcampaign.pipeline.unit_facts import UnitFacts, write_unit_facts

__all__ = ["Unit", "UnitStats", "count_measurements", "plan_units", "pending_units", "run_unit", "load_components", "default_worker_name"]


@dataclass(frozen=True, order=True)
class Unit:
    """Work unit: chains ``campaign.block_chains(block)`` of measurement ``measurement``, drawn to
    ``draws`` per chain (None: the campaign's ``draws``; an ``until`` round sets its own)."""

    measurement: int
    block: int
    draws: int | None = None


def count_measurements(campaign: Campaign) -> int:
    """M: ``data.simulate.count`` or the first axis of the ``data.y`` file (read lazily)."""
    if campaign.data.simulate is not None:
        return campaign.data.simulate.count
    from uqcampaign.pipeline.data import read_shape

    return read_shape(campaign.resolve(campaign.data.y), "data.y")[0]


def plan_units(campaign: Campaign, n_measurements: int | None = None) -> list[Unit]:
    """Every unit of the campaign, measurement-major: `M × ceil(chains / chunks.chains)` units.

    ``n_measurements`` defaults to the campaign's M (see :func:`count_measurements`).
    """
    if n_measurements is None:
        n_measurements = count_measurements(campaign)
    return [Unit(m, b) for m in range(n_measurements) for b in range(campaign.n_blocks)]


def pending_units(campaign: Campaign, done: np.ndarray) -> list[Unit]:
    """Units whose chains are not all done, from ``draws_done`` `(measurement, chain)`."""
    return [
        unit
        for unit in plan_units(campaign, done.shape[0])
        if int(done[unit.measurement, campaign.block_chains(unit.block)].min()) < campaign.draws
    ]


def default_worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def load_components(campaign: Campaign, prior: Any = None, operator: Any = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """``(prior, operator, sampler)`` of the campaign on ``device`` (a given prior/operator is reused)."""
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.samplers.registry import build_sampler

    if prior is None:
        # Campaigns run in float32 (exact posteriors are still computed in float64 by the prior); a learned
        # prior's `dtype` key keeps its networks in that dtype (the formulas follow the chains' float32).
        dtype = None if campaign.prior.get("dtype") is not None else torch.float32
        prior = build_prior(dict(campaign.prior), campaign.root).to(device=device, dtype=dtype)
    if operator is None:
        operator = build_operator(dict(campaign.operator), tuple(prior.img_shape), campaign.root).to(device=device)
    return prior, operator, build_sampler(dict(campaign.sampler))


def run_unit(
    campaign: Campaign,
    unit: Unit,
    store: Any,
    *,
    prior: Any = None,
    operator: Any = None,
    device: str = "cpu",
    worker: str | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> UnitStats:
    """Run one unit and write its chunks of ``samples`` and ``draws_done``; returns its stats.

    ``store``: a path/URL, Zarr store object or group of an initialized campaign store.
    A unit whose draws are all done returns at once and writes nothing (``draws_written=0``).
    Otherwise the stats are also written to the store's ``units/`` group. ``on_chunk`` (if
    given) is called with the number of chain-draws of each chunk as it is computed.
    """
    if unit.draws is not None:
        campaign = campaign.with_draws(unit.draws)
    group = open_store(store, mode="r+", storage_options=campaign.storage_options)
    m, chains = unit.measurement, campaign.block_chains(unit.block)
    n_chains = chains.stop - chains.start
    writer = DrawWriter(group)
    already = int(np.asarray(writer.draws_done[m, chains]).min())
    worker = worker or default_worker_name()
    if already >= campaign.draws:
        return UnitStats(m, unit.block, 0.0, float("nan"), 0, str(device), worker)

    start = time.perf_counter()
    prior, operator, sampler = load_components(campaign, prior, operator, device)
    y = torch.as_tensor(np.asarray(obs_array(group)[m]), dtype=torch.float32, device=device)  # (*obs_shape)
    generator = unit_generator(campaign.seed, m, unit.block, device)
    chunks = campaign.draw_chunks()
    facts = UnitFacts(sampler_arrays(campaign, json_attr(group, "prior") or {}), sampler.kind)
    # (chain, draw, C, H, W) on the sampler's device: one host transfer per chunk, not a sync per draw
    buffer = torch.empty((n_chains, campaign.chunks.draws, *prior.img_shape), dtype=torch.float32, device=device)
    written = nfe = 0
    k = 0  # index of the chunk being filled
    for draw in sampler.run(y, operator, prior, campaign.noise.sigma, n_chains, campaign.draws, generator):
        nfe += draw.nfe
        facts.observe(draw)
        chunk = chunks[k]
        buffer[:, draw.index - chunk.start] = draw.x.detach()
        if draw.index + 1 < chunk.stop:
            continue
        if chunk.stop > already:  # a done chunk was recomputed only to move the chain on
            writer.write(m, chains, chunk, buffer[:, : chunk.stop - chunk.start].cpu().numpy())
            if k == len(chunks) - 1:  # the unit's facts, before the write that completes it
                write_unit_facts(group, m, unit.block, facts.arrays, facts.values(n_chains))
            writer.mark_done(m, chains, chunk.stop)
            new = chunk.stop - max(chunk.start, already)  # a grown partial chunk is rewritten with its done draws
            written += new
            if on_chunk is not None:
                on_chunk(n_chains * new)
        k += 1
        if k == len(chunks):
            break
    stats = UnitStats(
        measurement=m,
        block=unit.block,
        seconds=time.perf_counter() - start,
        nfe_per_draw=nfe / campaign.draws,
        draws_written=written,
        device=str(device),
        worker=worker,
    )
    write_unit_stats(group, stats)
    return stats
