"""Learned priors draw from themselves (issue 11, Build 5): ``prior.sample(n, generator)``.

1. On the hub layouts, ``prior.sample`` is diffusers' own pipeline: the same draws as ``DDPMPipeline``,
   ``DDIMPipeline``, ``ConsistencyModelPipeline`` (class-conditional), ``LatentConsistencyModelPipeline``,
   ``StableDiffusionPipeline`` + LCMScheduler + LCM-LoRA (classifier-free guidance) and
   ``StableDiffusionXLPipeline`` + LCMScheduler (guidance embedding, and classifier-free guidance) called
   with the same generator, mapped to [0, 1] and clamped as the pipelines' post-processing does.
2. On the shipped ``gmm8-*`` priors, the draws' statistics against the Gaussian mixture they were trained on.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from uqcampaign.kernels.priors.registry import build_prior

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a handwritten digit seven"


def _pipeline_images(name: str, layouts: dict[str, Path], n: int, steps: int, generator: torch.Generator, **extra) -> torch.Tensor:
    """Images ``(n, C, H, W)`` in [0, 1] from diffusers' pipeline for layout ``name`` (``output_type`` pt/np)."""
    import diffusers
    from diffusers import LCMScheduler

    folder = layouts[name.split("+")[0]]
    if name in ("ddpm", "ddim"):
        cls = diffusers.DDPMPipeline if name == "ddpm" else diffusers.DDIMPipeline
        out = cls.from_pretrained(folder)(batch_size=n, generator=generator, num_inference_steps=steps, output_type="np").images
        return torch.as_tensor(out).permute(0, 3, 1, 2)
    if name == "cm-class":
        pipe = diffusers.ConsistencyModelPipeline.from_pretrained(folder)
        return pipe(batch_size=n, class_labels=torch.full((n,), 3), num_inference_steps=steps, generator=generator, output_type="pt").images
    if name == "lcm":
        pipe = diffusers.LatentConsistencyModelPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None)
    elif name.startswith("sd15"):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.load_lora_weights(str(layouts["sd15-lora"]))
        pipe.fuse_lora()
    else:
        unet = diffusers.UNet2DConditionModel.from_pretrained(layouts["sdxl-lcm-unet"]) if "+unet" in name else None
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, **({"unet": unet} if unet is not None else {}))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe(PROMPT, height=16, width=16, num_inference_steps=steps, num_images_per_prompt=n, generator=generator,
                output_type="pt", **extra).images


# layout -> (prior spec, pipeline call extras)
AGAINST_DIFFUSERS = {
    "ddpm": ({"kind": "diffusion", "path": "ddpm"}, {}),
    "ddim": ({"kind": "diffusion", "path": "ddim"}, {}),
    "cm-class": ({"kind": "consistency", "path": "cm-class", "class_label": 3}, {}),
    "lcm": ({"kind": "latent-consistency", "path": "lcm", "prompt": PROMPT, "guidance_scale": 2.0}, {"guidance_scale": 2.0}),
    "sd15+lora": ({"kind": "latent-consistency", "path": "sd15", "lora": "sd15-lora", "prompt": PROMPT, "guidance_scale": 1.5},
                  {"guidance_scale": 1.5}),
    "sdxl": ({"kind": "latent-consistency", "path": "sdxl", "prompt": PROMPT, "guidance_scale": 2.0}, {"guidance_scale": 2.0}),
    "sdxl+unet": ({"kind": "latent-consistency", "path": "sdxl", "unet": "sdxl-lcm-unet", "prompt": PROMPT, "guidance_scale": 3.0},
                  {"guidance_scale": 3.0}),
}


@pytest.mark.parametrize("name", list(AGAINST_DIFFUSERS))
def test_prior_sample_is_the_diffusers_pipeline(hub_layouts, name: str) -> None:
    spec, extra = AGAINST_DIFFUSERS[name]
    steps = 2
    root = hub_layouts["ddpm"].parent
    prior = build_prior({**spec, "sample_steps": steps}, root)
    evaluated = []  # images the UNet saw per forward call (2B under classifier-free guidance)
    hook = prior.unet.register_forward_pre_hook(lambda module, args: evaluated.append(args[0].shape[0]))
    with torch.no_grad():
        ours = prior.sample(3, torch.Generator().manual_seed(7))
    hook.remove()
    assert sum(evaluated) / 3 == prior.sample_calls == steps * prior.network_calls  # what init: prior charges to nfe
    with torch.no_grad():
        theirs = _pipeline_images(name, hub_layouts, 3, steps, torch.Generator().manual_seed(7), **extra)
    assert ours.shape == theirs.shape == (3, *prior.img_shape) and ours.dtype == torch.float32
    # the pipelines post-process with (x + 1) / 2 clamped to [0, 1]: our draws are in campaign units, unclamped
    torch.testing.assert_close(ours.clamp(0, 1), theirs.float(), rtol=0, atol=2e-4)


