"""`uqc reduce`: a Dask graph from the ``samples`` of a store into its ``summary/`` group (DESIGN §4, §5).

Two passes over the store; the memory of each task is bounded by a share of ``memory_budget``:

1. **Pixel tiles.** One task per (``k`` measurements, spatial tile ``ty × tx``) reads
   ``samples[m0:m1, :, :n, :, tile]`` — *all* chains × the draws used — reduces every pixel
   with :func:`uqcampaign.pipeline.diagnostics.summarize` and returns its statistics; they are
   stored into ``summary/`` arrays whose chunks are the tasks' blocks (one writer per chunk,
   no lock). The rechunk by pixels happens at read time, inside the task: with
   ``da.from_zarr(...)`` + ``rechunk`` or ``map_blocks`` the read tasks are separate graph
   nodes that the scheduler may run ahead of their reductions (measured: 273 MiB peak RSS
   growth on a 56 MiB store), and a ``rechunk`` keeps every storage chunk of a measurement
   alive until its last tile is done. The tile (and ``k``) is the largest that fits the budget
   (:func:`choose_tile`); Zarr's read concurrency is capped to the same share.
2. **χ² per draw.** One task per storage chunk (or per group of whole measurements when they
   fit) applies the operator in torch: ``chi2_draws[m, c, d] = ||y_m − A x||² / (σ² · dim y)``.

Which draws count: per measurement the first ``n_m = min over chains of draws_done[m]``
draws of every chain (the complete rectangle the diagnostics need; draws past it are
ignored, and a chain behind the others limits all of them). A measurement with
``n_m < 4`` (too few for split R̂) is left NaN, with a warning; a store with no draw at all,
or with no measurement of 4 complete draws, is refused. ``summary/draws_used`` records ``n_m``.

Scheduler (``address``, the grammar of :mod:`.address`): threads here by default (None,
``local``, ``in-process``); ``auto``, ``host:port`` or ``ray://host:port`` runs the same graph on a
Ray cluster, joined by :func:`.ray_join.join` (Dask-on-Ray: ``ray.util.dask.ray_dask_get`` when it
imports — it needs pyarrow for ``dask.dataframe`` — else dask's local scheduler submitting every
task as a Ray task); ``tcp://host:port`` on a Dask distributed scheduler. Workers must see the
store (shared filesystem or fsspec URL).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.address import Address, parse_address
from uqcampaign.pipeline.diagnostics import MIN_DRAWS, BlockSummary, summarize
from uqcampaign.pipeline.location import Location, io_errors
from uqcampaign.pipeline.ray_join import join
from uqcampaign.pipeline.store import consolidate, json_attr, obs_array, open_store, store_location, sync_coordinates
from uqcampaign.pipeline.summary import SUMMARY_NEW, discard_new_summary, open_summary_group, publish_summary, recover_summary

__all__ = ["reduce_store", "choose_tile", "PIXEL_STATS", "DEFAULT_MEMORY_BUDGET"]

PIXEL_STATS = BlockSummary._fields  # mean, std, ci_lower, ci_upper, rhat, ess_bulk, ess_tail, mcse_mean, rhat_group
TRUTH_STATS = ("error", "covered")
IMAGE_DIMS = ["measurement", "channel", "y", "x"]
# Peak memory the tile pass may use, all workers together (bytes).
DEFAULT_MEMORY_BUDGET = 384 * 2**20
# A tile task holds the tile as read (float32), its pixel-major copy, and the diagnostics'
# batch temporaries: budget per task / this factor = bytes of raw tile.
_TILE_OVERHEAD = 3
# Bytes of diagnostics temporaries per draw of a batch (4 float64 series, their complex spectrum, sorts).
_BATCH_BYTES_PER_DRAW = 160


# ----------------------------------------------------------------------------- memory


def _return_freed_memory_to_os() -> None:
    """Make glibc give large freed blocks back to the OS at once (Linux; a no-op elsewhere).

    By default glibc raises its mmap threshold after the first large free, so the tiles' and
    decoded chunks' temporaries (MBs each) are then carved from per-thread heaps that keep
    their freed pages: resident memory drifts to 2-3x what the reduction holds at any time
    (measured on a 2 GB store: 1.2 GB peak RSS at a 384 MiB budget). A fixed threshold keeps
    every block over 128 KiB mmap-backed, unmapped when freed — the same remedy as Dask
    distributed's ``MALLOC_TRIM_THRESHOLD_`` for its workers.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 17)  # glibc's own initial value, now fixed
    libc.mallopt(m_trim_threshold, 1 << 17)


