"""``uqc run`` on Ray: one prior-holding actor per worker slot, spread over the nodes.

Steps of :func:`run_campaign_ray`:

1. attach to Ray (``local`` starts one sized to this machine; ``auto``/``ray://``/``host:port``
   join a cluster: token auth set up, an unreachable cluster or an auth mismatch fails in
   seconds), see :mod:`.connect`;
2. size the pool from the alive nodes (``workers × gpus_per_worker`` must fit), see
   :mod:`.resources`; a local store path with nodes on other hosts is warned about;
3. take the store's lease (a second ``uqc run`` is refused, naming this one), create, reopen
   or grow the store (the same steps as the in-process runner); the units that
   ``draws_done`` marks complete are skipped, so ``--resume`` after a killed driver finishes
   only the rest;
4. reserve one placement-group bundle ``{CPU: k, GPU: gpus_per_worker}`` per worker with
   strategy ``SPREAD`` and start one :class:`~.worker.HostedWorker` actor in each;
5. feed the units with :class:`~.scheduler.UnitScheduler` (re-queues the unit of a dead
   worker, starts a replacement) under a progress bar (chain-draws, draws/s, ETA); each lost
   worker is one line above the bar (which worker, node, Ray's reason, the unit requeued), and
   what Ray publishes to the driver (raylet log tails of a lost node) stays out of the terminal;
6. keep the run's Ray facts in the store's ``ray`` attribute (per-unit node/GPU are in
   ``units/worker``, see :func:`~.worker.worker_label`; ``events`` and ``ray_messages``: the
   lines of the lost workers and the first line of each message Ray published) and
   consolidate the metadata.

A campaign with ``until:`` runs the round loop of :func:`~uqcampaign.pipeline.until.run_rounds`
(the in-process runner's too): step 5 runs once per round, on the same workers (placed for the
first round, each loading the prior once), with units that carry the round's draws
(:class:`~uqcampaign.pipeline.units.Unit` ``draws``); the driver checks convergence between rounds,
reading the store.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from typing import Any

import numpy as np
import zarr
from rich.console import Console

from uqcampaign.cluster.connect import Connection, check_store_reachable, connect, disconnect
from uqcampaign.cluster.resources import WorkerShape, alive_node_resources, bundles, size_workers, worker_budget
from uqcampaign.cluster.scheduler import UnitScheduler
from uqcampaign.cluster.worker import HostedWorker
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.address import parse_address
from uqcampaign.pipeline.campaign_store import create_or_open
from uqcampaign.pipeline.config import Campaign
from uqcampaign.pipeline.lease import Lease, hold_lease
from uqcampaign.pipeline.location import Location
from uqcampaign.pipeline.preflight import Budget, check_campaign, check_stored_campaign
from uqcampaign.pipeline.runner import RunResult, check_sampler, draw_progress, measurement_layout, units_done
from uqcampaign.pipeline.store import consolidate, draws_done, existing_store_info, json_attr
from uqcampaign.pipeline.units import Unit, load_components, pending_units

__all__ = ["run_campaign_ray", "open_campaign_store"]

PLACEMENT_TIMEOUT_S = 60.0


def open_campaign_store(
    campaign: Campaign, *, force: bool = False, delete_draws: bool = False, say: Any = None, budget: Budget | None = None
) -> tuple[zarr.Group, list[str]]:
    """Create, reopen or grow the campaign's store with the in-process runner's steps.

    The prior is loaded here (and the sampler checked against it) only when a store is created
    or gains measurements: the driver does not sample, and on a cluster the prior may live only
    on the worker nodes. The pre-flight checks the workers' ``budget`` and the store's disk
    first (from the store's attrs when the campaign continues a store). Call it under the
    store's lease.
    """
    attrs = existing_store_info(Location.of(campaign.store_location, campaign.storage_options))
    if attrs is not None and not force and attrs.get("config_hash") == campaign.config_hash() and attrs.get("initialized", False):
        check_stored_campaign(campaign, attrs, budget)
    loaded: list[tuple[Any, Any, Any]] = []

    def components() -> tuple[Any, Any, Any]:
        if not loaded:
            loaded.append(load_components(campaign))
            check_sampler(campaign, *loaded[0])
            check_campaign(campaign, *loaded[0], budget)
        return loaded[0]

    return create_or_open(campaign, force=force, delete_draws=delete_draws, layout=measurement_layout(campaign, components), say=say)


def _placement_group(shape: WorkerShape) -> Any:
    """A ready SPREAD placement group of one bundle per worker; UQError when it cannot be placed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles(shape), strategy="SPREAD")
    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        remove_placement_group(group)
        raise UQError(
            f"Ray could not place {shape.workers} workers of {shape.cpus} CPUs and {shape.gpus:g} GPUs in {PLACEMENT_TIMEOUT_S:g} s "
            f"(free: {ray.available_resources()}); lower --workers or free the cluster"
        )
    return group


