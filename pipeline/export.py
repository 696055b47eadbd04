"""`uqc export`: a store as an ArviZ ``InferenceData`` netCDF file (``az.from_netcdf`` reads it).

Groups (ArviZ's schema, https://python.arviz.org/en/stable/schema/schema.html):

- ``posterior``: variable ``samples`` with dims ``(chain, draw, measurement, channel, y, x)``
  (``measurement`` dropped, kept as a scalar coordinate, when one measurement is exported),
  float64: the stored float32 values exactly, widened so that ArviZ computes in the precision
  of ``uqc reduce`` (on float32 input ArviZ folds and ranks in float32, and its R̂ moves by ~1e-2
  where rounding creates ties);
- ``observed_data``: ``y_obs`` `(measurement, *obs dims)`;
- ``constant_data``: ``x_true`` `(measurement, channel, y, x)` when the store knows the truth;
- ``sample_stats``: ``chi2`` `(chain, draw, measurement)`, the data misfit of each draw, when the
  store's summary is up to date; and the sampler's per-draw facts (``outside_box`` of ula/skrock),
  `(chain, draw, measurement)`, each draw given its unit's mean (the store keeps one per unit,
  :mod:`~uqcampaign.pipeline.unit_facts`). Per-unit facts that are not per draw (``smc/*``,
  latino-pro's ``condition*``, ``map/*``) do not fit ArviZ's groups: read them with
  ``xr.open_zarr(store, group=...)``.

Draws exported: the first ``n = min over the exported measurements and chains of draws_done``
of every chain — the complete rectangle a reduction uses — so that ``az.summary`` of one
measurement equals that measurement's ``summary/`` (R̂, ESS, mean, sd; with an odd number of
draws per chain ``az.summary`` folds the tail R̂ around the median of all draws while ``az.rhat``
and ``summary/`` fold around the median of the split chains, which drop the middle draw: their
R̂ then differ, ArviZ's two functions among themselves too). The arrays are read
lazily (Dask over Zarr): the file is written chunk by chunk, into a temporary file renamed
over ``out`` only when complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.store import IMAGE_DIMS, OBS_NAME, json_attr, obs_array, obs_dim_names, open_store, package_version, store_location

__all__ = ["export_store", "inference_data"]


def _data_array(array: Any, dims: tuple[str, ...]) -> Any:
    import dask.array as da
    import xarray as xr

    data = da.from_zarr(array)
    return xr.DataArray(data, dims=dims, coords={d: np.arange(n) for d, n in zip(dims, data.shape)})


def inference_data(store: Any, measurement: int | None = None, storage_options: Any = None, say: Callable[[str], None] | None = None) -> Any:
    """The store as a lazy ``arviz.InferenceData`` (see the module docstring).

    ``measurement``: one measurement index, or None for all. ``say`` is told when the
    measurements have different numbers of complete draws (all are cut to the smallest).
    """
    import arviz as az

    from uqcampaign.pipeline.summary import summary_status

    root = open_store(store, storage_options=storage_options)
    name = store_location(root)
    done = np.asarray(root["draws_done"][...])
    n_meas = done.shape[0]
    if measurement is not None and not 0 <= measurement < n_meas:
        raise UQError(f"--measurement {measurement} is not in the store {name}, which holds measurements 0..{n_meas - 1}")
    chosen = list(range(n_meas)) if measurement is None else [measurement]
    used = done[chosen].min(axis=1)
    n = int(used.min())
    if n < 1:
        empty = [m for m, u in zip(chosen, used) if u < 1]
        raise UQError(f"store {name}: measurements {empty} have no draw done in every chain; finish the campaign first (`uqc run CAMPAIGN.yaml`)")
    if say is not None and int(used.max()) > n:
        say(f"measurements hold {int(used.min())}..{int(used.max())} draws complete in every chain; all are exported with the first {n} (--measurement M exports all of one)")
    pick: dict[str, Any] = {"measurement": measurement} if measurement is not None else {}
    samples = _data_array(root["samples"], ("measurement", "chain", "draw", *IMAGE_DIMS)).isel(draw=slice(0, n), **pick)
    order = ("chain", "draw") + (() if measurement is not None else ("measurement",)) + IMAGE_DIMS
    posterior = samples.transpose(*order).astype(np.float64).to_dataset(name="samples")
    posterior["samples"].attrs = {"long_name": "posterior sample of the image x"}
    obs = obs_array(root)
    observed = _data_array(obs, ("measurement", *obs_dim_names(tuple(obs.shape[1:])))).isel(**pick).to_dataset(name=OBS_NAME)
    groups: dict[str, Any] = {"posterior": posterior, "observed_data": observed}
    if "x_true" in root:
        groups["constant_data"] = _data_array(root["x_true"], ("measurement", *IMAGE_DIMS)).isel(**pick).to_dataset(name="x_true")
    stats = {}
    status = summary_status(root)
    if status.state == "fresh" and status.path is not None:
        import zarr

        summary = zarr.open_group(root.store, path=status.path, mode="r", use_consolidated=False)
        if "chi2_draws" in summary:
            chi2 = _data_array(summary["chi2_draws"], ("measurement", "chain", "draw")).isel(draw=slice(0, n), **pick)
            stats["chi2"] = chi2.transpose("chain", "draw", ...)
    stats.update(_per_draw_facts(root, n, pick))
    if stats:
        import xarray as xr

        groups["sample_stats"] = xr.Dataset(stats)
    attrs = {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inference_library": "uqcampaign",
        "inference_library_version": package_version(),
        "store": name,
        "draws_per_chain": n,
        **{key: json.dumps(json_attr(root, key)) for key in ("sampler", "operator", "prior") if key in root.attrs},
    }
    for dataset in groups.values():
        dataset.attrs.update(attrs)
    return az.InferenceData(**groups)


def _per_draw_facts(root: Any, n: int, pick: dict[str, Any]) -> dict[str, Any]:
    """The sampler's per-draw facts (``per_draw`` unit arrays) as `(chain, draw[, measurement])` DataArrays of the
    first ``n`` draws: each chain's draws get its unit's value. Empty for a store whose campaign cannot be rebuilt."""
    import xarray as xr

    from uqcampaign.pipeline.config import campaign_from_dict
    from uqcampaign.pipeline.store import sampler_arrays

    try:
        campaign = campaign_from_dict(dict(json_attr(root, "campaign") or {}), root.attrs.get("campaign_root"))
        arrays = sampler_arrays(campaign, json_attr(root, "prior") or {})
    except UQError:  # a layout-1 store or another version's campaign: no declared facts to export
        return {}
    chains = int(root["draws_done"].shape[1])
    block_of = np.arange(chains) // campaign.chunks.chains
    out = {}
    for array in arrays:
        path = array.path
        if not array.per_draw or path not in root:
            continue
        per_chain = np.asarray(root[path][...], dtype=np.float64)[:, block_of]  # (measurement, chain)
        values = np.broadcast_to(per_chain[:, :, None], (*per_chain.shape, n))
        data = xr.DataArray(values, dims=("measurement", "chain", "draw"), coords={d: np.arange(k) for d, k in zip(("measurement", "chain", "draw"), values.shape)})
        data = data.isel(**pick).transpose("chain", "draw", ...)
        data.attrs = {"long_name": array.long_name, **({"units": array.units} if array.units else {})}
        out[array.name] = data
    return out


def export_store(
    store: Any, out: str | Path, measurement: int | None = None, storage_options: Any = None, say: Callable[[str], None] | None = None
) -> Path:
    """Write :func:`inference_data` of ``store`` to the netCDF file ``out``; returns its path.

    The file is written beside ``out`` under a temporary name and renamed over it when
    complete: a failed export leaves an existing ``out`` as it was.
    """
    out = Path(out).expanduser()
    if out.is_dir():
        raise UQError(f"--out {out} is a folder; give a file name such as {out / 'posterior.nc'}")
    if not out.parent.is_dir():
        raise UQError(f"--out {out}: the folder {out.parent} does not exist; create it or give another path")
    data = inference_data(store, measurement, storage_options, say)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        data.to_netcdf(str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        raise UQError(f"cannot write {out}: {exc.strerror or exc}; give a writable --out with free space") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
