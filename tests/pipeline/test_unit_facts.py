"""Sampler facts in the store (issues 12–15): SMC's per-run arrays, LATINO-PRO's condition, the box's
share of updates, MAP residuals — written by the unit that made them, equal to the sampler run directly
with the unit's generator, bit-identical after a kill and a resume, grown with the store, read with xarray,
reported by ``uqc report``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_conditional_problem
from uqcampaign.kernels.rng import unit_generator
from uqcampaign.kernels.samplers.smc.sampler import pooled_log_evidence
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import CampaignWarning, load_campaign
from uqcampaign.pipeline.export import inference_data
from uqcampaign.pipeline.report import report_rows
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.unit_facts import OUTSIDE_BOX_WARN
from uqcampaign.pipeline.units import load_components, plan_units

runner = CliRunner()

SMC = dict(
    sampler={"kind": "tds", "runs": 2, "particles": 32, "steps": 10},
    prior={"kind": "gaussian", "shape": [1, 4, 4], "mean": 0.5, "variance": 0.04},
    chains=4,
    draws=4,
    chunks={"chains": 2, "draws": 2},
    data={"simulate": {"count": 3}},
)
SMC_FACTS = ("smc/ess", "smc/resamples", "smc/log_evidence")
LATINO_PRO_FACTS = ("condition", "condition_start", "condition_trace", "objective_trace")


def _latino_pro(folder: Path) -> dict:
    """A latino-pro campaign on the conditional GMM of ``random_conditional_problem`` (4×4 pixels, K = 4, k = 3)."""
    arrays = random_conditional_problem("inpaint", seed=0).problem.prior_arrays
    np.savez(folder / "conditional.npz", **{key: np.asarray(value) for key, value in arrays.items()})
    return dict(
        sampler={"kind": "latino-pro", "iterations": 6, "steps": 3, "final_steps": 3, "radius": 2.0},
        prior={"kind": "gmm", "file": "conditional.npz"},
        noise={"sigma": 0.05},
        chains=4,
        draws=4,
        chunks={"chains": 4, "draws": 2},
        data={"simulate": {"count": 2}},
    )


def _uqc_run(path: Path) -> None:
    result = runner.invoke(app, ["run", str(path), "--in-process", "--no-progress"])
    assert result.exit_code == 0, result.output


def _arrays(store: str, paths: tuple[str, ...]) -> dict[str, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return {path: np.asarray(group[path][...]) for path in ("samples", "draws_done", *paths)}


def _assert_bit_identical(store: str, reference: str, paths: tuple[str, ...]) -> None:
    got, want = _arrays(store, paths), _arrays(reference, paths)
    for path in want:
        assert got[path].dtype == want[path].dtype and got[path].shape == want[path].shape, path
        assert got[path].tobytes() == want[path].tobytes(), path


def _direct(campaign, m: int, block: int):
    """The unit's draws from the sampler itself, with the unit's own generator."""
    prior, operator, sampler = load_components(campaign)
    y = torch.as_tensor(np.asarray(zarr.open_group(campaign.store_location, mode="r")["y_obs"][m]))
    chains = campaign.block_chains(block)
    generator = unit_generator(campaign.seed, m, block, "cpu")
    return list(sampler.run(y, operator, prior, campaign.noise.sigma, chains.stop - chains.start, campaign.draws, generator))


def test_smc_campaign_keeps_its_runs_facts(write_campaign) -> None:
    """``uqc run`` of a tds campaign: ``smc/{ess,resamples,log_evidence}`` (measurement, run), run = block × runs + r,
    equal to the sampler's own info for every unit; ``uqc report`` gives the pooled log-evidence and its SE."""
    path = write_campaign(**SMC)
    _uqc_run(path)
    campaign = load_campaign(path)
    store = campaign.store_location
    ds = xr.open_zarr(store, group="smc")
    assert set(ds.data_vars) == {"ess", "resamples", "log_evidence"}
    for name in ds.data_vars:
        assert ds[name].dims == ("measurement", "run") and ds[name].shape == (3, 4)
        assert ds[name].attrs["long_name"]
    assert ds["run"].values.tolist() == [0, 1, 2, 3]
    samples = zarr.open_group(store, mode="r")["samples"]
    for unit in plan_units(campaign):
        draws = _direct(campaign, unit.measurement, unit.block)
        runs = slice(2 * unit.block, 2 * unit.block + 2)
        for name in ("ess", "resamples", "log_evidence"):
            np.testing.assert_array_equal(ds[name].values[unit.measurement, runs], draws[-1].info[name].numpy())
        chains = campaign.block_chains(unit.block)
        np.testing.assert_array_equal(samples[unit.measurement, chains], torch.stack([d.x for d in draws], 1).numpy())
    assert (ds["resamples"].values >= 0).all() and np.isfinite(ds["log_evidence"].values).all()

    result = runner.invoke(app, ["report", store, "--reduce", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[-1]["measurement"] == "campaign" and len(rows) == ds["log_evidence"].shape[0] + 1  # the last row is the campaign's
    for m, row in enumerate(rows[:-1]):
        estimate, se = pooled_log_evidence(ds["log_evidence"].values[m])
        assert (row["log_evidence"], row["log_evidence_se"], row["log_evidence_runs"]) == pytest.approx((estimate, se, 4), rel=1e-12)
    table = runner.invoke(app, ["report", store], env={"COLUMNS": "250"})
    assert "log p(y) ± SE" in table.stdout and f"{rows[0]['log_evidence']:.3f} ± {rows[0]['log_evidence_se']:.3f}" in table.stdout


def test_latino_pro_campaign_keeps_its_condition(write_campaign, tmp_path: Path) -> None:
    """``uqc run`` of a latino-pro campaign on a conditional GMM: root arrays ``condition (measurement, k)``,
    ``condition_trace (measurement, iteration, k)``, the start and the objective trace, equal to the sampler's
    own info; ``nfe_per_draw`` as the sampler counts it; the report shows ‖ĉ − c₀‖ and the objective."""
    path = write_campaign(**_latino_pro(tmp_path))
    _uqc_run(path)
    campaign = load_campaign(path)
    store = campaign.store_location
    ds = xr.open_zarr(store)
    assert ds["condition"].dims == ("measurement", "k") and ds["condition"].shape == (2, 3)
    assert ds["condition_start"].dims == ("measurement", "k")
    assert ds["condition_trace"].dims == ("measurement", "iteration", "k") and ds["condition_trace"].shape == (2, 6, 3)
    assert ds["objective_trace"].dims == ("measurement", "iteration") and ds["objective_trace"].dtype == np.float64
    for m in range(2):
        draws = _direct(campaign, m, 0)
        info = draws[-1].info
        for name in LATINO_PRO_FACTS:
            np.testing.assert_array_equal(ds[name].values[m], info[name].numpy().astype(ds[name].dtype))
    nfe = zarr.open_group(store, mode="r")["units/nfe_per_draw"][...]
    assert (nfe == (6 * 3 + 4 * 3) / 4).all()  # SAPG's 6 iterations × 3 steps and 4 final runs of 3 steps, over 4 draws

    rows = report_rows(store, reduce=True)
    for m, row in enumerate(rows):
        shift = np.linalg.norm(ds["condition"].values[m].astype(np.float64) - ds["condition_start"].values[m])
        assert row["condition_shift"] == pytest.approx(shift, rel=1e-12) and row["condition_shift"] > 0
        assert row["objective_first"] == ds["objective_trace"].values[m, 0]
        assert row["objective_last"] == ds["objective_trace"].values[m, -1]
    detail = runner.invoke(app, ["report", store, "--condition", "--format", "json"])
    assert detail.exit_code == 0, detail.output
    steps = json.loads(detail.stdout)
    assert [(r["measurement"], r["iteration"]) for r in steps] == [(m, i) for m in range(2) for i in range(6)]
    np.testing.assert_allclose([r["objective"] for r in steps], ds["objective_trace"].values.reshape(-1))
    np.testing.assert_allclose(steps[-1]["condition_distance"], rows[1]["condition_shift"], rtol=1e-12)
    table = runner.invoke(app, ["report", store], env={"COLUMNS": "250"})
    assert "‖ĉ − c₀‖" in table.stdout and "objective" in table.stdout


def _draws_done(store: str) -> np.ndarray | None:
    try:
        return np.asarray(zarr.open_group(store, mode="r")["draws_done"][...])
    except Exception:  # not created yet, or being written
        return None


@pytest.mark.parametrize("kind", ["tds", "latino-pro"])
def test_killed_and_resumed_campaign_is_bit_identical(kind, write_campaign, tmp_path: Path) -> None:
    """SIGKILL ``uqc run`` once some units are done; ``uqc run`` again: draws and facts equal an uninterrupted run, byte for byte."""
    options = dict(SMC, data={"simulate": {"count": 6}}) if kind == "tds" else dict(_latino_pro(tmp_path), data={"simulate": {"count": 6}})
    facts = SMC_FACTS if kind == "tds" else LATINO_PRO_FACTS
    path = write_campaign(**options)
    store = load_campaign(path).store_location
    proc = subprocess.Popen(
        [sys.executable, "-m", "uqcampaign.pipeline.cli", "run", str(path), "--in-process", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = _draws_done(store)
        if done is not None and done.sum() > 0:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = _draws_done(store)
    total = 6 * 4 * 4
    assert done is not None and 0 < done.sum() < total, "the run was not caught in the middle"
    _uqc_run(path)
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", **options))
    run_campaign(reference, progress=False)
    _assert_bit_identical(store, reference.store_location, facts)


def test_half_done_unit_recomputes_its_facts(write_campaign, tmp_path: Path) -> None:
    """A unit killed after its first chunk (facts not yet written) and one killed between its facts and its
    last ``draws_done`` write both end with the facts of an uninterrupted run."""
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", **SMC))
    run_campaign(reference, progress=False)
    shutil.copytree(reference.store_location, tmp_path / "store.zarr")
    campaign = load_campaign(write_campaign(**SMC))
    group = zarr.open_group(campaign.store_location, mode="r+")
    group["draws_done"][0, 0:2] = 2  # unit (0, 0): its first chunk only, its facts gone
    for name in ("ess", "log_evidence"):
        group[f"smc/{name}"][0, 0:2] = np.nan
    group["smc/resamples"][0, 0:2] = -1
    group["draws_done"][1, 2:4] = 2  # unit (1, 1): facts written, not yet marked complete
    result = run_campaign(campaign, progress=False)
    assert result.units_run == 2
    _assert_bit_identical(campaign.store_location, reference.store_location, SMC_FACTS)


def test_fact_arrays_grow_with_the_store(write_campaign) -> None:
    """More chains (whole blocks) and measurements extend ``smc/*`` along ``run`` and ``measurement``; more draws
    of a ULA campaign rewrite ``units/outside_box`` with the mean over all draws: both equal one run at the final size."""
    path = write_campaign(**{**SMC, "chains": 2, "data": {"simulate": {"count": 2}}})
    run_campaign(load_campaign(path), progress=False)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "chains": 4, "data": {"simulate": {"count": 3}}}))
    result = run_campaign(load_campaign(path), progress=False)
    assert "chains 2 -> 4, measurements 2 -> 3" in result.messages[0] and result.units_run == 4
    assert zarr.open_group(load_campaign(path).store_location, mode="r")["smc/ess"].attrs["block_dim"] == "run"
    reference = load_campaign(write_campaign("ref.yaml", store="ref.zarr", **SMC))
    run_campaign(reference, progress=False)
    _assert_bit_identical(load_campaign(path).store_location, reference.store_location, SMC_FACTS)

    ula = dict(sampler={"kind": "ula", "burn_in": 10, "thin": 2, "box": [0.3, 0.7]}, draws=4, chunks={"chains": 4, "draws": 2})
    path = write_campaign("ula.yaml", store="ula.zarr", **ula)
    run_campaign(load_campaign(path), progress=False)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "draws": 7}))
    run_campaign(load_campaign(path), progress=False)
    reference = load_campaign(write_campaign("ula-ref.yaml", store="ula-ref.zarr", **{**ula, "draws": 7}))
    run_campaign(reference, progress=False)
    _assert_bit_identical(load_campaign(path).store_location, reference.store_location, ("units/outside_box",))


