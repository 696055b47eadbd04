"""The cluster layer's pieces that need no Ray cluster: worker, pool sizing, address checks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zarr

from uqcampaign.cluster.connect import Connection, connect
from uqcampaign.cluster.resources import WorkerShape, bundles, size_workers
from uqcampaign.cluster.worker import HostedWorker, PriorWorker, parse_worker_label, worker_label
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import prepare_store
from uqcampaign.pipeline.units import Unit, run_unit


@pytest.fixture
def two_stores(campaign_factory):
    """(campaign A, campaign B): the same campaign with two stores, both created and empty."""
    a = load_campaign(campaign_factory(store="a.zarr", burn_in=20))
    b = load_campaign(campaign_factory(store="b.zarr", burn_in=20))
    prepare_store(a)
    prepare_store(b)
    return a, b


def test_worker_runs_a_unit_like_run_unit(two_stores):
    a, b = two_stores
    worker = PriorWorker(a.to_json(), a.store_location, root=str(a.root))
    result = worker.run(Unit(1, 0))
    run_unit(b, Unit(1, 0), b.store_location)
    assert result["draws_written"] == a.draws and result["node_id"] is None and result["device"] == "cpu"
    sa, sb = zarr.open_group(a.store_location)["samples"][1], zarr.open_group(b.store_location)["samples"][1]
    np.testing.assert_array_equal(sa, sb)
    assert np.isfinite(sa[:4]).all() and np.isnan(sa[4:]).all()
    assert worker.info()["tensor_device"] == "cpu"


def test_worker_reads_the_root_from_the_store(two_stores):
    a, _ = two_stores
    worker = PriorWorker(a.to_json(), a.store_location)  # root from the store's campaign_root
    assert worker.campaign.root == a.root


def test_missing_prior_names_the_path(two_stores):
    a, _ = two_stores
    (a.root / "gmm.npz").unlink()
    with pytest.raises(UQError, match="gmm.npz"):
        PriorWorker(a.to_json(), a.store_location)
    hosted = HostedWorker(a.to_json(), a.store_location)
    for call in (hosted.info, lambda: hosted.run((0, 0))):
        with pytest.raises(UQError, match="gmm.npz"):
            call()


def test_worker_refuses_a_store_it_cannot_see(two_stores, tmp_path):
    a, _ = two_stores
    with pytest.raises(UQError, match="every node sees"):
        PriorWorker(a.to_json(), str(tmp_path / "elsewhere.zarr"))


def test_cuda_device_without_cuda_is_refused(two_stores):
    a, _ = two_stores
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UQError, match="cuda"):
        PriorWorker(a.to_json(), a.store_location, "cuda")


def test_worker_label_round_trip():
    label = worker_label("ab" * 28, ["0", "3"], pid=77)
    assert len(label.encode()) <= 64
    assert parse_worker_label(label) == {"node": ("ab" * 28)[:24], "gpu_ids": ["0", "3"], "pid": 77}
    assert parse_worker_label(worker_label(None, [], pid=1))["gpu_ids"] == []
    with pytest.raises(UQError, match="not written by a Ray worker"):
        parse_worker_label("somehost:123")


# -- pool sizing ---------------------------------------------------------------------------------


def test_size_workers_auto_gpus_and_cpus():
    nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]
    assert size_workers(nodes, "auto", 1) == WorkerShape(workers=3, cpus=4, gpus=1.0)
    assert size_workers(nodes, "auto", 0) == WorkerShape(workers=12, cpus=1, gpus=0.0)
    assert size_workers([{"CPU": 2.0, "GPU": 0.0}], 1, 0) == WorkerShape(workers=1, cpus=2, gpus=0.0)
    assert size_workers([{"CPU": 2.0, "GPU": 0.0}], 2, 0) == WorkerShape(workers=2, cpus=1, gpus=0.0)


def test_size_workers_too_many_gpus_names_both_numbers():
    nodes = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    with pytest.raises(UQError, match=r"3 GPUs asked but the Ray cluster has 2 GPUs"):
        size_workers(nodes, 3, 1)
    with pytest.raises(UQError, match=r"0 GPUs"):
        size_workers([{"CPU": 4.0}], "auto", 1)
    with pytest.raises(UQError, match="do not fit"):  # 2 GPUs in total, but never 2 on one node
        size_workers(nodes, 1, 2)
    with pytest.raises(UQError, match="3 CPUs"):
        size_workers(nodes, 3, 0)


def test_bundles_have_no_gpu_key_for_cpu_workers():
    assert bundles(WorkerShape(2, 3, 0.0)) == [{"CPU": 3.0}, {"CPU": 3.0}]
    assert bundles(WorkerShape(1, 1, 0.5)) == [{"CPU": 1.0, "GPU": 0.5}]


# -- addresses -----------------------------------------------------------------------------------


def test_unreachable_address_fails_within_seconds():
    import ray

    assert not ray.is_initialized()
    for address in ("ray://127.0.0.1:1", "127.0.0.1:1"):
        start = time.perf_counter()
        with pytest.raises(UQError, match=f"cannot reach the Ray cluster at {address} "):
            connect(address, timeout=3.0)
        assert time.perf_counter() - start < 5.0
    assert not ray.is_initialized()


def test_local_store_with_nodes_on_other_hosts_is_warned(monkeypatch):
    import ray

    from uqcampaign.cluster.connect import SharedStoreWarning, check_store_reachable
    from uqcampaign.pipeline.address import parse_address

    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1"}, {"Alive": True, "NodeManagerAddress": "10.0.0.2"}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.1")
    joined = Connection(address="auto", owned=True, local=False)
    with pytest.warns(SharedStoreWarning, match=r"/data/run\.zarr is a local path .*10\.0\.0\.2"):
        check_store_reachable("/data/run.zarr", joined)
    assert check_store_reachable("s3://bucket/run.zarr", joined) is None
    nodes[1]["Alive"] = False  # every alive node is this host
    assert check_store_reachable("/data/run.zarr", joined) is None
    for host, remote in (("127.0.0.1", False), ("10.1.2.3", True)):
        client = Connection(address="auto", owned=True, local=False, target=parse_address(f"ray://{host}:10001"))
        if remote:
            with pytest.warns(SharedStoreWarning, match=host):
                check_store_reachable("/data/run.zarr", client)
        else:
            assert check_store_reachable("/data/run.zarr", client) is None
