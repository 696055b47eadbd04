"""The ``ray.wait`` loop's bookkeeping, driven by scripted fake actors (no Ray cluster needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

import uqcampaign.cluster.scheduler as scheduler_module
from uqcampaign.cluster.scheduler import UnitScheduler
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.units import Unit


class FakeRef:
    """A call's future: ``outcome()`` returns the value or raises."""

    def __init__(self, outcome: Callable[[], Any]) -> None:
        self.outcome = outcome


class FakeActor:
    """Scripted actor: ``fail_on`` maps a unit to the exception its run raises (once per actor)."""

    def __init__(self, slot: int, generation: int, fail_on: dict[tuple[int, int], BaseException]) -> None:
        self.slot, self.generation, self.fail_on, self.killed = slot, generation, fail_on, False
        self.info = self._method(lambda: {"node_id": f"node{slot}", "gpu_ids": [], "label": f"ray:node{slot}:gpu-:1"})
        self.run = self._method(self._run)

    def _method(self, body: Callable[..., Any]) -> Any:
        return type("Method", (), {"remote": staticmethod(lambda *args: FakeRef(lambda: body(*args)))})()

    def _run(self, unit: tuple[int, int]) -> dict[str, Any]:
        if unit in self.fail_on:
            raise self.fail_on[unit]
        return {"measurement": unit[0], "block": unit[1], "draws_written": 5, "slot": self.slot, "generation": self.generation}


class FakeRay:
    """``wait`` returns the oldest pending ref; ``get`` runs it; ``kill`` marks the actor."""

    @staticmethod
    def wait(refs: list[FakeRef], num_returns: int, timeout: float) -> tuple[list[FakeRef], list[FakeRef]]:
        return refs[:1], refs[1:]

    @staticmethod
    def get(ref: FakeRef) -> Any:
        return ref.outcome()

    @staticmethod
    def kill(actor: FakeActor, no_restart: bool = True) -> None:
        actor.killed = True

    @staticmethod
    def available_resources() -> dict[str, float]:
        return {}


def _died() -> ActorDiedError:
    return ActorDiedError()


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "ray", FakeRay)


def _scheduler(fail_on: dict[tuple[int, int], BaseException], n_units: int = 6, **kwargs: Any) -> tuple[UnitScheduler, list[FakeActor]]:
    actors: list[FakeActor] = []

    def make_actor(slot: int, generation: int) -> FakeActor:
        # Only the first actor of slot 0 fails: a replacement runs the unit.
        actor = FakeActor(slot, generation, fail_on if (slot, generation) == (0, 0) or kwargs.get("always") else {})
        actors.append(actor)
        return actor

    units = [Unit(m, b) for m in range(n_units // 2) for b in range(2)]
    return UnitScheduler(make_actor, 2, units, **{k: v for k, v in kwargs.items() if k != "always"}), actors


def test_every_unit_runs_once_without_faults(fake_ray):
    scheduler, actors = _scheduler({})
    results = scheduler.run()
    assert sorted((r["measurement"], r["block"]) for r in results) == [(m, b) for m in range(3) for b in range(2)]
    assert scheduler.stats.actors_started == 2 and scheduler.stats.units_requeued == 0
    assert {r["slot"] for r in results} == {0, 1}  # both workers fed


def test_dead_worker_unit_is_requeued_on_a_replacement(fake_ray):
    scheduler, actors = _scheduler({(0, 0): _died()})
    results = scheduler.run()
    done = sorted((r["measurement"], r["block"]) for r in results)
    assert done == [(m, b) for m in range(3) for b in range(2)]  # (0, 0) exactly once
    assert scheduler.stats.actors_lost == 1 and scheduler.stats.units_requeued == 1
    assert scheduler.stats.actors_started == 3 and actors[0].killed
    assert len(scheduler.stats.workers) == 3


def test_unit_that_keeps_killing_its_worker_stops_after_max_attempts(fake_ray):
    scheduler, actors = _scheduler({(1, 1): _died()}, always=True, max_attempts=3)
    with pytest.raises(UQError, match=r"unit \(measurement 1, block 1\) lost its worker 3 times"):
        scheduler.run()
    scheduler.shutdown()
    assert all(actor.killed for actor in actors)


def test_uqerror_from_a_unit_stops_at_once(fake_ray):
    scheduler, actors = _scheduler({(0, 0): UQError("prior folder not found: /somewhere/prior")})
    with pytest.raises(UQError, match="/somewhere/prior"):
        scheduler.run()
    assert scheduler.stats.actors_started == 2  # nothing restarted