# ----------------------------------------------------------------------------- planning


def choose_tile(img_shape: tuple[int, int, int], n_values: int, tile_bytes: int) -> tuple[int, int, int]:
    """Task shape ``(measurements, ty, tx)`` whose draws, ``n_values`` float32 per pixel, fit ``tile_bytes``.

    Whole images first (several measurements per task when they fit), then whole rows
    (contiguous reads), at least one pixel column of all channels.
    """
    c, h, w = img_shape
    pixels = max(1, tile_bytes // (4 * n_values * c))  # spatial positions (all channels)
    if pixels >= h * w:
        return pixels // (h * w), h, w
    if pixels >= w:
        return 1, pixels // w, w
    return 1, 1, pixels


def _draws_used(done: np.ndarray) -> np.ndarray:
    """``n_m`` per measurement: draws complete in every chain, ``done: (measurement, chain)``."""
    return done.min(axis=1).astype(np.int64)


def _n_workers(address: str | None) -> int:
    """Tasks running at once in this process: the threads of the local scheduler, else 1."""
    if _check_address(address) is None:
        return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))
    return 1  # remote workers hold their own tiles


# ----------------------------------------------------------------------------- tasks


def _tile_stats(block: np.ndarray, used: np.ndarray, truth: np.ndarray | None, level: float, batch_draws: int | None = None) -> np.ndarray:
    """Per-pixel statistics of one task's tile.

    ``block: (k, chains, draws, C, ty, tx)`` float32 of ``k`` measurements, ``used: (k,)``
    the draws each measurement counts (fewer than 4: NaN), ``truth: (k, C, ty, tx)`` or None;
    returns ``(n_stats, k, C, ty, tx)`` float64 in the order ``PIXEL_STATS (+ TRUTH_STATS)``.
    """
    k, chains, _, c, ty, tx = block.shape
    out = np.full((len(PIXEL_STATS) + (0 if truth is None else len(TRUTH_STATS)), k, c, ty, tx), np.nan)
    for i in range(k):
        n = int(used[i])
        if n < MIN_DRAWS:
            continue
        pixels = np.ascontiguousarray(block[i, :, :n].transpose(2, 3, 4, 0, 1)).reshape(c * ty * tx, chains, n)
        out[: len(PIXEL_STATS), i] = np.stack(summarize(pixels, level=level, batch_draws=batch_draws)).reshape(-1, c, ty, tx)
    if truth is not None:
        t = truth.astype(np.float64)
        mean, lower, upper = out[0], out[2], out[3]
        out[len(PIXEL_STATS)] = mean - t
        out[len(PIXEL_STATS) + 1] = np.where(np.isnan(mean), np.nan, (lower <= t) & (t <= upper))
    return out


def _read_tile_stats(
    _: np.ndarray, samples: zarr.Array, truth: zarr.Array | None, used: np.ndarray, level: float, batch_draws: int,
    block_info: dict | None = None,
) -> np.ndarray:
    """One task of the tile pass: read its tile of ``samples`` (all chains × the draws used) and reduce it.

    The read happens inside the task, so a scheduler can never read tiles ahead of their
    reduction: the memory of a task is its tile. Output block ``(n_stats, k, C, ty, tx)``.
    """
    (_, _), (m0, m1), _, (y0, y1), (x0, x1) = block_info[None]["array-location"]
    n = int(used[m0:m1].max())
    block = samples[m0:m1, :, :n, :, y0:y1, x0:x1] if n >= MIN_DRAWS else np.empty((m1 - m0, samples.shape[1], 0, samples.shape[3], y1 - y0, x1 - x0), np.float32)
    t = None if truth is None else truth[m0:m1, :, y0:y1, x0:x1]
    return _tile_stats(np.asarray(block), used[m0:m1], t, level, batch_draws)


@functools.lru_cache(maxsize=4)
def _operator(spec_json: str, img_shape: tuple[int, int, int], root: str | None) -> Any:
    """The store's operator in float64, built once per process (tasks may run on workers)."""
    import torch

    from uqcampaign.kernels.operators import build_operator

    return build_operator(json.loads(spec_json), img_shape, None if root is None else Path(root)).to(dtype=torch.float64)


