"""The Zarr store: layout of DESIGN §4, xarray view, refusal of other campaigns, write guards."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import prepare_store, run_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.store import mark_done, open_store, read_unit_stats, write_draw_block
from uqcampaign.pipeline.units import Unit, run_unit


def test_layout_dims_chunks_attrs(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    group = zarr.open_group(campaign.store_location, mode="r")
    samples = group["samples"]
    assert samples.shape == (2, 6, 7, 1, 8, 8) and samples.chunks == (1, 4, 3, 1, 8, 8)
    assert samples.dtype == np.float32 and np.isnan(samples.fill_value)
    assert samples.metadata.dimension_names == ("measurement", "chain", "draw", "channel", "y", "x")
    assert group["draws_done"].chunks == (1, 4) and group["draws_done"].dtype == np.int32
    assert group["y_obs"].metadata.dimension_names == ("measurement", "obs_channel", "obs_y", "obs_x")
    assert group["x_true"].metadata.dimension_names == ("measurement", "channel", "y", "x")
    assert group["units/seconds"].shape == (2, 2) and group["units/worker"].shape == (2, 2, 64)
    attrs = dict(group.attrs)
    assert all(isinstance(v, (str, int, float, list)) for v in attrs.values()), attrs  # JSON strings or scalars
    campaign_attr = json.loads(attrs["campaign"])
    assert attrs["config_hash"] == campaign.config_hash() and campaign_attr["name"] == "tiny" and "storage_options" not in campaign_attr
    assert json.loads(attrs["sampler"]) == {"kind": "exact", "spread": 1.0} and json.loads(attrs["operator"])["kind"] == "inpaint"
    assert json.loads(attrs["prior"])["kind"] == "gaussian" and attrs["initialized"] == 1 and attrs["layout"] == 2
    assert json.loads(attrs["sizes"]) == {"measurement": 2, "chain": 6, "draw": 7}
    assert attrs["uqcampaign_version"] and attrs["created"]
    assert (np.asarray(group["draws_done"][...]) == 7).all()
    assert np.isfinite(samples[...]).all()
    stats = read_unit_stats(group)
    assert len(stats) == 4 and all(s.draws_written == 7 and s.device == "cpu" and ":" in s.worker for s in stats)
    # Consolidated metadata: xarray opens the store with no warning and labelled dims.
    assert "consolidated_metadata" in json.loads((Path(campaign.store_location) / "zarr.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(campaign.store_location)
    assert ds["samples"].dims == ("measurement", "chain", "draw", "channel", "y", "x")
    assert ds["x_true"].dims == ("measurement", "channel", "y", "x")
    assert ds.sizes["measurement"] == 2 and ds.sizes["chain"] == 6 and ds.sizes["draw"] == 7


def test_xarray_selects_by_coordinates_and_round_trips_to_netcdf(write_campaign, tmp_path: Path) -> None:
    """No variable shares a dimension's name; every dimension has coordinates; attrs survive netCDF."""
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(campaign.store_location)
    for dim, n in {"measurement": 2, "chain": 6, "draw": 7, "channel": 1, "y": 8, "x": 8, "obs_y": 8}.items():
        assert ds.indexes[dim].tolist() == list(range(n)), dim
        assert ds[dim].attrs["long_name"]
    row = ds.sel(y=5)  # raised "Could not automatically create PandasIndex" while the measurements were named y
    assert row["samples"].dims == ("measurement", "chain", "draw", "channel", "x")
    np.testing.assert_array_equal(row["samples"].values, ds["samples"].values[:, :, :, :, 5])
    np.testing.assert_array_equal(ds.sel(measurement=1, chain=3, draw=2)["samples"].values, ds["samples"].values[1, 3, 2])
    assert ds["samples"].attrs["long_name"] == "posterior sample of the image x"
    assert ds["draws_done"].attrs["units"] == "1" and "long_name" in ds["y_obs"].attrs
    assert "level" not in ds.attrs
    out = tmp_path / "store.nc"
    ds.to_netcdf(out)  # raised TypeError on the nested dict attribute 'campaign'
    back = xr.open_dataset(out)
    assert back.attrs["campaign"] == ds.attrs["campaign"] and json.loads(back.attrs["campaign"])["name"] == "tiny"
    np.testing.assert_array_equal(back["samples"].values, ds["samples"].values)
    np.testing.assert_array_equal(back["y_obs"].values, ds["y_obs"].values)
    assert back.indexes["draw"].tolist() == list(range(7))
    back.close()
    reduce_store(campaign.store_location, progress=False)
    summary = xr.open_zarr(campaign.store_location, group="summary")
    assert summary.indexes["y"].tolist() == list(range(8)) and summary.indexes["chain"].tolist() == list(range(6))
    assert "level" not in summary["mean"].attrs and "level" not in summary["std"].attrs  # the stray level is gone
    assert summary["ci_lower"].attrs["level"] == 0.9 and summary["rhat"].attrs["long_name"]
    summary.to_netcdf(tmp_path / "summary.nc")


