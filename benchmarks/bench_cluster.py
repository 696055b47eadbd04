"""`uqc run` against the best bare loop on the same cores (``python benchmarks/run.py --only cluster``).

One PnP-ULA campaign (1×32×32 Gaussian-mixture prior, inpainting; units of 16 chains) is run, in
one invocation, by

- the **bare loop**: the sampler's ``run`` over the units, draws copied to memory, no store, no
  Ray, in fresh processes with 1 torch thread each: 1 process, and ``W`` processes each taking
  every ``W``-th unit (``W`` = cores): the same sampler, batch and threads as the Ray workers.
  The better of the two is the denominator (the ``W`` processes: it uses every core);
- ``uqc run --in-process`` (1 process; ``OMP_NUM_THREADS=1``, i.e. 1 torch thread: on this shared
  2-core machine torch's default of 2 threads made a 1-process loop several times slower, so the
  1-thread bare loop is its match), ``uqc run`` on a new local Ray (``W`` workers × 1 CPU), on a
  running ``ray start`` cluster joined through ``host:port``, and through Ray Client (``ray://``),
  each ``W`` workers × 1 CPU. The cluster (a head of ``W`` CPUs, token auth) is started for those
  rows only, so its daemons do not slow the others.

Every configuration runs at two sizes, ``S`` and ``L`` draws per chain (same burn-in and thin), as
fresh processes whose wall time includes interpreter, imports, Ray start or join, the store and
shut-down. A line through the two points splits it: **per chain-draw** = (wall L − wall S) /
(chain-draws L − S), the cost that grows with the campaign, and **fixed cost per command** = wall
S − per chain-draw × chain-draws S. Goal: per chain-draw ÷ best bare loop ≤ 1.05 (for the Ray
rows; the in-process row runs on one core and is compared with the 1-process loop too). Runs are
repeated (``REPEATS``) in an interleaved order; the medians are used, and the spread (max − min) /
median of each cell is the noise reported. The draws of every ``L`` run are checked bit-identical
to the bare loop's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve()
REPEATS = 2


@dataclass(frozen=True)
class Size:
    """Campaign shape: ``measurements × chains`` (units of ``block`` chains) on ``side × side`` images."""

    side: int
    measurements: int
    chains: int
    block: int
    thin: int
    burn_in: int
    chunk_draws: int
    draws_s: int
    target_l_s: float  # wall seconds the bare loop should take at size L (sets draws L)

    @property
    def units(self) -> int:
        return self.measurements * (self.chains // self.block)


FULL = Size(side=32, measurements=4, chains=64, block=16, thin=10, burn_in=100, chunk_draws=50, draws_s=50, target_l_s=60.0)
QUICK = Size(side=8, measurements=2, chains=8, block=4, thin=2, burn_in=10, chunk_draws=5, draws_s=5, target_l_s=0.5)


def write_campaign(folder: Path, size: Size, draws: int, store: str) -> Path:
    """The benchmark campaign with ``draws`` draws per chain, writing ``store``."""
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
        "sampler": {"kind": "ula", "burn_in": size.burn_in, "thin": size.thin},
        "chains": size.chains,
        "draws": draws,
        "chunks": {"chains": size.block, "draws": min(size.chunk_draws, draws)},
        "cluster": {"address": "local", "workers": "auto", "gpus_per_worker": 0},
    }
    path = folder / f"{Path(store).stem}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------------- the bare loop


def bare_part(campaign_file: str, part: int, parts: int, threads: int, out: str, max_units: int | None = None) -> None:
    """Run units ``part::parts`` of the campaign in this process with ``threads`` torch threads; save their draws."""
    torch.set_num_threads(threads)
    from uqcampaign.kernels.rng import unit_generator
    from uqcampaign.pipeline.config import load_campaign
    from uqcampaign.pipeline.data import load_or_simulate
    from uqcampaign.pipeline.units import load_components, plan_units

    campaign = load_campaign(campaign_file)
    prior, operator, sampler = load_components(campaign)
    y, _ = load_or_simulate(campaign, prior, operator)
    draws = {}
    start = time.perf_counter()
    for unit in plan_units(campaign, y.shape[0])[part::parts][:max_units]:
        chains = campaign.block_chains(unit.block)
        generator = unit_generator(campaign.seed, unit.measurement, unit.block)
        block = np.empty((chains.stop - chains.start, campaign.draws, *prior.img_shape), dtype=np.float32)
        for draw in sampler.run(torch.as_tensor(y[unit.measurement]), operator, prior, campaign.noise.sigma, block.shape[0], campaign.draws, generator):
            block[:, draw.index] = draw.x.numpy()
        draws[f"{unit.measurement}_{unit.block}"] = block
    np.savez(out, seconds=time.perf_counter() - start, **draws)


def bare(campaign_file: Path, processes: int, threads: int, folder: Path) -> tuple[float, np.ndarray]:
    """Wall seconds of ``processes`` fresh bare-loop processes run together, and the draws ``(M, chains, draws, C, H, W)``."""
    outs = [folder / f"bare-{uuid.uuid4().hex[:6]}-{k}.npz" for k in range(processes)]
    start = time.perf_counter()
    running = [
        subprocess.Popen([sys.executable, str(HERE), "--bare", str(campaign_file), str(k), str(processes), str(threads), str(out)])
        for k, out in enumerate(outs)
    ]
    if any(process.wait() != 0 for process in running):
        raise RuntimeError(f"a bare loop process failed ({campaign_file})")
    seconds = time.perf_counter() - start
    spec = yaml.safe_load(campaign_file.read_text())
    parts = [np.load(out) for out in outs]
    first = next(v for p in parts for k, v in p.items() if k != "seconds")
    draws = np.full((spec["data"]["simulate"]["count"], spec["chains"], *first.shape[1:]), np.nan, dtype=np.float32)
    for p in parts:
        for key, block in p.items():
            if key != "seconds":
                m, b = map(int, key.split("_"))
                draws[m, b * spec["chunks"]["chains"] : b * spec["chunks"]["chains"] + block.shape[0]] = block
    for out in outs:
        out.unlink()
    return seconds, draws


# ----------------------------------------------------------------------------- uqc run


def uqc(campaign_file: Path, args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``uqc run CAMPAIGN ARGS`` in a fresh process (its store removed first)."""
    spec = yaml.safe_load(campaign_file.read_text())
    subprocess.run(["rm", "-rf", str(campaign_file.parent / spec["store"])], check=True)
    command = [str(Path(sys.executable).with_name("uqc")), "run", str(campaign_file), "--no-progress", *args]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


