"""The store's lease: one writer (``uqc run`` or ``uqc reduce``) at a time, named to the others.

A lease is a small JSON object ``.uqc-lease/<generation>.json`` inside the store (Zarr ignores
the folder): ``{command, host, pid, process_start, started, heartbeat, token}``. The holder is
the highest generation present. Taking the lease creates the next generation *exclusively*
(local disk: ``os.link``; S3: ``PUT`` with ``If-None-Match: *``), so of two processes started
at the same instant exactly one succeeds; the other re-reads and is refused with the holder's
name. The holder rewrites its object every :data:`HEARTBEAT_S` seconds and removes it when it
is done.

A lease is stale — and taken over by the next writer — when its heartbeat is older than
:data:`STALE_S` seconds, or at once when its holder ran on this host and that process is gone
(a killed run). A holder whose lease was taken over (its heartbeat stalled past
:data:`STALE_S`) finds out at its next heartbeat; :meth:`Lease.check` then raises.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.location import Location, io_errors
from uqcampaign.pipeline.store import LEASE_DIR

__all__ = ["HEARTBEAT_S", "STALE_S", "LeaseInfo", "Lease", "hold_lease", "current_holder"]

HEARTBEAT_S = 5.0
STALE_S = 60.0
_ATTEMPTS = 8  # generations tried before giving up (each failed try means another writer won)
_WAIT_UNREADABLE_S = 2.0  # a just-created lease object may be unreadable for a moment (S3 listing)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _process_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease object holds."""

    command: str
    host: str
    pid: int
    process_start: float
    started: str
    heartbeat: str
    token: str
    generation: int = 0

    def age(self) -> float:
        """Seconds since the last heartbeat."""
        return (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(self.heartbeat)).total_seconds()

    def alive(self) -> bool:
        """False when the heartbeat is older than :data:`STALE_S`, or the holder's process (this host) is gone."""
        if self.age() > STALE_S:
            return False
        if self.host == socket.gethostname():
            start = _process_start(self.pid)
            return start is not None and abs(start - self.process_start) < 1.0
        return True

    def describe(self) -> str:
        """``uqc run (pid 123 on host h, since …, heartbeat 2 s ago)``."""
        return f"`uqc {self.command}` (pid {self.pid} on host {self.host}, since {self.started}, heartbeat {self.age():.0f} s ago)"


def _name(generation: int) -> str:
    return f"{generation:010d}.json"


def _read(location: Location, generation: int) -> LeaseInfo | None:
    raw = location.read_bytes(LEASE_DIR, _name(generation))
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return LeaseInfo(**{**data, "generation": generation})
    except (json.JSONDecodeError, TypeError):
        return None


def _generations(location: Location) -> list[int]:
    return sorted(int(name.split(".")[0]) for name in location.list(LEASE_DIR) if name.endswith(".json") and name.split(".")[0].isdigit())


def current_holder(location: Any) -> LeaseInfo | None:
    """The live holder of the store's lease, None when it is free (or stale)."""
    location = Location.of(location)
    generations = _generations(location)
    if not generations:
        return None
    info = _read(location, generations[-1])
    return info if info is not None and info.alive() else None


class Lease:
    """A lease this process holds; :meth:`release` (or the context manager) gives it back."""

    def __init__(self, location: Location, info: LeaseInfo) -> None:
        self.location = location
        self.info = info
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="uqc-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                newer = [g for g in _generations(self.location) if g > self.info.generation]
                if newer:
                    holder = _read(self.location, newer[-1])
                    self.lost = holder.describe() if holder else "another writer"
                    return
                self.info = LeaseInfo(**{**asdict(self.info), "heartbeat": _now()})
                self.location.write_atomic(_encode(self.info), LEASE_DIR, _name(self.info.generation))
            except Exception:  # a failed heartbeat is retried; a lease gone stale is found by the others
                continue

    def check(self) -> None:
        """UQError when another writer took the lease over (this process stalled past STALE_S)."""
        if self.lost is not None:
            raise UQError(
                f"{self.location.url}: the store's lease was taken over by {self.lost} after this process missed its heartbeats "
                f"for {STALE_S:g} s; stop here (finished chunks are kept) and let that one finish"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove this lease's object (nothing when it was taken over)."""
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S)
        if self.lost is None:
            with contextlib.suppress(Exception):
                self.location.remove(LEASE_DIR, _name(self.info.generation))
                self.location.remove_empty_folder(LEASE_DIR)  # a free store has no lease folder


def _encode(info: LeaseInfo) -> bytes:
    data = asdict(info)
    data.pop("generation")
    return json.dumps(data).encode()


def _acquire(location: Location, command: str) -> Lease:
    me = LeaseInfo(
        command=command,
        host=socket.gethostname(),
        pid=os.getpid(),
        process_start=_process_start(os.getpid()) or 0.0,
        started=_now(),
        heartbeat=_now(),
        token=uuid.uuid4().hex,
    )
    for _ in range(_ATTEMPTS):
        generations = _generations(location)
        if generations:
            top = generations[-1]
            holder = _read(location, top)
            deadline = time.monotonic() + _WAIT_UNREADABLE_S
            while holder is None and time.monotonic() < deadline:  # being written right now
                time.sleep(0.05)
                holder = _read(location, top)
            if holder is not None and holder.alive():
                raise UQError(
                    f"{location.url} is held by {holder.describe()}; wait for it to finish, or stop it "
                    f"(a killed run's lease is taken over at once on its host, after {STALE_S:g} s elsewhere)"
                )
        generation = generations[-1] + 1 if generations else 0
        me = LeaseInfo(**{**asdict(me), "generation": generation, "heartbeat": _now()})
        if location.create_exclusive(_encode(me), LEASE_DIR, _name(generation)):
            for old in generations:  # stale or released leases: history no one needs
                with contextlib.suppress(Exception):
                    location.remove(LEASE_DIR, _name(old))
            return Lease(location, me)
    raise UQError(f"{location.url}: could not take the store's lease after {_ATTEMPTS} tries (other writers keep starting); try again")


@contextlib.contextmanager
def hold_lease(location: Any, command: str, storage_options: Any = None) -> Iterator[Lease]:
    """Hold the store's lease for ``command`` (``"run"``, ``"reduce"``) while the block runs.

    Refuses with a UQError naming the holder when a live writer holds it. A location with no
    store yet is created for the lease and, if no store was written into it by the end of the
    block (a refused campaign, say), removed again.
    """
    location = Location.of(location, storage_options)
    existed = location.exists()
    action = f"write to the store (`uqc {command}` keeps its lease and results there)" if existed else "create the store"
    with io_errors(location, action):
        lease = _acquire(location, command)
    try:
        yield lease
    finally:
        lease.release()
        if not existed:
            with contextlib.suppress(Exception):
                if not location.exists("zarr.json"):
                    location.remove(LEASE_DIR)
                    if location.is_free(set()):
                        location.remove()
