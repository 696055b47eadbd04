"""SMC samplers (``tds``) with a learned diffusion prior against the exact posterior of the GMM it was trained on.

``python benchmarks/bench_smc.py [--quick]`` prints the Markdown section; ``benchmarks/run.py --only smc``
writes it into BENCHMARKS.md. The SMC kinds on the exact problems, next to every other sampler kind (network
calls per draw, accuracy, log-evidence), are rows of the one sampler-choice table
(``benchmarks/bench_sampler_choice.py``, section ``sampler_choice``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.smc.sampler import pooled_log_evidence
from uqcampaign.kernels.threads import torch_threads

ROOT = Path(__file__).resolve().parent.parent


def _settings(sampler) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampler.describe().items() if k != "kind") or "-"


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


def section(quick: bool = False) -> str:
    """The Markdown section for BENCHMARKS.md (1 torch thread: the batches are small, see ``kernels.threads``)."""
    with torch_threads(1):
        return _section(quick)


def _section(quick: bool) -> str:
    rows = learned_rows(16 if quick else 128)
    lines = [
        "## SMC with a learned prior: `tds` next to `dps` and `ula`\n",
        f"`python benchmarks/bench_smc.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: "
        "the shipped `priors/gmm8-diffusion` (trained on the known GMM `gmm8`) next to the exact denoiser "
        "of that GMM, inpainting half of the 8×8 pixels, σ = 0.05, 128 draws, against the exact posterior of the GMM, "
        "with the settings of `tests/kernels/test_learned_priors.py` (TDS: 8 runs × 32 particles, 250 steps, half of the "
        "pool returned: a CPU-sized run, far below the defaults, which would take ~8192 network calls with gradient "
        "per step here); CPU, 1 torch thread; no GPU figures (no GPU in this session). The SMC kinds on the exact "
        "problems, next to every other kind, are in the sampler-choice table above.\n",
        "| sampler | prior | network calls / draw | SW ratio | 90% mass | s / draw | log p(y) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['prior']} | {r['nfe_per_draw']:.0f} | {r['sw_ratio']:.2f} | {r['mass']:.3f} | "
            f"{r['seconds_per_draw'] * 1e3:.1f} ms | {r.get('log_evidence', '-')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
