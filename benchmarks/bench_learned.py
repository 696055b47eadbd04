"""Learned priors: LATINO with ``priors/digits16-lcm`` (and its teacher) on held-out digits, and network-call throughput.

``python benchmarks/bench_learned.py [--quick]`` prints the Markdown section;
``benchmarks/run.py`` calls :func:`section`.

Quality: the three ``examples/digits-*-latino.yaml`` problems (operator, noise σ, sampler spec,
prior spec and seed are read from those files, so the figures match the examples), on the first
8 held-out digits (scikit-learn digits 1500.., never seen in training), y = A x + σ ε from
:func:`~uqcampaign.kernels.training.datasets.held_out_measurements` (seed 0), 32 chains × 4 draws
per digit (each chain of digit ``m`` draws from ``unit_generator(seed, m, 0)``). Per digit: PSNR and
SSIM (7×7 window) against the truth of the posterior mean and of the pseudo-inverse ``A⁺y``, and
the pixel coverage of the 90% equal-tailed interval of the 128 draws (fraction of pixels whose true
value lies inside); the table gives means over digits.

Speed: draws/s = chain-draws per second of ``sampler.run`` (one warm-up draw first, then
``time.perf_counter`` around the sampling loop only), with 1 torch thread and with the default
thread count. Network throughput: one forward call of the shipped networks on a batch of chains
(``priors/gmm8-diffusion`` denoiser, ``priors/digits16-lcm`` consistency map), calls/s.
Everything runs on the CPU in float32 (the campaign dtype).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from uqcampaign.kernels.metrics import interval_coverage, psnr, ssim
from uqcampaign.kernels.operators import build_operator
from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.rng import unit_generator
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.kernels.training.datasets import held_out_measurements

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("inpaint", "deblur", "superres")
TEACHER = "../priors/digits16-ldm"  # relative to examples/, like the examples' prior path
LEVEL = 0.9
DIFFUSION_CHAINS = 64


def example_campaign(name: str) -> dict[str, Any]:
    """The campaign file ``examples/digits-<name>-latino.yaml`` as a dict."""
    return yaml.safe_load((ROOT / "examples" / f"digits-{name}-latino.yaml").read_text())


def _lcm_prior(spec: dict[str, Any]) -> Any:
    """The example's prior (paths relative to ``examples/``), float32 on the CPU."""
    return build_prior(dict(spec), ROOT / "examples").to(device="cpu", dtype=torch.float32)


def quality(name: str, prior: Any, n_digits: int, n_chains: int, n_draws: int) -> dict[str, Any]:
    """LATINO on ``n_digits`` held-out digits for example ``name``: mean PSNR/SSIM/coverage over digits.

    Draws per digit: ``(n_chains · n_draws, C, H, W)``; coverage is the fraction of pixels whose truth
    lies in the per-pixel equal-tailed ``LEVEL`` interval of those draws. ``draws_per_s`` times the
    sampling loops only (metrics excluded), after one warm-up draw, with the current torch threads.
    """
    campaign = example_campaign(name)
    sigma = float(campaign["noise"]["sigma"])
    operator = build_operator(campaign["operator"], tuple(prior.img_shape), ROOT / "examples").to(dtype=torch.float32)
    sampler = build_sampler(dict(campaign["sampler"]))
    x, y, _ = held_out_measurements(operator, sigma, n_digits, seed=0)  # x (M, 1, 16, 16), y (M, *obs_shape)
    x, y = x.to(torch.float32), y.to(torch.float32)
    for _ in sampler.run(y[0], operator, prior, sigma, n_chains, 1, torch.Generator().manual_seed(0)):  # warm-up
        pass
    means, covered, nfe, seconds = [], [], 0, 0.0
    for m in range(n_digits):
        generator = unit_generator(int(campaign["seed"]), m, 0)
        start = time.perf_counter()
        draws = list(sampler.run(y[m], operator, prior, sigma, n_chains, n_draws, generator))
        seconds += time.perf_counter() - start
        nfe = draws[-1].nfe
        samples = torch.cat([d.x for d in draws])  # (draws · chains, C, H, W)
        means.append(samples.mean(dim=0))
        covered.append(interval_coverage(samples, x[m], LEVEL))
    mean = torch.stack(means)  # (M, C, H, W)
    pinv = operator.pinv(y)  # (M, C, H, W)
    return {
        "name": name,
        "operator": campaign["operator"],
        "sigma": sigma,
        "sampler": sampler.describe(),
        "nfe": nfe,
        "psnr_mean": float(psnr(mean, x).mean()),
        "ssim_mean": float(ssim(mean, x).mean()),
        "psnr_pinv": float(psnr(pinv, x).mean()),
        "ssim_pinv": float(ssim(pinv, x).mean()),
        "coverage": sum(covered) / len(covered),
        "draws_per_s": n_digits * n_chains * n_draws / seconds,
    }