def test_other_campaign_refused_and_force_says_what_it_removes(write_campaign) -> None:
    first = load_campaign(write_campaign("a.yaml", name="first"))
    run_campaign(first, progress=False)
    second = load_campaign(write_campaign("b.yaml", name="second", seed=11))
    with pytest.raises(UQError) as info:
        prepare_store(second)
    message = str(info.value)
    assert "campaign 'first'" in message and "campaign 'second'" in message and "--force" in message
    assert first.config_hash()[:12] in message and second.config_hash()[:12] in message
    assert "seed 3 -> 11" in message  # the key that differs, with both values
    with pytest.raises(UQError) as info:  # --force alone never deletes draws
        prepare_store(second, force=True)
    assert "--force would delete the 84 chain-draws of campaign 'first'" in str(info.value) and "--delete-draws" in str(info.value)
    assert zarr.open_group(first.store_location, mode="r")["draws_done"][...].sum() == 84
    _, messages, _ = prepare_store(second, force=True, delete_draws=True)
    assert len(messages) == 1 and "removing" in messages[0] and "'first'" in messages[0] and "84/84" in messages[0]
    assert json.loads(zarr.open_group(second.store_location, mode="r").attrs["campaign"])["name"] == "second"


def test_same_campaign_reopens_without_force(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    renamed = load_campaign(write_campaign(name="renamed", reduce={"level": 0.8}))  # same draws, same hash
    _, messages, _ = prepare_store(renamed)
    assert "same campaign" in messages[0] and "complete" in messages[0]


def test_non_store_folder_is_never_deleted(write_campaign, tmp_path: Path) -> None:
    (tmp_path / "store.zarr").mkdir()
    (tmp_path / "store.zarr" / "precious.txt").write_text("keep")
    campaign = load_campaign(write_campaign())
    for force in (False, True):
        with pytest.raises(UQError, match="is not a uqcampaign store"):
            prepare_store(campaign, force=force)
    assert (tmp_path / "store.zarr" / "precious.txt").read_text() == "keep"


def test_write_guards(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    group, _, _ = prepare_store(campaign)
    block = np.zeros((4, 3, 1, 8, 8), np.float32)
    with pytest.raises(UQError, match="not in one chunk"):
        write_draw_block(group, 0, slice(0, 4), slice(1, 4), block)
    write_draw_block(group, 0, slice(0, 4), slice(0, 3), block)
    mark_done(group, 0, slice(0, 4), 3)
    with pytest.raises(UQError, match="already done"):
        write_draw_block(group, 0, slice(0, 4), slice(0, 3), block + 1)
    assert (group["samples"][0, :4, :3] == 0).all()


def test_open_store_errors(tmp_path: Path) -> None:
    with pytest.raises(UQError, match="no store there"):
        open_store(tmp_path / "absent.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UQError, match="not a readable Zarr v3 group"):
        open_store(tmp_path / "plain")


def test_read_only_location(write_campaign, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permissions: use a location no one may create
        store = "/sys/uqcampaign-read-only-test/store.zarr"
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        store = str(tmp_path / "ro" / "store.zarr")
    campaign = load_campaign(write_campaign(store=store))
    with pytest.raises(UQError) as info:
        prepare_store(campaign)
    assert store in str(info.value) and "cannot create the store" in str(info.value)


class DiskFullStore(LocalStore):
    """A local store whose chunk writes fail like a full disk."""

    async def set(self, key, value) -> None:  # noqa: ANN001
        if "/c/" in key:
            raise OSError(errno.ENOSPC, "No space left on device")
        await super().set(key, value)


def test_disk_full_write_is_one_line_error(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    prepare_store(campaign)
    failing = zarr.open_group(DiskFullStore(campaign.store_location), mode="r+")
    with pytest.raises(UQError) as info:
        run_unit(campaign, Unit(0, 0), failing)
    message = str(info.value)
    assert campaign.store_location in message and "No space left on device" in message and "\n" not in message
    assert (np.asarray(open_store(campaign.store_location)["draws_done"][...]) == 0).all()
