"""The ``ray.wait`` loop's bookkeeping on a real local Ray instance, with scripted test actors.

Each :class:`ScriptedWorker` writes ``info-<slot>.<generation>`` when it answers ``info()`` and
appends ``<slot> <generation> <measurement> <block>`` to ``journal`` when a ``run`` starts, so a
test can tell which actor started which unit. Its script (plain dicts, no test types) says which
units kill the actor (``os._exit``), which raise a :class:`UQError`, and how many actors must
have answered ``info()`` before a ``run`` goes on (so that the units spread over the workers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import ActorDiedError

from uqcampaign.cluster.scheduler import UnitScheduler
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.units import Unit

ALL_UNITS = [(m, b) for m in range(3) for b in range(2)]


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class ScriptedWorker:
    """A stand-in for ``HostedWorker``: ``info()`` and ``run(unit)`` with the same result shapes.

    ``script`` keys: ``die_on`` (units that kill every actor), ``die_first`` (the first actor of
    slot 0 dies on its first unit), ``raise_on`` (unit -> UQError message), ``feed_after``
    (actors that must have answered ``info()`` before a ``run`` proceeds).
    """

    def __init__(self, slot: int, generation: int, folder: str, script: dict[str, Any]) -> None:
        self.slot, self.generation, self.folder, self.script = slot, generation, Path(folder), script

    def info(self) -> dict[str, Any]:
        """``{node_id, gpu_ids, label}``, after marking this actor as started."""
        (self.folder / f"info-{self.slot}.{self.generation}").touch()
        node = ray.get_runtime_context().get_node_id()
        return {"node_id": node, "gpu_ids": [], "label": f"ray:{node[:24]}:gpu-:{os.getpid()}"}

    def run(self, unit: tuple[int, int]) -> dict[str, Any]:
        """``{measurement, block, draws_written, slot, generation}``, or death / UQError as scripted."""
        unit = tuple(unit)
        with open(self.folder / "journal", "a") as journal:
            journal.write(f"{self.slot} {self.generation} {unit[0]} {unit[1]}\n")
        if unit in self.script.get("die_on", ()) or (self.script.get("die_first") and (self.slot, self.generation) == (0, 0)):
            os._exit(1)
        if unit in self.script.get("raise_on", {}):
            raise UQError(self.script["raise_on"][unit])
        self._wait_for_actors(self.script.get("feed_after", 0))
        return {"measurement": unit[0], "block": unit[1], "draws_written": 5, "slot": self.slot, "generation": self.generation}

    def ping(self) -> str:
        """``"pong"`` while alive."""
        return "pong"

    def _wait_for_actors(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(list(self.folder.glob("info-*"))) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture(scope="module", autouse=True)
def local_ray(ray_files: str) -> Iterator[None]:
    """A local Ray instance of 2 CPUs whose files live under ``ray_files``."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=ray_files, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


class Harness:
    """A :class:`UnitScheduler` over 6 units whose actors follow ``script``; keeps every actor made."""

    def __init__(self, folder: Path, script: dict[str, Any], **kwargs: Any) -> None:
        self.folder, self.script, self.actors = folder, script, []
        units = [Unit(m, b) for m, b in ALL_UNITS]
        self.scheduler = UnitScheduler(self.make_actor, 2, units, poll=0.1, **kwargs)

    def make_actor(self, slot: int, generation: int) -> Any:
        actor = ScriptedWorker.remote(slot, generation, str(self.folder), self.script)
        self.actors.append(actor)
        return actor

    def journal(self) -> list[tuple[int, int, int, int]]:
        """``(slot, generation, measurement, block)`` of every run started, in order."""
        path = self.folder / "journal"
        lines = path.read_text().split("\n") if path.exists() else []
        return [tuple(int(x) for x in line.split()) for line in lines if line]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """``harness(script, **scheduler_kwargs)``; every scheduler made is shut down afterwards."""
    made: list[Harness] = []

    def make(script: dict[str, Any], **kwargs: Any) -> Harness:
        made.append(Harness(tmp_path, script, **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.scheduler.shutdown()


def _alive(actor: Any) -> bool:
    try:
        return ray.get(actor.ping.remote(), timeout=30) == "pong"
    except ActorDiedError:
        return False


def _done(results: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return sorted((r["measurement"], r["block"]) for r in results)


def test_every_unit_runs_once_without_faults(harness):
    h = harness({"feed_after": 2})
    results = h.scheduler.run()
    assert _done(results) == ALL_UNITS
    assert sorted((m, b) for _, _, m, b in h.journal()) == ALL_UNITS  # each started once
    assert h.scheduler.stats.actors_started == 2 and h.scheduler.stats.units_requeued == 0
    assert {r["slot"] for r in results} == {0, 1}  # both workers fed


def test_dead_worker_unit_is_requeued_on_a_replacement(harness):
    events: list[str] = []
    h = harness({"die_first": True, "feed_after": 3}, on_event=events.append)
    results = h.scheduler.run()
    assert _done(results) == ALL_UNITS  # the lost unit exactly once
    lost = [(m, b) for slot, gen, m, b in h.journal() if (slot, gen) == (0, 0)]
    assert len(lost) == 1
    redone = [(r["slot"], r["generation"]) for r in results if (r["measurement"], r["block"]) == lost[0]]
    assert len(redone) == 1 and redone[0] != (0, 0)
    stats = h.scheduler.stats
    assert stats.actors_lost == 1 and stats.units_requeued == 1 and stats.actors_started == 3
    assert sorted((w["slot"], w["generation"]) for w in stats.workers) == [(0, 0), (0, 1), (1, 0)]
    assert any((r["slot"], r["generation"]) == (0, 1) for r in results)  # the replacement was fed
    assert not _alive(h.actors[0])
    # one line for the event: the worker, its node, Ray's reason (the cause, not the generic first line), the unit
    node = ray.get_runtime_context().get_node_id()[:12]
    assert events == stats.events and len(events) == 1, events
    assert events[0].startswith(f"worker 0 lost on node {node}: ")
    assert events[0].endswith(f"; unit (measurement {lost[0][0]}, block {lost[0][1]}) requeued")
    assert "unexpectedly before finishing this task" not in events[0] and "\n" not in events[0]


def test_unit_that_keeps_killing_its_worker_stops_after_max_attempts(harness):
    h = harness({"die_on": [(1, 1)]}, max_attempts=3)
    with pytest.raises(UQError, match=r"unit \(measurement 1, block 1\) lost its worker 3 times"):
        h.scheduler.run()
    assert [(m, b) for _, _, m, b in h.journal()].count((1, 1)) == 3
    assert any(_alive(actor) for actor in h.actors)  # a worker still stands before shutdown
    h.scheduler.shutdown()
    assert not any(_alive(actor) for actor in h.actors)


def test_uqerror_from_a_unit_stops_at_once(harness):
    h = harness({"raise_on": {(0, 0): "prior folder not found: /somewhere/prior"}})
    with pytest.raises(UQError) as caught:
        h.scheduler.run()
    assert str(caught.value) == "prior folder not found: /somewhere/prior"
    assert h.scheduler.stats.actors_started == 2 and h.scheduler.stats.actors_lost == 0  # nothing restarted
    assert [(m, b) for _, _, m, b in h.journal()].count((0, 0)) == 1