def draws_per_second(name: str, prior: Any, n_chains: int, n_draws: int, threads: int) -> float:
    """Chain-draws/s of LATINO on the first held-out digit of example ``name`` with ``threads`` torch threads."""
    campaign = example_campaign(name)
    sigma = float(campaign["noise"]["sigma"])
    operator = build_operator(campaign["operator"], tuple(prior.img_shape), ROOT / "examples").to(dtype=torch.float32)
    sampler = build_sampler(dict(campaign["sampler"]))
    _, y, _ = held_out_measurements(operator, sigma, 1, seed=0)
    y0 = y[0].to(torch.float32)
    with torch_threads(threads):
        for _ in sampler.run(y0, operator, prior, sigma, n_chains, 1, torch.Generator().manual_seed(0)):  # warm-up
            pass
        draws = sampler.run(y0, operator, prior, sigma, n_chains, n_draws, torch.Generator().manual_seed(1))
        start = time.perf_counter()
        for _ in draws:
            pass
        seconds = time.perf_counter() - start
    return n_chains * n_draws / seconds


def calls_per_second(call: Callable[[], Any], n_calls: int, threads: int, max_seconds: float = 5.0) -> float:
    """Forward calls/s of ``call`` with ``threads`` torch threads: one warm-up call, then ``n_calls``
    calls or as many as fit in ``max_seconds`` (at least 2), whichever comes first."""
    with torch_threads(threads), torch.no_grad():
        call()
        done, start = 0, time.perf_counter()
        while done < n_calls and (done < 2 or time.perf_counter() - start < max_seconds):
            call()
            done += 1
        return done / (time.perf_counter() - start)


