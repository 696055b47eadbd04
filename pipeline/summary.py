"""The ``summary/`` group's life: written beside the old one, swapped in whole, known stale.

``uqc reduce`` writes the new summary into ``summary.new/`` with attr ``complete = 0``, records
there the ``draws_done`` `(measurement, chain)` it was computed from (array ``draws_done``), and
sets ``complete = 1`` last. Only then :func:`publish_summary` swaps it in:

- local disk: ``summary`` → ``summary.old``, ``summary.new`` → ``summary`` (two renames), then
  ``summary.old`` is removed;
- object storage (no rename): ``summary/zarr.json`` is deleted first, then the rest of the old
  summary; every object of ``summary.new/`` is copied to ``summary/``, its ``zarr.json`` last;
  then ``summary.new/`` goes, its ``zarr.json`` first.

A reader takes the first *complete* group of ``summary.new``, ``summary``, ``summary.old``
(:func:`readable_summary`): at every instant of either swap one of them is complete, so a swap
interrupted half-way never shows a half summary, and a failed or killed reduce (which never
marks ``summary.new`` complete) leaves ``summary/`` as it was, byte for byte. The next writer
finishes an interrupted swap or removes the unfinished ``summary.new`` (:func:`recover_summary`).

A summary is *stale* when the store's ``draws_done`` differs from the one it records (a run
resumed or grown since); :func:`summary_status` says so, and ``report``/``maps`` refuse it.
Groups are opened without consolidated metadata, which a hand-removed ``summary/`` leaves stale.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.location import Location, io_errors, store_location

__all__ = [
    "SUMMARY",
    "SUMMARY_NEW",
    "SUMMARY_OLD",
    "SummaryStatus",
    "is_complete",
    "readable_summary",
    "summary_status",
    "open_summary_group",
    "publish_summary",
    "recover_summary",
    "discard_new_summary",
]

SUMMARY, SUMMARY_NEW, SUMMARY_OLD = "summary", "summary.new", "summary.old"


def is_complete(location: Location, path: str) -> bool:
    """True when group ``path`` exists and its attrs say ``complete = 1``."""
    raw = location.read_bytes(path, "zarr.json")
    if not raw:
        return False
    try:
        return int(json.loads(raw).get("attributes", {}).get("complete", 0)) == 1
    except (json.JSONDecodeError, TypeError, ValueError):
        return False


def readable_summary(root: zarr.Group) -> str | None:
    """Path of the summary group to read: the first complete of summary.new, summary, summary.old."""
    location = Location.of(root)
    with io_errors(location, "read the summary"):
        for path in (SUMMARY_NEW, SUMMARY, SUMMARY_OLD):
            if is_complete(location, path):
                return path
        return None


def _open(root: zarr.Group, path: str, mode: str = "r") -> zarr.Group:
    return zarr.open_group(root.store, path=path, mode=mode, zarr_format=3, use_consolidated=False)


@dataclass(frozen=True)
class SummaryStatus:
    """``state``: ``"fresh"``, ``"stale"`` or ``"missing"``; ``path``: the group to read (None when
    missing); ``summarised``/``stored``: chain-draws the summary counts / the store holds now;
    ``legacy``: a summary written before summaries recorded their draws."""

    state: str
    path: str | None
    summarised: int = 0
    stored: int = 0
    legacy: bool = False

    def describe(self, name: str) -> str:
        """One line for the user, naming the fix."""
        if self.state == "missing":
            return f"store {name} has no summary: run `uqc reduce {name}` (or pass --reduce)"
        if self.state == "stale" and self.legacy:
            return (
                f"the summary of store {name} was written by an earlier uqcampaign and does not record the draws it summarises: "
                f"run `uqc reduce {name}` (or pass --reduce)"
            )
        if self.state == "stale":
            return (
                f"the summary of store {name} is stale: it was computed from {self.summarised} chain-draws and the store now holds "
                f"{self.stored}; run `uqc reduce {name}` (or pass --reduce)"
            )
        return f"summary of {self.summarised} chain-draws, up to date"


def summary_status(root: zarr.Group) -> SummaryStatus:
    """Whether ``root``'s summary exists and summarises the draws the store holds now."""
    done = np.asarray(root["draws_done"][...])
    stored = int(done.sum())
    path = readable_summary(root)
    if path is None:
        legacy = _legacy_summary(root)
        return SummaryStatus("stale", SUMMARY, 0, stored, legacy=True) if legacy else SummaryStatus("missing", None, 0, stored)
    group = _open(root, path)
    if "draws_done" not in group:
        return SummaryStatus("stale", path, 0, stored, legacy=True)
    record = np.asarray(group["draws_done"][...])
    fresh = record.shape == done.shape and bool((record == done).all())
    return SummaryStatus("fresh" if fresh else "stale", path, int(record.sum()), stored)


