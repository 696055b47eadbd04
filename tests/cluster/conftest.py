"""Fixtures of the Ray tests: a tiny GMM campaign and a 2-node test cluster with logical GPUs.

Ray's files (sessions, sockets, ``ray_current_cluster``) go to a short folder under ``/tmp``
(socket paths must stay under ~100 characters) and its auth token comes from
``RAY_AUTH_TOKEN`` (set once per session by tests/conftest.py), so nothing is written to ``~/.ray`` or ``/tmp/ray``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml


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