def network_rows(lcm: Any, n_calls: int, thread_counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """Throughput of one batched network call: the diffusion denoiser and the LCM consistency map."""
    diffusion = build_prior({"kind": "diffusion", "path": "priors/gmm8-diffusion"}, ROOT).to(device="cpu", dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for label, shape, fn, t in (
        ("`priors/gmm8-diffusion` Tweedie denoiser, t = 100", diffusion.img_shape, diffusion.denoise, 100),
        ("`priors/digits16-lcm` consistency map, t = 250", lcm.latent_shape, lcm.consistency, 250),
    ):
        for chains in (1, DIFFUSION_CHAINS):
            batch = torch.randn(chains, *shape, generator=generator)  # (chains, C, H, W): pixels or latents
            for threads in thread_counts:
                rate = calls_per_second(lambda: fn(batch, t), n_calls, threads)
                rows.append({"network": label, "chains": chains, "threads": threads, "calls_per_s": rate, "chain_calls_per_s": rate * chains})
    return rows


def section(quick: bool = False) -> str:
    """The Markdown section for BENCHMARKS.md."""
    n_digits, n_chains, n_draws = (2, 4, 2) if quick else (8, 32, 4)
    speed_draws, n_calls = (1, 3) if quick else (2, 20)
    default_threads = torch.get_num_threads()
    thread_counts = tuple(sorted({1, default_threads}))
    prior_spec = example_campaign(EXAMPLES[0])["prior"]
    prior = _lcm_prior(prior_spec)
    teacher = _lcm_prior({**prior_spec, "path": TEACHER})
    with torch_threads(1):
        rows = [{**quality(name, model, n_digits, n_chains, n_draws), "prior": label}
                for name in EXAMPLES for label, model in (("LCM", prior), ("teacher", teacher))]
    speed = {th: draws_per_second(EXAMPLES[0], prior, n_chains, speed_draws, th) for th in thread_counts}
    networks = network_rows(prior, n_calls, thread_counts)
    s = rows[0]["sampler"]
    lines = [
        "## Learned priors (`benchmarks/bench_learned.py`)\n",
        f"`python benchmarks/bench_learned.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: "
        f"LATINO ({s['steps']} steps, δ = {s['delta']:g}, t = {s['t_max']} … {s['t_min']}) with the latent-consistency prior "
        f"`priors/digits16-lcm` (prompt \"{prior_spec['prompt']}\"; row *LCM*) and, for comparison, its undistilled "
        f"teacher `priors/digits16-ldm` used through Tweedie's formula (row *teacher*) on the three `examples/digits-*-latino.yaml` problems "
        f"(operator, σ, sampler and seed read from them), on the first {n_digits} held-out digits "
        f"(scikit-learn digits 1500.., never seen in training; y from `held_out_measurements(operator, σ, {n_digits}, seed=0)`), "
        f"{n_chains} chains × {n_draws} draws per digit. PSNR (dB) / SSIM (7×7 Gaussian window) against the truth, "
        "means over digits, of the posterior mean and of the unclipped pseudo-inverse A⁺y (for the blur, A⁺ amplifies "
        "the noise at frequencies the kernel nearly removes); coverage = fraction of pixels whose true value lies in the "
        f"per-pixel equal-tailed {LEVEL:.0%} interval of the {n_chains * n_draws} draws (nominal {LEVEL:.2f}). "
        "nfe/draw = consistency-network calls per draw and chain (each step also runs the VAE encoder and decoder "
        "once, not counted). Device: CPU, float32, 1 torch thread; draws/s = chain-draws per second of the sampling "
        "loops only (one warm-up draw first). No GPU figures: no GPU in this session.\n",
        "| problem | prior | operator | σ | nfe/draw | PSNR mean | PSNR A⁺y | SSIM mean | SSIM A⁺y | 90% coverage | draws/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        op = ", ".join(f"{k}={v}" for k, v in r["operator"].items() if k != "kind")
        lines.append(
            f"| {r['name']} | {r['prior']} | {r['operator']['kind']} ({op}) | {r['sigma']:g} | {r['nfe']} | {r['psnr_mean']:.2f} | {r['psnr_pinv']:.2f} | "
            f"{r['ssim_mean']:.3f} | {r['ssim_pinv']:.3f} | {r['coverage']:.3f} | {r['draws_per_s']:.1f} |"
        )
    lines += [
        "",
        f"Torch threads (inpaint, first digit, {n_chains} chains, {speed_draws} draw{'s' if speed_draws > 1 else ''} timed after one "
        "warm-up draw): "
        + ", ".join(f"{speed[th]:.1f} draws/s with {th} thread{'s' if th > 1 else ''}" for th in thread_counts)
        + ". On a shared, loaded CPU more threads can be slower.\n",
        f"Network calls (chains batched into one forward call, no autograd, CPU float32, {n_calls} calls or 5 s timed after "
        "one warm-up): calls/s = forward calls per second; chain-calls/s = calls/s × chains.\n",
        "| network | chains | torch threads | calls/s | chain-calls/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in networks:
        lines.append(f"| {r['network']} | {r['chains']} | {r['threads']} | {r['calls_per_s']:.1f} | {r['chain_calls_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
