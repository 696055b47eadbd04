"""The sample store (DESIGN §4): a Zarr v3 group that ``xr.open_zarr`` reads as a labelled Dataset.

Layout 2 (root attr ``layout``); every array carries ``dimension_names`` and every dimension a
1-d integer coordinate array of the same name (``measurement``, ``chain``, ``draw``, ``channel``,
``y``, ``x``, ``obs_…``, and ``block``/``worker_char`` in ``units/``):

=================  ===========================================  =================================
array              dims                                         chunks
=================  ===========================================  =================================
``samples``        measurement, chain, draw, channel, y, x      (1, chunks.chains, chunks.draws, C, H, W), fill NaN
``y_obs``          measurement, obs_channel, obs_y, obs_x       one measurement (``obs_0``, ``obs_1``… unless obs is 3-d)
``x_true``         measurement, channel, y, x                   one measurement (only when known)
``draws_done``     measurement, chain                           (1, chunks.chains): each unit owns its chunk
``units/*``        measurement, block                           (1, 1): per-unit stats, written by the unit
sampler facts      measurement, … (the sampler declares them)   one unit's share (see below)
=================  ===========================================  =================================

Sampler facts: what a sampler reports in ``Draw.info`` and declares with ``unit_arrays``
(:class:`~uqcampaign.kernels.samplers.base.UnitArray`) is kept in ``group/name`` with dims
``(measurement, [block], *dims)``: ``units/outside_box`` (ula, skrock), ``smc/ess``,
``smc/resamples``, ``smc/log_evidence`` ``(measurement, run)`` (tds, smc-anneal; run = block × runs + r),
root ``condition``/``condition_start`` ``(measurement, *k)``, ``condition_trace (measurement,
iteration, *k)``, ``objective_trace (measurement, iteration)`` (latino-pro, one unit per measurement),
``map/residual (measurement, block, iteration)`` (map-hqs, map-admm), ``map/objective (measurement,
iteration, chain)`` (map-latent). Each unit writes only its own chunk (its block's entries along the
block dimension, which the array names in attr ``block_dim`` when it is not ``block``/``chain``), before
the ``draws_done`` write that completes the unit (:mod:`~uqcampaign.pipeline.unit_facts`).

The arrays are declared as a list of :class:`ArraySpec` (:func:`campaign_arrays`): their chunks
follow from their dimensions (:func:`dimension_chunks`), so a later array or group (per-unit
sampler facts, say) is one more spec, and :func:`grow_store` extends it with the others.

``units/`` holds ``seconds`` (float64, NaN = not run), ``nfe_per_draw`` (float64),
``draws_written`` (int32, -1 = not run; 0 = recomputed but nothing written), ``device``
(int16: -1 = cpu, k = cuda:k, -2 = unknown) and ``worker`` (uint8 ``(measurement, block,
worker_char)``: the worker name as UTF-8, NUL padded to 64 bytes — Zarr v3 has no stable
string dtype). :func:`read_unit_stats` decodes them.

Root attrs, all JSON strings or scalars (so ``xr.open_zarr(S).to_netcdf(F)`` works):
``uqcampaign_version``, ``layout`` (2), ``campaign`` (the validated config as JSON, without
``storage_options``), ``config_hash`` (of what determines the draws), ``campaign_root`` (folder
of the campaign file), ``operator``/``prior``/``sampler`` (JSON descriptions), ``img_shape``,
``obs_shape`` (lists of int), ``sizes`` (JSON ``{"measurement", "chain", "draw"}``: the sizes
the store was last completed at), ``growing`` (JSON target sizes, only while
:func:`grow_store` runs), ``created``, ``initialized`` (0 until the arrays and the measurements
are written, then 1). Arrays carry CF ``long_name`` (and ``units`` where one applies).

Writers own whole chunks: a unit writes chunk ``(m, block, k)`` of ``samples`` and then its
own chunk of ``draws_done``, so several processes write with no lock; a chunk whose draws are
done is never written again (:func:`write_draw_block` refuses). Local writes are atomic (zarr's
``LocalStore`` writes a temporary file and renames it), an S3 ``PUT`` is whole: a process killed
mid-write leaves the old chunk or the new one, never a torn one.

Our readers open groups without consolidated metadata (``use_consolidated=False``): a store
that grew, or a ``summary/`` removed by hand, cannot fool them. Consolidated metadata is written
at the end of ``run``/``reduce`` for ``xr.open_zarr``.

Layout 1 (uqcampaign 0.1: measurements in ``y``, attributes as mappings, no coordinates) is
read by ``reduce``, ``report``, ``maps``, ``inspect`` and ``export``; ``run`` refuses to extend
it (:func:`check_layout`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.samplers.facts import BLOCK, UnitArray
from uqcampaign.pipeline.config import Campaign, campaign_from_dict
from uqcampaign.pipeline.location import Location, io_errors, store_location

__all__ = [
    "LAYOUT_VERSION",
    "SAMPLE_DIMS",
    "IMAGE_DIMS",
    "OBS_NAME",
    "LEASE_DIR",
    "ArraySpec",
    "StoreLayout",
    "Sizes",
    "UnitStats",
    "campaign_arrays",
    "unit_array_spec",
    "sampler_arrays",
    "add_missing_facts",
    "dimension_chunks",
    "create_store",
    "grow_store",
    "open_store",
    "store_location",
    "store_campaign",
    "store_sizes",
    "existing_store_info",
    "json_attr",
    "is_legacy",
    "check_layout",
    "obs_array",
    "obs_dim_names",
    "DrawWriter",
    "write_draw_block",
    "mark_done",
    "draws_done",
    "write_unit_stats",
    "read_unit_stats",
    "consolidate",
    "sync_coordinates",
    "package_version",
]

LAYOUT_VERSION = 2
SAMPLE_DIMS = ("measurement", "chain", "draw", "channel", "y", "x")
IMAGE_DIMS = ("channel", "y", "x")
OBS_NAME = "y_obs"
LEGACY_OBS_NAME = "y"
WORKER_BYTES = 64
LEASE_DIR = ".uqc-lease"
"""Folder of the store's lease (:mod:`uqcampaign.pipeline.lease`); Zarr ignores it."""
GROWABLE_DIMS = ("measurement", "chain", "draw", "block")
JSON_ATTRS = ("campaign", "operator", "prior", "sampler", "sizes", "growing", "ray")