def _legacy_summary(root: zarr.Group) -> bool:
    """A ``summary/`` group with a ``mean`` array but no ``complete`` attr (uqcampaign 0.1)."""
    location = Location.of(root)
    raw = location.read_bytes(SUMMARY, "zarr.json")
    if not raw:
        return False
    with contextlib.suppress(json.JSONDecodeError):
        if "complete" in json.loads(raw).get("attributes", {}):
            return False
    return location.exists(SUMMARY, "mean", "zarr.json")


def open_summary_group(root: zarr.Group, *, allow_stale: bool = False) -> tuple[zarr.Group, SummaryStatus]:
    """The readable summary group and its status; UQError (one line, naming the fix) when it is
    missing, or stale and ``allow_stale`` is False."""
    status = summary_status(root)
    if status.state == "missing" or (status.state == "stale" and not allow_stale):
        raise UQError(status.describe(store_location(root)))
    assert status.path is not None
    return _open(root, status.path), status


def publish_summary(root: zarr.Group) -> None:
    """Swap the complete ``summary.new`` in as ``summary`` (see the module docstring)."""
    location = Location.of(root)
    with io_errors(location, "swap the new summary in"):
        if not is_complete(location, SUMMARY_NEW):
            raise UQError(f"{location.url}: summary.new is not complete; nothing to swap in (run `uqc reduce` again)")
        if location.is_local:
            if location.exists(SUMMARY_OLD):
                location.remove(SUMMARY_OLD)
            if location.exists(SUMMARY):
                location.move_tree(SUMMARY, SUMMARY_OLD)
            location.move_tree(SUMMARY_NEW, SUMMARY)
            location.remove(SUMMARY_OLD)
            return
        location.remove(SUMMARY, "zarr.json")  # the old summary stops being complete first
        location.remove(SUMMARY)
        location.move_tree(SUMMARY_NEW, SUMMARY)


def recover_summary(root: zarr.Group) -> str | None:
    """Finish a swap a killed reduce left half-done, or remove its unfinished ``summary.new``.

    Writers call this under the store's lease before they write. Returns what was done, or None.
    """
    location = Location.of(root)
    with io_errors(location, "recover the summary"):
        done = None
        if is_complete(location, SUMMARY_NEW):
            publish_summary(root)
            done = "finished the swap of a summary that an interrupted `uqc reduce` had completed"
        elif location.exists(SUMMARY_NEW):
            location.remove(SUMMARY_NEW)
            done = "removed the unfinished summary.new of an interrupted `uqc reduce`"
        if location.exists(SUMMARY_OLD):
            if not is_complete(location, SUMMARY) and is_complete(location, SUMMARY_OLD):
                location.move_tree(SUMMARY_OLD, SUMMARY)
            else:
                location.remove(SUMMARY_OLD)
        return done


def discard_new_summary(root: Any) -> None:
    """Remove an unfinished ``summary.new`` after a failed reduce (best effort: a failure here
    leaves it for :func:`recover_summary`)."""
    with contextlib.suppress(Exception):
        location = Location.of(root)
        if not is_complete(location, SUMMARY_NEW):
            location.remove(SUMMARY_NEW)
