"""Running units: finished chunks are never rewritten; a killed run resumes to the same store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.units import Unit, plan_units, run_unit


def _files(store: str) -> dict[str, tuple[int, bytes]]:
    """Every file of the store but the root metadata: relative path -> (mtime_ns, bytes)."""
    root = Path(store)
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def _chunk_file(store: str, m: int, block: int, k: int) -> Path:
    return Path(store) / "samples" / "c" / str(m) / str(block) / str(k) / "0" / "0" / "0"


def test_plan_units(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    assert plan_units(campaign) == [Unit(0, 0), Unit(0, 1), Unit(1, 0), Unit(1, 1)]


def test_rerun_of_finished_unit_writes_nothing(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    before = _files(campaign.store_location)
    time.sleep(0.01)
    stats = run_unit(campaign, Unit(1, 1), campaign.store_location)
    assert stats.draws_written == 0
    result = run_campaign(campaign, progress=False)  # the whole campaign again: nothing pending
    assert result.units_run == 0 and result.draws_written == 0
    after = _files(campaign.store_location)
    changed = {k for k in before if k != "zarr.json" and before[k] != after.get(k)}
    assert not changed and set(after) == set(before)


def test_half_done_unit_recomputes_without_writing_done_chunks(write_campaign, tmp_path: Path) -> None:
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", sampler={"kind": "ula", "burn_in": 5, "thin": 2}))
    run_campaign(reference, progress=False)
    # A copy where unit (0, 0) only has its first chunk (draws 0-2) and the rest is gone.
    shutil.copytree(reference.store_location, tmp_path / "store.zarr")
    campaign = load_campaign(write_campaign(sampler={"kind": "ula", "burn_in": 5, "thin": 2}))
    group = zarr.open_group(campaign.store_location, mode="r+")
    group["draws_done"][0, 0:4] = 3
    for k in (1, 2):
        _chunk_file(campaign.store_location, 0, 0, k).unlink()
    first = _chunk_file(campaign.store_location, 0, 0, 0)
    first_stat = (first.stat().st_mtime_ns, first.read_bytes())
    result = run_campaign(campaign, progress=False)
    assert result.units_run == 1 and result.draws_written == 4 * 4
    assert (first.stat().st_mtime_ns, first.read_bytes()) == first_stat
    ref, new = zarr.open_group(reference.store_location, mode="r"), zarr.open_group(campaign.store_location, mode="r")
    np.testing.assert_array_equal(new["samples"][...], ref["samples"][...])
    np.testing.assert_array_equal(new["draws_done"][...], ref["draws_done"][...])


def _draws_done(store: str) -> np.ndarray | None:
    try:
        return np.asarray(zarr.open_group(store, mode="r")["draws_done"][...])
    except Exception:  # not created yet, or a chunk being written right now
        return None


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(write_campaign, tmp_path: Path) -> None:
    options = dict(
        sampler={"kind": "ula", "burn_in": 0, "thin": 10},
        operator={"kind": "denoise"},
        chains=4,
        draws=24,
        chunks={"chains": 2, "draws": 2},
    )
    path = write_campaign(**options)
    campaign = load_campaign(path)
    store = campaign.store_location
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uqcampaign.pipeline.cli", "run", str(path), "--in-process", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    total = 2 * 4 * 24
    done = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = _draws_done(store)
        if done is not None and done.sum() > 0:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = _draws_done(store)
    assert done is not None and 0 < done.sum() < total, "the run was not caught in the middle"
    # Chunks recorded as done at the kill: their bytes must survive the rerun untouched.
    kept = {}
    for m in range(2):
        for block in range(2):
            for k in range(int(done[m, 2 * block]) // 2):
                chunk = _chunk_file(store, m, block, k)
                kept[chunk] = (chunk.stat().st_mtime_ns, chunk.read_bytes())
    assert kept

    result = run_campaign(load_campaign(path), resume=True, progress=False)
    assert result.units_run >= 1
    for chunk, before in kept.items():
        assert (chunk.stat().st_mtime_ns, chunk.read_bytes()) == before, chunk

    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", **options))
    run_campaign(reference, progress=False)
    ref, new = zarr.open_group(reference.store_location, mode="r"), zarr.open_group(store, mode="r")
    assert (np.asarray(new["draws_done"][...]) == 24).all()
    np.testing.assert_array_equal(new["samples"][...], ref["samples"][...])
    np.testing.assert_array_equal(new["y_obs"][...], ref["y_obs"][...])
