"""The sampler-choice table: every sampler kind on the same exact problems — cost per returned draw and per
effective sample, accuracy against the exact posterior, and SMC's log-evidence.

``python benchmarks/bench_sampler_choice.py [--quick]`` prints the Markdown section;
``benchmarks/run.py --only sampler_choice`` writes it into BENCHMARKS.md. Every row runs one sampler
spec of :data:`SAMPLER_SPECS` (each kind at its defaults) on one exact problem of :data:`PROBLEMS`
(``kernels.problems.random_problem``: Gaussian and GMM priors; inpainting, blur, compressed sensing;
4×4 and 16×16 pixels, seed 2; two 8×8 GMMs with K = 5 and 3 and the two-mode ``multimodal_problem``;
σ = 0.05, float64) with :data:`CHAINS` chains:

* Markov chains (``ula``, ``skrock``: a config with ``burn_in``): a budget of :data:`BUDGET` network
  calls per chain, half of it burn-in, the other half :data:`DRAWS` kept draws (``thin`` = the rest
  over ``DRAWS``), default starts (prior draws);
* independent runs (``dps``, ``latino``): ``BUDGET // calls per draw`` draws per chain, at least 4 and
  at most :data:`DRAWS` (their error is bias, which more draws do not remove); ``exact`` makes no
  network call and draws ``DRAWS``;
* SMC (``tds``, ``smc-anneal``: one unit of ``runs × particles``): its defaults, returning
  ``POOL_FRACTION`` (1/8) of the pool, the most its measured accuracy allows (``CHAINS × 64`` draws of
  8 × 1024 particles); its cost is fixed by ``runs × particles × steps``, not by a budget.

Figures per row: network calls per returned draw (all calls of the run, burn-in included, over the draws
returned); CPU seconds per returned draw (1 torch thread); calls and CPU seconds per bulk ESS (the smallest
bulk ESS over pixels, ``uqcampaign.pipeline.diagnostics`` = ArviZ) and R̂ max, where the draws are chains
(Markov chains and independent runs; not for SMC, whose draws are resampled from one pool and share
ancestors); the sliced-Wasserstein ratio to the floor and the exact posterior mass of the 90% intervals of
all draws (``kernels.problems.score_samples``); for SMC, its pooled log-evidence minus the exact log p(y) ± its
standard error over runs (``smc.sampler.pooled_log_evidence``). A new sampler kind becomes rows by adding
its spec to :data:`SAMPLER_SPECS` (and, if its draws are none of the three kinds above, a plan in :func:`plan`).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uqcampaign.kernels.problems import Problem, multimodal_problem, random_problem, score_samples
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.smc.sampler import POOL_FRACTION, pooled_log_evidence
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.pipeline.diagnostics import ess_bulk, rhat

SEED = 2
CHAINS = 16
BUDGET = 10_000
DRAWS = 50
# Each a sampler spec as in a campaign file (the kind's defaults); every kind is one row per problem.
SAMPLER_SPECS: list[dict[str, Any]] = [
    {"kind": "exact"},
    {"kind": "ula"},
    {"kind": "skrock"},
    {"kind": "dps"},
    {"kind": "latino"},
    {"kind": "tds"},
    {"kind": "smc-anneal"},
]


@dataclass(frozen=True)
class ProblemSpec:
    """An exact problem: ``prior`` kind, ``operator`` kind (``multimodal``: :func:`multimodal_problem`), image
    ``side`` (``(1, side, side)``), ``seed`` and GMM ``components`` (None: ``random_problem``'s default)."""

    prior: str
    operator: str
    side: int
    seed: int = SEED
    components: int | None = None

    @property
    def pixels(self) -> int:
        return self.side * self.side

    def build(self) -> Problem:
        if self.operator == "multimodal":
            return multimodal_problem()
        extra = {} if self.components is None else {"components": self.components}
        return random_problem(self.operator, self.prior, seed=self.seed, img_shape=(1, self.side, self.side), **extra)

    @property
    def label(self) -> str:
        extra = "" if self.components is None else f" K={self.components} seed {self.seed}"
        return f"{self.prior} {self.operator}{extra}"


PROBLEMS: list[ProblemSpec] = [
    *(ProblemSpec(prior, operator, side) for side in (4, 16) for prior in ("gaussian", "gmm") for operator in ("inpaint", "blur", "cs")),
    ProblemSpec("gmm", "multimodal", 4),
    ProblemSpec("gmm", "inpaint", 8, seed=5, components=5),
    ProblemSpec("gmm", "cs", 8, seed=6, components=3),
]


@dataclass(frozen=True)
class Row:
    problem: str
    pixels: int
    kind: str
    draws: int  # returned draws per chain
    calls: int  # network calls of the whole run (all chains, burn-in included)
    seconds: float  # CPU seconds of the run
    ess_min: float  # NaN where the draws are not chains (SMC)
    rhat_max: float
    sw_ratio: float
    mass: float
    log_evidence_error: float = math.nan  # SMC: pooled log p̂(y) − exact log p(y)
    log_evidence_se: float = math.nan

    @property
    def returned(self) -> int:
        return CHAINS * self.draws

    @property
    def calls_per_draw(self) -> float:
        return self.calls / self.returned

    @property
    def seconds_per_draw(self) -> float:
        return self.seconds / self.returned

    @property
    def calls_per_ess(self) -> float:
        return self.calls / self.ess_min

    @property
    def seconds_per_ess(self) -> float:
        return self.seconds / self.ess_min


def is_pool(spec: dict[str, Any]) -> bool:
    """True for SMC kinds: their draws are resampled from one pool of particles, not chains."""
    return hasattr(build_sampler(spec).config, "particles")


def plan(spec: dict[str, Any], budget: int) -> tuple[dict[str, Any], int]:
    """``(spec to run, draws per chain)`` (see the module docstring)."""
    sampler = build_sampler(spec)
    per_draw = sampler.nfe_per_draw()
    if is_pool(spec):  # SMC: 1/8 of one unit's runs × particles
        config = sampler.config
        return spec, max(1, int(config.runs * config.particles * POOL_FRACTION) // CHAINS)
    if per_draw == 0:  # exact: no network
        return spec, DRAWS
    if hasattr(sampler.config, "burn_in"):  # a Markov chain: half burn-in, half kept draws
        per_step = per_draw / sampler.config.thin
        steps = int(budget // per_step)
        draws = min(DRAWS, max(4, steps // 2))
        return {**spec, "burn_in": steps - (steps // 2 // draws) * draws, "thin": steps // 2 // draws}, draws
    return spec, max(4, min(DRAWS, int(budget // per_draw)))


def measure(spec: dict[str, Any], problem_spec: ProblemSpec, budget: int = BUDGET) -> Row:
    """Run one sampler spec on one problem (see :func:`plan`) and score it."""
    problem = problem_spec.build()
    run_spec, n_draws = plan(spec, budget)
    sampler = build_sampler(run_spec)
    start = time.process_time()  # CPU seconds of this process (1 torch thread): robust to a shared machine's load
    # seed 1: score_samples draws its exact reference from seed 0, which must not be the exact sampler's stream
    draws = list(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, CHAINS, n_draws, torch.Generator().manual_seed(1)))
    seconds = time.process_time() - start
    xs = torch.stack([d.x for d in draws], 1)  # (chain, draw, C, H, W)
    score = score_samples(problem, xs.reshape(-1, *problem.operator.img_shape).double())
    ess = rmax = math.nan
    if not is_pool(spec):
        block = xs.reshape(CHAINS, n_draws, -1).permute(2, 0, 1).contiguous().double().numpy()  # (pixel, chain, draw)
        ess, rmax = float(np.nanmin(ess_bulk(block))), float(np.nanmax(rhat(block)))
    extra = {}
    info = draws[-1].info or {}
    if "log_evidence" in info:
        estimate, se = pooled_log_evidence(info["log_evidence"])
        extra = {"log_evidence_error": estimate - float(problem.posterior.log_evidence), "log_evidence_se": se}
    calls = CHAINS * sum(d.nfe for d in draws)
    return Row(problem_spec.label, problem_spec.pixels, spec["kind"], n_draws, calls, seconds, ess, rmax, score.ratio, score.mass, **extra)


def quick_specs() -> list[dict[str, Any]]:
    """Tiny settings for ``--quick`` (a smoke run)."""
    small = {"dps": {"steps": 20}, "tds": {"runs": 2, "particles": 64, "steps": 20}, "smc-anneal": {"runs": 2, "particles": 64, "steps": 20}}
    return [{**s, **small.get(s["kind"], {})} for s in SAMPLER_SPECS]


def measure_all(quick: bool = False) -> list[Row]:
    budget = 200 if quick else BUDGET
    problems = PROBLEMS[:1] + PROBLEMS[12:13] if quick else PROBLEMS
    specs = quick_specs() if quick else SAMPLER_SPECS
    rows = []
    with torch_threads(1):
        for problem_spec in problems:
            for spec in specs:
                rows.append(measure(spec, problem_spec, budget))
                print(f"[bench] {problem_spec.label} {problem_spec.pixels}px {spec['kind']}: {rows[-1].seconds:.1f} CPU s", file=sys.stderr, flush=True)
    return rows


def _fmt(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"


def _evidence(row: Row) -> str:
    return "—" if not math.isfinite(row.log_evidence_error) else f"{row.log_evidence_error:+.3f} ± {row.log_evidence_se:.3f}"


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def section(quick: bool = False) -> str:
    """The Markdown section for BENCHMARKS.md."""
    load = os.getloadavg()
    start = time.perf_counter()
    rows = measure_all(quick)
    minutes = (time.perf_counter() - start) / 60
    budget = 200 if quick else BUDGET
    specs = quick_specs() if quick else SAMPLER_SPECS
    settings = "; ".join(
        f"`{s['kind']}` " + (", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in build_sampler(s).describe().items() if k != "kind") or "-")
        for s in specs
    )
    lines = [
        "## Sampler choice: cost per draw and per effective sample, accuracy, log-evidence\n",
        f"`python benchmarks/bench_sampler_choice.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: every sampler "
        f"kind at its defaults on the same exact problems (`kernels.problems.random_problem`, seed {SEED}: Gaussian and GMM priors, "
        "inpainting / blur / compressed sensing, 16 and 256 pixels; two 64-pixel GMMs with K = 5 and 3; the two-mode `multimodal_problem`; "
        f"σ = 0.05, float64), {CHAINS} chains. Markov chains (`ula`, `skrock`): {budget:,} network calls per chain, half burn-in, then "
        f"{DRAWS} kept draws; independent runs (`dps`, `latino`): {budget:,} ÷ calls per draw draws per chain, 4 to {DRAWS}; SMC "
        f"(`tds`, `smc-anneal`): one unit returning 1/8 of its runs × particles ({CHAINS} × {plan(specs[-1], budget)[1]} draws), "
        "its cost fixed by runs × particles × steps. Calls/draw: all network calls of the run (burn-in included) over the draws "
        "returned (`dps`, `tds`: each call also a backward pass). s/draw: CPU seconds (1 torch thread: robust to a shared machine's "
        "load) over the draws returned. Calls/ESS and s/ESS: the same over the smallest bulk ESS over pixels (`pipeline.diagnostics`, "
        "= ArviZ), where the draws are chains (— for SMC: its draws are resampled from one pool and share ancestors; R̂ likewise). "
        "SW/floor and mass90: all draws against the exact posterior (the exact-posterior tests' band: ≤ 2 and 0.86–0.94). "
        "log p(y): SMC's pooled estimate (log of the runs' mean p(y)) minus the exact value, ± its standard error over runs. "
        f"Settings: {settings}. The table took {minutes:.1f} min; load average {load[0]:.1f} (5 min: {load[1]:.1f}) on "
        f"{os.cpu_count()} cores at the start (wall time is inflated on a shared machine, CPU seconds and network calls much less).\n",
        "Medians over the problems below:\n",
        "| sampler | calls/draw | s/draw | calls/ESS | s/ESS | SW/floor | mass90 | problems with SW ≤ 2 and mass in band |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in dict.fromkeys(r.kind for r in rows):
        mine = [r for r in rows if r.kind == kind]
        good = sum(r.sw_ratio <= 2 and 0.86 <= r.mass <= 0.94 for r in mine)
        lines.append(
            f"| {kind} | {_fmt(_median([r.calls_per_draw for r in mine]))} | {_fmt(_median([r.seconds_per_draw for r in mine]))} "
            f"| {_fmt(_median([r.calls_per_ess for r in mine]))} | {_fmt(_median([r.seconds_per_ess for r in mine]))} "
            f"| {_median([r.sw_ratio for r in mine]):.2f} | {_median([r.mass for r in mine]):.3f} | {good}/{len(mine)} |"
        )
    lines += [
        "",
        "| problem | pixels | sampler | draws/chain | calls/draw | s/draw | calls/ESS | s/ESS | ESS min | R̂ max | SW/floor | mass90 | log p(y) − exact |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.problem} | {r.pixels} | {r.kind} | {r.draws} | {_fmt(r.calls_per_draw)} | {_fmt(r.seconds_per_draw)} | {_fmt(r.calls_per_ess)} "
            f"| {_fmt(r.seconds_per_ess)} | {_fmt(r.ess_min)} | {_fmt(r.rhat_max, 4)} | {r.sw_ratio:.2f} | {r.mass:.3f} | {_evidence(r)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
