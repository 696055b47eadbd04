"""The sample store (DESIGN §4): a Zarr v3 group that ``xr.open_zarr`` reads as a labelled Dataset.

Layout (every array carries ``dimension_names``):

=================  ===========================================  =================================
array              dims                                         chunks
=================  ===========================================  =================================
``samples``        measurement, chain, draw, channel, y, x      (1, chunks.chains, chunks.draws, C, H, W), fill NaN
``y``              measurement, obs_channel, obs_y, obs_x       one measurement (``obs_0``, ``obs_1``… unless obs is 3-d)
``x_true``         measurement, channel, y, x                   one measurement (only when known)
``draws_done``     measurement, chain                           (1, chunks.chains): each unit owns its chunk
``units/*``        measurement, block                           (1, 1): per-unit stats, written by the unit
=================  ===========================================  =================================

``units/`` holds ``seconds`` (float64, NaN = not run), ``nfe_per_draw`` (float64),
``draws_written`` (int32, -1 = not run; 0 = recomputed but nothing written), ``device``
(int16: -1 = cpu, k = cuda:k, -2 = unknown) and ``worker`` (uint8 ``(measurement, block,
worker_char)``: the worker name as UTF-8, NUL padded to 64 bytes — Zarr v3 has no stable
string dtype, this keeps the store warning-free). :func:`read_unit_stats` decodes them.

Local writes are atomic (zarr's ``LocalStore`` writes a temporary file and renames it), so a
process killed mid-write leaves either the old chunk or the new one, never a torn one.

Root attrs: ``uqcampaign_version``, ``campaign`` (the validated config), ``config_hash``,
``campaign_root`` (folder of the campaign file), ``operator``/``prior``/``sampler``
descriptions, ``img_shape``, ``obs_shape``, ``created``, ``initialized`` (False until the
arrays and the measurements are written).

Writers own whole chunks: a unit writes chunk ``(m, block, k)`` of ``samples`` and then its
own chunk of ``draws_done``, so several processes write with no lock; a chunk whose draws are
done is never written again (:func:`write_draw_block` refuses).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import Campaign, campaign_from_dict, is_url

__all__ = [
    "StoreLayout",
    "UnitStats",
    "create_store",
    "create_or_open",
    "open_store",
    "store_location",
    "store_campaign",
    "existing_store_info",
    "write_draw_block",
    "mark_done",
    "draws_done",
    "write_unit_stats",
    "read_unit_stats",
    "consolidate",
    "obs_dim_names",
    "SAMPLE_DIMS",
]

SAMPLE_DIMS = ("measurement", "chain", "draw", "channel", "y", "x")
IMAGE_DIMS = ("channel", "y", "x")
WORKER_BYTES = 64


@dataclass(frozen=True)
class StoreLayout:
    """What a new store is created with.

    ``y``: `(M, *obs_shape)`, ``x_true``: `(M, C, H, W)` or None, ``img_shape``: `(C, H, W)`;
    ``descriptions``: ``{"operator": …, "prior": …, "sampler": …}`` JSON-able.
    """

    y: np.ndarray
    x_true: np.ndarray | None
    img_shape: tuple[int, int, int]
    descriptions: dict[str, Any] = field(default_factory=dict)


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


# -- locations and errors ---------------------------------------------------------------------


def store_location(store: Any) -> str:
    """A printable location of a store (group, Zarr store object, path or URL)."""
    if isinstance(store, zarr.Group):
        store = store.store
    root = getattr(store, "root", None)
    if root is not None:
        return str(root)
    path = getattr(store, "path", None)
    return str(path) if path is not None else str(store)


@contextlib.contextmanager
def _io(location: Any, action: str) -> Iterator[None]:
    """Turn an ``OSError`` (read-only place, full disk, lost mount) into a one-line UQError."""
    try:
        yield
    except (UQError, zarr.errors.BaseZarrError):
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UQError(
            f"{store_location(location)}: cannot {action}: {reason}; check that the location is writable and has free space"
        ) from exc


def _exists(location: str) -> bool:
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return fs.exists(path)
    return Path(location).exists()


def _remove(location: str) -> None:
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        fs.rm(path, recursive=True)
    else:
        shutil.rmtree(location)


def _is_empty_dir(location: str) -> bool:
    return not is_url(location) and Path(location).is_dir() and not any(Path(location).iterdir())


# -- opening ----------------------------------------------------------------------------------


def open_store(store: Any, mode: str = "r") -> zarr.Group:
    """Open an existing uqcampaign store: a path, an fsspec URL, a Zarr store object or a group.

    ``mode`` is ``"r"`` (read) or ``"r+"`` (write chunks). Raises UQError when nothing is
    there or it is not a uqcampaign store.
    """
    if isinstance(store, zarr.Group):
        return store
    location = store_location(store)
    if isinstance(store, (str, Path)) and not _exists(str(store)):
        raise UQError(f"{location}: no store there; run `uqc run CAMPAIGN.yaml` first or check the path")
    try:
        with _io(store, "open the store"):
            group = zarr.open_group(str(store) if isinstance(store, Path) else store, mode=mode, zarr_format=3)
    except UQError:
        raise
    except (zarr.errors.BaseZarrError, FileNotFoundError, ValueError, TypeError, KeyError) as exc:
        raise UQError(f"{location}: not a readable Zarr v3 group ({type(exc).__name__}); give the path of a store written by `uqc run`") from None
    if "config_hash" not in group.attrs:
        raise UQError(f"{location}: a Zarr group but not a uqcampaign store (no config_hash attribute)")
    return group


def existing_store_info(location: str) -> dict[str, Any] | None:
    """Root attrs of the store at ``location``, None when nothing is there.

    Raises UQError when something else than a uqcampaign store is there.
    """
    if not _exists(location) or _is_empty_dir(location):
        return None
    try:
        group = zarr.open_group(location, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except Exception:
        attrs = {}
    if "config_hash" not in attrs:
        raise UQError(f"{location}: exists and is not a uqcampaign store; choose another store path or remove it yourself")
    return attrs


def store_campaign(store: Any) -> Campaign:
    """The campaign a store was written by, rebuilt from its attrs (root = the campaign's folder)."""
    group = open_store(store)
    return campaign_from_dict(dict(group.attrs["campaign"]), group.attrs.get("campaign_root"))


def obs_dim_names(obs_shape: tuple[int, ...]) -> list[str]:
    """Dimension names of one measurement: ``obs_channel, obs_y, obs_x`` when 3-d, else ``obs_0…``."""
    if len(obs_shape) == 3:
        return ["obs_channel", "obs_y", "obs_x"]
    return [f"obs_{i}" for i in range(len(obs_shape))]


def _describe_existing(location: str, attrs: dict[str, Any]) -> str:
    name = attrs.get("campaign", {}).get("name", "?")
    return f"campaign '{name}' (config hash {str(attrs.get('config_hash'))[:12]})"


def _draw_progress(group: zarr.Group) -> tuple[int, int]:
    """(chain-draws done, chain-draws planned) from ``draws_done``."""
    if "draws_done" not in group:
        return 0, 0
    done = np.asarray(group["draws_done"][...])
    total = int(dict(group.attrs).get("campaign", {}).get("draws", 0)) * done.size
    return int(done.sum()), total


def create_or_open(
    campaign: Campaign, *, force: bool = False, layout: Callable[[], StoreLayout], say: Callable[[str], None] | None = None
) -> tuple[zarr.Group, list[str]]:
    """Open the campaign's store for writing, creating it when absent; returns (group, messages).

    - nothing there (or a store left half-created by the same campaign): ``layout()`` is
      called and a new store is written;
    - a store of the same config hash: opened as is (its draws are kept: resuming is safe
      because a unit's draws depend only on the seed);
    - a store of another campaign: refused with a UQError naming both, unless ``force``,
      which deletes it after saying so: each message goes to ``say`` (e.g. ``console.print``)
      *before* the action it announces, and is also returned in ``messages``.

    ``layout()`` runs before any store is removed, so a bad input it raises on (a data file
    of the wrong shape, say) leaves the old store as it was.
    """
    location = campaign.store_location
    messages: list[str] = []

    def tell(message: str) -> None:
        messages.append(message)
        if say is not None:
            say(message)
    attrs = existing_store_info(location)
    new_layout: StoreLayout | None = None
    if attrs is not None:
        same = attrs.get("config_hash") == campaign.config_hash()
        if force or (same and not attrs.get("initialized", False)):
            new_layout = layout()  # before removing anything
        if force:
            group = zarr.open_group(location, mode="r", zarr_format=3)
            done, total = _draw_progress(group)
            tell(f"--force: removing {location}: {_describe_existing(location, attrs)}, {done}/{total} chain-draws done")
            with _io(location, "remove the old store"):
                _remove(location)
        elif not same:
            raise UQError(
                f"{location} belongs to {_describe_existing(location, attrs)}, not to campaign '{campaign.name}' "
                f"(config hash {campaign.config_hash()[:12]}); use another store path, or --force to delete it"
            )
        elif not attrs.get("initialized", False):
            tell(f"{location}: half-created store of the same campaign found; creating it again")
            with _io(location, "remove the half-created store"):
                _remove(location)
        else:
            group = open_store(location, mode="r+")
            done, total = _draw_progress(group)
            state = "complete, nothing to do" if total and done >= total else "resuming: draws depend only on the seed"
            tell(f"{location}: holds the same campaign '{campaign.name}' ({done}/{total} chain-draws done); {state}")
            return group, messages
    return create_store(campaign, new_layout if new_layout is not None else layout()), messages


def create_store(campaign: Campaign, layout: StoreLayout) -> zarr.Group:
    """Write a new, empty store for ``campaign`` (overwrites nothing: the location must be free)."""
    location = campaign.store_location
    C, H, W = layout.img_shape
    y = np.asarray(layout.y, dtype=np.float32)
    M, obs_shape = y.shape[0], tuple(y.shape[1:])
    cc, cd = campaign.chunks.chains, campaign.chunks.draws
    with _io(location, "create the store"):
        # The attrs go in with the group's own metadata (one atomic write): a store is a
        # uqcampaign store from its first file on, and `initialized` flips once all is written.
        group = zarr.open_group(
            location,
            mode="w-",
            zarr_format=3,
            attributes={
                "uqcampaign_version": _version(),
                "campaign": campaign.model_dump(mode="json"),
                "config_hash": campaign.config_hash(),
                "campaign_root": str(campaign.root),
                "img_shape": [C, H, W],
                "obs_shape": list(obs_shape),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "initialized": False,
                **{k: layout.descriptions.get(k) for k in ("operator", "prior", "sampler")},
            },
        )
        group.create_array(
            "samples",
            shape=(M, campaign.chains, campaign.draws, C, H, W),
            chunks=(1, cc, cd, C, H, W),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=list(SAMPLE_DIMS),
        )
        group.create_array(
            "draws_done", shape=(M, campaign.chains), chunks=(1, cc), dtype="int32", fill_value=0, dimension_names=["measurement", "chain"]
        )
        arr = group.create_array(
            "y", shape=y.shape, chunks=(1, *obs_shape), dtype="float32", fill_value=np.nan, dimension_names=["measurement", *obs_dim_names(obs_shape)]
        )
        arr[...] = y
        if layout.x_true is not None:
            x = np.asarray(layout.x_true, dtype=np.float32)
            arr = group.create_array("x_true", shape=x.shape, chunks=(1, C, H, W), dtype="float32", fill_value=np.nan, dimension_names=["measurement", *IMAGE_DIMS])
            arr[...] = x
        units = group.create_group("units")
        grid, dims = (M, campaign.n_blocks), ["measurement", "block"]
        for name, dtype, fill in (("seconds", "float64", np.nan), ("nfe_per_draw", "float64", np.nan), ("draws_written", "int32", -1), ("device", "int16", -2)):
            units.create_array(name, shape=grid, chunks=(1, 1), dtype=dtype, fill_value=fill, dimension_names=dims)
        units.create_array(
            "worker", shape=(*grid, WORKER_BYTES), chunks=(1, 1, WORKER_BYTES), dtype="uint8", fill_value=0, dimension_names=[*dims, "worker_char"]
        )
        group.attrs["initialized"] = True
    consolidate(group)
    return zarr.open_group(location, mode="r+", zarr_format=3)


def _version() -> str:
    try:
        return importlib.metadata.version("uqcampaign")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- writing draws ----------------------------------------------------------------------------


def draws_done(store: Any) -> np.ndarray:
    """The resume record `(measurement, chain)`: draws written per chain."""
    group = open_store(store)
    with _io(group, "read draws_done"):
        return np.asarray(group["draws_done"][...])


def _check_aligned(group: zarr.Group, chains: slice, draws: slice) -> None:
    """A write must cover exactly one chunk (so that no two units touch the same chunk)."""
    arr = group["samples"]
    _, n_chains, n_draws = arr.shape[:3]
    _, cc, cd = arr.chunks[:3]
    ok = (
        chains.start % cc == 0
        and chains.stop == min(chains.start + cc, n_chains)
        and draws.start % cd == 0
        and draws.stop == min(draws.start + cd, n_draws)
    )
    if not ok:
        raise UQError(
            f"write of chains {chains.start}:{chains.stop}, draws {draws.start}:{draws.stop} is not one chunk "
            f"of {cc} chains x {cd} draws; write whole chunks"
        )


def write_draw_block(store: Any, measurement: int, chains: slice, draws: slice, array: np.ndarray) -> None:
    """Write one chunk of ``samples``: ``array`` `(len(chains), len(draws), C, H, W)`.

    Refuses (UQError) a chunk whose draws are already done: a finished chunk is never
    rewritten. Call :func:`mark_done` after this returns (the chunk is then on storage).
    """
    group = open_store(store, mode="r+")
    _check_aligned(group, chains, draws)
    with _io(group, f"write samples[{measurement}, {chains.start}:{chains.stop}, {draws.start}:{draws.stop}]"):
        done = np.asarray(group["draws_done"][measurement, chains])
        if done.size and int(done.min()) >= draws.stop:
            raise UQError(
                f"{store_location(group)}: samples[{measurement}, {chains.start}:{chains.stop}, {draws.start}:{draws.stop}] "
                "is already done; a finished chunk is never rewritten"
            )
        group["samples"][measurement, chains, draws] = np.asarray(array, dtype=np.float32)


def mark_done(store: Any, measurement: int, chains: slice, n_draws: int) -> None:
    """Record that chains ``chains`` of ``measurement`` have their first ``n_draws`` draws stored."""
    group = open_store(store, mode="r+")
    with _io(group, f"write draws_done[{measurement}, {chains.start}:{chains.stop}]"):
        group["draws_done"][measurement, chains] = np.full(chains.stop - chains.start, n_draws, dtype=np.int32)


def write_unit_stats(store: Any, stats: UnitStats) -> None:
    """Keep ``stats`` in the ``units/`` group (the unit's own (1, 1) chunk of each array)."""
    group = open_store(store, mode="r+")
    m, b = stats.measurement, stats.block
    device = -1 if stats.device.startswith("cpu") else int(stats.device.split(":")[1]) if ":" in stats.device else 0
    worker = np.zeros(WORKER_BYTES, dtype=np.uint8)
    raw = stats.worker.encode()[:WORKER_BYTES]
    worker[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    with _io(group, f"write units/ stats of unit ({m}, {b})"):
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
    with _io(group, "write consolidated metadata"), warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; xarray relies on it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(group.store, path=group.path or None)
