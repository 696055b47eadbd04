"""The Ray driver on a 2-node test cluster (1 CPU + 1 logical GPU per node).

One cluster serves the whole module; the node-removal test runs last (it leaves one node).
Every store is compared, bit for bit, with the same campaign run in this process without Ray,
and the chunks that were done when a fault struck must never be written again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr

from uqcampaign.cluster.driver import run_campaign_ray
from uqcampaign.cluster.worker import parse_worker_label
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import Campaign, load_campaign
from uqcampaign.pipeline.runner import prepare_store, run_campaign
from uqcampaign.pipeline.store import read_unit_stats
from uqcampaign.pipeline.units import Unit, run_unit

pytestmark = pytest.mark.timeout(240)

BURN_IN = 300  # about 0.5-1 s per unit on one core: enough for a fault to land mid-campaign


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, campaign_writer: Callable[..., Path], store_checks: Any) -> dict[str, np.ndarray]:
    """Every array of the uninterrupted in-process run of the test campaign."""
    campaign = load_campaign(campaign_writer(tmp_path_factory.mktemp("reference"), store="ref.zarr", burn_in=BURN_IN))
    run_campaign(campaign, progress=False)
    return store_checks.arrays(campaign.store_location)


def _in_thread(campaign: Campaign, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = run_campaign_ray(campaign, progress=False, **kwargs)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _finish(thread: threading.Thread, box: dict[str, Any]) -> Any:
    thread.join(timeout=150)
    assert not thread.is_alive(), "the driver did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _last_run(location: str) -> dict[str, Any]:
    return json.loads(zarr.open_group(location, mode="r").attrs["ray"])["runs"][-1]


def _alive_nodes() -> tuple[str, ...]:
    import ray

    return tuple(node["NodeID"] for node in ray.nodes() if node["Alive"])


def _uqc_actors() -> list[str]:
    import ray

    return [name for name in ray.util.list_named_actors() if name.startswith("uqc-")]


def _finish_after_fault(campaign: Any, thread: Any, box: dict, reference: Any, checks: Any) -> dict:
    """Let a campaign hit by a fault finish; check it ran every unit, is bit-identical to ``reference``,
    rewrote no chunk done before the fault, and recorded the lost actor. Returns the run's stats."""
    before = checks.done_chunks(campaign)
    result = _finish(thread, box)
    assert result.units_run == 12
    checks.same(campaign.store_location, reference)
    checks.not_rewritten(before)
    run = _last_run(campaign.store_location)
    assert run["actors_lost"] >= 1 and run["units_requeued"] >= 1
    return run


def test_units_spread_over_both_nodes_each_actor_on_its_gpu(ray_cluster, reference, campaign_factory, store_checks):

    campaign = load_campaign(campaign_factory(burn_in=BURN_IN))
    result = run_campaign_ray(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1, progress=False)
    assert (result.units_run, result.units_total, result.draws_written) == (12, 12, 12 * 20)
    store_checks.same(campaign.store_location, reference)

    nodes = set(_alive_nodes())
    assert len(nodes) == 2
    run = _last_run(campaign.store_location)
    seen = run["workers_seen"]
    assert {w["node_id"] for w in seen} == nodes  # one actor per node (SPREAD)
    assert all(w["gpu_ids"] == ["0"] and w["device"] == "cpu" and w["threads"] == 1 for w in seen)
    assert run["actors_lost"] == 0 and run["units_requeued"] == 0

    labels = [parse_worker_label(stats.worker) for stats in read_unit_stats(campaign.store_location)]
    assert len(labels) == 12
    assert {label["node"] for label in labels} == {node[:24] for node in nodes}  # units ran on both nodes
    assert all(label["gpu_ids"] == ["0"] for label in labels)
    assert set(run["nodes"].values()) == nodes
    assert _uqc_actors() == []


def test_more_gpus_than_the_cluster_has(ray_cluster, campaign_factory):
    campaign = load_campaign(campaign_factory())
    with pytest.raises(UQError, match=r"3 workers x 1 GPUs = 3 GPUs asked but the Ray cluster has 2 GPUs"):
        run_campaign_ray(campaign, address=ray_cluster.address, workers=3, gpus_per_worker=1, progress=False)
    assert not Path(campaign.store_location).exists()


