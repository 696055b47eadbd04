"""The store's lease: one writer at a time, the holder named; stale leases of killed writers taken over."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.runner import run_campaign

# Each process imports everything, says it is ready, waits for the other, then runs `uqc run`.
RACE = """
import os, sys, time
from pathlib import Path
from uqcampaign.pipeline.cli import app
import uqcampaign.pipeline.runner, uqcampaign.pipeline.units, uqcampaign.kernels.samplers.ula
folder = Path(sys.argv[1])
(folder / f"ready-{os.getpid()}").touch()
while len(list(folder.glob("ready-*"))) < 2:
    time.sleep(0.001)
sys.argv = ["uqc", "run", sys.argv[2], "--in-process", "--no-progress"]
app()
"""

SLOW = {"sampler": {"kind": "ula", "burn_in": 100, "thin": 5}, "operator": {"kind": "denoise"}}


def test_two_runs_started_at_the_same_instant(write_campaign, tmp_path: Path) -> None:
    path = write_campaign(**SLOW)
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(sync), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0, 2], [out[1][-2000:] for out in outputs]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    error = outputs[loser][1].strip()
    assert error.count("\n") == 0 and error.startswith("error: "), error
    expected = f"{tmp_path / 'store.zarr'} is held by `uqc run` (pid {procs[winner].pid} on host {socket.gethostname()}, since "
    assert expected in error and "wait for it to finish" in error, error
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", **SLOW))
    run_campaign(reference, progress=False)
    got, want = (zarr.open_group(p, mode="r") for p in (tmp_path / "store.zarr", reference.store_location))
    assert (np.asarray(got["draws_done"][...]) == 7).all()
    for name in ("samples", "y_obs", "x_true"):
        assert got[name][...].tobytes() == want[name][...].tobytes(), name
    assert not (tmp_path / "store.zarr" / ".uqc-lease").exists()  # released: a finished store holds no lease


def _lease_file(store: Path, generation: int, **fields) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    info = {"command": "run", "host": socket.gethostname(), "pid": os.getpid(), "process_start": 0.0, "started": now.isoformat(),
            "heartbeat": now.isoformat(), "token": "t", **fields}
    (store / ".uqc-lease").mkdir(parents=True, exist_ok=True)
    (store / ".uqc-lease" / f"{generation:010d}.json").write_text(json.dumps(info))


def test_stale_leases_are_taken_over_and_live_ones_named(tmp_path: Path) -> None:
    from uqcampaign.pipeline import lease as lease_module
    from uqcampaign.pipeline.lease import current_holder, hold_lease

    store = tmp_path / "s.zarr"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    _lease_file(store, 3, pid=int(gone))  # a killed run on this host: taken over at once
    with hold_lease(store, "run") as lease:
        assert lease.info.generation == 4 and current_holder(store).pid == os.getpid()
        assert sorted(p.name for p in (store / ".uqc-lease").iterdir()) == ["0000000004.json"]
    assert current_holder(store) is None
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=lease_module.STALE_S + 5)).isoformat()
    _lease_file(store, 7, host="node-b", heartbeat=old)  # elsewhere, heartbeat stopped: taken over after STALE_S
    with hold_lease(store, "reduce"):
        pass
    _lease_file(store, 9, host="node-b", pid=41, command="run")  # elsewhere, alive
    with pytest.raises(UQError, match=r"s\.zarr is held by `uqc run` \(pid 41 on host node-b, since .*heartbeat 0 s ago\)"):
        with hold_lease(store, "run"):
            pass


def test_reduce_is_refused_while_a_run_holds_the_store(write_campaign) -> None:
    from uqcampaign.pipeline.lease import hold_lease

    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    with hold_lease(campaign.store_location, "run"):
        with pytest.raises(UQError, match=rf"held by `uqc run` \(pid {os.getpid()} on host"):
            reduce_store(campaign.store_location, progress=False)
        with pytest.raises(UQError, match="held by `uqc run`"):
            run_campaign(campaign, progress=False)
    reduce_store(campaign.store_location, progress=False)  # free again


def test_a_holder_whose_lease_was_taken_over_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uqcampaign.pipeline import lease as lease_module
    from uqcampaign.pipeline.lease import hold_lease

    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    store = tmp_path / "s.zarr"
    with hold_lease(store, "run") as lease:
        lease.check()
        _lease_file(store, lease.info.generation + 1, host="node-b", pid=7)  # another writer took over
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(UQError, match="taken over by `uqc run` \\(pid 7 on host node-b"):
            lease.check()