def test_outside_box_is_kept_per_unit_and_flagged(write_campaign) -> None:
    """``units/outside_box`` = the nfe-weighted mean of the draws' ``outside_box`` (the fraction of all the unit's
    pixel-updates); a prior with half its mass below −1 run with box [−1, 2] is flagged by ``uqc report``, the same
    prior with ``box: auto`` is not (its fraction stays below the threshold)."""
    prior = {"kind": "gaussian", "shape": [1, 4, 4], "mean": -1.0, "variance": 0.04}
    fractions = {}
    for name, box in (("fixed", [-1.0, 2.0]), ("auto", "auto")):
        path = write_campaign(f"{name}.yaml", store=f"{name}.zarr", prior=prior, operator={"kind": "denoise"},
                              sampler={"kind": "ula", "burn_in": 30, "thin": 3, "box": box}, chains=4, draws=8, chunks={"chains": 2, "draws": 4})
        campaign = load_campaign(path)
        run_campaign(campaign, progress=False)
        stored = zarr.open_group(campaign.store_location, mode="r")["units/outside_box"]
        assert stored.metadata.dimension_names == ("measurement", "block")
        for unit in plan_units(campaign):
            draws = _direct(campaign, unit.measurement, unit.block)
            expected = sum(d.info["outside_box"] * d.nfe for d in draws) / sum(d.nfe for d in draws)
            assert stored[unit.measurement, unit.block] == pytest.approx(expected, rel=1e-12)
        rows = report_rows(campaign.store_location, reduce=True)
        fractions[name] = [row["outside_box"] for row in rows]
        flagged = ["box:" in row["flag"] for row in rows]
        assert flagged == [name == "fixed"] * 2, (name, fractions[name])
    print(f"\n[box] outside_box with box [-1, 2]: {fractions['fixed']}, box auto: {fractions['auto']} (flag > {OUTSIDE_BOX_WARN})")
    assert min(fractions["fixed"]) > 0.2 and max(fractions["auto"]) < OUTSIDE_BOX_WARN


