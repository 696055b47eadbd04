"""`uqc calibrate` as a campaign: a sampler known right is calibrated, one known wrong is flagged, a kill resumes.

Known right: ``exact`` on an exact GMM blur problem (``random_problem("blur", "gmm", seed=3)``: 1×4×4
images, K = 4, multimodal posteriors). Known wrong: ``exact`` with ``spread: 0.7`` (every draw's
deviation from the posterior mean scaled by 0.7). Each trial: 20 chains × 5 draws, all 100 kept,
L = 99 ranked. The campaigns run in process (the same ``run_campaign`` as ``uqc run --in-process``;
the Ray path is ``run_campaign_ray``, tested in tests/cluster). Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from rich.console import Console
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_problem
from uqcampaign.pipeline.calibrate import (
    CalibrationDesign,
    calibration_campaign,
    calibration_location,
    rank_draw_count,
    read_calibration,
    run_calibration,
)
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign

TRIALS = 200  # the minimum for SBC
QUIET = Console(file=open(os.devnull, "w"), stderr=False)  # noqa: SIM115


def write_campaign(folder: Path, name: str = "campaign", **sampler: Any) -> Path:
    """An exact-sampler campaign on the blur GMM problem; ``sampler`` keys are added to ``{kind: exact}``."""
    folder.mkdir(parents=True, exist_ok=True)
    problem = random_problem("blur", "gmm", seed=3)
    np.savez(folder / "prior.npz", **problem.prior_arrays)
    spec = {
        "name": name,
        "store": f"{name}.zarr",
        "seed": 7,
        "data": {"simulate": {"count": 1}},
        "operator": problem.operator_spec,
        "noise": {"sigma": problem.sigma},
        "prior": {"kind": "gmm", "file": "prior.npz"},
        "sampler": {"kind": "exact", **sampler},
        "chains": 20,
        "draws": 5,
        "chunks": {"chains": 20, "draws": 5},
        "cluster": {"address": "in-process"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _print(name: str, result: dict[str, Any]) -> None:
    cov, interval = result["coverage"], result["coverage_interval"]
    print(
        f"\n[uqc calibrate] {name}: SBC p = {result['sbc_pvalue']:.3g}, TARP p = {result['tarp_pvalue']:.3g}, "
        f"coverage 0.5 {cov['0.5']:.3f} {np.round(interval['0.5'], 3).tolist()}, 0.9 {cov['0.9']:.3f} {np.round(interval['0.9'], 3).tolist()}, "
        f"joint 0.9 {result['joint_coverage']['0.9']:.3f} → {result['verdict']}"
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calibrate")


@pytest.fixture(scope="module")
def broken(folder: Path) -> dict[str, Any]:
    """The known-wrong sampler calibrated uninterrupted (200 truths, one measurement each)."""
    campaign = load_campaign(write_campaign(folder, "broken", spread=0.7))
    return run_calibration(campaign, CalibrationDesign(TRIALS, replicates=1), progress=False, console=QUIET)


@pytest.mark.slow
def test_exact_sampler_is_calibrated_as_a_campaign(folder: Path) -> None:
    """200 truths × 2 measurements: SBC uniform (p > 0.01), the TARP diagonal inside its band, coverage at 0.5
    and 0.9 inside their binomial intervals (per pixel and joint); the store keeps it; PNGs written."""
    campaign = load_campaign(write_campaign(folder, "exact"))
    result = run_calibration(campaign, CalibrationDesign(TRIALS, replicates=2), progress=False, console=QUIET)
    _print("exact, 200 truths × 2", result)
    assert result["sbc_pvalue"] > 0.01
    assert result["tarp_pvalue"] > 0.01
    lower, upper = np.array(result["tarp_band"])
    assert np.all((lower <= np.array(result["tarp_alpha"]) + 1e-12) & (np.array(result["tarp_alpha"]) <= upper + 1e-12))
    for level in ("0.5", "0.9"):
        lo, hi = result["coverage_interval"][level]
        assert lo <= result["coverage_level"][level] <= hi
        lo, hi = result["joint_coverage_interval"][level]
        assert lo <= result["coverage_level"][level] <= hi
    assert result["verdict"] == "calibrated"
    assert result["trials"] == {"sbc": 200, "tarp": 200, "coverage": 400, "truths": 200, "replicates": 2}
    assert result["rank_draws"] == 99 and result["sampler"] == {"kind": "exact"}
    store = calibration_location(campaign.store_location)
    assert result["store"] == store and read_calibration(store) == result
    group = zarr.open_group(store, mode="r")["calibration"]
    assert group["sbc_ranks"].shape == (200, 16 + 4) and group["pixel_covered"].shape == (400, 2)
    assert group["truth_of"][...].tolist() == np.repeat(np.arange(200), 2).tolist()
    truths = np.asarray(zarr.open_group(store, mode="r")["x_true"][...])
    assert np.array_equal(truths[0::2], truths[1::2]) and not np.array_equal(truths[0], truths[2])  # replicates share a truth
    for path in result["figures"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_spread_0_7_is_flagged_miscalibrated(broken: dict[str, Any]) -> None:
    """``exact`` with its spread × 0.7: SBC p < 0.01, coverage at 0.9 below its interval, verdict miscalibrated."""
    _print("exact spread × 0.7", broken)
    assert broken["sbc_pvalue"] < 0.01
    assert broken["tarp_pvalue"] < 0.01
    assert broken["coverage_interval"]["0.9"][1] < 0.9
    assert broken["verdict"] == "miscalibrated"


@pytest.mark.slow
def test_a_killed_calibration_resumes_to_the_same_json(folder: Path, broken: dict[str, Any]) -> None:
    """`uqc calibrate --format json` killed (SIGKILL) after some trials, then rerun: the JSON equals the uninterrupted run's."""
    path = folder / "broken.yaml"
    store = folder / "resumed.zarr"
    args = [sys.executable, "-m", "uqcampaign.pipeline.cli", "calibrate", str(path), "--trials", str(TRIALS), "--replicates", "1",
            "--store", str(store), "--out", str(folder / "resumed-figures"), "--no-progress", "--format", "json"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        done = 0
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            if (store / "draws_done" / "zarr.json").exists():
                done = int((np.asarray(zarr.open_group(store, mode="r", use_consolidated=False)["draws_done"][...])[:, 0] > 0).sum())
                if done >= 40:
                    break
        assert process.poll() is None, "the calibration finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    partial = int((np.asarray(zarr.open_group(store, mode="r", use_consolidated=False)["draws_done"][...])[:, 0] > 0).sum())
    assert 40 <= partial < TRIALS
    result = CliRunner().invoke(app, ["calibrate", str(path), "--trials", str(TRIALS), "--replicates", "1", "--store", str(store),
                                      "--out", str(folder / "resumed-figures"), "--no-progress", "--format", "json"])
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    different = {"store", "figures"}
    assert {k: v for k, v in resumed.items() if k not in different} == {k: v for k, v in broken.items() if k not in different}
    assert resumed["store"] == str(store)


def test_refusals_are_one_line(folder: Path) -> None:
    """Point estimates, too few trials and a prior that cannot sample are refused before anything is written."""
    path = write_campaign(folder / "refusals")
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(path), "--trials", "20"])
    assert result.exit_code == 2 and "at least 50 trials" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    spec = yaml.safe_load(path.read_text())
    spec["sampler"] = {"kind": "map-hqs"}
    spec["draws"], spec["chunks"] = 1, {"chains": 20, "draws": 1}
    path.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["calibrate", str(path), "--trials", "60"])
    assert result.exit_code == 2 and "one point estimate per chain" in result.stderr, result.output
    assert not (folder / "refusals" / "campaign.calibration.zarr").exists()


