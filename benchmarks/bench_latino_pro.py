"""LATINO-PRO: the estimated condition against the exact marginal-likelihood maximiser, and prompt estimation on digits.

``python benchmarks/bench_latino_pro.py [--quick] [--only exact|digits]`` prints the Markdown section;
``benchmarks/run.py`` calls :func:`section`.

Exact part: conditional-GMM problems from
:func:`~uqcampaign.kernels.problems.random_conditional_problem` (seeds 0..N−1; operators cycling
inpaint, blur, cs, superres, denoise, mri; 16 / 32 / 64 pixels; K = 3 + seed mod 3; k = 2 + (seed div 3)
mod 3; C the ball of radius 2 around c₀ = 0). c* = argmax over C of the exact log p(y | c) by scipy
(6 starts, :meth:`ConditionalProblem.maximise`). Five starts per problem: the centre c₀, two at a
quarter of the radius ("near"), two uniform in C ("anywhere"). Three estimators with the default
schedule (15 iterations of 4 steps): latino-pro with the exact gradient and with the authors'
surrogate (256 chains each), and the reference SAPG fed 256 i.i.d. exact posterior draws per
iteration (:func:`~uqcampaign.kernels.samplers.latino_pro.sapg_reference`: the same update; what SAPG
gives when the sampler is exact). A run "reaches c*" when |ĉ − c*| <= 0.25 and
log p(y | c*) − log p(y | ĉ) <= 0.01 nats (the tolerances of tests/kernels/test_latino_pro.py). From
the centre start the 1024 final draws (256 chains × 4) are scored against the exact posterior at
c* (sliced-Wasserstein ratio to the floor, mass of the 90% interval) next to ``latino`` given c*.

Digits part: the shipped ``priors/digits16-lcm`` on the three ``examples/digits-*-latino.yaml``
problems (operator, σ, δ and seed from those files), the first held-out digits
(``held_out_measurements(operator, σ, n, seed=0)``). The right prompt is "a handwritten digit
<label>"; the deliberately wrong one names label + 5 (mod 10). Rows: latino with the right prompt,
latino with the wrong prompt (= before SAPG), and latino-pro started from the wrong prompt with the
authors' schedule (15 SAPG iterations of 4 steps on 999 … 249, a final 8-step run on 999 … 124,
surrogate gradient, γ₀ = 0.08, ball of radius 15 per token, the first 4 tokens, BOS + "a
handwritten digit", frozen as the authors freeze "a photo of"); the latino-pro settings were chosen
on validation digits 150..157 (radius 15 vs 3, γ₀ 0.08 vs 0.02: 24.0 / 24.3 / 23.1 / 23.1 dB for
inpainting against 22.6 dB with the wrong prompt and 24.2 dB with the right one). Per digit: PSNR and
SSIM of the posterior mean, pixel coverage of the 90% interval of the draws; "nearest" = fraction of
digits whose estimated embedding is nearer (mean per-token distance) to the right prompt's embedding
than to any other class prompt. Seconds per draw: wall time of ``sampler.run`` divided by
draws × chains (chain-draws), CPU, float32, 1 torch thread; nfe/draw = network calls per chain-draw
averaged over the run's draws (latino-pro: (60 + 8 · draws) / draws).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from bench_learned import (  # this folder is on sys.path when a script here runs
    EXAMPLES,
    ROOT,
    example_campaign,
)
from uqcampaign.kernels.metrics import interval_coverage, psnr, ssim
from uqcampaign.kernels.operators import build_operator
from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.problems import random_conditional_problem, score_samples
from uqcampaign.kernels.rng import unit_generator
from uqcampaign.kernels.samplers.latino_pro import LatinoProConfig, sapg_reference
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.kernels.training.datasets import held_out_measurements
from uqcampaign.kernels.training.latent import prompt_for

OPERATORS = ("inpaint", "blur", "cs", "superres", "denoise", "mri")
SHAPES = ((1, 4, 4), (1, 4, 8), (1, 8, 8))
DIST_TOL, GAP_TOL = 0.25, 0.01
LEVEL = 0.9
AUTHORS = {"t_max": None, "t_min": None, "gradient": "surrogate", "gamma": 0.08, "radius": 15.0, "freeze_tokens": 4}


def exact_problem(seed: int):
    """The ``seed``-th problem of the sweep."""
    return random_conditional_problem(OPERATORS[seed % 6], seed, SHAPES[seed % 3], 3 + seed % 3, 2 + (seed // 3) % 3)


def starts(problem, seed: int) -> list[tuple[str, torch.Tensor]]:
    """(label, c₀): the centre, two at a quarter radius, two uniform in the ball."""
    k = problem.logit_weights.shape[1]
    rng = np.random.default_rng(100 + seed)
    out = [("centre", torch.zeros(k, dtype=torch.float64))]
    for label, scale in (("near", 0.25), ("near", 0.25), ("anywhere", None), ("anywhere", None)):
        d = rng.normal(size=k)
        r = problem.radius * (0.25 if scale else rng.uniform() ** (1 / k))
        out.append((label, torch.tensor(d / np.linalg.norm(d) * r)))
    return out


def exact_rows(n_problems: int, n_chains: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per (problem, start, estimator) and one scoring row per problem."""
    rows, scores = [], []
    for seed in range(n_problems):
        problem = exact_problem(seed)
        base = problem.problem
        best, best_value = problem.maximise()
        for i, (label, start) in enumerate(starts(problem, seed)):
            for estimator in ("exact", "surrogate", "reference"):
                t0 = time.perf_counter()
                if estimator == "reference":
                    config = LatinoProConfig(radius=problem.radius)
                    c = sapg_reference(base.prior, base.operator, base.y, base.sigma, config, start, n_chains, torch.Generator().manual_seed(i))[-1]
                    draws = None
                else:
                    sampler = build_sampler({"kind": "latino-pro", "radius": problem.radius, "gradient": estimator})
                    n_draws = 4 if (label == "centre" and estimator == "exact") else 1
                    draws = list(sampler.run(base.y, base.operator, base.prior, base.sigma, n_chains, n_draws,
                                             torch.Generator().manual_seed(i), condition=start))
                    c = draws[-1].info["condition"]
                seconds = time.perf_counter() - t0
                distance, gap = float((c - best).norm()), best_value - float(problem.log_evidence(c))
                rows.append({"seed": seed, "start": label, "estimator": estimator, "distance": distance, "gap": gap,
                             "reached": distance <= DIST_TOL and gap <= GAP_TOL, "seconds": seconds})
                if draws is not None and len(draws) == 4:
                    at_best = problem.at(best)
                    pro = score_samples(at_best, torch.cat([d.x for d in draws]))
                    latino = build_sampler({"kind": "latino"})
                    given = torch.cat([d.x for d in latino.run(base.y, base.operator, at_best.prior, base.sigma, n_chains, 4,
                                                               torch.Generator().manual_seed(9))])
                    ref = score_samples(at_best, given)
                    scores.append({"seed": seed, "pro_ratio": pro.ratio, "latino_ratio": ref.ratio, "pro_mass": pro.mass,
                                   "latino_mass": ref.mass})
    return rows, scores