def test_export_puts_per_draw_facts_in_sample_stats(write_campaign) -> None:
    """``sample_stats.outside_box`` (chain, draw, measurement): each draw its unit's value."""
    path = write_campaign(sampler={"kind": "ula", "burn_in": 10, "thin": 2, "box": [0.3, 0.7]})
    campaign = load_campaign(path)
    run_campaign(campaign, progress=False)
    data = inference_data(campaign.store_location)
    stats = data.sample_stats["outside_box"]
    assert stats.dims == ("chain", "draw", "measurement") and stats.shape == (6, 7, 2)
    units = zarr.open_group(campaign.store_location, mode="r")["units/outside_box"][...]
    for chain in range(6):
        np.testing.assert_array_equal(stats.values[chain], np.broadcast_to(units[:, chain // 4], (7, 2)))
    assert stats.attrs["long_name"]


def test_map_campaign_keeps_its_residual(write_campaign) -> None:
    """``map/residual`` (measurement, block, iteration) of map-hqs, one row per unit."""
    path = write_campaign(sampler={"kind": "map-hqs", "iterations": 5}, draws=1, chunks={"chains": 4, "draws": 1})
    campaign = load_campaign(path)
    run_campaign(campaign, progress=False)
    ds = xr.open_zarr(campaign.store_location, group="map")
    assert ds["residual"].dims == ("measurement", "block", "iteration") and ds["residual"].shape == (2, 2, 5)
    draws = _direct(campaign, 1, 1)
    np.testing.assert_array_equal(ds["residual"].values[1, 1], draws[0].info["residual"].numpy())


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (dict(sampler={"kind": "map-hqs"}, draws=5, chunks={"chains": 4, "draws": 5}), "draws", ["point estimate", "draws: 5", "set draws: 1"]),
        (dict(sampler={"kind": "tds", "runs": 2, "particles": 8}), "chunks", ["4 × 7 = 28", "2 × 8 = 16", "lower chunks.chains or draws"]),
        ("latino-pro", "chunks", ["latino-pro", "set chunks.chains: 4", "now 2"]),
    ],
)
def test_layouts_a_sampler_cannot_run_are_refused_at_load(overrides, key, words, write_campaign, tmp_path: Path) -> None:
    """One line naming the value and the fix, with the line of the key; nothing is written."""
    if overrides == "latino-pro":
        overrides = {**_latino_pro(tmp_path), "chunks": {"chains": 2, "draws": 2}}
    path = write_campaign(**overrides)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if text.startswith(f"{key}:"))
    with pytest.raises(UQError) as caught:
        load_campaign(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line + (1 if key == 'chunks' else 0)}:") and "\n" not in message
    assert all(word in message for word in words), message
    result = runner.invoke(app, ["run", str(path), "--in-process", "--no-progress"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert not (tmp_path / "store.zarr").exists()


def test_smc_pool_above_an_eighth_is_a_warning(write_campaign) -> None:
    """A unit taking more than 1/8 of its runs × particles runs, with a warning naming the share and the fix."""
    path = write_campaign(**{**SMC, "sampler": {"kind": "tds", "runs": 2, "particles": 16, "steps": 5}})  # 8 draws of 32: 25%
    with pytest.warns(CampaignWarning, match=r"2 × 4 = 8 draws from runs × particles = 2 × 16 = 32 particles \(25%\), more than 1/8"):
        load_campaign(path)
    result = runner.invoke(app, ["run", str(path), "--in-process", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "raise runs × particles to 64 or more" in result.output
    with warnings.catch_warnings():
        warnings.simplefilter("error", CampaignWarning)
        load_campaign(write_campaign("ok.yaml", **SMC))  # 8 of 64: no warning


def test_store_of_an_earlier_version_gains_the_fact_arrays(write_campaign) -> None:
    """A store written before the facts existed (no ``smc/``) is continued: the arrays are added, named in the
    messages; the units done before keep them empty, new units fill theirs."""
    campaign = load_campaign(write_campaign(**SMC))
    run_campaign(campaign, progress=False)
    shutil.rmtree(Path(campaign.store_location) / "smc")
    group = zarr.open_group(campaign.store_location, mode="r+")
    group["draws_done"][2, 2:4] = 0  # one unit left to run
    result = run_campaign(campaign, progress=False)
    assert "adding the sampler's fact arrays smc/ess, smc/resamples, smc/log_evidence" in result.messages[0]
    log_evidence = xr.open_zarr(campaign.store_location, group="smc")["log_evidence"].values
    assert np.isnan(log_evidence[:2]).all() and np.isnan(log_evidence[2, :2]).all() and np.isfinite(log_evidence[2, 2:]).all()


def test_smc_store_does_not_grow_in_draws(write_campaign) -> None:
    """An SMC unit pools all its draws at its end: with more draws it takes other ones, so growing ``draws`` is
    refused, naming the fix; chains and measurements still grow (test_fact_arrays_grow_with_the_store)."""
    path = write_campaign(**SMC)
    run_campaign(load_campaign(path), progress=False)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "draws": 6}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CampaignWarning)  # 12 draws of a pool of 64: above 1/8, beside the point here
        grown = load_campaign(path)
    with pytest.raises(UQError, match=r"draws 4 -> 6: sampler 'tds' takes all of a unit's draws from one pool.*keep draws: 4") as caught:
        run_campaign(grown, progress=False)
    assert "\n" not in str(caught.value)
    assert (zarr.open_group(grown.store_location, mode="r")["draws_done"][...] == 4).all()


@pytest.mark.parametrize("kind", ["tds", "latino-pro", "ula", "map-hqs"])
def test_preflight_counts_the_fact_arrays(kind, write_campaign, tmp_path: Path) -> None:
    """The pre-flight's store size includes the sampler's fact arrays, byte for byte what ``uqc run`` creates."""
    from uqcampaign.pipeline.preflight import check_campaign
    from uqcampaign.pipeline.runner import prepare_store

    options = {
        "tds": SMC,
        "latino-pro": _latino_pro(tmp_path),
        "ula": dict(sampler={"kind": "ula", "burn_in": 2, "thin": 1}),
        "map-hqs": dict(sampler={"kind": "map-hqs", "iterations": 5}, draws=1, chunks={"chains": 4, "draws": 1}),
    }[kind]
    campaign = load_campaign(write_campaign(**options))
    group, _, components = prepare_store(campaign)
    paths = {"tds": SMC_FACTS, "latino-pro": LATINO_PRO_FACTS, "ula": ("units/outside_box",), "map-hqs": ("map/residual",)}[kind]
    stored = sum(group[path].nbytes for path in paths)
    assert stored > 0 and check_campaign(campaign, *components).facts == stored