def test_a_prior_that_cannot_sample_is_refused(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior

    campaign = load_campaign(write_campaign(folder / "nosample"))
    monkeypatch.delattr(GaussianMixturePrior, "sample")
    with pytest.raises(UQError, match=r"prior kind 'gmm' cannot draw samples"):
        run_calibration(campaign, CalibrationDesign(60), progress=False, console=QUIET)
    assert not Path(calibration_location(campaign.store_location)).exists()


def test_design_and_derived_campaign(folder: Path) -> None:
    """The derived campaign keeps what is calibrated and replaces the data; the rank-draw rule."""
    campaign = load_campaign(write_campaign(folder / "design"))
    derived = calibration_campaign(campaign, CalibrationDesign(60, replicates=3), draws=4)
    assert derived.data.simulate.count == 180 and derived.data.simulate.replicates == 3
    assert derived.store_location == calibration_location(campaign.store_location).replace(".zarr", "") + ".zarr"
    assert derived.store_location.endswith("campaign.calibration.zarr")
    for key in ("operator", "prior", "sampler", "noise", "chains", "seed"):
        assert getattr(derived, key) == getattr(campaign, key)
    assert derived.draws == 4 and derived.chunks.draws == 4
    assert derived.config_hash() != calibration_campaign(campaign, CalibrationDesign(60, replicates=2), draws=4).config_hash()
    assert [rank_draw_count(n, 99) for n in (19, 20, 39, 57, 99, 100, 5000)] == [19, 19, 39, 39, 99, 99, 99]
    assert rank_draw_count(7, 99) == 19
    assert calibration_location("s3://bucket/runs/x.zarr") == "s3://bucket/runs/x.calibration.zarr"