def _actor_factory(campaign: Campaign, shape: WorkerShape, group: Any, tag: str) -> Any:
    """``make_actor(slot, generation)``: a HostedWorker actor pinned to bundle ``slot``."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    remote_cls = ray.remote(HostedWorker)
    config, location, root = campaign.to_json(), campaign.store_location, str(campaign.root)

    def make_actor(slot: int, generation: int) -> Any:
        return remote_cls.options(
            name=f"uqc-{tag}-w{slot}.{generation}",
            num_cpus=shape.cpus,
            num_gpus=shape.gpus,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=slot),
        ).remote(config, location, None, root)

    return make_actor


def _record(group: zarr.Group, connection: Connection, shape: WorkerShape, scheduler: UnitScheduler, seconds: float) -> None:
    """Keep the Ray facts of this run in the store's ``ray`` attribute, JSON (appended on resume)."""
    runs = list((json_attr(group, "ray") or {}).get("runs", []))
    nodes = {w["label"].split(":")[1]: w["node_id"] for w in scheduler.stats.workers if w.get("node_id")}
    runs.append(
        {
            "address": connection.address,
            "joined": connection.target.for_ray if connection.target is not None else None,
            "workers": shape.workers,
            "cpus_per_worker": shape.cpus,
            "gpus_per_worker": shape.gpus,
            "units_run": len(scheduler.results),
            "actors_started": scheduler.stats.actors_started,
            "actors_lost": scheduler.stats.actors_lost,
            "units_requeued": scheduler.stats.units_requeued,
            "seconds": round(seconds, 3),
            "nodes": nodes,
            "events": list(scheduler.stats.events),
            "ray_messages": list(connection.ray_messages),
            "workers_seen": [
                {k: w[k] for k in ("slot", "generation", "node_id", "gpu_ids", "device", "threads", "label")} for w in scheduler.stats.workers
            ],
        }
    )
    group.attrs["ray"] = json.dumps({"runs": runs})


class _Pool:
    """The Ray workers of one run: placed for the first batch of units and kept for the next ones
    (the rounds of an ``until`` campaign: each worker loads the prior once); :meth:`close`
    releases them and records the run in the store."""

    def __init__(self, campaign: Campaign, group: zarr.Group, connection: Connection, on_event: Any, stall_timeout: float, start: float) -> None:
        self.campaign, self.group, self.connection, self.on_event = campaign, group, connection, on_event
        self.stall_timeout, self.start = stall_timeout, start
        self.shape: WorkerShape | None = None
        self.placement: Any = None
        self.scheduler: UnitScheduler | None = None

    def run(self, units: list[Unit], shape: WorkerShape, on_result: Any) -> list[dict[str, Any]]:
        """Run ``units`` (placing ``shape`` workers the first time); their results."""
        if self.scheduler is None:
            self.shape, self.placement = shape, _placement_group(shape)
            make_actor = _actor_factory(self.campaign, shape, self.placement, uuid.uuid4().hex[:8])
            self.scheduler = UnitScheduler(make_actor, shape.workers, [], on_event=self.on_event, stall_timeout=self.stall_timeout)
        self.scheduler.on_result = on_result
        self.scheduler.queue.extend(units)
        return self.scheduler.run()

    def close(self) -> None:
        """Kill the actors, remove the placement group, record the run (nothing when never placed)."""
        if self.scheduler is None:
            return
        from ray.util.placement_group import remove_placement_group

        scheduler, self.scheduler = self.scheduler, None
        try:
            scheduler.shutdown()
        finally:
            remove_placement_group(self.placement)
            assert self.shape is not None
            _record(self.group, self.connection, self.shape, scheduler, time.perf_counter() - self.start)


