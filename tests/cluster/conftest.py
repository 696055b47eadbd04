"""Fixtures of the Ray tests: a tiny GMM campaign, a 2-node test cluster with logical GPUs, store checks.

Ray's files (sessions, sockets, ``ray_current_cluster``) go to a short folder under ``/tmp``
(socket paths must stay under ~100 characters) and its auth token comes from
``RAY_AUTH_TOKEN`` (set once per session by tests/conftest.py), so nothing is written to ``~/.ray`` or ``/tmp/ray``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
import zarr


def write_campaign(folder: Path, *, store: str = "run.zarr", burn_in: int = 300, measurements: int = 6, **cluster: Any) -> Path:
    """A GMM inpainting campaign (8×8, 8 chains in blocks of 4, 20 draws in chunks of 5): 2 units of 4 chunks per measurement."""
    folder.mkdir(parents=True, exist_ok=True)
    prior = folder / "gmm.npz"
    if not prior.exists():
        rng = np.random.default_rng(0)
        np.savez(prior, weights=np.array([0.4, 0.6]), means=rng.uniform(0, 1, (2, 1, 8, 8)), variances=np.full((2, 1, 8, 8), 0.05))
    spec = {
        "name": "ray-test",
        "store": store,
        "seed": 3,
        "data": {"simulate": {"count": measurements}},
        "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 1},
        "noise": {"sigma": 0.1},
        "prior": {"kind": "gmm", "file": "gmm.npz"},
        "sampler": {"kind": "ula", "burn_in": burn_in, "thin": 5},
        "chains": 8,
        "draws": 20,
        "chunks": {"chains": 4, "draws": 5},
        "cluster": {"address": "local", "workers": 2, "gpus_per_worker": 0, **cluster},
    }
    path = folder / f"{Path(store).stem}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def ray_files() -> Iterator[str]:
    """A short temporary folder for Ray's files, with ``RAY_TMPDIR``/``UQC_RAY_TMPDIR`` set (the token is session-wide)."""
    folder = tempfile.mkdtemp(prefix="uqr", dir="/tmp")
    os.makedirs(os.path.join(folder, "ray"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", folder)
        mp.setenv("UQC_RAY_TMPDIR", folder)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(ray_files: str) -> Iterator[Any]:
    """``ray.cluster_utils.Cluster``: head + one worker node, 1 CPU and 1 logical GPU each; this process is connected."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "temp_dir": ray_files, "include_dashboard": False})
    cluster.worker = cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def campaign_writer() -> Callable[..., Path]:
    """:func:`write_campaign` itself (``campaign_writer(folder, store=..., burn_in=..., **cluster)``)."""
    return write_campaign


@pytest.fixture
def campaign_factory(tmp_path: Path) -> Callable[..., Path]:
    """``campaign_factory(store="run.zarr", burn_in=300, **cluster)`` -> campaign YAML path under ``tmp_path``."""
    return lambda **kwargs: write_campaign(tmp_path, **kwargs)


# -- store checks shared by the Ray tests ------------------------------------------------------------


def store_arrays(location: str) -> dict[str, np.ndarray]:
    """Every top-level array of a store (the draws, ``draws_done``, the data), by name."""
    group = zarr.open_group(location, mode="r")
    return {name: group[name][...] for name in group.array_keys()}


def assert_same_store(location: str, reference: dict[str, np.ndarray]) -> None:
    """The store at ``location`` is complete and bit-identical to ``reference`` on every array both have."""
    from uqcampaign.pipeline.store import draws_done

    got = store_arrays(location)
    common = sorted(set(got) & set(reference))
    assert "samples" in common, (sorted(got), sorted(reference))
    done = draws_done(zarr.open_group(location, mode="r"))
    assert (done == done.max()).all() and done.max() > 0, "the campaign did not finish"
    for name in common:
        assert got[name].dtype == reference[name].dtype and got[name].shape == reference[name].shape, name
        assert got[name].tobytes() == reference[name].tobytes(), f"{name} differs from the in-process run"


def done_chunks(campaign: Any) -> dict[Path, int]:
    """``{chunk file: mtime_ns}`` of every ``samples`` chunk that ``draws_done`` marks done now."""
    from uqcampaign.pipeline.store import draws_done
    from uqcampaign.pipeline.units import plan_units

    location = Path(campaign.store_location)
    done = draws_done(zarr.open_group(str(location), mode="r"))
    files = {}
    for unit in plan_units(campaign, done.shape[0]):
        n_done = int(done[unit.measurement, campaign.block_chains(unit.block)].min())
        for k, chunk in enumerate(campaign.draw_chunks()):
            if chunk.stop <= n_done:
                path = location / "samples" / "c" / str(unit.measurement) / str(unit.block) / str(k) / "0" / "0" / "0"
                files[path] = path.stat().st_mtime_ns
    return files


def assert_not_rewritten(before: dict[Path, int]) -> None:
    """No chunk of ``before`` (from :func:`done_chunks`) was written again."""
    assert before, "the fault struck before any chunk was done: the test proves nothing"
    rewritten = [str(path) for path, mtime in before.items() if path.stat().st_mtime_ns != mtime]
    assert rewritten == []


def wait_for_progress(
    campaign: Any, *, units_done: int = 0, on_nodes: tuple[str, ...] = (), n_nodes: int = 0, timeout: float = 120.0
) -> None:
    """Return once ``units_done`` units are complete, some on each node of ``on_nodes`` and on ``n_nodes``
    nodes at least, and a unit is still unstarted.

    A worker that has finished a unit while units are still queued is busy with the next one:
    a fault then strikes it mid-unit.
    """
    from uqcampaign.cluster.worker import parse_worker_label
    from uqcampaign.pipeline.store import draws_done, read_unit_stats

    location = campaign.store_location
    block = campaign.chunks.chains
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = draws_done(zarr.open_group(location, mode="r"))
            nodes = {parse_worker_label(stats.worker)["node"] for stats in read_unit_stats(location)}
        except Exception:  # not created yet
            done = None
        if done is not None:
            per_unit = done.reshape(done.shape[0], -1, block).min(axis=2)  # (measurement, block)
            assert (per_unit == 0).any(), "every unit started before the fault: raise the burn-in or the measurements"
            complete = int((per_unit == campaign.draws).sum()) >= units_done
            if complete and len(nodes) >= n_nodes and all(node[:24] in nodes for node in on_nodes):
                return
        time.sleep(0.05)
    raise AssertionError(f"no progress in {location} after {timeout} s")


@pytest.fixture(scope="session")
def store_checks() -> SimpleNamespace:
    """The store checks above: ``arrays``, ``same``, ``done_chunks``, ``not_rewritten``, ``wait_for_progress``."""
    return SimpleNamespace(
        arrays=store_arrays, same=assert_same_store, done_chunks=done_chunks, not_rewritten=assert_not_rewritten, wait_for_progress=wait_for_progress
    )
