"""`uqc` against a real multi-process Ray cluster started as users start one: `ray start` head + worker node.

Each node is its own ``ray start`` (:class:`uqcampaign.cluster.nodes.RayStartCluster`: this
worktree's Ray, private temporary folders under a short ``/tmp`` folder, ports found by binding
port 0, token authentication on with the session token, 1 CPU + 1 logical GPU). The ``uqc``
commands run as users run them, in fresh processes whose environment has the token but not
``RAY_AUTH_MODE``: the mode is uqc's job. The finalizer SIGKILLs every process the nodes started,
by pid, even when a test fails, and checks none is left; no bare ``ray stop`` (it would stop other
users' Ray instances on this machine).

Order matters (one cluster for the module): the auth frictions (nothing joins), a campaign
through Ray Client (``ray://``), a campaign through the GCS port (``host:port``) during which the
worker node's raylet is SIGKILLed, then ``uqc reduce --address host:port`` on the head alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import zarr

from uqcampaign.cluster.nodes import Node, RayStartCluster
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline import ray_join
from uqcampaign.pipeline.address import parse_address
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.store import json_attr

pytestmark = pytest.mark.timeout(300)

BURN_IN = 300  # about 0.5-1 s per unit on one core: the raylet kill lands mid-campaign
UQC = str(Path(sys.executable).with_name("uqc"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayStartCluster]:
    """Head + one worker node, 1 CPU and 1 logical GPU each, token auth with the session's token."""
    folder = Path(tempfile.mkdtemp(prefix="uqs", dir="/tmp"))  # short: Ray's socket paths
    made = RayStartCluster(folder, token=os.environ["RAY_AUTH_TOKEN"])
    try:
        made.start()
        yield made
    finally:
        killed = made.stop()
        assert killed and not made.processes()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, campaign_writer: Callable[..., Path], store_checks: Any) -> dict[str, np.ndarray]:
    campaign = load_campaign(campaign_writer(tmp_path_factory.mktemp("reference"), store="ref.zarr", burn_in=BURN_IN))
    run_campaign(campaign, progress=False)
    return store_checks.arrays(campaign.store_location)