def test_prior_missing_on_the_workers_stops_cleanly(ray_cluster, reference, campaign_factory):
    import ray

    campaign = load_campaign(campaign_factory(burn_in=BURN_IN))
    group, _, (prior, operator, _) = prepare_store(campaign)
    run_unit(campaign, Unit(0, 0), group, prior=prior, operator=operator)  # one unit done before
    prior_file = campaign.root / "gmm.npz"
    prior_file.unlink()
    start = time.perf_counter()
    with pytest.raises(UQError, match=str(prior_file)):
        run_campaign_ray(campaign, address=ray_cluster.address, workers=1, gpus_per_worker=1, progress=False)
    assert time.perf_counter() - start < 60
    done = zarr.open_group(campaign.store_location, mode="r")["draws_done"][...]
    assert (done[0, :4] == 20).all() and (done[0, 4:] == 0).all() and (done[1:] == 0).all()
    samples = zarr.open_group(campaign.store_location, mode="r")["samples"][0, :4]
    assert samples.tobytes() == reference["samples"][0, :4].tobytes()  # the draws of the unit done before
    assert _last_run(campaign.store_location)["actors_started"] == 1  # no retry storm
    assert _uqc_actors() == []
    deadline = time.monotonic() + 10
    while ray.available_resources().get("GPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("GPU", 0) == 2  # placement group released


def test_actor_killed_mid_campaign(ray_cluster, reference, campaign_factory, store_checks):
    import ray

    campaign = load_campaign(campaign_factory(burn_in=BURN_IN))
    thread, box = _in_thread(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1)
    store_checks.wait_for_progress(campaign, on_nodes=_alive_nodes())  # both actors busy
    victim = sorted(_uqc_actors())[0]
    ray.kill(ray.get_actor(victim), no_restart=True)
    run = _finish_after_fault(campaign, thread, box, reference, store_checks)
    assert run["actors_started"] >= 3


@pytest.mark.slow
def test_driver_sigkilled_then_resumed(ray_cluster, reference, campaign_factory, store_checks):
    campaign_file = campaign_factory(burn_in=BURN_IN)
    campaign = load_campaign(campaign_file)
    uqc = Path(sys.executable).with_name("uqc")
    command = [str(uqc), "run", str(campaign_file), "--address", ray_cluster.address, "--workers", "2", "--gpus-per-worker", "1", "--no-progress"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        store_checks.wait_for_progress(campaign, units_done=1)
    finally:
        driver.send_signal(signal.SIGKILL)
        output = driver.communicate(timeout=30)[0].decode(errors="replace")
    assert driver.returncode == -signal.SIGKILL, output
    before = store_checks.done_chunks(campaign)
    result = run_campaign_ray(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1, resume=True, progress=False)
    assert 0 < result.units_run < result.units_total == 12  # complete units were skipped
    store_checks.same(campaign.store_location, reference)
    store_checks.not_rewritten(before)


def test_grown_campaign_on_ray_equals_one_run_at_the_final_size(ray_cluster, reference, campaign_factory, store_checks):
    """More draws, chains and measurements on Ray: only the new work runs; the store equals, draw for
    draw, the in-process run of the final size (``reference``)."""
    path = campaign_factory(burn_in=BURN_IN)
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "chains": 4, "draws": 10, "data": {"simulate": {"count": 4}}}))
    small = load_campaign(path)
    first = run_campaign_ray(small, address=ray_cluster.address, workers=2, gpus_per_worker=1, progress=False)
    assert first.units_run == 4
    before = store_checks.done_chunks(small)
    path.write_text(yaml.safe_dump(spec))  # the final size: 8 chains, 20 draws, 6 measurements
    grown = load_campaign(path)
    result = run_campaign_ray(grown, address=ray_cluster.address, workers=2, gpus_per_worker=1, progress=False)
    assert "growing campaign 'ray-test' (draws 10 -> 20, chains 4 -> 8, measurements 4 -> 6)" in result.messages[0]
    assert result.units_run == 12 and result.draws_written == 20 * 12 - 10 * 4  # every draw once
    store_checks.same(grown.store_location, reference)
    store_checks.not_rewritten(before)  # draws 10 end a chunk of 5: no chunk done before is written again
    assert zarr.open_group(grown.store_location, mode="r")["y_obs"].shape[0] == 6


def test_node_removed_mid_campaign(ray_cluster, reference, campaign_factory, store_checks):
    """Last test of the module: the cluster is left with its head node only."""
    campaign = load_campaign(campaign_factory(burn_in=BURN_IN))
    thread, box = _in_thread(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1)
    store_checks.wait_for_progress(campaign, on_nodes=(ray_cluster.worker.node_id,))  # its actor is busy
    ray_cluster.remove_node(ray_cluster.worker)
    run = _finish_after_fault(campaign, thread, box, reference, store_checks)
    node = ray_cluster.worker.node_id[:12]
    assert any(f" lost on node {node}" in line and line.endswith(") requeued") for line in run["events"]), run["events"]
    assert _uqc_actors() == []