COORD_NAMES = {
    "measurement": "measurement index",
    "chain": "chain index within the measurement",
    "draw": "draw index (kept after burn-in and thinning)",
    "channel": "image channel",
    "y": "image row (pixels, top to bottom)",
    "x": "image column (pixels, left to right)",
    "block": "chain block (one work unit)",
    "worker_char": "byte of the worker name",
    "run": "SMC run (chain block x runs + run within the block)",
    "iteration": "iteration (SAPG or optimiser)",
    "k": "coordinate of the condition vector",
    "prompt": "prompt of the condition embedding",
    "token": "token of the condition embedding",
    "embedding": "feature of a token's embedding",
}


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: ``path`` (e.g. ``"units/seconds"``), ``dims`` (dimension names),
    ``dtype``, ``fill`` and CF ``attrs``; its chunks come from :func:`dimension_chunks`.

    ``sizes``: the lengths of dimensions the campaign does not size (a sampler fact's ``run``,
    ``iteration``, ``k``…), one chunk each, except ``block_dim``: the dimension along which each
    chain block owns ``sizes[block_dim]`` entries (size = blocks × that, one chunk per block).
    """

    path: str
    dims: tuple[str, ...]
    dtype: str
    fill: Any
    attrs: Mapping[str, Any] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    block_dim: str | None = None


@dataclass(frozen=True)
class Sizes:
    """The growable sizes of a store: measurements, chains per measurement, draws per chain."""

    measurements: int
    chains: int
    draws: int

    def as_dict(self) -> dict[str, int]:
        return {"measurement": self.measurements, "chain": self.chains, "draw": self.draws}

    @classmethod
    def of(cls, campaign: Campaign, measurements: int) -> Sizes:
        return cls(measurements, campaign.chains, campaign.draws)


@dataclass(frozen=True)
class StoreLayout:
    """The measurements a store is created (or grown) with.

    ``y``: `(M − first, *obs_shape)` = measurements ``first..M-1``; ``x_true``: `(M − first, C, H, W)`
    or None; ``img_shape``: `(C, H, W)`; ``descriptions``: ``{"operator": …, "prior": …,
    "sampler": …}`` JSON-able; ``prefix``: measurements ``0..first-1`` as ``(y, x_true)`` when the
    source gives them cheaply (files), to check them against the store's.
    """

    y: np.ndarray
    x_true: np.ndarray | None
    img_shape: tuple[int, int, int]
    descriptions: dict[str, Any] = field(default_factory=dict)
    first: int = 0
    prefix: tuple[np.ndarray, np.ndarray | None] | None = None

    @property
    def n_measurements(self) -> int:
        return self.first + int(np.asarray(self.y).shape[0])


@dataclass(frozen=True)
class UnitStats:
    """What one work unit did; kept in the store's ``units/`` group."""

    measurement: int
    block: int
    seconds: float
    nfe_per_draw: float
    draws_written: int
    device: str
    worker: str


