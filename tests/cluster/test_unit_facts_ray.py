"""Sampler facts on Ray: an SMC campaign run by the Ray driver on a 2-node test cluster writes ``smc/*``
from the workers, byte for byte what the in-process runner writes, and resumes to the same store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from uqcampaign.cluster.driver import run_campaign_ray
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import run_campaign

pytestmark = pytest.mark.timeout(240)

FACTS = ("samples", "draws_done", "smc/ess", "smc/resamples", "smc/log_evidence")


def _write(folder: Path, store: str) -> Path:
    spec = {
        "name": "smc-ray",
        "store": store,
        "seed": 5,
        "data": {"simulate": {"count": 3}},
        "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 1},
        "noise": {"sigma": 0.1},
        "prior": {"kind": "gaussian", "shape": [1, 4, 4], "mean": 0.5, "variance": 0.04},
        "sampler": {"kind": "tds", "runs": 2, "particles": 32, "steps": 10},
        "chains": 4,
        "draws": 4,
        "chunks": {"chains": 2, "draws": 2},
        "cluster": {"address": "local", "workers": 2, "gpus_per_worker": 0},
    }
    path = folder / f"{Path(store).stem}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _bytes(store: str) -> dict[str, bytes]:
    group = zarr.open_group(store, mode="r")
    return {path: np.asarray(group[path][...]).tobytes() for path in FACTS}


def test_smc_facts_on_ray_equal_the_in_process_run(ray_cluster, tmp_path: Path) -> None:
    reference = load_campaign(_write(tmp_path, "ref.zarr"))
    run_campaign(reference, progress=False)
    campaign = load_campaign(_write(tmp_path, "ray.zarr"))
    result = run_campaign_ray(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1, progress=False)
    assert result.units_run == 6
    assert _bytes(campaign.store_location) == _bytes(reference.store_location)
    ds = xr.open_zarr(campaign.store_location, group="smc")
    assert ds["log_evidence"].dims == ("measurement", "run") and np.isfinite(ds["log_evidence"].values).all()

    group = zarr.open_group(campaign.store_location, mode="r+")  # two units lost: one mid-way, one before its facts
    group["draws_done"][1, 0:2] = 2
    group["smc/log_evidence"][1, 0:2] = np.nan
    group["draws_done"][2, 2:4] = 0
    resumed = run_campaign_ray(campaign, address=ray_cluster.address, workers=2, gpus_per_worker=1, resume=True, progress=False)
    assert resumed.units_run == 2
    assert _bytes(campaign.store_location) == _bytes(reference.store_location)
