"""How the digits examples' LATINO settings were chosen: a sweep of δ and the timestep ladder on validation digits.

``python benchmarks/sweep_latino_digits.py [--prior priors/digits16-lcm] [--grid '[[0.01, 999, 124], ...]']``
prints one line per (problem, δ, t_max, t_min): PSNR of the posterior mean, pixel coverage of the
90% equal-tailed interval, and its mean width, averaged over 8 validation digits (held-out digits
150..157 of the test split, i.e. scikit-learn digits 1650..1657: never seen in training and not the
first digits that ``bench_learned.py`` reports), 16 chains × 4 draws each, noise seed 1.
Operators and σ are read from ``examples/digits-*-latino.yaml``. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_learned import ROOT, example_campaign  # this folder is on sys.path when a script here runs

from uqcampaign.kernels.metrics import equal_tailed_interval, interval_coverage, psnr
from uqcampaign.kernels.operators import build_operator
from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.kernels.training.datasets import digits16

VALIDATION = slice(150, 158)
DEFAULT_GRID = [[0.1, 999, 124], [0.03, 999, 124], [0.01, 999, 124], [0.003, 999, 124], [0.03, 999, 50], [0.01, 999, 50]]


def sweep(prior_path: str, grid: list[list[float]], problems: list[str], n_chains: int = 16, n_draws: int = 4) -> list[dict]:
    """One result dict per (problem, δ, t_max, t_min): ``psnr``, ``coverage``, ``width`` means over the validation digits."""
    prior = build_prior({"kind": "latent-consistency", "path": prior_path, "prompt": "a handwritten digit"}, ROOT)
    prior = prior.to(dtype=torch.float32)
    images, _ = digits16("test")
    x = images[VALIDATION]  # (8, 1, 16, 16)
    results = []
    for name in problems:
        campaign = example_campaign(name)
        sigma = float(campaign["noise"]["sigma"])
        operator = build_operator(campaign["operator"], prior.img_shape, ROOT / "examples").to(dtype=torch.float32)
        clean = operator.A(x)
        y = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
        for delta, t_max, t_min in grid:
            sampler = build_sampler({"kind": "latino", "steps": 8, "delta": delta, "t_max": int(t_max), "t_min": int(t_min)})
            scores = []
            for m in range(x.shape[0]):
                with torch.no_grad():
                    draws = sampler.run(y[m], operator, prior, sigma, n_chains, n_draws, torch.Generator().manual_seed(m))
                    samples = torch.cat([d.x for d in draws])  # (n_draws · n_chains, 1, 16, 16)
                lower, upper = equal_tailed_interval(samples, 0.9)
                scores.append([float(psnr(samples.mean(0, keepdim=True), x[m : m + 1])), interval_coverage(samples, x[m], 0.9),
                               float((upper - lower).mean())])
            psnr_m, coverage, width = torch.tensor(scores).mean(0).tolist()
            results.append({"problem": name, "delta": delta, "t_max": int(t_max), "t_min": int(t_min),
                            "psnr": psnr_m, "coverage": coverage, "width": width})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="priors/digits16-lcm", help="latent-consistency folder, relative to the repo")
    parser.add_argument("--grid", default=json.dumps(DEFAULT_GRID), help="JSON list of [delta, t_max, t_min]")
    parser.add_argument("--problems", default="inpaint,deblur,superres")
    args = parser.parse_args(argv)
    with torch_threads(1):
        for r in sweep(args.prior, json.loads(args.grid), args.problems.split(",")):
            print(f"{args.prior} {r['problem']:8s} delta={r['delta']:<6g} t={r['t_max']}..{r['t_min']}: "
                  f"psnr {r['psnr']:.2f}  coverage {r['coverage']:.3f}  width {r['width']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
