"""``train_prior``: train a small learned prior on a shipped dataset and write its model folder.

=====================  ==========================  =============================================
kind                   dataset (default)           folder written (``save_pretrained``)
=====================  ==========================  =============================================
``diffusion``          ``digits16`` or ``gmm8``    ``DDPMPipeline``: ``UNet2DModel`` + ``DDPMScheduler``
``consistency``        as its ``teacher``          ``ConsistencyModelPipeline`` (distilled from ``teacher``)
``latent-consistency`` ``digits16``                ``LatentConsistencyModelPipeline``: without ``teacher``
                                                   a VAE + latent ε-model; with ``teacher`` (such a folder)
                                                   an LCM distilled from it (guidance embedding)
=====================  ==========================  =============================================
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.training.datasets import get_dataset
from uqcampaign.kernels.training.loop import CHECKPOINT_DIR, Stage, run_stages

__all__ = ["TRAINABLE_KINDS", "train_prior", "diffusion_stages"]

TRAINABLE_KINDS = ("diffusion", "consistency", "latent-consistency")
# Recipe options by kind ("lcm-distill": latent-consistency with a teacher).
_OPTIONS = {"diffusion": (), "consistency": ("teacher", "grid"), "latent-consistency": ("vae_steps",),
            "lcm-distill": ("teacher", "ddim_steps", "w_min", "w_max")}
_DEFAULT_STEPS = {"diffusion": 3000, "consistency": 1000, "latent-consistency": 3000}


def diffusion_stages(dataset_name: str, steps: int, batch_size: int, lr: float, device: torch.device) -> tuple[list[Stage], Any]:
    """One ε-prediction stage for a ``UNet2DModel`` on ``dataset_name``; returns ``(stages, pipeline)``.

    Loss: ``E_{t, x_0, ε} ||ε̂(sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε, t) - ε||²`` with ``t`` uniform (Ho et al. 2020).
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    from uqcampaign.kernels.training.models import tiny_unet2d

    data = get_dataset(dataset_name)
    unet = tiny_unet2d(data.img_shape).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=False)
    alphas = scheduler.alphas_cumprod.to(device)

    def loss(generator: torch.Generator, step: int) -> torch.Tensor:
        x0, _ = data.sample(batch_size, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        ab = alphas[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
        return torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)

    return [Stage("unet", {"unet": unet}, loss, steps, lr=lr)], DDPMPipeline(unet=unet, scheduler=scheduler)


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a model folder unless ``force``; wipe it when forced."""
    has_checkpoint = (out / CHECKPOINT_DIR / "state.json").is_file()
    if resume:
        require(has_checkpoint, f"cannot resume: {str(out)!r} has no checkpoint/; train without --resume")
        return
    if out.exists() and any(out.iterdir()):
        require(force, f"output folder {str(out)!r} is not empty; pass --resume to continue its run or --force to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def train_prior(kind: str, out: str | Path, *, dataset: str = "digits16", steps: int | None = None,
                batch_size: int = 128, lr: float = 2e-3, device: str = "cpu", resume: bool = False,
                force: bool = False, seed: int = 0, checkpoint_every: int = 250, keep_checkpoint: bool = True,
                progress: bool = True, **options: Any) -> Path:
    """Train a ``kind`` prior on ``dataset`` and write its ``save_pretrained`` folder at ``out``.

    ``steps`` per stage (default 3000); ``device`` e.g. ``"cpu"`` or ``"cuda"``; ``resume``
    continues from ``out/checkpoint/`` (same options required); ``force`` overwrites a non-empty
    ``out``. The final folder holds the model, ``training.json`` (options, loss log, seconds, the
    ``data_range`` the networks were trained on) and,
    unless ``keep_checkpoint=False``, the checkpoint. ``options`` go to the kind's recipe
    (latent-consistency: ``vae_steps``, or ``teacher`` (a latent ε-model folder) with ``ddim_steps``,
    ``w_min``, ``w_max`` to distil an LCM; consistency: ``teacher`` folder, ``grid``). Returns ``out``.
    """
    require(kind in TRAINABLE_KINDS, f"cannot train prior kind {kind!r}; trainable kinds: {', '.join(TRAINABLE_KINDS)}")
    steps = _DEFAULT_STEPS[kind] if steps is None else int(steps)
    require(steps >= 1 and batch_size >= 1, f"steps = {steps} and batch_size = {batch_size} must be >= 1")
    require(checkpoint_every >= 1, f"checkpoint_every = {checkpoint_every} must be >= 1")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    require(dev is not None and (dev.type != "cuda" or torch.cuda.is_available()),
            f"device {device!r} is not available here; use 'cpu'" + (" (no CUDA)" if dev is not None and dev.type == "cuda" else ""))
    options = {key: value for key, value in options.items() if value is not None}
    recipe = "lcm-distill" if kind == "latent-consistency" and "teacher" in options else kind
    for key in options:
        require(key in _OPTIONS[recipe], f"option {key!r} does not apply to training a {kind} prior"
                + (" from a teacher" if recipe == "lcm-distill" else "") + f"; its options: {', '.join(_OPTIONS[recipe]) or 'none'}")
    out = Path(out)
    _prepare_out(out, resume, force)
    torch.manual_seed(seed)  # network initialisation only; batches use their own generators
    meta = {"kind": kind, "dataset": dataset, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, **options}
    if recipe == "diffusion":
        stages, pipeline = diffusion_stages(dataset, steps, batch_size, lr, dev)
    elif recipe == "consistency":
        from uqcampaign.kernels.training.consistency import consistency_stages

        stages, pipeline = consistency_stages(dataset, steps, batch_size, lr, dev, **options)
    elif recipe == "lcm-distill":
        from uqcampaign.kernels.training.latent_distill import latent_distillation_stages

        stages, pipeline = latent_distillation_stages(dataset, steps, batch_size, lr, dev, **options)
    else:
        from uqcampaign.kernels.training.latent import latent_consistency_stages

        stages, pipeline = latent_consistency_stages(dataset, steps, batch_size, lr, dev, **options)
    started = time.perf_counter()
    logs = run_stages(stages, out, seed=seed, device=dev, resume=resume, checkpoint_every=checkpoint_every,
                      progress=progress, meta=meta)
    finalize = getattr(pipeline, "_uqc_finalize", None)
    if finalize is not None:
        finalize()
    pipeline.to("cpu")
    pipeline.save_pretrained(str(out), safe_serialization=True)
    extra = "".join(f" --{key.replace('_', '-')} {value}" for key, value in options.items())
    record = {"command": f"uqc train-prior {kind} --out {out.name} --dataset {dataset} --steps {steps} "
                         f"--batch-size {batch_size} --lr {lr} --seed {seed}{extra}",
              "options": meta, "device": str(dev), "seconds_this_session": round(time.perf_counter() - started, 1),
              "loss_log_every_50_steps": logs,
              # the range the networks were trained on: pixel UNets see the data as they are ([0, 1]),
              # the VAE of a latent prior sees 2x - 1 (Stable Diffusion's convention); the priors read it back
              "data_range": [-1.0, 1.0] if kind == "latent-consistency" else [0.0, 1.0],
              "torch": torch.__version__}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    if not keep_checkpoint:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return out
