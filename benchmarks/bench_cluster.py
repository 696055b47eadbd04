"""Ray campaign overhead and 1 → 2 worker scaling (``python benchmarks/run.py --only cluster``).

One PnP-ULA campaign on a 1×32×32 Gaussian-mixture prior (inpainting), sized so that the bare
sampler loop takes about 70 s here (``--quick``: a few seconds, figures not meaningful). Timed:

- the bare sampler loop: every unit's ``sampler.run`` in this process, draws copied to a
  buffer, no store, no Ray (the floor), run first and again last: the ratios use the mean of
  the two and the table shows both, as the machine's run-to-run noise (±10% on this shared CPU);
- ``uqc run --in-process`` (adds the Zarr store) and ``uqc run`` through a local Ray with 1
  and 2 workers (adds Ray start-up, actors, scheduling), each a fresh ``uqc`` process, so the
  wall times include interpreter, torch and Ray start-up; the fixed part of that is timed on a
  campaign of one unit of one draw, and each run's time inside its units is read from the store.

Campaign overhead = wall(``uqc run``, Ray local, 2 workers) ÷ wall(bare loop); goal ≤ 1.15.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from dataclasses import dataclass

import numpy as np
import torch
import yaml


@dataclass(frozen=True)
class Size:
    """Campaign size: ``measurements × chains × draws`` on ``side × side`` images, units of ``block`` chains."""

    side: int
    measurements: int
    chains: int
    block: int
    draws: int
    chunk_draws: int
    thin: int
    target_s: float  # wall seconds the bare loop should take

    @property
    def units(self) -> int:
        return self.measurements * (self.chains // self.block)


FULL = Size(side=32, measurements=4, chains=64, block=16, draws=100, chunk_draws=25, thin=2, target_s=70.0)
QUICK = Size(side=8, measurements=2, chains=16, block=8, draws=10, chunk_draws=5, thin=1, target_s=1.0)


def _write(folder: Path, size: Size, burn_in: int, store: str) -> Path:
    """The benchmark campaign: ``size.units`` units of ``size.block`` chains."""
    prior = folder / "gmm.npz"
    if not prior.exists():
        rng = np.random.default_rng(0)
        shape = (4, 1, size.side, size.side)
        np.savez(prior, weights=np.full(4, 0.25), means=rng.uniform(0, 1, shape), variances=np.full(shape, 0.03))
    spec = {
        "name": "bench-cluster",
        "store": store,
        "seed": 0,
        "data": {"simulate": {"count": size.measurements}},
        "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 0},
        "noise": {"sigma": 0.05},
        "prior": {"kind": "gmm", "file": "gmm.npz"},
        "sampler": {"kind": "ula", "burn_in": burn_in, "thin": size.thin},
        "chains": size.chains,
        "draws": size.draws,
        "chunks": {"chains": size.block, "draws": size.chunk_draws},
        "cluster": {"address": "local", "workers": 2, "gpus_per_worker": 0},
    }
    path = folder / f"{Path(store).stem}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _bare_loop(campaign_file: Path, max_units: int | None = None) -> tuple[float, np.ndarray]:
    """Wall seconds of the plain sampler loop over the units, and the draws `(M, chain, draw, C, H, W)`."""
    from uqcampaign.kernels.rng import unit_generator
    from uqcampaign.pipeline.config import load_campaign
    from uqcampaign.pipeline.data import load_or_simulate
    from uqcampaign.pipeline.units import load_components, plan_units

    campaign = load_campaign(campaign_file)
    prior, operator, sampler = load_components(campaign)
    y, _ = load_or_simulate(campaign, prior, operator)
    units = plan_units(campaign, y.shape[0])[:max_units]
    out = np.empty((y.shape[0], campaign.chains, campaign.draws, *prior.img_shape), dtype=np.float32)
    start = time.perf_counter()
    for unit in units:
        chains = campaign.block_chains(unit.block)
        generator = unit_generator(campaign.seed, unit.measurement, unit.block)
        y_m = torch.as_tensor(y[unit.measurement])
        for draw in sampler.run(y_m, operator, prior, campaign.noise.sigma, chains.stop - chains.start, campaign.draws, generator):
            out[unit.measurement, chains, draw.index] = draw.x.numpy()
    return time.perf_counter() - start, out


def _uqc(campaign_file: Path, *args: str, env: dict[str, str]) -> float:
    """Wall seconds of ``uqc run CAMPAIGN ARGS`` in a fresh process."""
    command = [str(Path(sys.executable).with_name("uqc")), "run", str(campaign_file), "--no-progress", *args]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


def _unit_seconds(campaign_file: Path) -> float:
    """Sum over units of the seconds each unit spent in ``run_unit`` (the store's ``units/seconds``)."""
    import zarr

    from uqcampaign.pipeline.config import load_campaign

    return float(np.nansum(zarr.open_group(load_campaign(campaign_file).store_location, mode="r")["units"]["seconds"][...]))


def _samples(campaign_file: Path) -> np.ndarray:
    import zarr

    from uqcampaign.pipeline.config import load_campaign

    return zarr.open_group(load_campaign(campaign_file).store_location, mode="r")["samples"][...]


def section(quick: bool = False) -> str:
    """The Markdown section of BENCHMARKS.md."""
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="uqb", dir="/tmp") as tmp:  # short: Ray's socket paths
        folder = Path(tmp)
        env = {**os.environ, "UQC_RAY_TMPDIR": tmp, "RAY_AUTH_TOKEN": uuid.uuid4().hex, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
        env.pop("RAY_ADDRESS", None)
        # Calibrate: one unit with a short burn-in gives the cost of a step (the second run: the
        # first pays torch's warm-up and would undersize the campaign).
        probe_burn = 200
        for probe in ("probe0.zarr", "probe1.zarr"):
            seconds, _ = _bare_loop(_write(folder, size, probe_burn, probe), max_units=1)
        per_step = seconds / (probe_burn + size.draws * size.thin)
        burn_in = max(0, int(size.target_s / (size.units * per_step)) - size.draws * size.thin)
        files = {name: _write(folder, size, burn_in, f"{name}.zarr") for name in ("bare", "inproc", "ray1", "ray2")}
        tiny = Size(size.side, 1, size.block, size.block, 1, 1, 1, 0.0)  # one unit of one draw: fixed costs only
        startup_files = {name: _write(folder, tiny, 0, f"startup-{name}.zarr") for name in ("inproc", "ray1")}

        bare_first, draws = _bare_loop(files["bare"])
        inproc = _uqc(files["inproc"], "--in-process", env=env)
        ray2 = _uqc(files["ray2"], "--address", "local", "--workers", "2", env=env)
        ray1 = _uqc(files["ray1"], "--address", "local", "--workers", "1", env=env)
        startup = _uqc(startup_files["ray1"], "--address", "local", "--workers", "1", env=env)
        startup_inproc = _uqc(startup_files["inproc"], "--in-process", env=env)
        units = {name: _unit_seconds(files[name]) for name in ("inproc", "ray1")}
        bare_last, _ = _bare_loop(files["bare"])  # again at the end: the spread of the two is this machine's noise
        bare = (bare_first + bare_last) / 2
        same = all(_samples(files[name]).tobytes() == draws.tobytes() for name in ("inproc", "ray1", "ray2"))

    chain_draws = size.measurements * size.chains * size.draws
    steps = burn_in + size.draws * size.thin
    rows = [
        ("bare sampler loop (this process, no store), mean of the two runs", bare),
        ("  first run (before the `uqc` runs)", bare_first),
        ("  second run (after them)", bare_last),
        ("`uqc run --in-process` (Zarr store)", inproc),
        ("`uqc run`, Ray local, 1 worker × 2 CPUs", ray1),
        ("`uqc run`, Ray local, 2 workers × 1 CPU", ray2),
    ]
    table = "\n".join(f"| {name} | {sec:.1f} | {chain_draws / sec:,.0f} | {sec / bare:.3f} |" for name, sec in rows)
    table += (f"\n| `uqc run --in-process`, one unit of 1 draw (fixed cost only) | {startup_inproc:.1f} | - | - |"
              f"\n| `uqc run`, Ray local, 1 worker, one unit of 1 draw (fixed cost only) | {startup:.1f} | - | - |")
    note = " (`--quick`: tiny sizes, figures not meaningful)" if quick else ""
    return f"""## Cluster: Ray campaign overhead and scaling{note}

`benchmarks/bench_cluster.py`. Campaign: PnP-ULA, 1×{size.side}×{size.side} Gaussian-mixture prior (K = 4), inpainting,
{size.measurements} measurements × {size.chains} chains × {size.draws} draws = {size.units} units of {size.block} chains,
{steps} ULA steps per chain (burn-in {burn_in}, thin {size.thin}). The `uqc` rows are fresh processes: wall time includes Python, torch and Ray start-up.
Draws of every run bit-identical to the bare loop: **{"yes" if same else "NO"}**. {torch.get_num_threads()} torch threads here.

| run | wall s | chain-draws/s | ÷ bare loop |
|---|---:|---:|---:|
{table}

- **Campaign overhead** (Ray local, 2 workers ÷ bare loop): **{ray2 / bare:.3f}** (goal ≤ 1.15).
- **Scaling 1 → 2 workers** on this 2-core machine: {ray1 / ray2:.2f}× faster (wall {ray1:.1f} s → {ray2:.1f} s).
- Store alone (in-process ÷ bare): {inproc / bare:.3f}.
- Where the extra time goes: the units themselves (sampling plus store writes, the store's `units/seconds`)
  took {units["inproc"]:.1f} s in-process and {units["ray1"]:.1f} s in the Ray actor (÷ bare loop {units["inproc"] / bare:.3f}
  and {units["ray1"] / bare:.3f}); the rest is a fixed cost per `uqc run` (interpreter, imports, simulating y, store
  creation, consolidated metadata; with Ray also Ray start, actor start, prior load, shut-down), measured on a
  campaign of one unit of one draw: {startup_inproc:.1f} s in-process, {startup:.1f} s through a new local Ray.
"""


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
