"""Sampler throughput: draws/s and denoiser calls per draw, 64 chains, 16×16 GMM prior, float32.

``python benchmarks/bench_samplers.py [--quick]`` prints the Markdown section;
``benchmarks/run.py`` calls :func:`section`. The prior is ``priors/digits16.npz`` (a GMM fitted
to scikit-learn's digits) when present, else a random 8-component GMM; the operator is
inpainting of half the pixels, σ = 0.05. Every sampler runs on the same measurement with its
default settings, except ULA's burn-in (0: a steady-state rate; the burn-in costs
``burn_in`` more denoiser calls per chain, once per unit). "draws/s" counts chain-draws (one
image of one chain) per second of wall time; "ms/draw-step" is the wall time of one draw of
all chains.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from uqcampaign.kernels.operators import build_operator
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior
from uqcampaign.kernels.samplers.registry import build_sampler

ROOT = Path(__file__).resolve().parent.parent
N_CHAINS = 64
SIGMA = 0.05


def _prior() -> tuple[GaussianMixturePrior, str]:
    path = ROOT / "priors" / "digits16.npz"
    if path.is_file():
        return GaussianMixturePrior.from_npz(path), "priors/digits16.npz"
    rng = np.random.default_rng(0)
    means = rng.uniform(0.0, 1.0, size=(8, 1, 16, 16))
    variances = rng.uniform(0.05, 0.15, size=(8, 1, 16, 16)) ** 2
    return GaussianMixturePrior(np.full(8, 1 / 8), means, variances), "random 8-component GMM"


def _specs(quick: bool) -> list[tuple[dict, int]]:
    """``(sampler spec, draws timed)``: default settings, sized to take a few seconds each."""
    if quick:
        return [
            ({"kind": "exact"}, 2),
            ({"kind": "ula", "burn_in": 0, "thin": 2}, 2),
            ({"kind": "dps", "steps": 10}, 1),
            ({"kind": "latino", "steps": 2}, 2),
        ]
    return [
        ({"kind": "exact"}, 20),
        ({"kind": "ula", "burn_in": 0}, 30),  # thin 10: 300 steps
        ({"kind": "dps"}, 2),  # 1000 steps per draw
        ({"kind": "latino"}, 30),
    ]


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def measure(quick: bool = False, n_chains: int = N_CHAINS, dtype: torch.dtype = torch.float32) -> list[dict]:
    """Time every sampler; one row per sampler with draws/s and nfe per draw."""
    prior64, _ = _prior()
    operator64 = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, prior64.img_shape)
    generator = torch.Generator().manual_seed(0)
    x_true = prior64.sample(1, generator)
    y = (operator64.A(x_true) + SIGMA * torch.randn(operator64.A(x_true).shape, generator=generator, dtype=torch.float64))[0]
    prior, operator, y = prior64.to(dtype=dtype), operator64.to(dtype=dtype), y.to(dtype)
    chains = 8 if quick else n_chains
    rows = []
    for spec, n_draws in _specs(quick):
        sampler = build_sampler(spec)
        start = time.perf_counter()
        draws = list(sampler.run(y, operator, prior, SIGMA, chains, n_draws, torch.Generator().manual_seed(1)))
        seconds = time.perf_counter() - start
        rows.append(
            {
                "kind": spec["kind"],
                "settings": ", ".join(f"{k}={_short(v)}" for k, v in sampler.describe().items() if k != "kind") or "-",
                "chains": chains,
                "draws": n_draws,
                "seconds": seconds,
                "draws_per_s": chains * n_draws / seconds,
                "ms_per_draw": 1e3 * seconds / n_draws,
                "nfe_per_draw": draws[-1].nfe,
            }
        )
    return rows


def section(quick: bool = False) -> str:
    """The Markdown section for BENCHMARKS.md."""
    _, prior_name = _prior()
    rows = measure(quick)
    lines = [
        "## Samplers\n",
        f"`python benchmarks/bench_samplers.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: "
        f"{rows[0]['chains']} chains, 1×16×16 images, prior {prior_name}, inpainting (half the pixels), σ = {SIGMA}, "
        f"float32, CPU, {torch.get_num_threads()} torch threads. draws/s = chain-draws per second; "
        "nfe/draw = denoiser (network) calls per draw and chain (ULA: steady state, the burn-in adds `burn_in` once; "
        "DPS: each call also takes one backward pass).\n",
        "| sampler | settings | draws/s | ms per draw (all chains) | nfe/draw |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['settings']} | {r['draws_per_s']:.1f} | {r['ms_per_draw']:.1f} | {r['nfe_per_draw']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