def _chi2_block(
    _: np.ndarray, samples: zarr.Array, y: zarr.Array, used: np.ndarray, spec_json: str, root: str | None, sigma: float,
    batch_bytes: int, block_info: dict | None = None,
) -> np.ndarray:
    """``||y − A x||² / (σ² dim y)`` of the draws of one output block ``(k, cc, cd)``, read in the task.

    Draws past ``used`` (the draws each measurement counts) are NaN.
    """
    import torch

    from uqcampaign.kernels.plausibility import data_fidelity

    (m0, m1), (c0, c1), (d0, d1) = block_info[None]["array-location"]
    img_shape = tuple(samples.shape[3:])
    op = _operator(spec_json, img_shape, root)
    k, cc, cd = m1 - m0, c1 - c0, d1 - d0
    images = torch.from_numpy(np.asarray(samples[m0:m1, c0:c1, d0:d1]).reshape(k * cc * cd, *img_shape))
    target = torch.from_numpy(np.asarray(y[m0:m1], dtype=np.float64).reshape(k, -1)).repeat_interleave(cc * cd, dim=0)
    chi2 = np.empty(k * cc * cd)
    step = max(1, batch_bytes // (8 * 4 * int(np.prod(img_shape))))  # float64 images, A x, residual
    with torch.no_grad():
        for i in range(0, images.shape[0], step):
            chi2[i : i + step] = data_fidelity(images[i : i + step], target[i : i + step].reshape(-1, *op.obs_shape), op, sigma).numpy()
    chi2 = chi2.reshape(k, cc, cd)
    chi2[np.broadcast_to(np.arange(d0, d1)[None, None, :] >= used[m0:m1, None, None], chi2.shape)] = np.nan
    return chi2


# ----------------------------------------------------------------------------- schedulers


class _RayExecutor(Executor):
    """``concurrent.futures`` face of Ray: dask's local scheduler submits each task as a Ray task."""

    def __init__(self, max_workers: int) -> None:
        import ray

        self._max_workers = max_workers  # read by dask.threaded.get
        self._call = ray.remote(lambda fn, args, kwargs: fn(*args, **kwargs))

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        return self._call.remote(fn, args, kwargs).future()


def _check_address(address: str | None) -> Address | None:
    """The parsed ``--address`` (:mod:`.address`'s grammar), checked before anything is written; None: threads here."""
    if address is None:
        return None
    parsed = parse_address(address, purpose="reduce")
    if parsed.kind == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UQError(f"reduce --address {address} needs dask.distributed; pip install distributed, or reduce on threads (no --address)") from None
    return None if parsed.here else parsed


@contextlib.contextmanager
def _scheduler(address: str | None, n_workers: int) -> Iterator[dict[str, Any]]:
    """Dask compute keywords for ``address`` (see the module docstring); checked by :func:`_check_address`."""
    parsed = _check_address(address)
    if parsed is None:
        yield {"scheduler": "threads", "num_workers": n_workers}
        return
    if parsed.kind == "dask":
        from distributed import Client

        try:
            client = Client(parsed.text, timeout="10s", set_as_default=False)
        except OSError as exc:
            raise UQError(f"cannot reach the Dask scheduler at {parsed.text} ({exc}); check the address") from None
        with client:
            yield {"scheduler": client}
        return
    ray = sys.modules.get("ray")
    started = False
    if ray is None or not ray.is_initialized():
        join(parsed, say=lambda note: print(note, file=sys.stderr))  # auth mode, probe, Ray Client retry; UQError with Ray's reason
        import ray

        started = True
    try:
        try:
            from ray.util.dask import ray_dask_get

            kwargs: dict[str, Any] = {"scheduler": ray_dask_get}
        except ImportError:  # ray.util.dask imports dask.dataframe (needs pyarrow): same graph, Ray tasks
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            kwargs = {"scheduler": "threads", "pool": _RayExecutor(workers), "num_workers": workers}
        yield kwargs
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _progress(enabled: bool, kwargs: dict[str, Any]) -> Iterator[None]:
    """Dask's progress bar on the local schedulers (distributed and Ray show their own dashboards)."""
    if enabled and kwargs.get("scheduler") == "threads" and "pool" not in kwargs:
        import sys

        from dask.diagnostics import ProgressBar

        with ProgressBar(dt=0.5, out=sys.stderr):  # results go to stdout, progress to stderr
            yield
    else:
        yield


# ----------------------------------------------------------------------------- writing


def _level_of(root: zarr.Group, level: float | None) -> float:
    if level is None:
        level = float(_campaign(root).get("reduce", {}).get("level", 0.9))
    if not 0.0 < level < 1.0:
        raise UQError(f"credible level {level} is outside (0, 1); use e.g. 0.9")
    return float(level)


def reduce_store(
    store: Any,
    level: float | None = None,
    address: str | None = None,
    progress: bool = True,
    tile: tuple[int, int] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    storage_options: Mapping[str, Any] | None = None,
    plausibility: bool = True,
) -> zarr.Group:
    """Reduce the draws of ``store`` into its ``summary/`` group and return that group.

    ``level``: credible level of the equal-tailed intervals (default: the campaign's
    ``reduce.level``). ``rhat_group``: R̂ over chain groups (:mod:`~uqcampaign.pipeline.diagnostics`). ``address``: None (threads here), ``ray://…``/``auto`` or ``tcp://…``.
    ``tile``: spatial tile ``(ty, tx)``; by default the largest whose draws fit
    ``memory_budget`` bytes across the local workers (see :func:`choose_tile`).
    ``storage_options``: fsspec options of a URL store (default: the AWS environment).
    Writes ``summary/``: ``mean, std, ci_lower, ci_upper`` (the last two with attr ``level``),
    ``rhat, ess_bulk, ess_tail, mcse_mean`` `(measurement, channel, y, x)`; with ``x_true``:
    ``error``, ``covered`` (bool) and ``coverage`` `(measurement)`; ``chi2_draws``
    `(measurement, chain, draw)` (NaN past the draws used), ``chi2`` `(measurement)` (its
    mean), ``draws_used`` `(measurement)` and ``draws_done`` `(measurement, chain)` (the record
    of what it summarises); with ``plausibility`` the prior-plausibility scores of a thinned subset
    of the draws, their reference and the prior's per-pixel moments and value range
    (:mod:`~uqcampaign.pipeline.plausibility_pass`, computed in this process); then consolidates the metadata.

    Nothing is lost: the new summary is written into ``summary.new/`` under the store's lease
    and swapped in only once complete (:mod:`~uqcampaign.pipeline.summary`); a failure (an
    unreachable cluster, a read-only or full store, an interrupt) leaves ``summary/`` as it was.
    """
    _check_address(address)
    from uqcampaign.pipeline.lease import hold_lease

    root = open_store(store, mode="r+", storage_options=storage_options)
    with hold_lease(Location.of(root), "reduce"):
        recover_summary(root)
        _reduce(root, level, address, progress, tile, memory_budget, plausibility)
        publish_summary(root)
        consolidate(root)
    summary, _ = open_summary_group(root)
    return summary


def _reduce(
    root: zarr.Group, level: float | None, address: str | None, progress: bool, tile: tuple[int, int] | None, memory_budget: int, plausibility: bool = True
) -> None:
    """Write the complete summary into ``summary.new/`` (see :func:`reduce_store`)."""
    location = store_location(root)
    level = _level_of(root, level)
    if "samples" not in root or "draws_done" not in root:
        raise UQError(f"store {location} has no samples/draws_done arrays; run `uqc run CAMPAIGN.yaml` first")
    samples = root["samples"]
    n_meas, n_chains, n_draws, c, h, w = samples.shape
    _return_freed_memory_to_os()
    done = np.asarray(root["draws_done"][...])
    if int(done.sum()) == 0:
        raise UQError(f"store {location} holds no draws yet (draws_done is 0 everywhere): run the campaign first (`uqc run CAMPAIGN.yaml`)")
    used = _draws_used(done)
    if not (used >= MIN_DRAWS).any():
        raise UQError(
            f"store {location}: no measurement has {MIN_DRAWS} draws done in every chain (draws per measurement: {used.tolist()}); "
            "finish the campaign first (`uqc run CAMPAIGN.yaml --resume`)"
        )
    short = [m for m in range(n_meas) if used[m] < MIN_DRAWS]
    if short:
        warnings.warn(f"measurements {short} have fewer than {MIN_DRAWS} draws in every chain; their summary is NaN", stacklevel=3)
    n_used = int(used.max())
    task_bytes = memory_budget // (_n_workers(address) * _TILE_OVERHEAD)
    k, ty, tx = choose_tile((c, h, w), n_chains * n_used, task_bytes)
    if tile is not None:
        k, (ty, tx) = 1, (int(tile[0]), int(tile[1]))
        if not (1 <= ty <= h and 1 <= tx <= w):
            raise UQError(f"tile {tuple(tile)} does not fit the image {h}x{w}; give 1 <= ty <= {h}, 1 <= tx <= {w}")
    k = min(k, n_meas)
    truth = "x_true" in root
    names = list(PIXEL_STATS) + (list(TRUTH_STATS) if truth else [])
    chi2 = _chi2_graph(root, samples, used, task_bytes)
    # Zarr decodes up to `async.concurrency` storage chunks of a read at once: keep them in the task's share.
    chunk_bytes = 4 * int(np.prod(samples.chunks))
    concurrency = int(max(1, min(zarr.config.get("async.concurrency") or 10, task_bytes // chunk_bytes)))
    # The scheduler first: an unreachable cluster fails before anything is written.
    with _scheduler(address, _n_workers(address)) as kwargs:
        try:
            with io_errors(root, "write the new summary (summary.new)"):
                summary = _create_summary(root, (n_meas, c, h, w), (k, ty, tx), tuple(ch[0] for ch in chi2.chunks), level, used, done, truth=truth)
            sources, targets = _summary_graph(root, summary, samples, names, used, level, (k, ty, tx), chi2, task_bytes, truth)
            with (
                _progress(progress, kwargs),
                zarr.config.set({"async.concurrency": concurrency}),
                warnings.catch_warnings(),
                io_errors(root, "write the summary"),
            ):
                warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
                da.store(sources, targets, lock=False, compute=True, **kwargs)
            if plausibility:
                from uqcampaign.pipeline.plausibility_pass import write_plausibility

                with io_errors(root, "write the prior-plausibility scores"):
                    write_plausibility(root, summary, used)
                    sync_coordinates(summary)
            with io_errors(root, "finish the new summary"):
                summary.attrs["complete"] = 1
        except BaseException:
            discard_new_summary(root)
            raise


def _summary_graph(
    root: zarr.Group, summary: zarr.Group, samples: zarr.Array, names: list[str], used: np.ndarray, level: float,
    task: tuple[int, int, int], chi2: da.Array, task_bytes: int, truth: bool,
) -> tuple[list[da.Array], list[zarr.Array]]:
    """The Dask sources and their ``summary.new`` targets: pixel tiles, coverage, χ²."""
    k, ty, tx = task
    n_meas, _, _, c, h, w = samples.shape
    # 1. pixel tiles of all chains × the draws used, k measurements per task (each task reads its tile)
    grid = da.empty((len(names), n_meas, c, h, w), chunks=(len(names), k, c, ty, tx), dtype=np.float64)
    x_true = root["x_true"] if truth else None
    batch_draws = max(1, task_bytes // _BATCH_BYTES_PER_DRAW)  # the diagnostics' temporaries get one task's share
    stats = da.map_blocks(_read_tile_stats, grid, samples, x_true, used, level, batch_draws, dtype=np.float64)
    sources: list[da.Array] = []
    targets: list[zarr.Array] = []
    for i, name in enumerate(names):
        sources.append(stats[i] > 0.5 if name == "covered" else stats[i])
        targets.append(summary[name])
    if truth:  # NaN for measurements not reduced; (M,) arrays are one chunk: one writer
        coverage = da.nanmean(stats[names.index("covered")], axis=(1, 2, 3)) + np.where(used >= MIN_DRAWS, 0.0, np.nan)
        sources.append(coverage.rechunk(-1))
        targets.append(summary["coverage"])
    # 2. χ² of every draw used
    sources += [chi2, da.nanmean(chi2, axis=(1, 2)).rechunk(-1)]
    targets += [summary["chi2_draws"], summary["chi2"]]
    return sources, targets


def _campaign(root: zarr.Group) -> dict[str, Any]:
    return dict(json_attr(root, "campaign") or {})


def _chi2_graph(root: zarr.Group, samples: zarr.Array, used: np.ndarray, task_bytes: int) -> da.Array:
    """``(measurement, chain, draw)`` χ² of every draw used; tasks of whole measurements when they fit."""
    campaign = _campaign(root)
    sigma = float(campaign["noise"]["sigma"])
    spec = json_attr(root, "operator") or campaign.get("operator")
    spec_json = json.dumps(spec, sort_keys=True)
    n_meas, n_chains, n_draws = samples.shape[:3]
    per_measurement = 4 * n_chains * n_draws * int(np.prod(samples.shape[3:]))
    if per_measurement > task_bytes:
        chunks = samples.chunks[:3]
    else:
        chunks = (min(n_meas, max(1, task_bytes // per_measurement)), n_chains, n_draws)
    grid = da.empty((n_meas, n_chains, n_draws), chunks=chunks, dtype=np.float64)
    return da.map_blocks(
        _chi2_block, grid, samples, obs_array(root), used, spec_json, root.attrs.get("campaign_root"), sigma, task_bytes, dtype=np.float64
    )


SUMMARY_ATTRS = {
    "mean": "posterior mean",
    "std": "posterior standard deviation (ddof 1)",
    "ci_lower": "lower end of the equal-tailed credible interval",
    "ci_upper": "upper end of the equal-tailed credible interval",
    "rhat": "rank-normalized split R-hat (Vehtari et al. 2021)",
    "ess_bulk": "bulk effective sample size",
    "ess_tail": "tail effective sample size",
    "mcse_mean": "Monte Carlo standard error of the mean",
    "rhat_group": "rank-normalized split R-hat over chain groups (early vs late halves of min(4, chains) groups)",
    "error": "posterior mean minus the true image",
    "covered": "true pixel inside the credible interval",
    "coverage": "fraction of pixels whose truth is inside the credible interval",
    "chi2_draws": "data misfit ||y - A x||^2 / (sigma^2 dim y) of each draw",
    "chi2": "mean data misfit of the draws used",
    "draws_used": "draws per chain the summary counts (complete in every chain)",
    "draws_done": "draws_done of the store when the summary was computed",
}


def _new_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dims: list[str], dtype: str) -> zarr.Array:
    fill = False if dtype == "bool" else 0 if dtype.startswith("int") else np.nan
    attrs = {"long_name": SUMMARY_ATTRS[name]}
    if name in ("chi2_draws", "chi2", "rhat", "rhat_group", "ess_bulk", "ess_tail", "coverage", "draws_used", "draws_done"):
        attrs["units"] = "1"
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims, attributes=attrs)


def _create_summary(
    root: zarr.Group, shape: tuple[int, int, int, int], task: tuple[int, int, int], chi2_chunks: tuple[int, int, int],
    level: float, used: np.ndarray, done: np.ndarray, *, truth: bool,
) -> zarr.Group:
    """A fresh ``summary.new/`` group (an unfinished one is replaced), chunked like the tasks: one
    writer per chunk. Attr ``complete`` is 0 until every array is written."""
    summary = zarr.open_group(root.store, path=SUMMARY_NEW, mode="w", zarr_format=3, attributes={"level": level, "complete": 0})
    m, c, h, w = shape
    k, ty, tx = task
    chunks = (k, c, ty, tx)
    for name in PIXEL_STATS + (("error",) if truth else ()):
        arr = _new_array(summary, name, shape, chunks, IMAGE_DIMS, "float64")
        if name in ("ci_lower", "ci_upper"):
            arr.attrs["level"] = level
    if truth:
        _new_array(summary, "covered", shape, chunks, IMAGE_DIMS, "bool")
        _new_array(summary, "coverage", (m,), (m,), ["measurement"], "float64")
    n_chains, n_draws = root["samples"].shape[1:3]
    _new_array(summary, "chi2_draws", (m, n_chains, n_draws), chi2_chunks, ["measurement", "chain", "draw"], "float64")
    _new_array(summary, "chi2", (m,), (m,), ["measurement"], "float64")
    _new_array(summary, "draws_used", (m,), (m,), ["measurement"], "int64")[...] = used
    _new_array(summary, "draws_done", done.shape, done.shape, ["measurement", "chain"], "int32")[...] = done
    sync_coordinates(summary)
    return summary