# -- attributes and layout ---------------------------------------------------------------------


def json_attr(group: zarr.Group, key: str, default: Any = None) -> Any:
    """Root attr ``key`` decoded: layout 2 keeps mappings as JSON strings, layout 1 as mappings."""
    value = group.attrs.get(key, default)
    if isinstance(value, str) and key in JSON_ATTRS:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return default
    return value


def _decoded_attrs(group: zarr.Group) -> dict[str, Any]:
    return {key: json_attr(group, key) for key in group.attrs}


def is_legacy(group: zarr.Group) -> bool:
    """True for a store of layout 1 (no ``layout`` attr: measurements in ``y``, dict attrs)."""
    return "layout" not in group.attrs


def check_layout(group: zarr.Group) -> None:
    """UQError unless the store has this version's layout (``run`` extends only those; layout 1 is
    read by the other commands)."""
    layout = group.attrs.get("layout")
    if layout == LAYOUT_VERSION:
        return
    location = store_location(group)
    if layout is None:
        raise UQError(
            f"{location} has the store layout of uqcampaign 0.1 (measurements in `y`, attributes as mappings): this version "
            "reads it (reduce, report, maps, inspect, export) but does not extend it; run the campaign into a new store path "
            "(change `store:`), or replace this store with `uqc run CAMPAIGN.yaml --force --delete-draws`"
        )
    raise UQError(f"{location} has store layout {layout}, newer than this uqcampaign ({LAYOUT_VERSION}); upgrade uqcampaign")


def obs_array(group: zarr.Group) -> zarr.Array:
    """The measurements `(measurement, *obs_shape)`: ``y_obs`` (``y`` in layout 1)."""
    for name in (OBS_NAME, LEGACY_OBS_NAME):
        if name in group:
            return group[name]
    raise UQError(f"{store_location(group)}: the store holds no measurements (no `{OBS_NAME}` array); it was not written by `uqc run`")


def obs_dim_names(obs_shape: tuple[int, ...]) -> list[str]:
    """Dimension names of one measurement: ``obs_channel, obs_y, obs_x`` when 3-d, else ``obs_0…``."""
    if len(obs_shape) == 3:
        return ["obs_channel", "obs_y", "obs_x"]
    return [f"obs_{i}" for i in range(len(obs_shape))]


def package_version() -> str:
    try:
        return importlib.metadata.version("uqcampaign")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- opening -----------------------------------------------------------------------------------


