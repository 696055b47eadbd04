"""Cost per effective sample: which sampler, for a given budget of network calls, on exact problems.

``python benchmarks/bench_sampler_choice.py [--quick]`` prints the Markdown section;
``benchmarks/run.py`` calls :func:`section`. Every row runs one sampler spec of
:data:`SAMPLER_SPECS` on one exact problem of :data:`PROBLEMS` (``kernels.problems.random_problem``:
Gaussian and GMM priors; inpainting, blur, compressed sensing; 4×4 and 16×16 pixels; σ = 0.05,
held-out seed 2, float64) with :data:`CHAINS` chains and a budget of :data:`BUDGET` network calls
per chain, burn-in included:

* Markov chains (a config with ``burn_in``): half the budget as burn-in, the other half as
  :data:`DRAWS` kept draws (``thin`` = the rest over ``DRAWS``), default starts (prior draws);
* samplers whose draws are independent runs (``dps``, ``latino``, SMC): ``budget // nfe_per_draw``
  draws per chain, at least 4 and at most :data:`DRAWS` (their error is bias, which more draws do
  not remove; LATINO's prox costs more than its network call on ``cs``); ``exact`` makes no
  network call and draws :data:`DRAWS`.

Figures per row: network calls per draw (steady state); network calls and seconds per bulk ESS
(total calls of all chains, and CPU seconds of the run, over the smallest bulk ESS over pixels, from
``uqcampaign.pipeline.diagnostics`` = ArviZ); R̂ max over pixels; the sliced-Wasserstein ratio to
the floor and the exact posterior mass of the 90% intervals of all kept draws
(``kernels.problems.score_samples``). Another sampler kind becomes rows by adding its spec to
:data:`SAMPLER_SPECS` (and, if its draws are neither a Markov chain nor independent runs, a plan
in :func:`plan`).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uqcampaign.kernels.problems import random_problem, score_samples
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.pipeline.diagnostics import ess_bulk, rhat

SEED = 2
CHAINS = 16
BUDGET = 10_000
DRAWS = 50
# Each a sampler spec as in a campaign file; every kind is one row per problem.
SAMPLER_SPECS: list[dict[str, Any]] = [
    {"kind": "exact"},
    {"kind": "ula"},
    {"kind": "skrock"},
    {"kind": "dps"},
    {"kind": "latino"},
]
# (prior kind, operator kind, image shape)
PROBLEMS: list[tuple[str, str, tuple[int, int, int]]] = [
    (prior, operator, shape) for shape in ((1, 4, 4), (1, 16, 16)) for prior in ("gaussian", "gmm") for operator in ("inpaint", "blur", "cs")
]


@dataclass(frozen=True)
class Row:
    prior: str
    operator: str
    pixels: int
    kind: str
    calls_per_draw: float  # steady state, per kept draw of the run (Markov chains: thin × calls per iteration)
    draws: int  # kept draws per chain
    calls: int  # network calls of all chains
    seconds: float  # CPU seconds of the run
    ess_min: float
    rhat_max: float
    sw_ratio: float
    mass: float

    @property
    def calls_per_ess(self) -> float:
        return self.calls / self.ess_min

    @property
    def seconds_per_ess(self) -> float:
        return self.seconds / self.ess_min


def plan(spec: dict[str, Any], budget: int) -> tuple[dict[str, Any], int]:
    """``(spec to run, draws per chain)`` spending ``budget`` network calls per chain."""
    sampler = build_sampler(spec)
    per_draw = sampler.nfe_per_draw()
    if per_draw == 0:  # exact: no network
        return spec, DRAWS
    if hasattr(sampler.config, "burn_in"):  # a Markov chain: half burn-in, half kept draws
        per_step = per_draw / sampler.config.thin
        steps = int(budget // per_step)
        draws = min(DRAWS, max(4, steps // 2))
        return {**spec, "burn_in": steps - (steps // 2 // draws) * draws, "thin": steps // 2 // draws}, draws
    return spec, max(4, min(DRAWS, int(budget // per_draw)))


def measure(spec: dict[str, Any], prior: str, operator: str, shape: tuple[int, int, int], budget: int = BUDGET, chains: int = CHAINS) -> Row:
    """Run one sampler spec on one problem within ``budget`` calls per chain and score it."""
    problem = random_problem(operator, prior, seed=SEED, img_shape=shape)
    run_spec, n_draws = plan(spec, budget)
    sampler = build_sampler(run_spec)
    start = time.process_time()  # CPU seconds of this process (1 torch thread): robust to a shared machine's load
    # seed 1: score_samples draws its exact reference from seed 0, which must not be the exact sampler's stream
    draws = list(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, chains, n_draws, torch.Generator().manual_seed(1)))
    seconds = time.process_time() - start
    xs = torch.stack([d.x for d in draws], 1)  # (chain, draw, C, H, W)
    block = xs.reshape(chains, n_draws, -1).permute(2, 0, 1).contiguous().numpy()  # (pixel, chain, draw)
    score = score_samples(problem, xs.reshape(-1, *shape))
    return Row(
        prior, operator, int(np.prod(shape)), spec["kind"], float(sampler.nfe_per_draw()), n_draws,
        chains * sum(d.nfe for d in draws), seconds, float(np.nanmin(ess_bulk(block))), float(np.nanmax(rhat(block))),
        score.ratio, score.mass,
    )


def measure_all(quick: bool = False) -> list[Row]:
    budget = 200 if quick else BUDGET
    problems = PROBLEMS[:2] if quick else PROBLEMS
    specs = [{"kind": "dps", "steps": 20} if s["kind"] == "dps" else s for s in SAMPLER_SPECS] if quick else SAMPLER_SPECS
    rows = []
    with torch_threads(1):
        for prior, operator, shape in problems:
            for spec in specs:
                rows.append(measure(spec, prior, operator, shape, budget))
                print(f"[bench] {prior} {operator} {shape} {spec['kind']}: {rows[-1].seconds:.1f} CPU s", file=sys.stderr, flush=True)
    return rows


def _fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"


def section(quick: bool = False) -> str:
    """The Markdown section for BENCHMARKS.md."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    rows = measure_all(quick)
    minutes = (time.perf_counter() - start) / 60
    budget = 200 if quick else BUDGET
    settings = "; ".join(
        f"`{s['kind']}` " + (", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in build_sampler(s).describe().items() if k != "kind") or "-")
        for s in SAMPLER_SPECS
    )
    lines = [
        "## Sampler choice: cost per effective sample\n",
        f"`python benchmarks/bench_sampler_choice.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: "
        f"exact problems of `kernels.problems.random_problem` (seed {SEED}, σ = 0.05, float64), {CHAINS} chains, a budget of "
        f"{budget:,} network calls per chain (burn-in included; Markov chains: half burn-in, then {DRAWS} kept draws; "
        f"independent-run samplers: budget ÷ calls per draw draws, 4 to {DRAWS}). Calls/draw: network (denoiser) calls per kept draw and chain "
        "in the steady state (Markov chains: thin × calls per iteration, 1 for ULA, `stages` for SK-ROCK; DPS: each call also "
        "a backward pass). Calls/ESS and s/ESS: network calls of all chains and CPU seconds of the run "
        "(1 torch thread; CPU time is robust to the load of a shared machine) over the smallest bulk ESS over pixels (`pipeline.diagnostics`, = ArviZ). SW/floor and "
        "mass90: all kept draws against the exact posterior (issue 3's band: ≤ 2 and 0.86–0.94). Settings: "
        f"{settings}. The table took {minutes:.1f} min (load average {load:.1f} on {os.cpu_count()} cores at the start: "
        "wall time is inflated on a shared machine, CPU seconds and network calls much less).\n",
        "Medians over the problems below:\n",
        "| sampler | calls/draw | calls/ESS | s/ESS | SW/floor | mass90 | problems with SW ≤ 2 and mass in band |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in dict.fromkeys(r.kind for r in rows):
        mine = [r for r in rows if r.kind == kind]
        good = sum(r.sw_ratio <= 2 and 0.86 <= r.mass <= 0.94 for r in mine)
        lines.append(
            f"| {kind} | {_fmt(statistics.median(r.calls_per_draw for r in mine))} | {_fmt(statistics.median(r.calls_per_ess for r in mine))} "
            f"| {_fmt(statistics.median(r.seconds_per_ess for r in mine))} | {statistics.median(r.sw_ratio for r in mine):.2f} "
            f"| {statistics.median(r.mass for r in mine):.3f} | {good}/{len(mine)} |"
        )
    lines += [
        "",
        "| prior | operator | pixels | sampler | calls/draw | draws/chain | calls/ESS | s/ESS | ESS min | R̂ max | SW/floor | mass90 |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.prior} | {r.operator} | {r.pixels} | {r.kind} | {_fmt(r.calls_per_draw)} | {r.draws} | {_fmt(r.calls_per_ess)} "
            f"| {_fmt(r.seconds_per_ess)} | {r.ess_min:.0f} | {r.rhat_max:.3f} | {r.sw_ratio:.2f} | {r.mass:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
