"""`uqc export`: ArviZ reads the file and summarises it as summary/ does; layout-1 stores stay readable."""

from __future__ import annotations

import json
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.report import report_rows
from uqcampaign.pipeline.runner import prepare_store, run_campaign

runner = CliRunner()
# A Markov chain (autocorrelated draws: R̂ and ESS are not trivial), an even number of draws per chain
# (see pipeline/export.py on az.summary with an odd number).
CAMPAIGN = {"sampler": {"kind": "ula", "burn_in": 5, "thin": 1}, "chains": 4, "draws": 12, "chunks": {"chains": 2, "draws": 5}}


def _reduced_store(write_campaign) -> Path:
    campaign = load_campaign(write_campaign(**CAMPAIGN))
    run_campaign(campaign, progress=False)
    reduce_store(campaign.store_location, progress=False)
    return Path(campaign.store_location)


def test_export_is_read_by_arviz_and_summarised_like_summary(write_campaign, tmp_path: Path) -> None:
    store = _reduced_store(write_campaign)
    out = tmp_path / "m1.nc"
    result = runner.invoke(app, ["export", str(store), "--out", str(out), "--measurement", "1"])
    assert result.exit_code == 0, result.output
    data = az.from_netcdf(out)
    assert set(data.groups()) == {"posterior", "observed_data", "constant_data", "sample_stats"}
    posterior = data.posterior
    assert posterior["samples"].dims == ("chain", "draw", "channel", "y", "x") and int(posterior["measurement"]) == 1
    assert posterior.sizes["chain"] == 4 and posterior.sizes["draw"] == 12
    group = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(posterior["samples"].values, group["samples"][1].astype(np.float64))
    np.testing.assert_array_equal(data.observed_data["y_obs"].values, group["y_obs"][1])
    np.testing.assert_array_equal(data.constant_data["x_true"].values, group["x_true"][1])
    summary = group["summary"]
    np.testing.assert_array_equal(data.sample_stats["chi2"].values, summary["chi2_draws"][1])
    table = az.summary(data, var_names=["samples"], kind="all", round_to="none")
    for column, key in (("mean", "mean"), ("sd", "std"), ("r_hat", "rhat"), ("ess_bulk", "ess_bulk"), ("ess_tail", "ess_tail"), ("mcse_mean", "mcse_mean")):
        np.testing.assert_allclose(table[column].values, np.asarray(summary[key][1]).reshape(-1), rtol=1e-6, err_msg=column)
    assert table["r_hat"].max() > 1.001 and table["ess_bulk"].min() < 4 * 12  # not a trivial case


def test_export_of_every_measurement_and_bad_inputs(write_campaign, tmp_path: Path) -> None:
    from uqcampaign.pipeline.export import export_store

    store = _reduced_store(write_campaign)
    path = export_store(store, tmp_path / "all.nc")
    data = az.from_netcdf(path)
    assert data.posterior["samples"].dims == ("chain", "draw", "measurement", "channel", "y", "x")
    assert data.posterior.sizes["measurement"] == 2 and json.loads(data.posterior.attrs["sampler"])["kind"] == "ula"
    table = az.summary(data, var_names=["samples"], kind="diagnostics", round_to="none")
    summary = zarr.open_group(store, mode="r")["summary"]
    # rows in the order of the non-sample dims (measurement, channel, y, x): summary/'s own order
    np.testing.assert_allclose(table["r_hat"].values, np.asarray(summary["rhat"][...]).reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(table["ess_tail"].values, np.asarray(summary["ess_tail"][...]).reshape(-1), rtol=1e-6)
    for args, expected in (
        (["--out", str(tmp_path / "x.nc"), "--measurement", "5"], "--measurement 5 is not in the store"),
        (["--out", str(tmp_path / "missing" / "x.nc")], "the folder"),
        (["--out", str(tmp_path)], "is a folder"),
    ):
        result = runner.invoke(app, ["export", str(store), *args])
        assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0 and expected in result.stderr, result.output


def test_legacy_layout_is_read_and_not_extended(write_campaign, tmp_path: Path) -> None:
    """A store written by uqcampaign 0.1 (measurements in `y`, dict attrs, no coordinates)."""
    from uqcampaign.pipeline.export import export_store

    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    legacy = zarr.open_group(campaign.store_location, mode="r+", use_consolidated=False)
    attrs = dict(legacy.attrs)
    for key in ("campaign", "operator", "prior", "sampler", "sizes"):
        attrs[key] = json.loads(attrs[key])
    attrs.pop("layout")
    attrs.pop("sizes")
    attrs["initialized"] = True
    legacy.attrs.put(attrs)
    y, dims = np.asarray(legacy["y_obs"][...]), list(legacy["y_obs"].metadata.dimension_names)
    for name in ("y_obs", "measurement", "chain", "draw", "channel", "y", "x", "obs_channel", "obs_y", "obs_x"):
        del legacy[name]
    legacy.create_array("y", data=y, dimension_names=dims)
    reduce_store(campaign.store_location, progress=False)
    assert len(report_rows(campaign.store_location)) == 2
    data = az.from_netcdf(export_store(campaign.store_location, tmp_path / "legacy.nc"))
    np.testing.assert_array_equal(data.observed_data["y_obs"].values, legacy["y"][...])
    assert "layout:   1 (uqcampaign 0.1)" in runner.invoke(app, ["inspect", campaign.store_location]).stdout
    with pytest.raises(UQError) as info:
        prepare_store(load_campaign(write_campaign(draws=9)))
    assert "store layout of uqcampaign 0.1" in str(info.value) and "--force --delete-draws" in str(info.value)
