"""The ``latent-consistency`` prior: the LATINO setup (Stable Diffusion 1.5 / SDXL + LCM at full scale).

A ``LatentConsistencyModelPipeline``, ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``
folder (``save_pretrained``; the scheduler swapped for ``LCMScheduler``, see
:mod:`~uqcampaign.kernels.priors.latent_loading`)::

    vae/           AutoencoderKL           E(x) = s · mean q(z | a + s_x x),  D(z) = (dec(z / s) − a) / s_x
    unet/          UNet2DConditionModel    ε̂(z_t, t, c) (or v̂), optional guidance embedding
    text_encoder/  CLIPTextModel           c = the prompt embedding (:mod:`~uqcampaign.kernels.priors.prompts`)
    scheduler/     LCMScheduler            ᾱ_t, the boundary scalings c_skip(t), c_out(t)

Campaign images (``image_range``, default ``[0, 1]``) are mapped to the VAE's ``data_range``
(default ``[-1, 1]``, Stable Diffusion's) by ``x ↦ a + s_x x`` (:class:`PixelRange`); ``s`` is the
VAE's ``scaling_factor`` (minus its ``shift_factor`` where set). The latent schedule is the UNet's
own: the range map acts on the codec only. The consistency map is the LCM parameterisation
(Luo et al. 2023, eq. 9)::

    G(z_t, t, c) = c_skip(t) z_t + c_out(t) x̂_0(z_t, t, c),   x̂_0 = (z_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t)

which for a distilled LCM (or an LCM-LoRA fused into SD) is its one-step map and for a plain
latent ε-model is the Tweedie denoiser up to ``c_skip(t) ≈ 0``.

Guidance (``guidance_scale = w``), as diffusers' pipelines do it:

* a UNet with a guidance embedding (``time_cond_proj_dim``: LCM, LCM-SDXL) gets ``w − 1`` embedded
  (``timestep_cond``): one network call;
* any other UNet with ``w > 1`` (SD + LCM-LoRA, DMD2) runs classifier-free guidance,
  ``ε̂ = ε̂(z, ∅) + w (ε̂(z, c) − ε̂(z, ∅))``: two network calls per consistency evaluation
  (one batched UNet call on ``2B`` latents), so :attr:`network_calls` is 2 and samplers count both;
* ``w = 1``: the conditional network alone.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor
from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.diffusion import timesteps_for, tweedie_x0
from uqcampaign.kernels.priors.network import NetworkPrior
from uqcampaign.kernels.priors.pixel_range import SD_VAE_RANGE, PixelRange
from uqcampaign.kernels.priors.prompts import Condition, as_condition

__all__ = ["GUIDANCE_MODES", "LatentConsistencyPrior", "guidance_embedding", "lcm_boundary", "lcm_consistency"]

# "embedding": w − 1 through the UNet's guidance embedding; "cfg": classifier-free guidance; "none": w = 1.
GUIDANCE_MODES = ("embedding", "cfg", "none")


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of the guidance scale ``w (B,)`` (the LCM pipeline's ``timestep_cond``)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = (w.float() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def lcm_boundary(scheduler: Any, alphas_cumprod: Tensor, z: Tensor, steps: Tensor, out: Tensor, prediction_type: str) -> Tensor:
    """``c_skip(t) z_t + c_out(t) x̂_0`` from the network output ``out`` (Luo et al. 2023, eq. 9); ``z, out (B, C_z, h, w)``.

    Tweedie's formula and the boundary scalings run in ``z``'s dtype, the scalings computed in
    float64 ((10 t)² overflows float16).
    """
    x0 = tweedie_x0(z, out, alphas_cumprod.to(z.device)[steps].to(z.dtype).view(-1, 1, 1, 1), prediction_type)
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(steps.to(torch.float64).view(-1, 1, 1, 1))
    return c_skip.to(z.dtype) * z + c_out.to(z.dtype) * x0


def lcm_consistency(unet: Any, scheduler: Any, alphas_cumprod: Tensor, z: Tensor, steps: Tensor, cond: Tensor,
                    timestep_cond: Tensor | None, prediction_type: str) -> Tensor:
    """The LCM map ``G(z_t, t, c)`` of one UNet call (the distillation's): ``z (B, C_z, h, w)``, ``steps`` LongTensor ``(B,)``,
    ``cond (B, L, D)``, ``timestep_cond (B, d)`` or None. The UNet runs in its own dtype (half precision allowed)."""
    dtype = next(unet.parameters()).dtype
    embedding = None if timestep_cond is None else timestep_cond.to(dtype)
    out = unet(z.to(dtype), steps, encoder_hidden_states=cond.to(dtype), timestep_cond=embedding).sample.to(z.dtype)
    return lcm_boundary(scheduler, alphas_cumprod, z, steps, out, prediction_type)


class LatentConsistencyPrior(NetworkPrior):
    """Latent prior: ``encode``/``decode`` through the VAE, ``consistency`` through the conditioned UNet.

    ``img_shape = (C, H, W)`` of the campaign images (any ``H, W`` multiple of the VAE factor
    ``f = 2^(levels − 1)``), ``latent_shape = (C_z, H/f, W/f)``; ``condition``: the prompt embedding,
    a tensor ``(1, L, D)`` (SD-1.5, LCM) or, for SDXL, the pair ``(embeds (1, L, D), pooled (1, D_proj))``;
    ``negative_condition``: the same for the empty prompt (classifier-free guidance only);
    ``time_ids (1, 6)``: SDXL's size conditioning (None otherwise); ``alphas_cumprod (T,)`` float64.
    """

    kind = "latent-consistency"
    is_latent = True

    _networks = ("vae", "unet")
    _tensors = ("condition", "negative_condition", "time_ids")

    def __init__(self, vae: Any, unet: Any, scheduler: Any, condition: Tensor | tuple, *, prompt: str,
                 guidance_scale: float = 1.0, negative_condition: Tensor | tuple | None = None, time_ids: Tensor | None = None,
                 img_shape: tuple[int, int, int] | None = None, pixel_range: PixelRange = SD_VAE_RANGE,
                 sample_steps: int | None = None, path: str | None = None, source: dict[str, Any] | None = None) -> None:
        vcfg, ucfg = vae.config, unet.config
        factor = 2 ** (len(vcfg.block_out_channels) - 1)
        size = vcfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        c, h, w = tuple(img_shape) if img_shape is not None else (int(vcfg.in_channels), int(h), int(w))
        require(ucfg.in_channels == vcfg.latent_channels,
                f"prior {self.kind!r}: UNet takes {ucfg.in_channels} latent channels but the VAE makes {vcfg.latent_channels}; the folder mixes two models")
        pred = scheduler.config.prediction_type
        require(pred in ("epsilon", "v_prediction", "sample"), f"prior {self.kind!r}: prediction_type {pred!r} is not supported")
        self.vae = vae.eval().requires_grad_(False)
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prediction_type: str = pred
        self.img_shape: tuple[int, int, int] = (int(c), int(h), int(w))
        self.latent_shape: tuple[int, int, int] = (int(vcfg.latent_channels), int(h) // factor, int(w) // factor)
        self.scaling_factor = float(vcfg.scaling_factor)
        self.shift_factor = float(getattr(vcfg, "shift_factor", None) or 0.0)
        self.pixel_range = pixel_range
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.detach().to(torch.float64).clone()
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.condition = condition.detach() if isinstance(condition, Tensor) else tuple(v.detach() for v in condition)
        self.negative_condition = negative_condition
        self.time_ids = time_ids
        self.prompt = prompt
        self.guidance_scale = float(guidance_scale)
        if ucfg.time_cond_proj_dim is not None:
            self.guidance = "embedding"
        else:
            self.guidance = "cfg" if self.guidance_scale > 1.0 else "none"
        require(self.guidance != "cfg" or negative_condition is not None,
                f"prior {self.kind!r}: classifier-free guidance needs the empty prompt's embedding")
        self.network_calls = 2 if self.guidance == "cfg" else 1
        self.sample_steps = sample_steps
        self.path = path
        self.source = dict(source or {})

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's dtype (float32 beside a float16 UNet when the VAE's ``force_upcast`` asks)."""
        return next(self.vae.parameters()).dtype

    # -- codec ---------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W)`` in campaign units -> ``z: (B, *latent_shape)`` (posterior mean, scaled)."""
        self._check_shape(x, self.img_shape, "images")
        xin = self.pixel_range.to_network(x.to(device=self.device, dtype=self.vae_dtype))
        z = self.vae.encode(xin).latent_dist.mean
        if self.shift_factor:
            z = z - self.shift_factor
        return (z * self.scaling_factor).to(dtype=x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """``z: (B, *latent_shape)`` -> ``x: (B, C, H, W)`` in campaign units (not clipped)."""
        self._check_shape(z, self.latent_shape, "latents")
        zin = z.to(device=self.device, dtype=self.vae_dtype) / self.scaling_factor
        if self.shift_factor:
            zin = zin + self.shift_factor
        return self.pixel_range.to_campaign(self.vae.decode(zin).sample).to(dtype=z.dtype)

    # -- the network -----------------------------------------------------------------------
    def _unet(self, z: Tensor, steps: Tensor, cond: Condition, timestep_cond: Tensor | None) -> Tensor:
        """One UNet call ``(B, C_z, h, w)`` in ``z``'s dtype; ``cond`` already batched (``B`` rows)."""
        dtype = self.dtype
        added = None
        if self.time_ids is not None:
            require(cond.pooled is not None, f"prior {self.kind!r} (SDXL) needs the pair (embeds, pooled) as its condition")
            added = {"text_embeds": cond.pooled.to(dtype), "time_ids": self.time_ids.to(z.device, dtype).expand(z.shape[0], -1)}
        embedding = None if timestep_cond is None else timestep_cond.to(dtype)
        out = self.unet(z.to(dtype), steps, encoder_hidden_states=cond.embeds.to(dtype), timestep_cond=embedding,
                        added_cond_kwargs=added).sample
        return out.to(z.dtype)

    def _batched(self, condition: Any, batch: int, device: torch.device) -> Condition:
        cond = as_condition(condition)
        pooled = None if cond.pooled is None else cond.pooled.to(device).expand(batch, -1)
        return Condition(cond.embeds.to(device).expand(batch, -1, -1), pooled)

    def consistency(self, z_t: Tensor, t: int | Tensor, condition: Tensor | tuple | None = None) -> Tensor:
        """``G(z_t, t, c)``: ``z_t (B, *latent_shape)``, t int or ``(B,)`` -> ``z_0 (B, *latent_shape)``.

        ``condition``: a prompt embedding used instead of :attr:`condition` (LATINO-PRO
        differentiates through it): a tensor ``(1 or B, L, D)``, or for SDXL the pair
        ``(embeds (1 or B, L, D), pooled (1 or B, D_proj))``; ``None`` uses the prior's own prompt.
        Under classifier-free guidance the unconditional branch keeps :attr:`negative_condition`.
        """
        self._check_shape(z_t, self.latent_shape, "latents")
        z = z_t.to(device=self.device)
        batch = z.shape[0]
        steps = timesteps_for(t, batch, self.num_train_timesteps, z.device)
        cond = self._batched(self.condition if condition is None else condition, batch, z.device)
        timestep_cond = None
        if self.guidance == "embedding":
            w = torch.full((batch,), self.guidance_scale - 1.0, device=z.device)
            timestep_cond = guidance_embedding(w, self.unet.config.time_cond_proj_dim)
        if self.guidance == "cfg":
            neg = self._batched(self.negative_condition, batch, z.device)
            both = Condition(torch.cat([neg.embeds, cond.embeds]), None if cond.pooled is None else torch.cat([neg.pooled, cond.pooled]))
            uncond, text = self._unet(torch.cat([z, z]), torch.cat([steps, steps]), both, None).chunk(2)
            out = uncond + self.guidance_scale * (text - uncond)
        else:
            out = self._unet(z, steps, cond, timestep_cond)
        return lcm_boundary(self.scheduler, self.alphas_cumprod, z, steps, out, self.prediction_type).to(device=z_t.device)

    def denoise(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """Not defined in pixel space for a latent prior: ULA/DPS need a pixel prior."""
        raise UQError(f"prior {self.kind!r} is a latent prior with no pixel denoiser; use sampler kind latino, or a diffusion prior")

    # -- drawing from the prior ---------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws ``(n, C, H, W)`` in campaign units, float32: LCM multistep sampling with the prompt
        (``sample_steps`` steps, default 4, the LCMScheduler's timesteps, as diffusers' LCM pipeline):
        ``z_{k+1} = sqrt(ᾱ) G(z_k, t_k, c) + sqrt(1 − ᾱ) ε`` at the next timestep, the last ``G`` decoded."""
        n = self._check_count(n)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.sample_step_count(), device=self.device)
        timesteps = [int(t) for t in scheduler.timesteps]
        z = self._noise((n, *self.latent_shape), generator) * scheduler.init_noise_sigma
        with torch.no_grad():
            for k, t in enumerate(timesteps):
                z0 = self.consistency(z, t)
                if k + 1 < len(timesteps):
                    ab = float(self.alphas_cumprod[timesteps[k + 1]])
                    z = math.sqrt(ab) * z0 + math.sqrt(1.0 - ab) * self._noise(z0.shape, generator)
            return self.decode(z0).float()

    def sample_step_count(self) -> int:
        """``sample_steps``, else 4 (the LCM pipeline's usual count)."""
        return int(self.sample_steps or 4)

    # -- bookkeeping -------------------------------------------------------------------------
    def _description(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "guidance_scale": self.guidance_scale,
            "guidance": self.guidance,
            "prediction_type": self.prediction_type,
            "latent_shape": list(self.latent_shape),
            "sample_steps": self.sample_steps,
            # (1, L, D): latino-pro's store arrays are declared from it; SDXL's pair (embeds, pooled) has none
            "condition_shape": None if isinstance(self.condition, tuple) else list(self.condition.shape),
            "condition_shapes": [list(c.shape) for c in self.condition] if isinstance(self.condition, tuple) else None,
        }
