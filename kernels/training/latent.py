"""Recipe for the ``latent-consistency`` prior: a tiny Stable-Diffusion-shaped model on 16×16 digits.

Stage ``vae``: an ``AutoencoderKL`` on images mapped to ``[-1, 1]`` (as Stable Diffusion),
loss ``||D(z) - x||² + β KL(q(z|x) || N(0, I))`` with ``z ~ q(z|x)``.
Stage ``unet``: a ``UNet2DConditionModel`` ε-prediction model on the scaled latents
``z = s · mean(q(z|x))`` (``s`` = 1 / latent std, Stable Diffusion's ``scaling_factor``),
conditioned on the frozen CLIP embedding of ``"a handwritten digit <label>"`` (20% of the
time the generic prompt ``"a handwritten digit"``). The schedule is Stable Diffusion's
``scaled_linear`` (β from 0.00085 to 0.012, T = 1000) in an ``LCMScheduler``.

No LCM distillation: the ε-model is used as the consistency map through Tweedie's formula
(``G(z_t, t, c) = (z_t - sqrt(1-ᾱ) ε̂)/sqrt(ᾱ)``, combined with the LCM boundary scalings).
The CLIP text encoder is randomly initialised (seeded) and frozen, like SD's frozen encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.training.datasets import DIGIT_NAMES, get_dataset, digits16
from uqcampaign.kernels.training.loop import Stage

__all__ = ["latent_consistency_stages", "prompt_for", "GENERIC_PROMPT", "training_latent_means", "prompt_embeddings"]

GENERIC_PROMPT = "a handwritten digit"
_KL_WEIGHT = 1e-5
_GENERIC_FRACTION = 0.2


def prompt_for(label: int) -> str:
    """The training prompt of a digit class: ``"a handwritten digit seven"``."""
    return f"{GENERIC_PROMPT} {DIGIT_NAMES[int(label)]}"


def training_latent_means(vae: Any, device: torch.device) -> torch.Tensor:
    """Unscaled posterior means ``mean q(z | 2x − 1)`` of the digits16 training images, ``(N, C_z, h, w)``."""
    images, _ = digits16("train")
    with torch.no_grad():
        vae.eval()
        return vae.encode((2.0 * images - 1.0).to(device)).latent_dist.mean


def prompt_embeddings(tokenizer: Any, text_encoder: Any) -> torch.Tensor:
    """``(11, L, D)``: the embeddings of the ten class prompts (index = label), then of the generic prompt (index 10)."""
    from uqcampaign.kernels.priors.prompts import encode_prompt

    return encode_prompt(tokenizer, text_encoder, [prompt_for(k) for k in range(10)] + [GENERIC_PROMPT])


def latent_consistency_stages(dataset_name: str, steps: int, batch_size: int, lr: float, device: torch.device,
                              vae_steps: int = 1500) -> tuple[list[Stage], Any]:
    """``[vae stage, unet stage]`` and the ``LatentConsistencyModelPipeline`` they fill."""
    import tempfile

    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    from uqcampaign.kernels.training.models import tiny_autoencoder, tiny_clip, tiny_cond_unet, write_tiny_clip_tokenizer

    data = get_dataset(dataset_name)
    require(data.labelled, f"latent-consistency training needs a labelled dataset (digits16), got {dataset_name!r}")
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = tiny_clip(len(tokenizer)).to(device).eval().requires_grad_(False)
    vae = tiny_autoencoder(data.img_shape).to(device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, data.img_shape[1] // factor, data.img_shape[2] // factor)
    unet = tiny_cond_unet(latent_shape, text_encoder.config.hidden_size).to(device)
    scheduler = LCMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             prediction_type="epsilon", clip_sample=False)
    alphas = scheduler.alphas_cumprod.to(device)

    def vae_loss(generator: torch.Generator, step: int) -> torch.Tensor:
        x, _ = data.sample(batch_size, generator)
        x = (2.0 * x - 1.0).to(device)
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample
        return torch.nn.functional.mse_loss(recon, x) + _KL_WEIGHT * posterior.kl().mean() / x[0].numel()

    cache: dict[str, torch.Tensor] = {}

    def prepare() -> None:
        """Latents of every training image and the 11 prompt embeddings (the VAE is final by now)."""
        if cache:
            return
        means = training_latent_means(vae, device)
        scale = float(1.0 / means.std())  # Stable Diffusion's scaling_factor: unit-variance latents
        vae.register_to_config(scaling_factor=scale)
        cache["latents"], cache["embeddings"] = means * scale, prompt_embeddings(tokenizer, text_encoder)

    def unet_loss(generator: torch.Generator, step: int) -> torch.Tensor:
        prepare()
        images, labels = digits16("train")
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        generic = torch.rand(batch_size, generator=generator) < _GENERIC_FRACTION
        prompt_index = torch.where(generic, torch.full_like(labels[index], 10), labels[index])
        z0 = cache["latents"][index.to(device)]
        noise = torch.randn(z0.shape, generator=generator).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        ab = alphas[t].view(-1, 1, 1, 1)
        z_t = ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise
        pred = unet(z_t, t, encoder_hidden_states=cache["embeddings"][prompt_index.to(device)]).sample
        return torch.nn.functional.mse_loss(pred, noise)

    pipeline = LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                              scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipeline._uqc_finalize = prepare  # sets the VAE's scaling_factor even when the unet stage is resumed at its end
    stages = [Stage("vae", {"vae": vae}, vae_loss, vae_steps, lr=lr, ema_decay=0.999),
              Stage("unet", {"unet": unet}, unet_loss, steps, lr=lr, ema_decay=0.999)]
    return stages, pipeline
