"""Campaigns that run until converged (issue 13, item 4): ``until: {rhat, ess_bulk, max_draws}``.

Two exact problems, both sampled by PnP-ULA with dispersed starts (``init: prior``):

* **slow mixing** — :func:`random_problem` ``("inpaint", "gaussian", seed=2, σ = 0.2)``: the
  slowest posterior direction relaxes in ≈ 15 ULA steps and the integrated autocorrelation time
  is ≈ 2 × that, while the first round keeps 10 draws 2 steps apart after 5 steps of burn-in: R̂
  is ≈ 2 there, and only rounds of thousands of draws reach R̂ < 1.01 with ESS ≥ 400.
* **two modes** — a two-component GMM (std 0.1 per pixel) whose components differ on every
  pixel (by 0.6 observed, 0.3 missing): a measurement of component A's image has a unimodal
  posterior (the data rule the other component out), while the measurement ``y = 0.5`` on every
  observed pixel sits exactly between them: two modes of weight 1/2, ≈ 16 nats of barrier,
  chains never cross, R̂ ≫ 1 for ever — it stops at ``max_draws``, flagged.
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
import torch
import yaml
import zarr
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.operators import build_operator
from uqcampaign.kernels.problems import random_problem
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.report import report_rows
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.until import check_measurement, read_records, round_schedule

RECORD_NAMES = ("checked_round", "stop_round", "converged", "draws_used", "rhat_max", "ess_bulk_min", "ess_tail_min")
TARGETS = {"rhat": 1.01, "ess_bulk": 400}


def _write(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "store": f"{name}.zarr", "cluster": {"address": "in-process"}, **spec}, sort_keys=False))
    return path


def slow_campaign(folder: Path, name: str = "slow", **overrides: Any) -> Path:
    """The slow-mixing problem (module docstring): 3 simulated measurements, 8 chains, rounds of 10, 20, … 10240 draws."""
    problem = random_problem("inpaint", "gaussian", seed=2, sigma=0.2)
    np.savez(folder / "gaussian.npz", **problem.prior_arrays)
    spec = {
        "seed": 5,
        "data": {"simulate": {"count": 3}},
        "operator": problem.operator_spec,
        "noise": {"sigma": problem.sigma},
        "prior": {"kind": "gaussian", "file": "gaussian.npz"},
        "sampler": {"kind": "ula", "init": "prior", "burn_in": 5, "thin": 2, "epsilon": 0.05, "box": None},
        "chains": 8,
        "draws": 10,
        "chunks": {"chains": 8, "draws": 160},
        "until": {**TARGETS, "max_draws": 10240},
        **overrides,
    }
    return _write(folder, name, spec)


def two_mode_campaign(folder: Path, name: str = "modes", **overrides: Any) -> Path:
    """The two-mode problem (module docstring): measurement 0 unimodal, measurement 1 between the modes."""
    img = (1, 4, 4)
    operator_spec = {"kind": "inpaint", "fraction": 0.5, "seed": 0}
    operator = build_operator(operator_spec, img)
    observed = operator.weights.expand(img).numpy() > 0
    means = np.stack([np.where(observed, 0.9, 0.65), np.where(observed, 0.1, 0.35)])
    np.savez(folder / "modes.npz", weights=np.array([0.5, 0.5]), means=means, variances=np.full((2, *img), 0.1**2))
    sigma = 0.1
    noise = torch.randn(img, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.stack([operator.A(torch.from_numpy(means[0])[None])[0] + sigma * noise * torch.from_numpy(observed), operator.A(torch.full((1, *img), 0.5, dtype=torch.float64))[0]])
    np.save(folder / "modes_y.npy", y.numpy().astype(np.float32))
    spec = {
        "seed": 1,
        "data": {"y": "modes_y.npy"},
        "operator": operator_spec,
        "noise": {"sigma": sigma},
        "prior": {"kind": "gmm", "file": "modes.npz"},
        "sampler": {"kind": "ula", "init": "prior", "burn_in": 100, "thin": 5, "epsilon": 0.005, "box": None},
        "chains": 8,
        "draws": 20,
        "chunks": {"chains": 8, "draws": 160},
        "until": {**TARGETS, "max_draws": 1280},
        **overrides,
    }
    return _write(folder, name, spec)


def _records(store: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(store, mode="r", use_consolidated=False)
    return {name: np.asarray(group["until"][name][...]) for name in RECORD_NAMES}


def _arviz_worst(samples: np.ndarray) -> tuple[float, float, float]:
    """ArviZ's worst R̂ and smallest bulk and tail ESS over the pixels of ``samples (chain, draw, C, H, W)``."""
    import arviz as az

    flat = samples.reshape(*samples.shape[:2], -1).astype(np.float64)
    rhat = [float(az.rhat(flat[:, :, p], method="rank")) for p in range(flat.shape[2])]
    bulk = [float(az.ess(flat[:, :, p], method="bulk")) for p in range(flat.shape[2])]
    tail = [float(az.ess(flat[:, :, p], method="tail")) for p in range(flat.shape[2])]
    return max(rhat), min(bulk), min(tail)


