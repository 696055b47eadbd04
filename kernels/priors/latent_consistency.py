"""The ``latent-consistency`` prior: the LATINO setup (Stable Diffusion 1.5 + LCM at full scale).

A ``LatentConsistencyModelPipeline`` folder (``save_pretrained``)::

    vae/           AutoencoderKL           E(x) = s · mean q(z | 2x - 1),  D(z) = (dec(z / s) + 1) / 2
    unet/          UNet2DConditionModel    ε̂(z_t, t, c) (or v̂), optional guidance embedding
    text_encoder/  CLIPTextModel           c = last hidden state of the prompt's tokens
    tokenizer/     CLIPTokenizer
    scheduler/     LCMScheduler            ᾱ_t, the boundary scalings c_skip(t), c_out(t)

Images are in ``[0, 1]`` (mapped to ``[-1, 1]`` for the VAE, as Stable Diffusion) and ``s`` is
the VAE's ``scaling_factor``. The consistency map is the LCM parameterisation (Luo et al. 2023,
eq. 9)::

    G(z_t, t, c) = c_skip(t) z_t + c_out(t) x̂_0(z_t, t, c),   x̂_0 = (z_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t)

which for a distilled LCM is its one-step map and for a plain latent ε-model (what
``uqc train-prior latent-consistency`` ships) is the Tweedie denoiser up to ``c_skip(t) ≈ 0``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.diffusion import timesteps_for, tweedie_x0
from uqcampaign.kernels.priors.network import NetworkPrior
from uqcampaign.kernels.priors.hf_loading import check_component_class, check_image_shape, open_model_folder
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys

__all__ = ["LATENT_PIPELINES", "LatentConsistencyPrior", "load_latent_consistency_prior", "guidance_embedding", "lcm_consistency",
           "encode_prompt"]

LATENT_PIPELINES = ("LatentConsistencyModelPipeline",)
_DEFAULT_PROMPT = "a handwritten digit"


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of the guidance scale ``w (B,)`` (the LCM pipeline's ``timestep_cond``)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = (w.float() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def lcm_consistency(unet: Any, scheduler: Any, alphas_cumprod: Tensor, z: Tensor, steps: Tensor, cond: Tensor,
                    timestep_cond: Tensor | None, prediction_type: str) -> Tensor:
    """The LCM map ``G(z_t, t, c) = c_skip(t) z_t + c_out(t) x̂_0(z_t, t, c)`` (Luo et al. 2023, eq. 9).

    ``z (B, C_z, h, w)``, ``steps`` LongTensor ``(B,)``, ``cond (B, L, D)``, ``timestep_cond (B, d)`` or None.
    The UNet runs in its own dtype (half precision allowed); Tweedie's formula and the boundary
    scalings run in ``z``'s dtype, the scalings computed in float64 ((10 t)² overflows float16).
    """
    dtype = next(unet.parameters()).dtype
    embedding = None if timestep_cond is None else timestep_cond.to(dtype)
    out = unet(z.to(dtype), steps, encoder_hidden_states=cond.to(dtype), timestep_cond=embedding).sample.to(z.dtype)
    x0 = tweedie_x0(z, out, alphas_cumprod.to(z.device)[steps].to(z.dtype).view(-1, 1, 1, 1), prediction_type)
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(steps.to(torch.float64).view(-1, 1, 1, 1))
    return c_skip.to(z.dtype) * z + c_out.to(z.dtype) * x0


class LatentConsistencyPrior(NetworkPrior):
    """Latent prior: ``encode``/``decode`` through the VAE, ``consistency`` through the conditioned UNet.

    ``img_shape = (C, H, W)`` of the VAE's images, ``latent_shape = (C_z, H/f, W/f)`` with
    ``f = 2^(levels - 1)``; ``condition: (1, L, D)`` the prompt embedding; ``alphas_cumprod (T,)`` float64.
    """

    kind = "latent-consistency"
    is_latent = True

    _networks = ("vae", "unet")
    _tensors = ("condition",)

    def __init__(self, vae: Any, unet: Any, scheduler: Any, condition: Tensor, *, prompt: str,
                 guidance_scale: float = 1.0, path: str | None = None) -> None:
        vcfg, ucfg = vae.config, unet.config
        factor = 2 ** (len(vcfg.block_out_channels) - 1)
        size = vcfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        require(ucfg.in_channels == vcfg.latent_channels,
                f"prior {self.kind!r}: UNet takes {ucfg.in_channels} latent channels but the VAE makes {vcfg.latent_channels}; the folder mixes two models")
        pred = scheduler.config.prediction_type
        require(pred in ("epsilon", "v_prediction", "sample"), f"prior {self.kind!r}: prediction_type {pred!r} is not supported")
        self.vae = vae.eval().requires_grad_(False)
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prediction_type: str = pred
        self.img_shape: tuple[int, int, int] = (int(vcfg.in_channels), int(h), int(w))
        self.latent_shape: tuple[int, int, int] = (int(vcfg.latent_channels), int(h) // factor, int(w) // factor)
        self.scaling_factor = float(vcfg.scaling_factor)
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.detach().to(torch.float64).clone()
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.condition: Tensor = condition.detach()
        self.prompt = prompt
        self.guidance_scale = float(guidance_scale)
        self.path = path

    # -- codec ---------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W)`` in ``[0, 1]`` -> ``z: (B, *latent_shape)`` (posterior mean, scaled)."""
        self._check_shape(x, self.img_shape, "images")
        xin = x.to(device=self.device, dtype=self.dtype)
        z = self.vae.encode(2.0 * xin - 1.0).latent_dist.mean * self.scaling_factor
        return z.to(dtype=x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """``z: (B, *latent_shape)`` -> ``x: (B, C, H, W)`` in image units (not clipped)."""
        self._check_shape(z, self.latent_shape, "latents")
        zin = z.to(device=self.device, dtype=self.dtype)
        x = (self.vae.decode(zin / self.scaling_factor).sample + 1.0) / 2.0
        return x.to(dtype=z.dtype)

    # -- the network -----------------------------------------------------------------------
    def consistency(self, z_t: Tensor, t: int | Tensor, condition: Tensor | None = None) -> Tensor:
        """``G(z_t, t, c)``: ``z_t (B, *latent_shape)``, t int or ``(B,)`` -> ``z_0 (B, *latent_shape)``.

        ``condition``: a prompt embedding ``(1 or B, L, D)`` used instead of :attr:`condition`
        (LATINO-PRO differentiates through it); ``None`` uses the prior's own prompt.
        """
        self._check_shape(z_t, self.latent_shape, "latents")
        z = z_t.to(device=self.device)
        batch = z.shape[0]
        steps = timesteps_for(t, batch, self.num_train_timesteps, z.device)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            w = torch.full((batch,), self.guidance_scale - 1.0, device=z.device)
            timestep_cond = guidance_embedding(w, self.unet.config.time_cond_proj_dim)
        cond = (self.condition if condition is None else condition).to(z.device).expand(batch, -1, -1)
        return lcm_consistency(self.unet, self.scheduler, self.alphas_cumprod, z, steps, cond, timestep_cond,
                               self.prediction_type).to(device=z_t.device)

    def denoise(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """Not defined in pixel space for a latent prior: ULA/DPS need a pixel prior."""
        raise UQError(f"prior {self.kind!r} is a latent prior with no pixel denoiser; use sampler kind latino, or a diffusion prior")

    # -- bookkeeping -------------------------------------------------------------------------
    def _description(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "guidance_scale": self.guidance_scale,
            "prediction_type": self.prediction_type,
            "latent_shape": list(self.latent_shape),
            "condition_shape": list(self.condition.shape),  # (1, L, D): latino-pro's store arrays are declared from it
        }


def encode_prompt(tokenizer: Any, text_encoder: Any, prompt: str | list[str]) -> Tensor:
    """The condition ``c (P, L, D)`` of ``P`` prompts (one string: ``P = 1``): CLIP's last hidden state of the padded tokens."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device)).last_hidden_state


def load_latent_consistency_prior(spec: dict[str, Any], root: Path | str | None = None) -> LatentConsistencyPrior:
    """Latent consistency model: VAE + conditioned UNet + LCMScheduler + CLIP text encoder (the LATINO setup).

    Builds a :class:`LatentConsistencyPrior` from ``{kind: latent-consistency, path, prompt}``; the text
    encoder runs once here and is then dropped.

    Reference: Luo, Tan, Huang, Li & Zhao 2023, arXiv:2310.04378, "Latent consistency models"; Rombach et al. 2022, CVPR (latent diffusion).

    Keys:
        path: a LatentConsistencyModelPipeline (or StableDiffusion with an LCMScheduler) folder written by
            save_pretrained (safetensors weights), relative to the campaign file's folder (required).
        prompt: text of the condition c (default "a handwritten digit").
        guidance_scale: classifier-free guidance scale w >= 1 given to the LCM as its embedding (default 1).
        img_shape: [C, H, W] the campaign's images must have; optional, checked against the model.
        image_size: H (or [H, W]) the campaign's images must have; optional, checked against the model.
    """
    kind = "latent-consistency"
    check_keys(spec, PRIOR_KEYS[kind])
    prompt = spec.get("prompt", _DEFAULT_PROMPT)
    require(isinstance(prompt, str), f"prior {kind!r}: prompt must be a string, got {prompt!r}")
    guidance = spec.get("guidance_scale", 1.0)
    require(isinstance(guidance, (int, float)) and guidance >= 1.0, f"prior {kind!r}: guidance_scale = {guidance!r} must be a number >= 1")
    folder, _ = open_model_folder(spec, root, kind, LATENT_PIPELINES)
    check_component_class(folder, "vae", "config.json", kind, ("AutoencoderKL",))
    check_component_class(folder, "unet", "config.json", kind, ("UNet2DConditionModel",))
    check_component_class(folder, "scheduler", "scheduler_config.json", kind, ("LCMScheduler",))
    check_component_class(folder, "text_encoder", "config.json", kind, ("CLIPTextModel",))
    for sub in ("vae", "unet", "text_encoder"):
        require(any((folder / sub).glob("*.safetensors")),
                f"prior {kind!r}: {str(folder / sub)!r} has no .safetensors weights; save the model with save_pretrained(safe_serialization=True)")
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, local_files_only=True)
        scheduler = LCMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UQError(f"prior {kind!r}: cannot load {str(folder)!r}: {first}") from None
    condition = encode_prompt(tokenizer, text_encoder.eval(), prompt)
    prior = LatentConsistencyPrior(vae, unet, scheduler, condition, prompt=prompt, guidance_scale=float(guidance),
                                   path=str(spec["path"]))
    check_image_shape(spec, prior.img_shape, kind)
    return prior