def open_store(store: Any, mode: str = "r", storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """Open an existing uqcampaign store: a path, an fsspec URL, a :class:`Location`, a Zarr store or group.

    ``mode`` is ``"r"`` (read) or ``"r+"`` (write chunks); consolidated metadata is not used
    (see the module docstring). Raises UQError when nothing is there or it is not a store.
    """
    if isinstance(store, zarr.Group):
        return store
    if isinstance(store, (str, Location)) or hasattr(store, "__fspath__"):
        location = Location.of(store, storage_options)
        if not location.exists():
            raise UQError(f"{location.url}: no store there; run `uqc run CAMPAIGN.yaml` first or check the path")
        store = location.zarr_store(read_only=mode == "r")
    name = store_location(store)
    try:
        with io_errors(name, "open the store"):
            group = zarr.open_group(store, mode=mode, zarr_format=3, use_consolidated=False)
    except UQError:
        raise
    except (zarr.errors.BaseZarrError, FileNotFoundError, ValueError, TypeError, KeyError) as exc:
        raise UQError(f"{name}: not a readable Zarr v3 group ({type(exc).__name__}); give the path of a store written by `uqc run`") from None
    if "config_hash" not in group.attrs:
        raise UQError(f"{name}: a Zarr group but not a uqcampaign store (no config_hash attribute)")
    return group


def existing_store_info(location: Any) -> dict[str, Any] | None:
    """Root attrs of the store at ``location`` (JSON attrs decoded), None when the place is free.

    Free: nothing there, or only the lease folder. Raises UQError when something else than a
    uqcampaign store is there.
    """
    location = Location.of(location)
    with io_errors(location, "read the store location"):
        if not location.exists() or location.is_free({LEASE_DIR}):
            return None
        attrs: dict[str, Any] = {}
        if location.exists("zarr.json"):
            try:
                attrs = _decoded_attrs(zarr.open_group(location.zarr_store(read_only=True), mode="r", zarr_format=3, use_consolidated=False))
            except (zarr.errors.BaseZarrError, ValueError, KeyError, TypeError):
                attrs = {}
    if "config_hash" not in attrs:
        raise UQError(f"{location.url}: exists and is not a uqcampaign store; choose another store path or remove it yourself")
    return attrs


def store_campaign(store: Any) -> Campaign:
    """The campaign a store was written by, rebuilt from its attrs (root = the campaign's folder)."""
    group = open_store(store)
    return campaign_from_dict(dict(json_attr(group, "campaign")), group.attrs.get("campaign_root"))


def store_sizes(group: zarr.Group) -> Sizes:
    """The sizes the store was last completed at (attr ``sizes``; the ``samples`` shape for layout 1)."""
    sizes = json_attr(group, "sizes")
    if isinstance(sizes, dict):
        return Sizes(int(sizes["measurement"]), int(sizes["chain"]), int(sizes["draw"]))
    m, c, d = group["samples"].shape[:3]
    return Sizes(int(m), int(c), int(d))


# -- creating ----------------------------------------------------------------------------------


def dimension_chunks(campaign: Campaign) -> dict[str, int]:
    """Chunk length per growable dimension: one measurement, ``chunks.chains`` chains,
    ``chunks.draws`` draws, one block; any other dimension is one chunk."""
    return {"measurement": 1, "chain": campaign.chunks.chains, "draw": campaign.chunks.draws, "block": 1}


def unit_array_spec(array: UnitArray) -> ArraySpec:
    """The store array of a sampler fact: ``group/name`` with dims ``(measurement, [block], *dims)`` (see the
    module docstring); float fill NaN, integer fill -1 (a unit never run)."""
    dims = ("measurement", *((BLOCK,) if array.block_dim == BLOCK else ()), *array.dims)
    attrs: dict[str, Any] = {"long_name": array.long_name}
    if array.units is not None:
        attrs["units"] = array.units
    own = array.block_dim is not None and array.block_dim not in GROWABLE_DIMS
    if own:
        attrs["block_dim"] = array.block_dim  # grow_store: blocks × its chunk length
    fill = np.nan if np.dtype(array.dtype).kind == "f" else -1
    return ArraySpec(array.path, dims, array.dtype, fill, attrs, dict(zip(array.dims, array.shape)), array.block_dim if own else None)


def sampler_arrays(campaign: Campaign, prior: Mapping[str, Any]) -> tuple[UnitArray, ...]:
    """The facts the campaign's sampler declares for a full unit (``chunks.chains`` chains) with the
    prior described by ``prior`` (its ``describe()``, as the store's attr ``prior`` keeps it)."""
    from uqcampaign.kernels.samplers.registry import build_sampler

    return tuple(build_sampler(dict(campaign.sampler)).unit_arrays(campaign.chunks.chains, dict(prior or {})))


def campaign_arrays(obs_shape: tuple[int, ...], has_truth: bool, unit_arrays: tuple[UnitArray, ...] = ()) -> list[ArraySpec]:
    """The arrays of a campaign store (see the module docstring), in creation order; ``unit_arrays``:
    the sampler's facts (:func:`sampler_arrays`)."""
    obs_dims = tuple(obs_dim_names(obs_shape))
    specs = [
        ArraySpec("samples", SAMPLE_DIMS, "float32", np.nan, {"long_name": "posterior sample of the image x"}),
        ArraySpec("draws_done", ("measurement", "chain"), "int32", 0, {"long_name": "draws stored per chain (the resume record)", "units": "1"}),
        ArraySpec(OBS_NAME, ("measurement", *obs_dims), "float32", np.nan, {"long_name": "measurement y = A x + sigma * noise"}),
    ]
    if has_truth:
        specs.append(ArraySpec("x_true", ("measurement", *IMAGE_DIMS), "float32", np.nan, {"long_name": "true image x of the measurement"}))
    unit = ("measurement", "block")
    specs += [
        ArraySpec("units/seconds", unit, "float64", np.nan, {"long_name": "wall time of the work unit", "units": "s"}),
        ArraySpec("units/nfe_per_draw", unit, "float64", np.nan, {"long_name": "network evaluations per draw", "units": "1"}),
        ArraySpec("units/draws_written", unit, "int32", -1, {"long_name": "draws written by the unit's last run (-1: never run)", "units": "1"}),
        ArraySpec("units/device", unit, "int16", -2, {"long_name": "device of the unit (-1 cpu, k cuda:k, -2 unknown)"}),
        ArraySpec("units/worker", (*unit, "worker_char"), "uint8", 0, {"long_name": "worker name, UTF-8, NUL padded"}),
        *(unit_array_spec(array) for array in unit_arrays),
    ]
    return specs


def _dim_sizes(sizes: Sizes, campaign: Campaign, img_shape: tuple[int, ...], obs_shape: tuple[int, ...]) -> dict[str, int]:
    return {
        **sizes.as_dict(),
        "block": math.ceil(sizes.chains / campaign.chunks.chains),
        **dict(zip(IMAGE_DIMS, img_shape)),
        **dict(zip(obs_dim_names(obs_shape), obs_shape)),
        "worker_char": WORKER_BYTES,
    }


def _spec_shape(spec: ArraySpec, dims: Mapping[str, int], chunks: Mapping[str, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(shape, chunks)`` of ``spec`` in a store of dimension sizes ``dims`` (see :class:`ArraySpec`)."""
    shape, chunk = [], []
    for d in spec.dims:
        if d in dims:
            shape.append(dims[d])
            chunk.append(chunks.get(d, dims[d]))
        elif d == spec.block_dim:
            shape.append(dims[BLOCK] * spec.sizes[d])
            chunk.append(spec.sizes[d])
        else:
            shape.append(spec.sizes[d])
            chunk.append(max(spec.sizes[d], 1))
    return tuple(shape), tuple(chunk)


def create_store(campaign: Campaign, layout: StoreLayout, location: Location | None = None) -> zarr.Group:
    """Write a new, empty store for ``campaign`` (overwrites nothing: the location must be free)."""
    location = location or Location.of(campaign.store_location, campaign.storage_options)
    C, H, W = layout.img_shape
    y = np.asarray(layout.y, dtype=np.float32)
    M, obs_shape = y.shape[0], tuple(y.shape[1:])
    sizes = Sizes.of(campaign, M)
    dims = _dim_sizes(sizes, campaign, (C, H, W), obs_shape)
    chunks = dimension_chunks(campaign)
    with io_errors(location, "create the store"):
        # The attrs go in with the group's own metadata (one atomic write): a store is a
        # uqcampaign store from its first file on, and `initialized` flips once all is written.
        # create_group refuses an existing group but not the lease folder beside (mode "w-" would).
        group = zarr.create_group(
            location.zarr_store(),
            overwrite=False,
            zarr_format=3,
            attributes={
                "uqcampaign_version": package_version(),
                "layout": LAYOUT_VERSION,
                "campaign": campaign.stored_json(),
                "config_hash": campaign.config_hash(),
                "campaign_root": str(campaign.root),
                "img_shape": [C, H, W],
                "obs_shape": list(obs_shape),
                "sizes": json.dumps(sizes.as_dict()),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "initialized": 0,
                **{k: json.dumps(layout.descriptions.get(k), sort_keys=True) for k in ("operator", "prior", "sampler")},
            },
        )
        facts = sampler_arrays(campaign, layout.descriptions.get("prior") or {})
        for spec in campaign_arrays(obs_shape, layout.x_true is not None, facts):
            parent, _, name = spec.path.rpartition("/")
            where = group.require_group(parent) if parent else group
            shape, chunk = _spec_shape(spec, dims, chunks)
            where.create_array(
                name,
                shape=shape,
                chunks=chunk,
                dtype=spec.dtype,
                fill_value=spec.fill,
                dimension_names=list(spec.dims),
                attributes=dict(spec.attrs),
            )
        group[OBS_NAME][...] = y
        if layout.x_true is not None:
            group["x_true"][...] = np.asarray(layout.x_true, dtype=np.float32)
        sync_coordinates(group)
        group.attrs["initialized"] = 1
    consolidate(group)
    return open_store(location, mode="r+")


def add_missing_facts(group: zarr.Group, campaign: Campaign) -> list[str]:
    """Create the sampler-fact arrays (:func:`sampler_arrays`) a store written by an earlier version lacks,
    sized to the store; returns their paths. Units completed before keep the fill value there (NaN, -1)."""
    facts = sampler_arrays(campaign, json_attr(group, "prior") or {})
    sizes = store_sizes(group)
    dims = {**sizes.as_dict(), "block": math.ceil(sizes.chains / campaign.chunks.chains)}
    added = []
    with io_errors(group, "add the sampler's fact arrays"):
        for spec in (unit_array_spec(array) for array in facts):
            if spec.path in group:
                continue
            parent, _, name = spec.path.rpartition("/")
            where = group.require_group(parent) if parent else group
            shape, chunk = _spec_shape(spec, dims, dimension_chunks(campaign))
            where.create_array(name, shape=shape, chunks=chunk, dtype=spec.dtype, fill_value=spec.fill, dimension_names=list(spec.dims), attributes=dict(spec.attrs))
            added.append(spec.path)
        if added:
            sync_coordinates(group)
    return added


def _members(group: zarr.Group) -> list[tuple[str, Any]]:
    """``group.members()``, quiet about the lease folder (not a Zarr node)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        return list(group.members())


def _data_groups(group: zarr.Group) -> list[zarr.Group]:
    """The root and its subgroups that hold campaign arrays (not ``summary*``)."""
    found = [group]
    for name, member in _members(group):
        if isinstance(member, zarr.Group) and not name.startswith("summary"):
            found += _data_groups(member)
    return found


def sync_coordinates(group: zarr.Group) -> None:
    """Give every dimension of the arrays of ``group`` and its data subgroups a coordinate array
    ``0..n-1`` (int64, ``dimension_names=[dim]``, CF ``long_name``), resized to the arrays."""
    for where in _data_groups(group):
        arrays = {name: arr for name, arr in _members(where) if isinstance(arr, zarr.Array)}
        sizes: dict[str, int] = {}
        for name, arr in arrays.items():
            dims = arr.metadata.dimension_names or ()
            if dims == (name,):
                continue  # a coordinate itself
            for dim, n in zip(dims, arr.shape):
                sizes[dim] = max(sizes.get(dim, 0), int(n))
        for dim, n in sizes.items():
            coord = arrays.get(dim)
            if coord is None:
                attrs = {"long_name": COORD_NAMES.get(dim, f"index along {dim}")}
                coord = where.create_array(dim, shape=(n,), chunks=(max(n, 1),), dtype="int64", fill_value=0, dimension_names=[dim], attributes=attrs)
            elif coord.shape[0] != n:
                coord.resize((n,))
            else:
                continue
            coord[...] = np.arange(n, dtype=np.int64)


# -- growing -----------------------------------------------------------------------------------


def grow_store(
    group: zarr.Group,
    *,
    measurements: int | None = None,
    chains: int | None = None,
    draws: int | None = None,
    y_obs: np.ndarray | None = None,
    x_true: np.ndarray | None = None,
    campaign: Campaign | None = None,
) -> Sizes:
    """Extend the store to ``measurements``/``chains``/``draws`` (None: unchanged); returns the new sizes.

    Every array of the store but ``summary*`` is resized along the dimensions it has among
    ``measurement, chain, draw, block`` (``block`` = ceil(chains / chunks.chains)), and along the
    dimension a sampler fact names in attr ``block_dim`` (blocks × its chunk length), coordinates
    too; stored values are never touched (new cells read as the fill value: NaN draws,
    ``draws_done`` 0). New measurements get their rows ``y_obs`` `(new, *obs_shape)` and
    ``x_true`` `(new, C, H, W)` (required when the store keeps a truth). ``campaign`` (the grown
    campaign) replaces the stored config.

    Deterministic and resumable: the target goes into attr ``growing`` first and ``sizes`` only
    at the end, so a grow killed half-way is finished by calling this again with the same targets
    (resizing to a size already reached and rewriting the same rows change nothing). Growing
    chains needs whole chain blocks (see :func:`check_chain_growth`).
    """
    old = store_sizes(group)
    new = Sizes(
        old.measurements if measurements is None else int(measurements),
        old.chains if chains is None else int(chains),
        old.draws if draws is None else int(draws),
    )
    location = store_location(group)
    for key, before, after in (("measurements", old.measurements, new.measurements), ("chains", old.chains, new.chains), ("draws", old.draws, new.draws)):
        if after < before:
            raise UQError(f"{location}: cannot grow {key} from {before} to {after}: a store never shrinks")
    chunk_chains = int(group["draws_done"].chunks[1])
    check_chain_growth(location, old.chains, new.chains, chunk_chains)
    added = new.measurements - old.measurements
    if added:
        if y_obs is None or np.asarray(y_obs).shape[0] != added:
            raise UQError(f"{location}: growing to {new.measurements} measurements needs the {added} new rows of y_obs")
        if "x_true" in group and (x_true is None or np.asarray(x_true).shape[0] != added):
            raise UQError(f"{location}: the store keeps the truth of its measurements; give x_true for the {added} new ones")
    target = {**new.as_dict(), "block": math.ceil(new.chains / chunk_chains)}
    with io_errors(group, "grow the store"):
        group.attrs["growing"] = json.dumps(new.as_dict())
        for where in _data_groups(group):
            for name, arr in _members(where):
                if not isinstance(arr, zarr.Array):
                    continue
                dims = arr.metadata.dimension_names or ()
                if dims == (name,):
                    continue
                sizes = dict(target)
                own = arr.attrs.get("block_dim")  # a sampler fact's dimension shared by the chain blocks
                if own in dims:
                    sizes[own] = target[BLOCK] * arr.chunks[dims.index(own)]
                shape = tuple(sizes[d] if d in sizes and (d in GROWABLE_DIMS or d == own) else n for d, n in zip(dims, arr.shape))
                if shape != arr.shape:
                    arr.resize(shape)
        if added:
            group[OBS_NAME][old.measurements :] = np.asarray(y_obs, dtype=np.float32)
            if "x_true" in group:
                group["x_true"][old.measurements :] = np.asarray(x_true, dtype=np.float32)
        sync_coordinates(group)
        attrs = dict(group.attrs)
        attrs.pop("growing", None)
        attrs["sizes"] = json.dumps(new.as_dict())
        if campaign is not None:
            attrs["campaign"] = campaign.stored_json()
        group.attrs.put(attrs)
    consolidate(group)
    return new


def check_chain_growth(location: str, old: int, new: int, chunk_chains: int) -> None:
    """UQError when growing ``old`` → ``new`` chains would change drawn chains.

    A unit draws its chain block with one generator, batched over the block's chains: a last
    block holding fewer than ``chunks.chains`` chains cannot gain chains without changing the
    draws it already has. Whole blocks are added freely.
    """
    if new > old and old % chunk_chains:
        held = old % chunk_chains
        raise UQError(
            f"{location}: chains cannot grow from {old} to {new}: the last chain block holds {held} of {chunk_chains} chains "
            f"(chunks.chains {chunk_chains}) and its draws depend on that block size; keep chains: {old}, or run chains: {new} "
            f"into a new store path (a store grows in chains only from a multiple of chunks.chains)"
        )


# -- writing draws -----------------------------------------------------------------------------


def draws_done(store: Any) -> np.ndarray:
    """The resume record `(measurement, chain)`: draws written per chain."""
    group = open_store(store)
    with io_errors(group, "read draws_done"):
        return np.asarray(group["draws_done"][...])


class DrawWriter:
    """The two arrays a work unit writes, ``samples`` and ``draws_done``, opened once (on object
    storage every array lookup is a request)."""

    def __init__(self, store: Any) -> None:
        group = open_store(store, mode="r+")
        self.location = store_location(group)
        self.samples = group["samples"]
        self.draws_done = group["draws_done"]

    def _check_aligned(self, chains: slice, draws: slice) -> None:
        """A write must cover the chains of exactly one chunk and the draws of one chunk from its
        start (so that no two units touch the same chunk). It may stop short of the chunk's end:
        an ``until`` round below the store's draw size ends inside a chunk that it owns."""
        _, n_chains, n_draws = self.samples.shape[:3]
        _, cc, cd = self.samples.chunks[:3]
        ok = (
            chains.start % cc == 0
            and chains.stop == min(chains.start + cc, n_chains)
            and draws.start % cd == 0
            and draws.start < draws.stop <= min(draws.start + cd, n_draws)
        )
        if not ok:
            raise UQError(
                f"write of chains {chains.start}:{chains.stop}, draws {draws.start}:{draws.stop} is not in one chunk "
                f"of {cc} chains x {cd} draws from its start; write whole chunks"
            )

    def write(self, measurement: int, chains: slice, draws: slice, array: np.ndarray) -> None:
        """See :func:`write_draw_block`."""
        self._check_aligned(chains, draws)
        where = f"samples[{measurement}, {chains.start}:{chains.stop}, {draws.start}:{draws.stop}]"
        with io_errors(self.location, f"write {where}"):
            done = np.asarray(self.draws_done[measurement, chains])
            if done.size and int(done.min()) >= draws.stop:
                raise UQError(f"{self.location}: {where} is already done; a finished chunk is never rewritten")
            self.samples[measurement, chains, draws] = np.asarray(array, dtype=np.float32)

    def mark_done(self, measurement: int, chains: slice, n_draws: int) -> None:
        """See :func:`mark_done`."""
        with io_errors(self.location, f"write draws_done[{measurement}, {chains.start}:{chains.stop}]"):
            self.draws_done[measurement, chains] = np.full(chains.stop - chains.start, n_draws, dtype=np.int32)


def write_draw_block(store: Any, measurement: int, chains: slice, draws: slice, array: np.ndarray) -> None:
    """Write one chunk of ``samples``: ``array`` `(len(chains), len(draws), C, H, W)`.

    Refuses (UQError) a chunk whose draws are already done: a finished chunk is never
    rewritten. (The last, partial draw chunk of a campaign whose draws grow is written again,
    its done draws with the same values.) Call :func:`mark_done` after this returns.
    """
    DrawWriter(store).write(measurement, chains, draws, array)


def mark_done(store: Any, measurement: int, chains: slice, n_draws: int) -> None:
    """Record that chains ``chains`` of ``measurement`` have their first ``n_draws`` draws stored."""
    DrawWriter(store).mark_done(measurement, chains, n_draws)


def write_unit_stats(store: Any, stats: UnitStats) -> None:
    """Keep ``stats`` in the ``units/`` group (the unit's own (1, 1) chunk of each array)."""
    group = open_store(store, mode="r+")
    m, b = stats.measurement, stats.block
    device = -1 if stats.device.startswith("cpu") else int(stats.device.split(":")[1]) if ":" in stats.device else 0
    worker = np.zeros(WORKER_BYTES, dtype=np.uint8)
    raw = stats.worker.encode()[:WORKER_BYTES]
    worker[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    with io_errors(group, f"write units/ stats of unit ({m}, {b})"):
        units = group["units"]
        units["seconds"][m, b] = stats.seconds
        units["nfe_per_draw"][m, b] = stats.nfe_per_draw
        units["draws_written"][m, b] = stats.draws_written
        units["device"][m, b] = device
        units["worker"][m, b] = worker


def read_unit_stats(store: Any) -> list[UnitStats]:
    """Every recorded unit's stats (units never run are left out)."""
    group = open_store(store)
    units = group["units"]
    seconds, nfe = units["seconds"][...], units["nfe_per_draw"][...]
    written, device, worker = units["draws_written"][...], units["device"][...], units["worker"][...]
    out = []
    for m, b in zip(*np.nonzero(written >= 0)):
        dev = int(device[m, b])
        out.append(
            UnitStats(
                measurement=int(m),
                block=int(b),
                seconds=float(seconds[m, b]),
                nfe_per_draw=float(nfe[m, b]),
                draws_written=int(written[m, b]),
                device="cpu" if dev == -1 else f"cuda:{dev}" if dev >= 0 else "unknown",
                worker=bytes(worker[m, b]).rstrip(b"\0").decode(errors="replace"),
            )
        )
    return out


def consolidate(store: Any) -> None:
    """Write consolidated metadata so ``xr.open_zarr(path)`` opens the store without a warning."""
    group = store if isinstance(store, zarr.Group) else open_store(store, mode="r+")
    with io_errors(group, "write consolidated metadata"), warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; xarray relies on it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        zarr.consolidate_metadata(group.store, path=group.path or None)