def _digit_run(sampler, y, operator, prior, sigma, n_chains, n_draws, generator):
    start = time.perf_counter()
    draws = list(sampler.run(y, operator, prior, sigma, n_chains, n_draws, generator))
    return draws, time.perf_counter() - start


def digit_rows(n_digits: int, n_chains: int, n_draws: int) -> list[dict[str, Any]]:
    """Per example problem and method: means over digits of PSNR/SSIM/coverage, nfe/draw, s/draw, nearest."""
    prior_spec = example_campaign(EXAMPLES[0])["prior"]
    priors = {k: build_prior({**prior_spec, "prompt": prompt_for(k)}, ROOT / "examples").to(dtype=torch.float32) for k in range(10)}
    embeddings = torch.cat([priors[k].condition for k in range(10)])  # (10, L, D)
    rows = []
    for name in EXAMPLES:
        campaign = example_campaign(name)
        sigma = float(campaign["noise"]["sigma"])
        operator = build_operator(campaign["operator"], priors[0].img_shape, ROOT / "examples").to(dtype=torch.float32)
        latino = build_sampler(dict(campaign["sampler"]))
        pro = build_sampler({"kind": "latino-pro", "delta": campaign["sampler"]["delta"], **AUTHORS})
        x, y, labels = held_out_measurements(operator, sigma, n_digits, seed=0)
        x, y = x.to(torch.float32), y.to(torch.float32)
        for method in ("latino, right prompt", "latino, wrong prompt", "latino-pro from the wrong prompt"):
            psnrs, ssims, covs, nearest, seconds, nfe = [], [], [], [], 0.0, 0
            for m in range(n_digits):
                label = int(labels[m])
                prior = priors[label] if method.endswith("right prompt") else priors[(label + 5) % 10]
                sampler = pro if method.startswith("latino-pro") else latino
                draws, took = _digit_run(sampler, y[m], operator, prior, sigma, n_chains, n_draws, unit_generator(int(campaign["seed"]), m, 0))
                seconds += took
                nfe += sum(d.nfe for d in draws)
                samples = torch.cat([d.x for d in draws])
                mean = samples.mean(0, keepdim=True)
                psnrs.append(float(psnr(mean, x[m : m + 1])))
                ssims.append(float(ssim(mean, x[m : m + 1])))
                covs.append(interval_coverage(samples, x[m], LEVEL))
                if draws[-1].info is not None:
                    distances = (draws[-1].info["condition"] - embeddings).norm(dim=-1).mean(-1)  # (10,)
                    nearest.append(float(int(distances.argmin()) == label))
            rows.append({"problem": name, "method": method, "psnr": statistics.mean(psnrs), "ssim": statistics.mean(ssims),
                         "coverage": statistics.mean(covs), "nearest": statistics.mean(nearest) if nearest else None,
                         "nfe": nfe / (n_digits * n_draws), "s_per_draw": seconds / (n_digits * n_draws * n_chains)})
    return rows


