"""A realistic-size learned prior on the CPU (``python benchmarks/run.py --only realistic``).

The network: a ``UNet2DModel`` of the shape of ``google/ddpm-ema-celebahq-256`` (the google/ddpm-*-256
family: blocks (128, 128, 256, 256, 512, 512), two resnets per block, attention at 1/16 resolution,
113 M parameters) with ``sample_size`` 64, random weights (seed 0): the cost is the point, not the
images. Saved as a ``DDPMPipeline`` folder (linear β, ``clip_sample: true``: the prior maps [0, 1]
campaign images to the network's [-1, 1]).

The campaign: 3×64×64, inpainting (half the pixels), σ = 0.05, one measurement (a smooth random
image), 16 chains in one unit (one worker), ULA (``burn_in`` + ``draws`` steps, one network call each)
and LATINO (8 consistency steps per draw). Each ``uqc run --in-process`` runs in a fresh process:
its peak resident memory (``ru_maxrss`` of the child) is what one worker holds (the prior loaded once,
one unit of 16 chains). Timed: the unit itself (``units/seconds`` in the store) → chain-draws/s and
s per network call; the whole ``uqc run`` (start-up, loading, store); ``uqc reduce`` (wall and peak
memory). Cost per effective sample: unit seconds ÷ the median over pixels of ``ess_bulk`` (ULA's
chains are Markov chains; LATINO's draws are independent runs). The bare sampler loop (no store, no
CLI, this process) is timed too, as the plain alternative on the same cores.

``--quick``: a tiny UNet at 16 px, a few draws (a smoke run, figures not meaningful).
No GPU figures: no GPU in this session (the issue's 3×256×256 SD-1.5 run needs one).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

UQC = str(Path(sys.executable).parent / "uqc")
CELEBAHQ_SHAPE = {  # google/ddpm-ema-celebahq-256 unet/config.json (sample_size scaled to 64)
    "in_channels": 3, "out_channels": 3, "layers_per_block": 2, "block_out_channels": (128, 128, 256, 256, 512, 512),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6,
}
TINY_SHAPE = {"in_channels": 3, "out_channels": 3, "layers_per_block": 1, "block_out_channels": (8, 16),
              "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
              "norm_num_groups": 4, "attention_head_dim": 4}


@dataclass(frozen=True)
class Size:
    side: int
    chains: int
    ula_burn_in: int
    ula_draws: int
    latino_draws: int
    latino_steps: int
    unet: dict


FULL = Size(side=64, chains=16, ula_burn_in=10, ula_draws=30, latino_draws=4, latino_steps=8, unet=CELEBAHQ_SHAPE)
QUICK = Size(side=16, chains=4, ula_burn_in=2, ula_draws=4, latino_draws=4, latino_steps=2, unet=TINY_SHAPE)


def write_model(folder: Path, size: Size) -> int:
    """The DDPMPipeline folder (random weights, seed 0); returns the UNet's parameter count."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size.side, **size.unet)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)).save_pretrained(
        str(folder), safe_serialization=True)
    return sum(p.numel() for p in unet.parameters())


def write_data(folder: Path, side: int, sigma: float) -> None:
    """One smooth random 3×side×side truth in [0, 1] and its inpainted measurement (the campaign's operator)."""
    from uqcampaign.kernels.operators import build_operator

    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, (3, side, side))
    y = operator.A(x) + sigma * torch.randn(operator.A(x).shape, generator=g, dtype=torch.float64)
    np.save(folder / "x.npy", x.float().numpy())
    np.save(folder / "y.npy", y.float().numpy())