def _uqc(cluster: RayStartCluster, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """``uqc ARGS`` in a fresh process, with the cluster's token and without RAY_AUTH_MODE."""
    base = {key: value for key, value in cluster.env.items() if key != "RAY_AUTH_MODE"}
    return subprocess.Popen([UQC, *args], env={**base, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _finish(process: subprocess.Popen, timeout: float = 200) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out, err


def _wait_for_title(node: Node, start: str, timeout: float = 120.0) -> list[psutil.Process]:
    """The node's one process titled ``start...``, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = node.titled(start)
        if found:
            assert len(found) == 1, found
            return found
        time.sleep(0.02)
    raise AssertionError(f"no process titled {start!r} on the node of {node.temp_dir} after {timeout} s")


def _last_run(location: str) -> dict[str, Any]:
    return json_attr(zarr.open_group(location, mode="r"), "ray")["runs"][-1]


# -- auth and address frictions: one line within seconds, nothing joined ---------------------------------


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        ("no token", {"RAY_AUTH_TOKEN": None, "HOME": "{folder}"}, r"uses token authentication \(Ray: .*\) and no token was found .*RAY_AUTH_MODE=token"),
        ("wrong token", {"RAY_AUTH_TOKEN": "not-the-token"}, r"refused the token from \$RAY_AUTH_TOKEN \(Ray: .*\).* RAY_AUTH_MODE=token"),
        ("mode disabled", {"RAY_AUTH_MODE": "disabled"}, r"uses token authentication .* but RAY_AUTH_MODE=disabled: set RAY_AUTH_MODE=token"),
    ],
)
@pytest.mark.parametrize("kind", ["gcs", "client"])
def test_auth_mismatch_is_one_line_within_seconds(cluster, monkeypatch, case, env, expected, kind):
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value.format(folder=cluster.folder))
    if "RAY_AUTH_MODE" not in env:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    address = parse_address(cluster.gcs if kind == "gcs" else cluster.client)
    start = time.perf_counter()
    with pytest.raises(UQError, match=expected) as caught:
        ray_join.prepare(address, timeout=3.0)
    assert time.perf_counter() - start < 5.0
    assert "\n" not in str(caught.value) and os.environ.get("RAY_AUTH_MODE") == env.get("RAY_AUTH_MODE")


def test_wrong_kind_of_port_is_named(cluster):
    with pytest.raises(UQError, match=r"not as a Ray Client server: for a head's GCS port give --address 127\.0\.0\.1:\d+ \(no ray://\)"):
        ray_join.prepare(parse_address(f"ray://{cluster.gcs}"), timeout=3.0)
    with pytest.raises(UQError, match=r"not as a Ray GCS: for a Ray Client port give --address ray://127\.0\.0\.1:\d+"):
        ray_join.prepare(parse_address(cluster.client.removeprefix("ray://")), timeout=3.0)


def test_uqc_run_without_a_token_is_one_line(cluster, campaign_factory):
    campaign_file = campaign_factory()
    start = time.perf_counter()
    process = _uqc(cluster, "run", str(campaign_file), "--address", cluster.gcs, "--no-progress", env={"RAY_AUTH_TOKEN": "", "HOME": str(cluster.folder)})
    out, err = process.communicate(timeout=60)
    seconds = time.perf_counter() - start
    assert process.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: the Ray cluster at {cluster.gcs} uses token authentication") and "RAY_AUTH_MODE=token" in err
    assert str(cluster.folder / ".ray" / "auth_token") in err
    print(f"uqc run without a token: exit 2 in {seconds:.1f} s")  # interpreter + imports + the probe


# -- campaigns ----------------------------------------------------------------------------------------


def test_campaign_through_ray_client(cluster, reference, campaign_factory, store_checks):
    campaign_file = campaign_factory(burn_in=BURN_IN)
    out, err = _finish(_uqc(cluster, "run", str(campaign_file), "--address", cluster.client, "--workers", "2", "--gpus-per-worker", "1", "--no-progress"))
    campaign = load_campaign(campaign_file)
    store_checks.same(campaign.store_location, reference)
    run = _last_run(campaign.store_location)
    assert run["joined"] == cluster.client and run["actors_lost"] == 0
    assert "store:" in out and "SIGTERM handler" not in err and "Traceback" not in err, err


def test_campaign_through_gcs_port_survives_a_killed_worker_node(cluster, reference, campaign_factory, store_checks):
    campaign_file = campaign_factory(burn_in=BURN_IN)
    campaign = load_campaign(campaign_file)
    process = _uqc(cluster, "run", str(campaign_file), "--address", cluster.gcs, "--workers", "2", "--gpus-per-worker", "1", "--no-progress")
    paused: list[psutil.Process] = []
    try:
        # Deterministic under any load: once a unit is done, pause the head's actor, wait until the worker
        # node's actor runs a unit (its process title) and freeze it there (so its unit cannot finish before
        # the node is gone), SIGKILL that node's raylet, resume the head's actor. The frozen actor is one of
        # the node's processes, which the cluster's teardown kills by pid.
        store_checks.wait_for_progress(campaign, units_done=1)
        cluster.processes()  # remember the worker node's processes: its raylet's children outlive it
        paused = _wait_for_title(cluster.head, "ray::HostedWorker")  # idle or running, not starting
        paused[0].send_signal(signal.SIGSTOP)
        _wait_for_title(cluster.workers[0], "ray::HostedWorker.run")[0].send_signal(signal.SIGSTOP)
        before = store_checks.done_chunks(campaign)
        cluster.workers[0].raylet().send_signal(signal.SIGKILL)
    except BaseException:
        process.kill()
        raise
    finally:
        for actor in paused:
            with contextlib.suppress(psutil.Error):
                actor.send_signal(signal.SIGCONT)
    out, err = _finish(process)
    print(f"uqc run --address host:port, worker node's raylet SIGKILLed; its stderr:\n{err}")
    store_checks.same(campaign.store_location, reference)
    store_checks.not_rewritten(before)
    run = _last_run(campaign.store_location)
    assert run["actors_lost"] == 1 and run["units_requeued"] == 1, run
    lost = run["events"]
    assert len(lost) == 1 and " lost on node " in lost[0] and lost[0].endswith(") requeued"), lost
    # the driver's terminal: one line for the event, none of the raylet's log tail
    assert lost[0] in err, err
    for noise in ("[state-dump]", "Raylet is terminated", "(raylet)", "has been marked dead"):
        assert noise not in out + err, (out, err)
    assert out.strip().startswith("store:"), out


def test_reduce_through_gcs_port_matches_a_local_reduce(cluster, campaign_factory, store_checks, tmp_path):
    """After the node loss: the head alone runs the Dask graph (Dask-on-Ray) through host:port."""
    campaign_file = campaign_factory(burn_in=20)
    campaign = load_campaign(campaign_file)
    run_campaign(campaign, progress=False)
    local = tmp_path / "local.zarr"
    subprocess.run(["cp", "-r", campaign.store_location, str(local)], check=True)
    reduce_store(str(local), progress=False)
    _finish(_uqc(cluster, "reduce", campaign.store_location, "--address", cluster.gcs))
    here = zarr.open_group(str(local), mode="r")["summary"]
    there = zarr.open_group(campaign.store_location, mode="r")["summary"]
    assert sorted(here.array_keys()) == sorted(there.array_keys())
    for name in here.array_keys():
        np.testing.assert_array_equal(there[name][...], here[name][...], err_msg=name)