def _exact_lines(rows: list[dict[str, Any]], scores: list[dict[str, Any]], n_problems: int, n_chains: int) -> list[str]:
    lines = [
        f"Exact conditional-GMM problems ({n_problems} problems × 5 starts, {n_chains} chains; a run reaches c* when "
        f"|ĉ − c*| <= {DIST_TOL} and log p(y|c*) − log p(y|ĉ) <= {GAP_TOL} nats; C = ball of radius 2):\n",
        "| estimator | starts | runs | reach c* | gap <= 0.01 nats | median \\|ĉ − c*\\| | median gap (nats) | worst gap (nats) | s / run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"exact": "latino-pro, exact ∇_c log p(x|c)", "surrogate": "latino-pro, authors' surrogate",
             "reference": "reference SAPG, exact posterior draws"}
    for estimator in ("exact", "surrogate", "reference"):
        for label in ("centre", "near", "anywhere"):
            group = [r for r in rows if r["estimator"] == estimator and r["start"] == label]
            if not group:
                continue
            lines.append(
                f"| {names[estimator]} | {label} | {len(group)} | {sum(r['reached'] for r in group) / len(group):.0%} | "
                f"{sum(r['gap'] <= GAP_TOL for r in group) / len(group):.0%} | "
                f"{statistics.median(r['distance'] for r in group):.3f} | {statistics.median(r['gap'] for r in group):.4f} | "
                f"{max(r['gap'] for r in group):.3f} | {statistics.mean(r['seconds'] for r in group):.2f} |"
            )
    missed = sorted({(r["seed"], r["start"]) for r in rows if r["estimator"] == "exact" and not r["reached"]})
    far_below = sorted({(r["seed"], r["start"]) for r in rows if r["estimator"] == "exact" and r["gap"] > GAP_TOL})
    ref_ok = {(r["seed"], r["start"]) for r in rows if r["estimator"] == "reference" and r["reached"]}
    ties = len(missed) - len(far_below)
    rescued = sum(1 for key in missed if key in ref_ok)
    lines += [
        "",
        f"latino-pro (exact) misses c* in {len(missed)} runs: "
        + (", ".join(f"problem {s} ({lab})" for s, lab in missed) or "none")
        + f"; {len(far_below)} of them end more than {GAP_TOL} nats below log p(y|c*)"
        + (f" (the other {ties} are near-ties: points of C about as likely as c* but farther than the tolerance)" if ties else "")
        + f". The reference SAPG (the same update fed exact posterior draws) reaches c* in {rescued} of those runs from the "
        "same starts: there the cause is LATINO, whose draws over-weight the mixture component the current c favours, so "
        "the Fisher-identity gradient is biased toward the current c (spurious fixed points); in the other "
        f"{len(missed) - rescued} the reference misses too (the 15-iteration schedule stops short, or the maximum is flat).\n",
        f"Final draws from the centre start ({n_chains} chains × 4) against the exact posterior at c*, medians over the "
        f"{len(scores)} problems: sliced-Wasserstein ratio {statistics.median(s['pro_ratio'] for s in scores):.2f} "
        f"(latino given c*: {statistics.median(s['latino_ratio'] for s in scores):.2f}), 90% interval mass "
        f"{statistics.median(s['pro_mass'] for s in scores):.3f} ({statistics.median(s['latino_mass'] for s in scores):.3f}); "
        f"latino-pro no worse (ratio within 10%, mass within 0.03) on "
        f"{sum(s['pro_ratio'] <= 1.1 * s['latino_ratio'] and s['pro_mass'] >= s['latino_mass'] - 0.03 for s in scores)} "
        f"of {len(scores)}.\n",
    ]
    return lines