def test_sample_refuses_a_bad_count_and_keeps_the_scheduler(hub_layouts) -> None:
    from uqcampaign.kernels.errors import UQError

    prior = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddim"]), "sample_steps": 2})
    timesteps = prior.scheduler.timesteps.clone()
    prior.sample(1, torch.Generator().manual_seed(0))
    assert torch.equal(prior.scheduler.timesteps, timesteps)  # sampling works on a copy
    with pytest.raises(UQError):
        prior.sample(0, torch.Generator())


# ----------------------------------------------------------------------------- shipped gmm8 priors vs their mixture


GMM8_DRAWS = 1000
# the shipped DDPMScheduler's config as a DDIM scheduler (deterministic, 50 steps): the prior's `scheduler` key
DDIM = {"class": "DDIMScheduler", "beta_schedule": "linear", "num_train_timesteps": 1000, "clip_sample": False}


def test_mixture_moment_z_is_standard_on_exact_draws() -> None:
    """On exact mixture draws the z-scores are N(0, 1) (mean z² ≈ 1 over 64 pixels); a 10 % wider sample is caught."""
    from uqcampaign.kernels.metrics import mixture_moment_z
    from uqcampaign.kernels.training.datasets import gmm8_prior

    exact = gmm8_prior()
    x = exact.sample(4000, torch.Generator().manual_seed(0))
    z_mean, z_std = mixture_moment_z(x, exact.weights, exact.means, exact.variances)
    assert 0.6 < float(z_mean.square().mean()) < 1.5 and 0.6 < float(z_std.square().mean()) < 1.5
    wide = exact.means.reshape(5, -1).T @ exact.weights  # the mixture mean, (64,)
    _, z_wide = mixture_moment_z(wide + 1.1 * (x.reshape(4000, -1) - wide), exact.weights, exact.means, exact.variances)
    assert float(z_wide.min()) > 3.0


@functools.cache
def gmm8_figures(name: str, kind: str, steps: int | None, ddim: bool = False):
    """1000 draws of the shipped prior ``name`` scored against the gmm8 mixture it was trained on (cached per session)."""
    from uqcampaign.kernels.problems import score_prior_draws
    from uqcampaign.kernels.training.datasets import gmm8_prior

    if not (REPO / "priors" / name).is_dir():
        pytest.skip(f"priors/{name} not shipped")
    spec = {"kind": kind, "path": f"priors/{name}", "sample_steps": steps, **({"scheduler": DDIM} if ddim else {})}
    with torch.no_grad():
        draws = build_prior(spec, REPO).sample(GMM8_DRAWS, torch.Generator().manual_seed(0))
    score = score_prior_draws(gmm8_prior(), draws)
    print(f"\n[sample] {name} ({steps or 'default'} {'DDIM ' if ddim else ''}steps): {score}")
    return score


# gmm8-diffusion through 50 deterministic DDIM steps (its full 1000-step DDPM sampler takes ~10-30 min here:
# its figures are in BENCHMARKS.md, `benchmarks/bench_prior_sampling.py`)
DIFFUSION = ("gmm8-diffusion", "diffusion", 50, True)


@pytest.mark.slow
def test_gmm8_diffusion_draws_mean_and_sliced_wasserstein() -> None:
    """The per-pixel means within 3 SE and the SW distance within 1.5 × the floor (measured: printed line, BENCHMARKS.md)."""
    score = gmm8_figures(*DIFFUSION)
    assert score.z_mean < 3.0, score
    assert score.sw < 1.5 * score.floor, score


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the shipped gmm8-diffusion under-disperses (BENCHMARKS.md, section sampling, n = 1000: max |z| of the "
                          "std 6.70 at 50 DDIM steps, 24 of 64 pixels beyond 3 SE; 4.68 and 9 of 64 with the full 1000-step DDPM "
                          "sampler; mean z of the std -2.32 / -1.06): the network's own error, not the sampler (prior.sample is "
                          "diffusers' DDPMPipeline draw for draw, test_prior_sample_is_the_diffusers_pipeline)")
def test_gmm8_diffusion_draws_per_pixel_std() -> None:
    assert gmm8_figures(*DIFFUSION).z_std < 3.0


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the shipped gmm8-cm is a poor sampler from pure noise (BENCHMARKS.md, section sampling): one step "
                          "gives max |z| 28.77 (mean) and 46.88 (std, over-dispersed), SW 7.12 x the floor; 2 steps do not fix it "
                          "(SW 4.35 x). Distilled in 600 steps for LATINO's moderate noise levels; prior.sample is diffusers' "
                          "ConsistencyModelPipeline draw for draw")
def test_gmm8_cm_draws_match_the_mixture() -> None:
    score = gmm8_figures("gmm8-cm", "consistency", None)
    assert score.z_mean < 3.0 and score.z_std < 3.0 and score.sw < 1.5 * score.floor, score
