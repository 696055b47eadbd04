"""``until:`` on Ray: the round loop of the in-process runner with its units on Ray workers.

A 4-round campaign (10, 20, 40, 80 draws per chain, the store grown between rounds) on the 2-node test cluster equals, bit for bit, the same campaign run in
this process: draws, ``draws_done`` and every ``until/`` record; the same two workers (each
loading the prior once) serve every round.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from uqcampaign.cluster.driver import run_campaign_ray
from uqcampaign.kernels.problems import random_problem
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import run_campaign

pytestmark = pytest.mark.timeout(240)

RECORDS = ("checked_round", "stop_round", "converged", "draws_used", "rhat_max", "ess_bulk_min", "ess_tail_min")


def _campaign(folder: Path, address: str) -> Path:
    """Slow mixing (ULA on a Gaussian inpainting problem, see tests/pipeline/test_until.py), max_draws 80: 4 rounds, 2 units each."""
    folder.mkdir(parents=True, exist_ok=True)
    problem = random_problem("inpaint", "gaussian", seed=2, sigma=0.2)
    np.savez(folder / "gaussian.npz", **problem.prior_arrays)
    spec = {
        "name": "until-ray",
        "store": "run.zarr",
        "seed": 5,
        "data": {"simulate": {"count": 2}},
        "operator": problem.operator_spec,
        "noise": {"sigma": problem.sigma},
        "prior": {"kind": "gaussian", "file": "gaussian.npz"},
        "sampler": {"kind": "ula", "init": "prior", "burn_in": 5, "thin": 2, "epsilon": 0.05, "box": None},
        "chains": 8,
        "draws": 10,
        "chunks": {"chains": 4, "draws": 20},
        "cluster": {"address": address, "workers": 2, "gpus_per_worker": 0},
        "until": {"rhat": 1.01, "ess_bulk": 400, "max_draws": 80},
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _arrays(location: str) -> dict[str, bytes]:
    group = zarr.open_group(location, mode="r", use_consolidated=False)
    out = {name: np.asarray(group[name][...]).tobytes() for name in ("samples", "draws_done")}
    out.update({f"until/{name}": np.asarray(group["until"][name][...]).tobytes() for name in RECORDS})
    return out


def test_until_rounds_on_ray_equal_the_in_process_rounds(ray_cluster, tmp_path: Path) -> None:
    reference = load_campaign(_campaign(tmp_path / "here", "in-process"))
    run_campaign(reference, progress=False)
    campaign = load_campaign(_campaign(tmp_path / "ray", "local"))
    result = run_campaign_ray(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1, progress=False)
    assert result.units_run == 4 * 2 * 2  # 4 rounds x 2 measurements x 2 chain blocks
    assert any("until round 4/4: 80 draws per chain" in message for message in result.messages)
    got, want = _arrays(campaign.store_location), _arrays(reference.store_location)
    assert got == want
    group = zarr.open_group(campaign.store_location, mode="r", use_consolidated=False)
    assert group["samples"].shape[2] == 80 and (np.asarray(group["until"]["stop_round"][...]) == 3).all()
    runs = json.loads(group.attrs["ray"])["runs"]
    assert len(runs) == 1 and runs[0]["actors_started"] == 2 and runs[0]["units_run"] == 16  # one pool serves every round
