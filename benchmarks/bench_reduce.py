"""Reduction benchmark: sort-based diagnostics vs ArviZ, raw Zarr read speed, peak memory of `reduce_store`.

``section(quick=False)`` writes a store of ≥ 2 GB with the layout of DESIGN §4 (4 measurements ×
64 chains × 500 draws × 1×64×64 float32, chunks of 16 chains × 50 draws) to a temporary folder and
returns a Markdown section with, from that one store:

* seconds per 1,000 pixels of ArviZ (``az.rhat``, ``az.ess`` bulk and tail, ``az.mcse`` on an
  ``az.convert_to_dataset`` of ``(chain, draw, pixel)``, plus ``numpy.quantile``) and of
  :func:`uqcampaign.pipeline.diagnostics.summarize` on the same block of 1,024 pixels × 64
  chains × 500 draws, and their ratio (wall and CPU seconds: the machine is shared);
* the floor: one ``argsort`` of the same block;
* the raw Zarr read throughput (every chunk of ``samples`` read once);
* the wall time and peak RSS of ``reduce_store`` on the whole store, in a fresh subprocess.

``quick=True`` does the same at a tiny size (a smoke run: the figures mean nothing).
Run: ``python benchmarks/bench_reduce.py [--quick]``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import zarr

FULL = {"measurements": 4, "chains": 64, "draws": 500, "img": (1, 64, 64), "chunks": (16, 50), "block_pixels": 1024}
QUICK = {"measurements": 2, "chains": 8, "draws": 40, "img": (1, 8, 8), "chunks": (4, 20), "block_pixels": 16}

PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    def hwm():
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
    from uqcampaign.pipeline.reduce import reduce_store
    start = time.perf_counter()
    reduce_store(sys.argv[1], progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": hwm()}))
    """
)


def write_store(path: Path, cfg: dict, seed: int = 0) -> int:
    """A store with the layout of DESIGN §4: AR(1) chains (φ = 0.5) around a random image; returns its bytes."""
    m, chains, draws = cfg["measurements"], cfg["chains"], cfg["draws"]
    c, h, w = cfg["img"]
    cc, cd = cfg["chunks"]
    rng = np.random.default_rng(seed)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    op = {"kind": "denoise"}
    campaign = {"name": "bench", "chains": chains, "draws": draws, "noise": {"sigma": 0.1}, "reduce": {"level": 0.9}, "operator": op}
    g.attrs.update({
        "uqcampaign_version": "bench", "layout": 2, "config_hash": "bench", "operator": json.dumps(op), "img_shape": [c, h, w],
        "initialized": 1, "campaign": json.dumps(campaign), "sizes": json.dumps({"measurement": m, "chain": chains, "draw": draws}),
    })
    samples = g.create_array("samples", shape=(m, chains, draws, c, h, w), chunks=(1, cc, cd, c, h, w), dtype="float32",
                             fill_value=np.nan, dimension_names=["measurement", "chain", "draw", "channel", "y", "x"])
    truth = rng.uniform(0, 1, (m, c, h, w)).astype(np.float32)
    for i in range(m):
        for j in range(0, chains, cc):
            state = rng.standard_normal((cc, c, h, w)).astype(np.float32)
            for k in range(0, draws, cd):
                block = np.empty((cc, cd, c, h, w), dtype=np.float32)
                for t in range(cd):
                    state = 0.5 * state + np.float32(np.sqrt(0.75)) * rng.standard_normal((cc, c, h, w), dtype=np.float32)
                    block[:, t] = state
                samples[i, j : j + cc, k : k + cd] = truth[i] + 0.1 * block
    g.create_array("draws_done", data=np.full((m, chains), draws, dtype=np.int32), chunks=(1, cc), dimension_names=["measurement", "chain"])
    g.create_array("y_obs", data=truth, chunks=(1, c, h, w), dimension_names=["measurement", "obs_channel", "obs_y", "obs_x"])
    g.create_array("x_true", data=truth, chunks=(1, c, h, w), dimension_names=["measurement", "channel", "y", "x"])
    return m * chains * draws * c * h * w * 4