def samples(campaign_file: Path) -> np.ndarray:
    import zarr

    spec = yaml.safe_load(campaign_file.read_text())
    return zarr.open_group(str(campaign_file.parent / spec["store"]), mode="r")["samples"][...]


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- the section


def section(quick: bool = False) -> str:
    """The Markdown section of BENCHMARKS.md."""
    from uqcampaign.cluster.nodes import RayStartCluster

    size = QUICK if quick else FULL
    cores = os.cpu_count() or 1
    workers = cores
    repeats = 1 if quick else REPEATS
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="uqb", dir="/tmp") as tmp:  # short: Ray's socket paths
        folder = Path(tmp)
        token = uuid.uuid4().hex
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        env.update(UQC_RAY_TMPDIR=tmp, RAY_TMPDIR=tmp, RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
        # Size L: the per-step cost of one unit on one thread, measured on a probe (its second run: the first pays warm-up).
        probe = write_campaign(folder, size, size.draws_s, "probe.zarr")
        for _ in range(2):
            subprocess.run([sys.executable, str(HERE), "--bare", str(probe), "0", "1", "1", str(folder / "probe.npz"), "1"], check=True)
        per_step = float(np.load(folder / "probe.npz")["seconds"]) / (size.burn_in + size.draws_s * size.thin)
        steps = size.target_l_s * workers / (size.units * per_step)
        draws_l = max(size.draws_s * 2, int((steps - size.burn_in) / size.thin) // size.chunk_draws * size.chunk_draws)
        if quick:
            draws_l = min(draws_l, 4 * size.draws_s)
        files = {n: write_campaign(folder, size, n, f"c{n}.zarr") for n in (size.draws_s, draws_l)}

        rows = {
            "bare": "bare loop, 1 process × 1 torch thread",
            "bare_w": f"bare loop, {workers} processes × 1 torch thread",
            "inproc": "`uqc run --in-process` (1 process × 1 torch thread)",
            "local": f"`uqc run --address local` (new local Ray, {workers} workers × 1 CPU)",
            "gcs": f"`uqc run --address HOST:PORT` (joined `ray start` cluster, {workers} workers × 1 CPU)",
            "client": f"`uqc run --address ray://HOST:PORT` (Ray Client, {workers} workers × 1 CPU)",
        }
        walls: dict[tuple[str, int], list[float]] = {}
        same = True
        reference = None

        def record(name: str, draws: int, seconds: float, got: np.ndarray) -> None:
            nonlocal same, reference
            walls.setdefault((name, draws), []).append(seconds)
            if draws == draws_l:
                reference = got if reference is None else reference
                same = same and got.tobytes() == reference.tobytes()
            print(f"[cluster] {name} draws={draws}: {seconds:.1f} s (load {load()})", file=sys.stderr, flush=True)

        for repeat in range(repeats):
            order = [size.draws_s, draws_l] if repeat % 2 == 0 else [draws_l, size.draws_s]
            for draws in order:
                file = files[draws]
                seconds, got = bare(file, 1, 1, folder)
                record("bare", draws, seconds, got)
                seconds, got = bare(file, workers, 1, folder)
                record("bare_w", draws, seconds, got)
                record("inproc", draws, uqc(file, ["--in-process"], {**env, "OMP_NUM_THREADS": "1"}), samples(file))
                record("local", draws, uqc(file, ["--address", "local", "--workers", str(workers)], env), samples(file))
            cluster = RayStartCluster(folder / f"rc{repeat}", token=token, cpus=workers, gpus=0, n_workers=0)
            try:
                cluster.start()
                for draws in order:
                    file = files[draws]
                    record("gcs", draws, uqc(file, ["--address", cluster.gcs, "--workers", str(workers)], env), samples(file))
                    record("client", draws, uqc(file, ["--address", cluster.client, "--workers", str(workers)], env), samples(file))
            finally:
                cluster.stop()
    load_after = load()

    chain_draws = {n: size.measurements * size.chains * n for n in (size.draws_s, draws_l)}
    median = {key: float(np.median(values)) for key, values in walls.items()}
    spread = {key: (max(values) - min(values)) / float(np.median(values)) for key, values in walls.items()}
    per_draw = {name: (median[name, draws_l] - median[name, size.draws_s]) / (chain_draws[draws_l] - chain_draws[size.draws_s]) for name in rows}
    fixed = {name: median[name, size.draws_s] - per_draw[name] * chain_draws[size.draws_s] for name in rows}
    best = min(("bare", "bare_w"), key=lambda name: per_draw[name])
    match = {"bare": "bare", "bare_w": "bare_w", "inproc": "bare", "local": "bare_w", "gcs": "bare_w", "client": "bare_w"}
    lines = []
    for name, label in rows.items():
        mark = " (**best bare loop**)" if name == best else ""
        lines.append(
            f"| {label}{mark} | {median[name, size.draws_s]:.1f} | {median[name, draws_l]:.1f} | {1e3 * per_draw[name]:.3f} | "
            f"**{per_draw[name] / per_draw[best]:.3f}** | {per_draw[name] / per_draw[match[name]]:.3f} | {fixed[name]:.1f} | "
            f"{median[name, draws_l] / median[best, draws_l]:.3f} |"
        )
    noise = max(spread.values()) if repeats > 1 else float("nan")
    worst = max(("local", "gcs", "client"), key=lambda name: per_draw[name] / per_draw[best])
    goal = per_draw[worst] / per_draw[best] <= 1.05
    note = " (`--quick`: tiny sizes, figures not meaningful)" if quick else ""
    steps_l = size.burn_in + draws_l * size.thin
    result = {name: {"per_draw_ms": 1e3 * per_draw[name], "fixed_s": fixed[name]} for name in rows}
    print(json.dumps(result), file=sys.stderr)
    return f"""## Cluster: `uqc run` against the best bare loop on the same cores{note}

`python benchmarks/run.py --only cluster` (`benchmarks/bench_cluster.py`). Campaign: PnP-ULA, 1×{size.side}×{size.side}
Gaussian-mixture prior (K = 4), inpainting, {size.measurements} measurements × {size.chains} chains in {size.units} units of
{size.block} chains; burn-in {size.burn_in}, thin {size.thin}; size S = {size.draws_s} draws per chain, size L = {draws_l}
({steps_l} ULA steps per chain); chunks of {size.block} chains × {size.chunk_draws} draws. {cores} cores. Every row is fresh
processes, wall time from start to exit; medians of {repeats} interleaved runs. Draws of every size-L run bit-identical to the
bare loop's: **{"yes" if same else "NO"}**. Load average (1/5/15 min) before: {load_before}; after: {load_after}.

| run | wall S (s) | wall L (s) | per chain-draw (ms) | **÷ best bare loop, per draw** | ÷ bare loop of the same processes × threads | fixed cost per command (s) | wall L ÷ best bare |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(lines)}

- per chain-draw = (wall L − wall S) / ({chain_draws[draws_l]:,} − {chain_draws[size.draws_s]:,} chain-draws); fixed cost
  = wall S − per chain-draw × {chain_draws[size.draws_s]:,}: interpreter, imports, simulating y, the store, Ray start or join,
  actor start and prior load, shut-down.
- **Per-draw overhead** of `uqc run` on Ray, worst row ({rows[worst]}): **{per_draw[worst] / per_draw[best]:.3f} × the best bare
  loop** (goal ≤ 1.05: {"met" if goal else "**not met**"}). In-process, on one core: {per_draw["inproc"] / per_draw["bare"]:.3f} × the
  1-process loop (the store's writes and the progress bar), {per_draw["inproc"] / per_draw[best]:.3f} × the best bare loop.
- Noise: the largest spread (max − min) / median of one cell over the {repeats} runs is {100 * noise:.0f} % (the machine is
  shared; the load average above is the other users' work); differences smaller than that are not resolved.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        _, _, campaign_file, part, parts, threads, out, *rest = sys.argv
        bare_part(campaign_file, int(part), int(parts), int(threads), out, int(rest[0]) if rest else None)
    else:
        print(section(quick="--quick" in sys.argv))
