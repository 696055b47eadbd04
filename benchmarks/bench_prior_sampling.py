"""Learned priors drawing from themselves (``python benchmarks/run.py --only sampling``).

The shipped ``priors/gmm8-diffusion`` and ``priors/gmm8-cm`` were trained on a known Gaussian mixture
(``gmm8``, 1×8×8, K = 5). ``prior.sample`` (diffusers' own sampling loop, noise from one generator seeded 0)
draws 1000 images; :func:`~uqcampaign.kernels.problems.score_prior_draws` scores them against the mixture:
per-pixel z-scores of the sample mean (SE σ/√n) and std (delta method with the mixture's fourth moment),
the largest |z| and the pixels beyond 3 (of 64; ≈ 0.17 expected by chance), and the sliced-Wasserstein
distance to 1000 mixture draws next to the floor (two independent sets of mixture draws). CPU, float32,
1 torch thread. ``--quick``: 100 draws and the short samplers only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.problems import score_prior_draws
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.kernels.training.datasets import gmm8_prior

ROOT = Path(__file__).resolve().parent.parent
DDIM = {"class": "DDIMScheduler", "beta_schedule": "linear", "num_train_timesteps": 1000, "clip_sample": False}
# (label, prior spec): the folder's own scheduler unless a `scheduler` key says otherwise
CASES = (
    ("gmm8-diffusion, DDPM 1000 steps (full)", {"kind": "diffusion", "path": "priors/gmm8-diffusion"}),
    ("gmm8-diffusion, DDPM 200 steps", {"kind": "diffusion", "path": "priors/gmm8-diffusion", "sample_steps": 200}),
    ("gmm8-diffusion, DDIM 50 steps", {"kind": "diffusion", "path": "priors/gmm8-diffusion", "sample_steps": 50, "scheduler": DDIM}),
    ("gmm8-cm, 1 step", {"kind": "consistency", "path": "priors/gmm8-cm"}),
    ("gmm8-cm, 2 steps", {"kind": "consistency", "path": "priors/gmm8-cm", "sample_steps": 2}),
)


def section(quick: bool = False) -> str:
    n = 100 if quick else 1000
    cases = [case for case in CASES if not quick or "1000" not in case[0] and "200" not in case[0]]
    rows = []
    with torch_threads(1):
        for label, spec in cases:
            prior = build_prior(spec, ROOT)
            start = time.perf_counter()
            with torch.no_grad():
                draws = prior.sample(n, torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - start
            rows.append((label, score_prior_draws(gmm8_prior(), draws), seconds))
    lines = [
        "## Learned priors drawing from themselves (`benchmarks/bench_prior_sampling.py`)\n",
        f"`python benchmarks/bench_prior_sampling.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: {n} draws of "
        "`prior.sample` (what `data: {simulate: …}` uses; diffusers' own loops) from the shipped priors trained on the known mixture "
        "`gmm8` (1×8×8, K = 5), scored against it: the largest per-pixel |z| of the sample mean and std and the pixels beyond 3 SE "
        "(of 64; ≈ 0.17 by chance), the mean z of the std (negative: under-dispersed), the sliced-Wasserstein distance to "
        f"{n} mixture draws next to the floor (two independent mixture sets). CPU, float32, 1 torch thread.\n",
        "| prior, sampler | max \\|z\\| mean | pixels > 3 | max \\|z\\| std | pixels > 3 | mean z of std | SW | floor | SW / floor | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, s, seconds in rows:
        lines.append(f"| {label} | {s.z_mean:.2f} | {s.beyond_mean} | {s.z_std:.2f} | {s.beyond_std} | {s.mean_z_std:+.2f} | "
                     f"{s.sw:.4f} | {s.floor:.4f} | {s.sw / s.floor:.2f} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