def _digit_lines(rows: list[dict[str, Any]], n_digits: int, n_chains: int, n_draws: int) -> list[str]:
    lines = [
        f"Digits (`priors/digits16-lcm`, first {n_digits} held-out digits, {n_chains} chains × {n_draws} draws per digit; "
        f"CPU float32, 1 torch thread, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores when the table was written "
        "(a shared machine: seconds are upper bounds); no GPU in this session, so no GPU figures):\n",
        "| problem | method | nfe/draw | PSNR mean | SSIM mean | 90% coverage | nearest prompt right | s / chain-draw |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        nearest = "—" if r["nearest"] is None else f"{r['nearest']:.0%}"
        lines.append(f"| {r['problem']} | {r['method']} | {r['nfe']:.0f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['coverage']:.3f} | "
                     f"{nearest} | {r['s_per_draw']:.3f} |")
    return lines


def section(quick: bool = False, only: tuple[str, ...] = ("exact", "digits")) -> str:
    """The Markdown section for BENCHMARKS.md."""
    n_problems, exact_chains = (3, 64) if quick else (24, 256)
    n_digits, n_chains, n_draws = (1, 4, 2) if quick else (8, 16, 4)
    lines = [
        "## LATINO-PRO (`benchmarks/bench_latino_pro.py`)\n",
        f"`python benchmarks/bench_latino_pro.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: the "
        "condition estimated by latino-pro against the exact maximiser of log p(y | c) on conditional-GMM problems, and "
        "prompt estimation with the latent-consistency prior on held-out digits (the script's docstring gives every setting).\n",
    ]
    with torch_threads(1):
        if "exact" in only:
            rows, scores = exact_rows(n_problems, exact_chains)
            lines += _exact_lines(rows, scores, n_problems, exact_chains)
        if "digits" in only:
            lines += _digit_lines(digit_rows(n_digits, n_chains, n_draws), n_digits, n_chains, n_draws)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parts = tuple(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else ("exact", "digits")
    print(section(quick="--quick" in sys.argv, only=parts))