def _clock(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def read_throughput(path: Path) -> tuple[float, float]:
    """(MB/s, seconds) reading every chunk of ``samples`` once."""
    samples = zarr.open_array(str(path / "samples"), mode="r")
    m, chains, draws = samples.shape[:3]
    cc, cd = samples.chunks[1:3]

    def read() -> None:
        for i in range(m):
            for j in range(0, chains, cc):
                for k in range(0, draws, cd):
                    samples[i, j : j + cc, k : k + cd]

    wall, _ = _clock(read)
    return samples.nbytes / 1e6 / wall, wall


def diagnostics_vs_arviz(path: Path, pixels: int) -> dict[str, float]:
    """Seconds per 1,000 pixels of ArviZ, of our diagnostics and of one argsort, on one block."""
    import arviz as az

    from uqcampaign.pipeline.diagnostics import summarize

    samples = zarr.open_array(str(path / "samples"), mode="r")
    _, chains, draws, c, h, w = samples.shape
    rows = max(1, pixels // (c * w))
    block = np.asarray(samples[0, :, :, :, :rows])  # (chain, draw, C, rows, W)
    pix = np.ascontiguousarray(block.reshape(chains, draws, -1).transpose(2, 0, 1))[:pixels]  # (pixels, chain, draw)
    n = pix.shape[0]
    ours = _clock(lambda: summarize(pix, level=0.9))
    floor = _clock(lambda: np.argsort(pix.reshape(n, -1), axis=1))
    ds = az.convert_to_dataset(np.moveaxis(pix.astype(np.float64), 0, -1))  # (chain, draw, pixel)
    flat = pix.reshape(n, -1).astype(np.float64)

    def arviz() -> None:
        az.rhat(ds, method="rank")
        az.ess(ds, method="bulk")
        az.ess(ds, method="tail")
        az.mcse(ds, method="mean")
        np.quantile(flat, [0.05, 0.95], axis=1)

    logging.getLogger("arviz").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _clock(arviz)
    per = 1000.0 / n
    return {
        "pixels": n, "chains": chains, "draws": draws,
        "arviz_wall": ref[0] * per, "arviz_cpu": ref[1] * per,
        "ours_wall": ours[0] * per, "ours_cpu": ours[1] * per,
        "argsort_wall": floor[0] * per, "argsort_cpu": floor[1] * per,
    }


def reduce_peak(path: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (bytes) of ``reduce_store`` on the store, in a fresh subprocess."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=3600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"reduce_store failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def section(quick: bool = False) -> str:
    """The Markdown section of BENCHMARKS.md for the reductions."""
    cfg = QUICK if quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="uqc-bench-reduce-"))
    try:
        store = tmp / "bench.zarr"
        start = time.perf_counter()
        nbytes = write_store(store, cfg)
        write_s = time.perf_counter() - start
        mbps, read_s = read_throughput(store)
        d = diagnostics_vs_arviz(store, cfg["block_pixels"])
        peak = reduce_peak(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m, chains, draws, (c, h, w) = cfg["measurements"], cfg["chains"], cfg["draws"], cfg["img"]
    lines = [
        "## Reductions (`benchmarks/bench_reduce.py`)\n",
        ("**Quick smoke run: tiny sizes, the figures mean nothing.**\n" if quick else ""),
        f"One store of {nbytes / 1e9:.2f} GB ({m} measurements × {chains} chains × {draws} draws × {c}×{h}×{w} float32, "
        f"chunks of {cfg['chunks'][0]} chains × {cfg['chunks'][1]} draws), written in {write_s:.0f} s to a temporary folder.\n",
        f"Diagnostics on one block of {d['pixels']} pixels × {d['chains']} chains × {d['draws']} draws "
        "(R̂ rank, bulk ESS, tail ESS, MCSE of the mean, 5%/95% quantiles), seconds per 1,000 pixels:\n",
        "| | wall s / 1,000 px | CPU s / 1,000 px |",
        "|---|---:|---:|",
        f"| ArviZ {_version('arviz')} (`az.rhat`, `az.ess` ×2, `az.mcse`, `np.quantile`) | {d['arviz_wall']:.2f} | {d['arviz_cpu']:.2f} |",
        f"| uqcampaign `diagnostics.summarize` | {d['ours_wall']:.2f} | {d['ours_cpu']:.2f} |",
        f"| floor: one `argsort` of the block | {d['argsort_wall']:.2f} | {d['argsort_cpu']:.2f} |",
        f"| **ratio ArviZ / uqcampaign** | **{d['arviz_wall'] / d['ours_wall']:.1f}×** | **{d['arviz_cpu'] / d['ours_cpu']:.1f}×** |",
        "",
        f"Raw Zarr read of `samples` (every chunk once): {mbps:.0f} MB/s ({read_s:.1f} s).\n",
        f"`reduce_store` on the whole store (threads, default memory budget, fresh process): {peak['seconds']:.0f} s, "
        f"peak RSS {peak['peak_rss'] / 2**20:.0f} MiB (imports included).\n",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(section(quick="--quick" in sys.argv))
