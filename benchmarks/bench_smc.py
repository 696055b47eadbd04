"""SMC samplers (``tds``, ``smc-anneal``) against the exact posterior: the sampler-choice rows, log-evidence, learned prior.

``python benchmarks/bench_smc.py [--quick]`` prints the Markdown section; ``benchmarks/run.py --only smc``
writes it into BENCHMARKS.md. :func:`choice_rows` is the measurement behind the sampler-choice table: for
each sampler spec and each exact problem it returns one row with the columns of
``bench_sampler_choice.py`` (network calls per returned draw, sliced-Wasserstein ratio to the floor,
exact posterior mass of the per-pixel 90% interval, seconds per draw), so the two tables merge.
Problems are :func:`uqcampaign.kernels.problems.random_problem` GMMs (σ = 0.05) and the two-mode
``multimodal_problem``, in float32 as campaigns run; 1024 draws per (sampler, problem), scored with
:func:`~uqcampaign.kernels.problems.score_samples` against 1024 exact draws.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from uqcampaign.kernels.problems import Problem, multimodal_problem, random_problem, score_samples
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.smc.sampler import pooled_log_evidence
from uqcampaign.kernels.threads import torch_threads

ROOT = Path(__file__).resolve().parent.parent
N_DRAWS = 1024


@dataclass(frozen=True)
class ProblemSpec:
    """A named exact problem: ``operator`` kind, ``seed``, ``components`` K and image ``side`` (``(1, side, side)``)."""

    operator: str
    seed: int
    components: int
    side: int

    @property
    def name(self) -> str:
        return f"{self.operator} {self.side * self.side}px K={self.components} seed {self.seed}"

    def build(self) -> Problem:
        if self.operator == "multimodal":
            return multimodal_problem(dtype=torch.float32)
        return random_problem(self.operator, "gmm", self.seed, (1, self.side, self.side), self.components, dtype=torch.float32)


PROBLEMS = (
    ProblemSpec("inpaint", 2, 3, 4),
    ProblemSpec("blur", 3, 5, 4),
    ProblemSpec("cs", 4, 4, 4),
    ProblemSpec("multimodal", 0, 2, 4),
    ProblemSpec("inpaint", 5, 5, 8),
    ProblemSpec("cs", 6, 3, 8),
)
SPECS = ({"kind": "tds"}, {"kind": "smc-anneal"})


def _settings(sampler) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampler.describe().items() if k != "kind") or "-"


def choice_rows(specs=SPECS, problems=PROBLEMS, n_draws: int = N_DRAWS, seed: int = 0) -> list[dict]:
    """One row per (spec, problem): ``sampler``, ``settings``, ``problem``, ``nfe_per_draw`` (network calls per returned
    draw: all calls of the unit over the draws it returns), ``sw_ratio``, ``mass``, ``seconds_per_draw``, and for SMC
    kinds ``log_evidence``, ``log_evidence_se`` (the runs pooled: :func:`pooled_log_evidence`), ``exact_log_evidence``,
    ``ess`` and ``resamples`` (means over runs)."""
    rows = []
    for problem_spec in problems:
        problem = problem_spec.build()
        for spec in specs:
            sampler = build_sampler(spec)
            start = time.perf_counter()
            draws = list(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, n_draws, 1, torch.Generator().manual_seed(seed)))
            seconds = time.perf_counter() - start
            score = score_samples(problem, draws[0].x.double())
            row = {
                "sampler": spec["kind"],
                "settings": _settings(sampler),
                "problem": problem_spec.name,
                "nfe_per_draw": sum(d.nfe for d in draws) / len(draws),
                "sw_ratio": score.ratio,
                "mass": score.mass,
                "seconds_per_draw": seconds / n_draws,
            }
            info = draws[-1].info or {}
            if "log_evidence" in info:
                estimate, se = pooled_log_evidence(info["log_evidence"])
                row.update(
                    log_evidence=estimate,
                    log_evidence_se=se,
                    exact_log_evidence=float(problem.posterior.log_evidence),
                    ess=float(info["ess"].mean()),
                    resamples=float(info["resamples"].float().mean()),
                )
            rows.append(row)
            print(f"[bench smc] {row}", file=sys.stderr, flush=True)
    return rows


def learned_rows(n_draws: int = 128) -> list[dict]:
    """TDS, DPS and ULA with the shipped ``priors/gmm8-diffusion`` and with the exact denoiser of the GMM it was
    trained on (``gmm8_prior``), on ``test_learned_priors``' inpainting problem (8×8, half the pixels, σ = 0.05)."""
    from uqcampaign.kernels.metrics import equal_tailed_interval, sliced_wasserstein
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.training.datasets import gmm8_prior

    exact = gmm8_prior()
    learned = build_prior({"kind": "diffusion", "path": "priors/gmm8-diffusion"}, ROOT)
    sigma = 0.05
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, (1, 8, 8))
    x_true = exact.sample(1, torch.Generator().manual_seed(11))[0]
    y = operator.A(x_true[None].float())[0] + sigma * torch.randn(operator.obs_shape, generator=torch.Generator().manual_seed(12))
    posterior = exact.posterior(operator, y.double(), sigma)
    reference = posterior.sample(n_draws, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(reference, posterior.sample(n_draws, torch.Generator().manual_seed(2)), 128)
    runs = (  # (spec, chains, draws): the settings of test_learned_priors (TDS: 8 × 32 particles, 250 steps, not the defaults)
        ({"kind": "tds", "runs": 8, "particles": 32, "steps": 250}, n_draws, 1),
        ({"kind": "dps", "zeta": 0.3, "steps": 100}, n_draws, 1),
        ({"kind": "ula", "burn_in": 1000, "thin": 100, "epsilon": 0.0025, "box": None}, 16, n_draws // 16),
    )
    rows = []
    for spec, chains, draws_per_chain in runs:
        for label, prior in (("exact denoiser", exact.to(dtype=torch.float32)), ("gmm8-diffusion", learned)):
            sampler = build_sampler(spec)
            start = time.perf_counter()
            draws = list(sampler.run(y.float(), operator, prior, sigma, chains, draws_per_chain, torch.Generator().manual_seed(5)))
            seconds = time.perf_counter() - start
            samples = torch.cat([d.x for d in draws]).double()
            lower, upper = equal_tailed_interval(samples, 0.9)
            row = {
                "sampler": spec["kind"],
                "settings": _settings(sampler),
                "prior": label,
                "nfe_per_draw": sum(d.nfe for d in draws) * chains / samples.shape[0],
                "sw_ratio": sliced_wasserstein(samples, reference, 128) / floor,
                "mass": float(posterior.interval_mass(lower, upper).mean()),
                "seconds_per_draw": seconds / samples.shape[0],
            }
            info = draws[-1].info or {}
            if "log_evidence" in info:
                estimate, se = pooled_log_evidence(info["log_evidence"])
                row["log_evidence"] = f"{estimate:.2f} ± {se:.2f} (exact {posterior.log_evidence:.2f})"
            rows.append(row)
            print(f"[bench smc] {row}", file=sys.stderr, flush=True)
    return rows


def _choice_table(rows: list[dict]) -> list[str]:
    lines = [
        "| sampler | problem | network calls / draw | SW ratio | 90% mass | s / draw | log p(y) − exact (± SE over runs) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        evidence = "-"
        if "log_evidence" in r:
            evidence = f"{r['log_evidence'] - r['exact_log_evidence']:+.3f} ± {r['log_evidence_se']:.3f}"
        lines.append(
            f"| {r['sampler']} | {r['problem']} | {r['nfe_per_draw']:.0f} | {r['sw_ratio']:.2f} | {r['mass']:.3f} | {r['seconds_per_draw'] * 1e3:.1f} ms | {evidence} |"
        )
    return lines


def section(quick: bool = False) -> str:
    """The Markdown section for BENCHMARKS.md (1 torch thread: the batches are small, see ``kernels.threads``)."""
    with torch_threads(1):
        return _section(quick)


def _section(quick: bool) -> str:
    specs = SPECS
    problems = PROBLEMS
    n_draws = N_DRAWS
    if quick:
        specs = tuple({**s, "runs": 2, "particles": 64, "steps": 20} for s in SPECS)
        problems, n_draws = PROBLEMS[:1], 64
    rows = choice_rows(specs, problems, n_draws)
    settings = {r["sampler"]: r["settings"] for r in rows}
    lines = [
        "## SMC samplers: `tds` and `smc-anneal` against the exact posterior\n",
        f"`python benchmarks/bench_smc.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: "
        f"exact GMM problems (σ = 0.05, float32), {n_draws} returned draws each; CPU, 1 torch thread; "
        "no GPU figures (no GPU in this session). Network calls / draw = all the unit's calls (runs × particles × steps) "
        "over the draws returned; for `tds` each call also takes one backward pass, `smc-anneal` none. SW ratio = "
        "sliced-Wasserstein distance to exact draws over the floor (two exact sets); 90% mass = exact posterior mass of the "
        "per-pixel 90% interval (0.90 is right); log p(y): the runs' pooled estimate (log of the mean of their p(y) "
        "estimates) minus the exact value, ± its standard error over runs.\n",
        *(f"- `{kind}`: {value}" for kind, value in settings.items()),
        "",
        *_choice_table(rows),
    ]
    if not quick:
        learned = learned_rows()
        lines += [
            "",
            "Learned prior: the shipped `priors/gmm8-diffusion` (trained on the known GMM `gmm8`) next to the exact denoiser "
            "of that GMM, inpainting half of the 8×8 pixels, σ = 0.05, 128 draws, against the exact posterior of the GMM, "
            "with the settings of `tests/kernels/test_learned_priors.py` (TDS: 8 runs × 32 particles, 250 steps, half of the "
            "pool returned: a CPU-sized run, far below the defaults, which would take ~8192 network calls with gradient "
            "per step here):\n",
            "| sampler | prior | network calls / draw | SW ratio | 90% mass | s / draw | log p(y) |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in learned:
            lines.append(
                f"| {r['sampler']} | {r['prior']} | {r['nfe_per_draw']:.0f} | {r['sw_ratio']:.2f} | {r['mass']:.3f} | "
                f"{r['seconds_per_draw'] * 1e3:.1f} ms | {r.get('log_evidence', '-')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
