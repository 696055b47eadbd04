"""Feeding work units to Ray actors with one ``ray.wait`` loop, surviving dead workers.

Each worker slot (one placement-group bundle) holds one actor at a time and at most one
outstanding call: ``info()`` while it starts, ``run(unit)`` while it works. The loop waits on
all outstanding calls together and

- gives the next queued unit to a slot whose call returned (``ray.util.ActorPool`` is not
  used: one dead actor can jam it, Ray issue #50313);
- on ``RayActorError`` (actor killed, node lost, OOM-killed) puts that slot's unit back at the
  head of the queue and starts a replacement actor in the same bundle, which Ray places once
  resources allow (a restarted actor would have lost its chain anyway: the unit is simply redone
  from its seed, and chunks already marked done are never written again), and reports the event
  in one line (``on_event``): which worker, on which node, Ray's reason, which unit was requeued;
- on a :class:`UQError` from a worker stops at once with that message (no retry storm); a
  unit that loses its worker ``max_attempts`` times, or a slot that cannot start an actor
  ``max_attempts`` times in a row, also stops the campaign.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, NodeDiedError, OutOfMemoryError, RayActorError, RayTaskError, WorkerCrashedError

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.units import Unit

__all__ = ["UnitScheduler", "Slot", "SchedulerStats", "WORKER_LOST", "loss_reason"]

_LONG_ID = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{16,}\b")
# What a lost worker looks like from ray.get: actor killed or crashed, its node gone, OOM-killed.
WORKER_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError)


@dataclass
class Slot:
    """One worker slot: bundle ``index`` of the placement group and its current actor."""

    index: int
    actor: Any = None
    generation: int = -1
    state: str = "dead"  # starting | idle | busy | dead
    info: dict[str, Any] | None = None
    start_failures: int = 0


@dataclass
class SchedulerStats:
    """What the loop did beyond running units."""

    actors_started: int = 0
    actors_lost: int = 0
    units_requeued: int = 0
    workers: list[dict[str, Any]] = field(default_factory=list)  # info() of every actor that started
    events: list[str] = field(default_factory=list)  # one line per lost worker


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def loss_reason(exc: BaseException) -> str:
    """Ray's reason for a lost actor, in one line.

    ``ActorDiedError`` reads ``The actor died unexpectedly before finishing this task.`` then
    tab-indented fields (class_name, actor_id, pid, ip, ...) then the cause (e.g. ``The actor is
    dead because its node has died.``): the cause is the first line after the fields.
    """
    lines = str(exc).splitlines()
    reason = next((line.strip() for line in lines[1:] if line.strip() and not line.startswith(("\t", " "))), _first_line(exc))
    return _LONG_ID.sub(r"\1…", reason)  # actor/node ids: 8 hex digits say which


class UnitScheduler:
    """Runs ``units`` on ``n_slots`` actors made by ``make_actor(slot_index, generation)``.

    ``on_result(result)`` is called with each unit's result dict (``PriorWorker.run``) as it
    arrives; ``on_event(line)`` with each lost worker's line (also kept in ``stats.events``).
    ``stall_timeout``: seconds with queued units and no live worker before giving up.
    """

    def __init__(
        self,
        make_actor: Callable[[int, int], Any],
        n_slots: int,
        units: Iterable[Unit],
        *,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        max_attempts: int = 3,
        stall_timeout: float = 120.0,
        drain_timeout: float = 30.0,
        poll: float = 0.5,
    ) -> None:
        self.make_actor = make_actor
        self.slots = [Slot(index=i) for i in range(n_slots)]
        self.queue: deque[Unit] = deque(units)
        self.on_result = on_result
        self.on_event = on_event
        self.max_attempts = max_attempts
        self.stall_timeout = stall_timeout
        self.drain_timeout = drain_timeout
        self.poll = poll
        self.attempts: dict[Unit, int] = {}
        self.pending: dict[Any, tuple[Slot, int, Unit | None]] = {}  # ref -> (slot, generation, unit)
        self.results: list[dict[str, Any]] = []
        self.stats = SchedulerStats()
        self._last_alive = time.monotonic()

    # -- actors ---------------------------------------------------------------------------
    def _start(self, slot: Slot) -> None:
        slot.generation += 1
        slot.actor = self.make_actor(slot.index, slot.generation)
        slot.state, slot.info = "starting", None
        self.pending[slot.actor.info.remote()] = (slot, slot.generation, None)
        self.stats.actors_started += 1

    def _event(self, slot: Slot, unit: Unit | None, exc: BaseException) -> None:
        """One line: which worker, on which node (and GPU), Ray's reason, what happens to its unit."""
        info = slot.info or {}
        node = info.get("node_id")
        where = f" on node {node[:12]}" if node else ""
        gpus = info.get("gpu_ids") or []
        where += f" (GPU {','.join(gpus)})" if gpus else ""
        if unit is None:
            then = "before its first unit; starting it again"
        else:
            then = f"unit (measurement {unit.measurement}, block {unit.block}) requeued"
        line = f"worker {slot.index} lost{where}: {loss_reason(exc)}; {then}"
        self.stats.events.append(line)
        if self.on_event is not None:
            self.on_event(line)

    def _replace(self, slot: Slot, unit: Unit | None, exc: BaseException) -> None:
        """The slot's actor died: re-queue its unit, start another actor in the same bundle."""
        self.stats.actors_lost += 1
        if unit is not None:
            self.attempts[unit] = self.attempts.get(unit, 0) + 1
            if self.attempts[unit] >= self.max_attempts:
                raise UQError(
                    f"unit (measurement {unit.measurement}, block {unit.block}) lost its worker {self.attempts[unit]} times "
                    f"(last: {loss_reason(exc)}); check the nodes' memory and logs, then rerun with --resume"
                )
            self._event(slot, unit, exc)
            self.queue.appendleft(unit)
            self.stats.units_requeued += 1
        else:
            slot.start_failures += 1
            if slot.start_failures >= self.max_attempts:
                raise UQError(f"worker {slot.index} failed to start {slot.start_failures} times in a row: {loss_reason(exc)}")
            self._event(slot, unit, exc)
        self.kill(slot)
        self._start(slot)

    def kill(self, slot: Slot) -> None:
        """Kill the slot's actor (no restart); a dead or pending one is fine."""
        if slot.actor is not None:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # already gone
                pass
        slot.actor, slot.state = None, "dead"

    def shutdown(self) -> None:
        """Kill every actor (idle, busy or still waiting for resources)."""
        for slot in self.slots:
            self.kill(slot)
        self.pending.clear()

    # -- loop ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.state == "idle" and self.queue:
                unit = self.queue.popleft()
                slot.state = "busy"
                args = (unit.measurement, unit.block) if unit.draws is None else (unit.measurement, unit.block, unit.draws)
                self.pending[slot.actor.run.remote(args)] = (slot, slot.generation, unit)

    def _handle(self, ref: Any) -> None:
        slot, generation, unit = self.pending.pop(ref)
        if generation != slot.generation:  # an answer from an actor already replaced
            return
        try:
            value = ray.get(ref)
        except WORKER_LOST as exc:
            self._replace(slot, unit, exc)
            return
        except UQError as exc:  # RayTaskError(UQError): a bad input the user must fix
            raise UQError(str(getattr(exc, "cause", None) or exc)) from None
        if unit is None:
            slot.info = value
            slot.start_failures = 0
            self.stats.workers.append({"slot": slot.index, "generation": generation, **value})
        else:
            self.results.append(value)
            if self.on_result is not None:
                self.on_result(value)
        slot.state = "idle"

    def _busy(self) -> bool:
        return any(slot.state == "busy" for slot in self.slots)

    def _check_stall(self) -> None:
        now = time.monotonic()
        if any(slot.state in ("idle", "busy") for slot in self.slots):
            self._last_alive = now
        elif now - self._last_alive > self.stall_timeout:
            raise UQError(
                f"no worker alive for {self.stall_timeout:g} s and none could be started "
                f"({len(self.queue)} units left, cluster resources {ray.available_resources()}); add nodes, then rerun with --resume"
            )

    def run(self) -> list[dict[str, Any]]:
        """Run every queued unit; returns their result dicts (in completion order).

        Call it again after queueing more units (the rounds of an ``until`` campaign): the live
        actors are kept, dead slots restarted; it returns the results of that call.
        """
        first = len(self.results)
        for slot in self.slots:
            if slot.actor is None:
                self._start(slot)
        try:
            while self.queue or self._busy():
                self._dispatch()
                ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=self.poll) if self.pending else ([], [])
                for ref in ready:
                    self._handle(ref)
                self._check_stall()
        except UQError:
            self._drain()
            raise
        return self.results[first:]

    def _drain(self) -> None:
        """After a stop: let units already running finish (their draws are kept), up to ``drain_timeout``."""
        running = {ref: item for ref, item in self.pending.items() if item[2] is not None}
        deadline = time.monotonic() + self.drain_timeout
        while running and time.monotonic() < deadline:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                running.pop(ref)
                try:
                    value = ray.get(ref)
                except (*WORKER_LOST, RayTaskError, GetTimeoutError):
                    continue
                self.results.append(value)
                if self.on_result is not None:
                    self.on_result(value)