def campaign(folder: Path, name: str, sampler: dict, size: Size, draws: int) -> Path:
    spec = {
        "name": name, "store": f"{name}.zarr", "seed": 0, "data": {"y": "y.npy", "truth": "x.npy"},
        "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 0}, "noise": {"sigma": 0.05},
        "prior": {"kind": "diffusion", "path": "model"}, "sampler": sampler, "chains": size.chains, "draws": draws,
        "chunks": {"chains": size.chains, "draws": draws}, "cluster": {"address": "in-process"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_child(args: list[str]) -> tuple[float, float]:
    """``(wall s, peak RSS GiB)`` of ``uqc args`` in a fresh process (the peak is the child's own, via a wrapper)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, UQC, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"uqc {' '.join(args)} failed: {done.stderr.strip().splitlines()[-2:]}")
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return wall, peak_kib / 2**20


def bare_loop(folder: Path, sampler_spec: dict, size: Size, draws: int) -> float:
    """Seconds of ``sampler.run`` alone in this process (prior loaded before the clock starts)."""
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.samplers.registry import build_sampler

    prior = build_prior({"kind": "diffusion", "path": "model"}, folder).to(dtype=torch.float32)
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, prior.img_shape)
    y = torch.as_tensor(np.load(folder / "y.npy"))[0]
    sampler = build_sampler(sampler_spec)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in sampler.run(y, operator, prior, 0.05, size.chains, draws, torch.Generator().manual_seed(0)):
            pass
    return time.perf_counter() - start


def measure(folder: Path, name: str, sampler: dict, size: Size, draws: int, calls_per_draw: float) -> dict:
    """One sampler: uqc run (fresh process), uqc reduce, the store's figures, the bare loop."""
    import zarr

    path = campaign(folder, name, sampler, size, draws)
    run_wall, run_peak = run_child(["run", str(path), "--in-process", "--no-progress"])
    reduce_wall, reduce_peak = run_child(["reduce", str(folder / f"{name}.zarr")])
    group = zarr.open_group(str(folder / f"{name}.zarr"), mode="r")
    unit_s = float(np.asarray(group["units"]["seconds"][0, 0]))
    nfe = float(np.asarray(group["units"]["nfe_per_draw"][0, 0]))
    ess = np.asarray(group["summary"]["ess_bulk"][...])
    chain_draws = size.chains * draws
    return {
        "name": name, "draws": draws, "nfe": nfe, "unit_s": unit_s, "draws_per_s": chain_draws / unit_s,
        "s_per_call": unit_s / (nfe * draws), "run_wall": run_wall, "run_peak": run_peak,
        "reduce_wall": reduce_wall, "reduce_peak": reduce_peak, "ess_median": float(np.median(ess)),
        "s_per_ess": unit_s / float(np.median(ess)), "bare_s": bare_loop(folder, sampler, size, draws),
        "calls_per_draw": calls_per_draw,
    }


def section(quick: bool = False) -> str:
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="uqc-bench-realistic-") as tmp:
        folder = Path(tmp)
        params = write_model(folder / "model", size)
        write_data(folder, size.side, 0.05)
        rows = [
            # init: pinv: a prior draw per chain (init: prior) would cost the folder's 1000 DDPM steps, 40x this run
            measure(folder, "ula", {"kind": "ula", "burn_in": size.ula_burn_in, "thin": 1, "init": "pinv"}, size, size.ula_draws,
                    1 + size.ula_burn_in / size.ula_draws),
            measure(folder, "latino", {"kind": "latino", "steps": size.latino_steps}, size, size.latino_draws, size.latino_steps),
        ]
    lines = [
        "## Realistic-size learned prior on the CPU (`benchmarks/bench_realistic.py`)\n",
        f"`python benchmarks/bench_realistic.py`{' --quick (smoke run: figures not meaningful)' if quick else ''}: a `UNet2DModel` of the "
        f"shape of `google/ddpm-ema-celebahq-256` scaled to {size.side} px ({params / 1e6:.1f} M parameters, random weights: the cost is "
        f"the point) in a `DDPMPipeline` folder (the prior maps [0, 1] images to its [-1, 1]); 3×{size.side}×{size.side} inpainting "
        f"(half the pixels), σ = 0.05, one measurement, {size.chains} chains in one unit, float32, torch's default threads "
        f"({torch.get_num_threads()}). Each `uqc run --in-process` is a fresh process: *peak RSS* is what one worker holds "
        "(the prior loaded once, one unit); *unit s* is the unit's own time from the store (`units/seconds`); *run s* the whole "
        "command (start-up, loading, store). *bare s*: `sampler.run` alone in one process (no store, no CLI): the plain alternative. "
        "*s / ESS*: unit seconds per effective sample (median over pixels of `ess_bulk` of the reduce; ULA: "
        f"burn-in {size.ula_burn_in} steps charged to the draws; chains start at pinv(y), `init: pinv`: `init: prior` would "
        "charge each chain the DDPM folder's 1000 sampling steps). Reduce: `uqc reduce` wall time and peak RSS. "
        "No GPU figures: no GPU in this session (the issue's 3×256×256 full-size SD-1.5 UNet/VAE run needs one).\n",
        "| sampler | draws/chain | nfe/draw | unit s | bare s | chain-draws/s | s / network call (all chains) | run s | peak RSS (GiB) | "
        "median ESS | s / ESS | reduce s | reduce peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['draws']} | {r['nfe']:.1f} | {r['unit_s']:.1f} | {r['bare_s']:.1f} | {r['draws_per_s']:.2f} | "
            f"{r['s_per_call']:.2f} | {r['run_wall']:.1f} | {r['run_peak']:.2f} | {r['ess_median']:.1f} | {r['s_per_ess']:.1f} | "
            f"{r['reduce_wall']:.1f} | {r['reduce_peak']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