def _meets(worst: tuple[float, float, float]) -> bool:
    rhat, bulk, tail = worst
    return rhat < TARGETS["rhat"] and bulk >= TARGETS["ess_bulk"] and tail >= TARGETS["ess_bulk"]


@pytest.fixture(scope="module")
def modes_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The two-mode campaign run once, uninterrupted, in this process (the reference of the kill test)."""
    campaign = load_campaign(two_mode_campaign(tmp_path_factory.mktemp("modes")))
    run_campaign(campaign, progress=False)
    return campaign.store_location


# -- the campaign file ---------------------------------------------------------------------------


def test_until_keys_are_checked_with_their_line(write_campaign) -> None:
    good = load_campaign(write_campaign(until={"rhat": 1.01, "ess_bulk": 400, "max_draws": 70}, chunks={"chains": 4, "draws": 20}))
    assert good.until is not None and good.until.tail_target == 400 and good.draws_limit == 70
    assert good.chunks.draws == 20  # chunks may hold more draws than the first round, up to max_draws
    same = load_campaign(write_campaign("same.yaml", until={"max_draws": 70}))
    assert same.config_hash() == load_campaign(write_campaign("plain.yaml")).config_hash()  # until never changes a draw
    assert round_schedule(good) == [7, 14, 28, 56, 70]
    assert round_schedule(load_campaign(write_campaign(until={"max_draws": 7}))) == [7]
    for until, message in (
        ({"rhat": 1.0, "max_draws": 70}, r"campaign.yaml:\d+: 'until.rhat': Input should be greater than 1"),
        ({"ess_bulk": 0, "max_draws": 70}, r"'until.ess_bulk': Input should be greater than 0"),
        ({"max_draws": 5}, r"'until.max_draws': 5 is smaller than draws = 7 \(the first round\); use at least 7"),
        ({"rhat": 1.01}, r"missing key 'until.max_draws'"),
        ({"max_draws": 70, "ess": 400}, r"unknown key 'until.ess'"),
    ):
        with pytest.raises(UQError, match=message):
            load_campaign(write_campaign(until=until))
    with pytest.raises(UQError, match=r"'chunks.draws': 80 is larger than until.max_draws = 70"):
        load_campaign(write_campaign(until={"max_draws": 70}, chunks={"chains": 4, "draws": 80}))



def test_until_with_a_sampler_whose_draws_cannot_grow_is_refused_at_load(write_campaign) -> None:
    """SMC pools a unit's draws at its end (a longer run takes other draws) and a point estimate writes one
    draw: neither can be drawn in rounds, refused with the line and the fix before anything runs."""
    smc = {"sampler": {"kind": "tds", "runs": 2, "particles": 32, "steps": 10}, "chains": 4, "draws": 4, "chunks": {"chains": 2, "draws": 2}}
    with pytest.raises(UQError, match=r"campaign.yaml:\d+: sampler 'tds' takes all of a unit's draws from one pool.*remove until: and give fixed draws \(e.g. draws: 16\)"):
        load_campaign(write_campaign(until={"max_draws": 16}, **smc))
    point = {"sampler": {"kind": "map-hqs", "iterations": 5}, "draws": 1, "chunks": {"chains": 4, "draws": 1}}
    with pytest.raises(UQError, match=r"point estimate.*set draws: 1"):
        load_campaign(write_campaign(until={"max_draws": 8}, **point))
    load_campaign(write_campaign(until={"max_draws": 16}, **{**smc, "sampler": {"kind": "ula"}}))

# -- slow mixing: rounds until R̂ < 1.01 and ESS >= 400 ---------------------------------------------


@pytest.mark.slow
def test_slow_mixing_problem_runs_until_every_pixel_meets_the_targets(tmp_path: Path) -> None:
    campaign = load_campaign(slow_campaign(tmp_path))
    schedule = round_schedule(campaign)
    result = run_campaign(campaign, progress=False)
    records = _records(campaign.store_location)
    assert (records["converged"] == 1).all() and (records["stop_round"] == records["checked_round"]).all()
    group = zarr.open_group(campaign.store_location, mode="r", use_consolidated=False)
    samples = np.asarray(group["samples"][...])
    done = np.asarray(group["draws_done"][...])
    for m in range(3):
        stop = int(records["stop_round"][m])
        draws = schedule[stop]
        assert int(records["draws_used"][m]) == draws and (done[m] == draws).all()
        # ArviZ on the stored draws: the targets hold at the stopping round and at no earlier one
        worst = _arviz_worst(samples[m, :, :draws])
        assert _meets(worst), (m, draws, worst)
        np.testing.assert_allclose(worst, (records["rhat_max"][m], records["ess_bulk_min"][m], records["ess_tail_min"][m]), rtol=1e-6)
        assert not _meets(_arviz_worst(samples[m, :, : schedule[stop - 1]]))
        first = _arviz_worst(samples[m, :, : schedule[0]])
        assert first[0] > 1.5, first  # the first round is far from converged: a slow-mixing problem
        print(f"\n[until] slow mixing, measurement {m}: round 1 ({schedule[0]} draws) R̂ max {first[0]:.2f}; stopped at round {stop + 1} "
              f"({draws} draws per chain): R̂ max {worst[0]:.4f}, ESS bulk min {worst[1]:.0f}, tail min {worst[2]:.0f}")
    assert group["samples"].shape[2] == max(schedule[int(r)] for r in records["stop_round"])
    assert result.units_run == sum(int(r) + 1 for r in records["stop_round"])  # one unit per measurement and round


# -- two modes: max_draws, flagged; measurements with different draw counts -------------------------


def test_measurement_between_two_modes_stops_at_max_draws_flagged(modes_store: str) -> None:
    records = read_records(zarr.open_group(modes_store, mode="r", use_consolidated=False))
    assert records is not None
    assert records.converged.tolist() == [1, 0] and records.stopped.all()
    assert records.draws_used.tolist() == [640, 1280]  # measurement 0 converged at round 6 of 7
    assert records.rhat_max[1] > 1.3  # chains in two modes that never cross
    rows = report_rows(modes_store, reduce=True)
    assert rows[0]["until"] == "converged" and rows[0]["until_round"] == 5 and "max_draws" not in rows[0]["flag"]
    assert rows[1]["until"] == "max_draws" and rows[1]["until_draws"] == 1280
    assert "until: stopped at max_draws 1280 without converging" in rows[1]["flag"]


def test_measurements_with_different_draw_counts_are_reduced_reported_and_inspected_at_their_own(modes_store: str) -> None:
    group = zarr.open_group(modes_store, mode="r", use_consolidated=False)
    done = np.asarray(group["draws_done"][...])
    assert (done[0] == 640).all() and (done[1] == 1280).all() and group["samples"].shape[2] == 1280
    assert np.isnan(group["samples"][0, :, 640:]).all()  # a stopped measurement is not sampled further
    rows = report_rows(modes_store, reduce=True)
    assert [(r["draws_done"], r["draws_planned"]) for r in rows] == [(8 * 640, 8 * 640), (8 * 1280, 8 * 1280)]
    summary = zarr.open_group(modes_store, path="summary", mode="r", use_consolidated=False)
    assert summary["draws_used"][...].tolist() == [640, 1280]
    assert np.isfinite(summary["chi2_draws"][0, :, :640]).all() and np.isnan(summary["chi2_draws"][0, :, 640:]).all()
    inspect = CliRunner().invoke(app, ["inspect", modes_store])
    assert inspect.exit_code == 0, inspect.output
    assert "total:    15360/15360 chain-draws (100.0 %)" in inspect.stdout
    report = CliRunner().invoke(app, ["report", modes_store, "--format", "json"])
    assert report.exit_code == 0, report.output
    assert [row["until"] for row in json.loads(report.stdout)[:-1]] == ["converged", "max_draws"]  # the last row is the campaign's


# -- SIGKILL, rerun: bit-identical ---------------------------------------------------------------


def test_sigkilled_until_campaign_resumes_bit_identical(tmp_path: Path, modes_store: str) -> None:
    path = two_mode_campaign(tmp_path)
    store = str(tmp_path / "modes.zarr")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uqcampaign.pipeline.cli", "run", str(path), "--in-process", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    checked = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            checked = np.asarray(zarr.open_group(store, mode="r", use_consolidated=False)["until"]["checked_round"][...])
        except Exception:  # not created yet, or being written
            checked = None
        if checked is not None and checked.min() >= 2:  # three rounds decided, four to go
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed = _records(store)
    assert (killed["stop_round"] < 0).any(), "the run was not caught before its end"

    result = run_campaign(load_campaign(path), progress=False)
    assert result.units_run >= 1
    new, ref = zarr.open_group(store, mode="r", use_consolidated=False), zarr.open_group(modes_store, mode="r", use_consolidated=False)
    for name in ("samples", "draws_done", "y_obs"):
        assert np.asarray(new[name][...]).tobytes() == np.asarray(ref[name][...]).tobytes(), name
    got, want = _records(store), _records(modes_store)
    for name in RECORD_NAMES:
        assert got[name].tobytes() == want[name].tobytes(), name
    assert json.loads(new.attrs["sizes"]) == json.loads(ref.attrs["sizes"]) and "growing" not in new.attrs


def test_check_measurement_reads_tiles_within_its_memory(modes_store: str) -> None:
    """A check bounded to a few pixels' draws gives the numbers of the whole-image check."""
    samples = zarr.open_group(modes_store, mode="r", use_consolidated=False)["samples"]
    whole = check_measurement(samples, 1, 1280)
    tiled = check_measurement(samples, 1, 1280, memory=3 * 4 * 8 * 1280 * 3)  # 3 pixels per tile
    assert whole == tiled and whole.rhat_max > 1.3
