"""`uqc run` against the best bare loop on the same cores (``python benchmarks/run.py --only cluster``).

One PnP-ULA campaign (1×32×32 Gaussian-mixture prior, inpainting; units of 16 chains) is run, in
one invocation, by

- the **bare loop**: the sampler's ``run`` over the units, each draw only hashed (no store, no
  Ray, no draw kept: keeping them all in memory cost the loop page faults that grew with the
  draws), in fresh processes with 1 torch thread and ``OMP_NUM_THREADS=1`` each (as Ray's workers):
  1 process, and ``W`` processes each taking every ``W``-th unit (``W`` = cores): the same
  sampler, batch and threads as the Ray workers. The ``W`` processes are the denominator;
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
to the bare loop's (a BLAKE2b digest per unit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
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


def unit_digest(blocks: Any) -> str:
    """BLAKE2b of a unit's draws fed draw by draw (each ``(chains, C, H, W)`` float32, C order): the bit-identity check
    of a bare loop that keeps no draw."""
    digest = hashlib.blake2b(digest_size=16)
    for block in blocks:
        digest.update(np.ascontiguousarray(block, dtype=np.float32))
    return digest.hexdigest()


def bare_part(campaign_file: str, part: int, parts: int, threads: int, out: str, max_units: int | None = None) -> None:
    """Run units ``part::parts`` of the campaign in this process with ``threads`` torch threads.

    Each draw is only hashed (:func:`unit_digest`), not kept: the loop is the sampler and nothing
    else, the floor any script doing this campaign has to pay. Saves ``{unit: digest}`` and the
    loop's seconds to ``out`` (JSON).
    """
    torch.set_num_threads(threads)
    from uqcampaign.kernels.rng import unit_generator
    from uqcampaign.pipeline.config import load_campaign
    from uqcampaign.pipeline.data import load_or_simulate
    from uqcampaign.pipeline.units import load_components, plan_units

    campaign = load_campaign(campaign_file)
    prior, operator, sampler = load_components(campaign)
    y, _ = load_or_simulate(campaign, prior, operator)
    digests = {}
    start = time.perf_counter()
    for unit in plan_units(campaign, y.shape[0])[part::parts][:max_units]:
        chains = campaign.block_chains(unit.block)
        generator = unit_generator(campaign.seed, unit.measurement, unit.block)
        draws = sampler.run(torch.as_tensor(y[unit.measurement]), operator, prior, campaign.noise.sigma, chains.stop - chains.start, campaign.draws, generator)
        digests[f"{unit.measurement}_{unit.block}"] = unit_digest(draw.x.numpy() for draw in draws)
    Path(out).write_text(json.dumps({"seconds": time.perf_counter() - start, "digests": digests}))


def watch(running: list[subprocess.Popen], cluster: Any = None, poll: float = 0.2) -> tuple[float, float]:
    """(wall s, CPU s) until every process of ``running`` exits.

    CPU = user + system seconds of those processes, of their descendants and, with ``cluster``
    (a :class:`~uqcampaign.cluster.nodes.RayStartCluster`), of the cluster's processes over that time,
    sampled every ``poll`` s per process (each process's own time, never its children's, so nothing
    is counted twice; a process's last ``poll`` s may be missed). On a shared machine CPU seconds
    barely move with the other users' load, unlike wall seconds.
    """
    start = time.perf_counter()
    roots = [psutil.Process(process.pid) for process in running]

    def own(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def sample() -> dict[tuple[int, float], float]:
        found: list[psutil.Process] = []
        for root in roots:
            with contextlib.suppress(psutil.Error):
                found += [root, *root.children(recursive=True)]
        if cluster is not None:
            found += cluster.processes()
        values = {}
        for process in found:
            with contextlib.suppress(psutil.Error):
                values[process.pid, process.create_time()] = own(process)
        return values

    base = sample() if cluster is not None else {}
    used: dict[tuple[int, float], float] = {}
    while any(process.poll() is None for process in running):
        for key, value in sample().items():
            used[key] = max(used.get(key, 0.0), value)
        time.sleep(poll)
    wall = time.perf_counter() - start
    if cluster is not None:
        for key, value in sample().items():
            used[key] = max(used.get(key, 0.0), value)
    return wall, sum(value - base.get(key, 0.0) for key, value in used.items())


def bare(campaign_file: Path, processes: int, threads: int, folder: Path) -> tuple[tuple[float, float], dict[str, str]]:
    """(wall s, CPU s) of ``processes`` fresh bare-loop processes run together, and the digest of every unit.

    Each process gets ``OMP_NUM_THREADS=threads``, as Ray gives its workers ``OMP_NUM_THREADS=1``.
    """
    outs = [folder / f"bare-{uuid.uuid4().hex[:6]}-{k}.json" for k in range(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    running = [
        subprocess.Popen([sys.executable, str(HERE), "--bare", str(campaign_file), str(k), str(processes), str(threads), str(out)], env=env)
        for k, out in enumerate(outs)
    ]
    seconds = watch(running)
    if any(process.returncode != 0 for process in running):
        raise RuntimeError(f"a bare loop process failed ({campaign_file})")
    digests = {key: value for out in outs for key, value in json.loads(out.read_text())["digests"].items()}
    for out in outs:
        out.unlink()
    return seconds, digests


# ----------------------------------------------------------------------------- uqc run


def uqc(campaign_file: Path, args: list[str], env: dict[str, str], cluster: Any = None) -> tuple[float, float]:
    """(wall s, CPU s, see :func:`watch`) of ``uqc run CAMPAIGN ARGS`` in a fresh process (its store removed first)."""
    spec = yaml.safe_load(campaign_file.read_text())
    subprocess.run(["rm", "-rf", str(campaign_file.parent / spec["store"])], check=True)
    command = [str(Path(sys.executable).with_name("uqc")), "run", str(campaign_file), "--no-progress", *args]
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        seconds = watch([process], cluster)
        if process.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {err.read().strip()[-2000:]}")
    return seconds


def samples(campaign_file: Path) -> dict[str, str]:
    """:func:`unit_digest` of every unit of the campaign's store (``samples``, read after the run, not timed)."""
    import zarr

    from uqcampaign.pipeline.config import load_campaign
    from uqcampaign.pipeline.units import plan_units

    campaign = load_campaign(campaign_file)
    stored = zarr.open_group(campaign.store_location, mode="r")["samples"]
    digests = {}
    for unit in plan_units(campaign, stored.shape[0]):
        block = stored[unit.measurement, campaign.block_chains(unit.block)]  # (chains, draws, C, H, W)
        digests[f"{unit.measurement}_{unit.block}"] = unit_digest(block[:, d] for d in range(block.shape[1]))
    return digests


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
            subprocess.run([sys.executable, str(HERE), "--bare", str(probe), "0", "1", "1", str(folder / "probe.json"), "1"], check=True)
        per_step = json.loads((folder / "probe.json").read_text())["seconds"] / (size.burn_in + size.draws_s * size.thin)
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
        runs: dict[str, list[dict[int, tuple[float, float]]]] = {name: [] for name in rows}  # per repeat: draws -> (wall, CPU)
        same = True
        reference: dict[str, str] | None = None

        def record(name: str, draws: int, measured: tuple[float, float], got: dict[str, str]) -> None:
            nonlocal same, reference
            runs[name][-1][draws] = measured
            if draws == draws_l:
                reference = got if reference is None else reference
                same = same and got == reference and len(got) == size.units
            print(f"[cluster] {name} draws={draws}: {measured[0]:.1f} s wall, {measured[1]:.1f} s CPU (load {load()})", file=sys.stderr, flush=True)

        def both(name: str, run: Any) -> None:
            """Sizes S and L of one configuration back to back (their order alternates), as a new run of ``name``."""
            runs[name].append({})
            for draws in ([size.draws_s, draws_l] if len(runs[name]) % 2 else [draws_l, size.draws_s]):
                record(name, draws, *run(files[draws]))

        def uqc_run(*args: str, extra: dict[str, str] | None = None, cluster: Any = None) -> Any:
            return lambda file: (uqc(file, list(args), {**env, **(extra or {})}, cluster), samples(file))

        for repeat in range(repeats):
            both("bare_w", lambda file: bare(file, workers, 1, folder))
            both("bare", lambda file: bare(file, 1, 1, folder))
            both("inproc", uqc_run("--in-process", extra={"OMP_NUM_THREADS": "1"}))
            both("local", uqc_run("--address", "local", "--workers", str(workers)))
            cluster = RayStartCluster(folder / f"rc{repeat}", token=token, cpus=workers, gpus=0, n_workers=0)
            try:
                cluster.start()
                both("gcs", uqc_run("--address", cluster.gcs, "--workers", str(workers), cluster=cluster))
                both("client", uqc_run("--address", cluster.client, "--workers", str(workers), cluster=cluster))
            finally:
                cluster.stop()
            both("bare_w", lambda file: bare(file, workers, 1, folder))  # again: the rows above sit between two
    load_after = load()

    span = {n: size.measurements * size.chains * n for n in (size.draws_s, draws_l)}
    delta = span[draws_l] - span[size.draws_s]

    def fit(run: dict[int, tuple[float, float]], k: int) -> tuple[float, float]:
        """(per chain-draw s, fixed s) of one run of S and L, wall (k = 0) or CPU (k = 1)."""
        per_draw = (run[draws_l][k] - run[size.draws_s][k]) / delta
        return per_draw, run[size.draws_s][k] - per_draw * span[size.draws_s]

    def median(name: str, k: int, part: int) -> float:
        return float(np.median([fit(run, k)[part] for run in runs[name]]))

    def ratios(name: str, k: int) -> list[float]:
        """Per-draw ratio to the best bare loop, repeat by repeat (the bare runs of the same repeat)."""
        per_repeat = max(1, len(runs[name]) // repeats)
        base = [float(np.median([fit(run, k)[0] for run in runs["bare_w"][2 * r : 2 * r + 2]])) for r in range(repeats)]
        return [fit(runs[name][r * per_repeat], k)[0] / base[r] for r in range(repeats)]

    best = "bare_w"
    match = {"bare": "bare", "bare_w": "bare_w", "inproc": "bare", "local": "bare_w", "gcs": "bare_w", "client": "bare_w"}
    lines = []
    for name, label in rows.items():
        mark = " (**best bare loop**)" if name == best else ""
        cells = []
        for k in (1, 0):  # CPU, then wall
            per_draw = median(name, k, 0)
            spread = ratios(name, k)
            cells += [
                f"{1e3 * per_draw:.3f}",
                f"**{per_draw / median(best, k, 0):.3f}**" + (f" ({min(spread):.2f}-{max(spread):.2f})" if repeats > 1 else ""),
                f"{per_draw / median(match[name], k, 0):.3f}",
                f"{median(name, k, 1):.1f}",
            ]
        lines.append(f"| {label}{mark} | " + " | ".join(cells) + " |")
    ray_rows = ("local", "gcs", "client")
    worst_cpu = max(ray_rows, key=lambda name: median(name, 1, 0))
    worst_wall = max(ray_rows, key=lambda name: median(name, 0, 0))
    cpu_ratio = median(worst_cpu, 1, 0) / median(best, 1, 0)
    wall_ratio = median(worst_wall, 0, 0) / median(best, 0, 0)
    walls = [run[d][0] for name in rows for run in runs[name] for d in run]
    note = " (`--quick`: tiny sizes, figures not meaningful)" if quick else ""
    steps_l = size.burn_in + draws_l * size.thin
    print(json.dumps({name: [{str(d): v for d, v in run.items()} for run in values] for name, values in runs.items()}), file=sys.stderr)
    return f"""## Cluster: `uqc run` against the best bare loop on the same cores{note}

`python benchmarks/run.py --only cluster` (`benchmarks/bench_cluster.py`). Campaign: PnP-ULA, 1×{size.side}×{size.side}
Gaussian-mixture prior (K = 4), inpainting, {size.measurements} measurements × {size.chains} chains in {size.units} units of
{size.block} chains; burn-in {size.burn_in}, thin {size.thin}; size S = {size.draws_s} draws per chain, size L = {draws_l}
({steps_l} ULA steps per chain); chunks of {size.block} chains × {size.chunk_draws} draws. {cores} cores; every worker and
bare process has 1 torch thread. Every row is fresh processes, timed from start to exit; {repeats} repeats, each running S and
L of a row back to back, the best bare loop before and after the others. Draws of every size-L run bit-identical to the bare
loop's: **{"yes" if same else "NO"}**. Load average (1/5/15 min) before: {load_before}; after: {load_after} (other users' work
on this shared machine).

A line through S and L splits each run: per chain-draw = (L − S) / {delta:,} chain-draws, fixed cost per command = S − per
chain-draw × {span[size.draws_s]:,} (interpreter, imports, simulating y, the store, Ray start or join, actor start and prior
load, shut-down). **CPU** = user + system seconds of every process of the run (with a joined cluster: its daemons and workers
too), sampled every 0.2 s; it hardly moves with the machine's load. **Wall** = what a user waits; on this machine it moves
with the other users' load. Medians over the repeats; in brackets the range of the repeat-by-repeat ratio (noise).

| run | CPU ms per chain-draw | **CPU ÷ best bare loop** | CPU ÷ same-shape bare | CPU fixed s | wall ms per chain-draw | **wall ÷ best bare loop** | wall ÷ same-shape bare | wall fixed s |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(lines)}

- **Per-draw overhead of `uqc run` on Ray** (goal ≤ 1.05 × the best bare loop): in CPU, worst row {rows[worst_cpu]}:
  **{cpu_ratio:.3f}** ({"met" if cpu_ratio <= 1.05 else "**not met**"}); in wall time, worst row {rows[worst_wall]}:
  **{wall_ratio:.3f}** ({"met" if wall_ratio <= 1.05 else "**not met**"}), to be read with the noise in brackets.
- In-process (one process, one core): {median("inproc", 1, 0) / median("bare", 1, 0):.3f} × the 1-process loop in CPU per draw
  (the store's writes, the progress bar).
- Wall times of single commands ranged {min(walls):.1f}-{max(walls):.1f} s.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        _, _, campaign_file, part, parts, threads, out, *rest = sys.argv
        bare_part(campaign_file, int(part), int(parts), int(threads), out, int(rest[0]) if rest else None)
    else:
        print(section(quick="--quick" in sys.argv))