def run_campaign_ray(
    campaign: Campaign,
    *,
    address: str | None = None,
    workers: int | str | None = None,
    gpus_per_worker: float | None = None,
    resume: bool = False,
    force: bool = False,
    delete_draws: bool = False,
    progress: bool = True,
    console: Console | None = None,
    connect_timeout: float = 5.0,
    stall_timeout: float = 120.0,
) -> RunResult:
    """Run the pending units of ``campaign`` on Ray; see the module docstring.

    ``address``/``workers``/``gpus_per_worker`` override ``campaign.cluster``. ``resume`` only
    changes the messages: a store of the same campaign is always continued (its complete
    units skipped) or grown, as in the in-process runner; ``force`` (with ``delete_draws`` when
    it holds draws) replaces a store of another campaign. Raises :class:`UQError` for an
    unreachable cluster, a pool the cluster cannot hold, a store another run holds, and a
    worker's bad input (e.g. its prior folder missing), after keeping every finished unit.
    """
    console = console or Console(stderr=True)
    address = address or campaign.cluster.address
    if parse_address(address).kind == "in-process":
        from uqcampaign.pipeline.runner import run_campaign

        return run_campaign(campaign, resume=resume, force=force, delete_draws=delete_draws, progress=progress, console=console)
    workers = campaign.cluster.workers if workers is None else workers
    gpus = campaign.cluster.gpus_per_worker if gpus_per_worker is None else gpus_per_worker
    start = time.perf_counter()
    say = functools.partial(console.print, markup=False, highlight=False)
    connection = connect(address, timeout=connect_timeout, say=say)
    try:
        nodes = alive_node_resources()
        shape = size_workers(nodes, workers, gpus)
        check_store_reachable(campaign.store_location, connection)
        with hold_lease(campaign.store_location, "run", campaign.storage_options) as lease:
            opening = campaign
            if campaign.until is not None:
                from uqcampaign.pipeline.until import opening_campaign

                opening = opening_campaign(campaign)  # an until store may hold more draws than the first round
            group, messages = open_campaign_store(
                opening, force=force, delete_draws=delete_draws, say=say, budget=worker_budget(nodes, shape, connection.local)
            )
            if resume and not messages:
                console.print(f"{campaign.store_location}: no earlier run to resume; starting")

            pool = _Pool(campaign, group, connection, say, stall_timeout, start)

            def run_units(this: Campaign, units: list[Unit] | None = None, name: str | None = None) -> tuple[list[Unit], int, int]:
                return _run_pending(this, group, shape, nodes, gpus, pool, lease, progress, console, units, name)

            try:
                if campaign.until is not None:  # the round loop of the in-process runner, units on Ray
                    from uqcampaign.pipeline.until import run_rounds

                    rounds = run_rounds(campaign, group, lambda this, units, name: run_units(this, units, name)[2], say=say)
                    n_run, total, written, messages = rounds.units_run, rounds.units_run, rounds.draws_written, messages + rounds.messages
                else:
                    units, total, written = run_units(campaign)
                    n_run = len(units)
            finally:
                try:
                    pool.close()
                finally:
                    consolidate(group)  # also after a stop: the attrs of the run stay readable
    finally:
        disconnect(connection)
    return RunResult(campaign.store_location, n_run, total, written, time.perf_counter() - start, messages)


def _run_pending(
    campaign: Campaign,
    group: zarr.Group,
    shape: WorkerShape,
    nodes: Any,
    gpus: float,
    pool: _Pool,
    lease: Lease,
    progress: bool,
    console: Console,
    units: list[Unit] | None = None,
    name: str | None = None,
) -> tuple[list[Unit], int, int]:
    """Run ``units`` (default: those ``draws_done`` says are pending) on the ``pool``'s workers;
    returns (units, units in all, draws written). ``name`` labels the progress bar (an ``until`` round)."""
    done = draws_done(group)
    if units is None:
        units = pending_units(campaign, done)
        total = done.shape[0] * campaign.n_blocks
    else:
        total = len(units)
    name = name or campaign.name
    written = 0
    if units:
        if len(units) < shape.workers and pool.shape is None:  # fewer, bigger workers (more CPUs each)
            shape = size_workers(nodes, len(units), gpus)
        remaining = sum(int(np.clip(campaign.draws - done[u.measurement, campaign.block_chains(u.block)], 0, None).sum()) for u in units)
        finished = [total - len(units)]

        def label() -> str:
            return f"{units_done(name, finished[0], total)} on {(pool.shape or shape).workers} Ray workers"

        with draw_progress(console, progress) as bar:
            task = bar.add_task(label(), total=remaining)

            def advance(result: dict[str, Any]) -> None:
                lease.check()
                chains = campaign.block_chains(result["block"])
                finished[0] += 1
                bar.update(task, advance=(chains.stop - chains.start) * result["draws_written"], description=label())

            results = pool.run(units, shape, advance)
        written = sum(result["draws_written"] for result in results)
    return units, total, written
