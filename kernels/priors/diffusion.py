"""The ``diffusion`` prior: a diffusers ``UNet2DModel`` + DDPM/DDIM scheduler folder as a Tweedie denoiser.

Under variance-preserving noising ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` a network trained
with the mean-squared loss predicts a conditional mean, so, in the network's units,

    ε-prediction:  E[x_0 | x_t] = (x_t - sqrt(1 - ᾱ_t) ε̂(x_t, t)) / sqrt(ᾱ_t)
    v-prediction:  E[x_0 | x_t] = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v̂(x_t, t)
    x0-prediction: E[x_0 | x_t] = x̂_0(x_t, t)

(Tweedie's formula, Efron 2011; v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0, Salimans & Ho 2022), clipped to
``[-r, r]`` when the scheduler has ``clip_sample: true`` (as diffusers' ``step`` clips x̂_0: the
posterior mean of data in that range lies in it). Campaign images are mapped to the network's
range and back by :class:`~uqcampaign.kernels.priors.pixel_range.PixelRange` (its docstring has the
equations: the prior's ``alphas_cumprod`` is the campaign schedule ``ᾱ'``).

The network's parameters never require grad; a graph is built only when the caller's
``x_t`` requires grad (DPS' vector-Jacobian product). Chains go through in one call.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from uqcampaign.kernels.errors import require
from uqcampaign.kernels.priors.network import NetworkPrior
from uqcampaign.kernels.priors.pixel_loading import load_pixel_model
from uqcampaign.kernels.priors.pixel_range import IDENTITY_RANGE, PixelRange
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys

__all__ = [
    "DIFFUSION_PIPELINES",
    "DIFFUSION_SCHEDULERS",
    "DiffusionPrior",
    "load_diffusion_prior",
    "timesteps_for",
    "tweedie_x0",
]

DIFFUSION_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
DIFFUSION_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
_PREDICTIONS = ("epsilon", "v_prediction", "sample")
# diffusers' pipeline defaults for num_inference_steps (None: the full training schedule)
_DEFAULT_SAMPLE_STEPS = {"DDPMScheduler": None, "DDIMScheduler": 50}


def timesteps_for(t: int | Tensor, batch: int, num_train_timesteps: int, device: torch.device) -> Tensor:
    """``t`` as a LongTensor ``(batch,)`` on ``device``; UQError outside ``[0, T)``."""
    if isinstance(t, Tensor):
        steps = t.to(device=device, dtype=torch.long).reshape(-1)
        if steps.numel() == 1:
            steps = steps.expand(batch)
        require(steps.numel() == batch, f"timestep tensor has {steps.numel()} entries for a batch of {batch}; pass one int or one per chain")
        lo, hi = int(steps.min()), int(steps.max())
    else:
        lo = hi = int(t)
        steps = torch.full((batch,), lo, dtype=torch.long, device=device)
    require(0 <= lo and hi < num_train_timesteps, f"timestep {lo if lo < 0 else hi} outside [0, {num_train_timesteps}); use a step of the prior's schedule")
    return steps


def tweedie_x0(x_t: Tensor, out: Tensor, alpha_bar: Tensor, prediction_type: str) -> Tensor:
    """``E[x_0 | x_t]`` from a network output; ``alpha_bar`` broadcastable to ``x_t`` (B, 1, 1, 1)."""
    if prediction_type == "epsilon":
        return (x_t - (1.0 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * out
    return out


def check_sample_steps(value: Any, kind: str) -> int | None:
    """The ``sample_steps`` key: None or an integer >= 1."""
    require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
            f"prior {kind!r}: sample_steps = {value!r} must be an integer >= 1 or null")
    return value


class DiffusionPrior(NetworkPrior):
    """Pixel prior from a ``UNet2DModel`` and its training schedule.

    ``img_shape = (C, H, W)`` (any ``H, W`` the UNet takes; default its ``sample_size``);
    ``alphas_cumprod (T,)`` float64 is the campaign schedule (``network_alphas_cumprod`` the
    scheduler's). ``denoise`` and ``consistency`` take and return ``(B, C, H, W)`` in campaign units
    and the caller's dtype; the network runs in its own dtype on its own device.
    """

    kind = "diffusion"
    is_latent = False

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *, img_shape: tuple[int, int, int] | None = None,
                 pixel_range: PixelRange = IDENTITY_RANGE, class_label: int | None = None, clip_range: float | None = None,
                 sample_steps: int | None = None, path: str | None = None, source: dict[str, Any] | None = None) -> None:
        cfg = unet.config
        require(cfg.in_channels == cfg.out_channels,
                f"prior {self.kind!r}: UNet maps {cfg.in_channels} to {cfg.out_channels} channels; a denoiser needs equal counts")
        pred = scheduler.config.prediction_type
        require(pred in _PREDICTIONS, f"prior {self.kind!r}: prediction_type {pred!r} is not one of {_PREDICTIONS}")
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prediction_type: str = pred
        self.img_shape: tuple[int, int, int] = tuple(img_shape) if img_shape is not None else (int(cfg.in_channels), int(h), int(w))
        self.network_alphas_cumprod: Tensor = scheduler.alphas_cumprod.detach().to(torch.float64).clone()
        self.pixel_range = pixel_range
        self.alphas_cumprod: Tensor = pixel_range.campaign_alphas_cumprod(self.network_alphas_cumprod)
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.class_label = class_label
        self.clip_range = clip_range
        self.sample_steps = sample_steps
        self.path = path
        self.source = dict(source or {})

    # -- the two maps the samplers call -----------------------------------------------------
    def _network_denoise(self, x_net: Tensor, t: int | Tensor) -> Tensor:
        """Tweedie's ``E[x_0 | x_t]`` in network units (clipped as the scheduler asks), ``(B, C, H, W)``."""
        x = x_net.to(device=self.device)  # the network runs in its dtype, Tweedie's formula in the caller's
        steps = timesteps_for(t, x.shape[0], self.num_train_timesteps, x.device)
        out = self.unet(x.to(self.dtype), steps, class_labels=self._class_labels(x.shape[0], x.device)).sample.to(x.dtype)
        alpha_bar = self.network_alphas_cumprod.to(x.device)[steps].to(x.dtype).view(-1, 1, 1, 1)
        x0 = tweedie_x0(x, out, alpha_bar, self.prediction_type)
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0.to(device=x_net.device)

    def denoise(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """``E[x_0 | x_t]`` in campaign units: x_t `(B, C, H, W)` at ``ᾱ'_t``, t int or LongTensor `(B,)` -> `(B, C, H, W)`."""
        self._check_shape(x_t, self.img_shape)
        return self.pixel_range.campaign_map(self._network_denoise, x_t, t, self.network_alphas_cumprod)

    def consistency(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """One-step map x_t -> x_0 used by LATINO: for a diffusion prior, the Tweedie denoiser."""
        return self.denoise(x_t, t)

    # -- drawing from the prior ---------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws ``(n, C, H, W)`` in campaign units, float32: the folder's scheduler run as diffusers'
        ``DDPMPipeline``/``DDIMPipeline`` runs it (``sample_steps`` steps; default DDPM: all ``T``, DDIM: 50),
        ``x_T ~ N(0, I)`` and every step's noise from ``generator``."""
        n = self._check_count(n)
        scheduler = copy.deepcopy(self.scheduler)  # set_timesteps mutates it; the prior's stays untouched
        scheduler.set_timesteps(self.sample_step_count(), device=self.device)
        x = self._noise((n, *self.img_shape), generator) * scheduler.init_noise_sigma
        labels = self._class_labels(n, self.device)
        with torch.no_grad():
            for t in scheduler.timesteps:
                out = self.unet(x.to(self.dtype), t, class_labels=labels).sample.to(x.dtype)
                x = scheduler.step(out, t, x, generator=generator).prev_sample
        return self.pixel_range.to_campaign(x)

    def sample_step_count(self) -> int:
        """``sample_steps``, else the pipeline's default: all ``T`` for DDPM, 50 for DDIM."""
        return int(self.sample_steps or _DEFAULT_SAMPLE_STEPS.get(type(self.scheduler).__name__) or self.num_train_timesteps)

    # -- bookkeeping ------------------------------------------------------------------------
    def _description(self) -> dict[str, Any]:
        return {
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "clip_sample": self.clip_range,
            "sample_steps": self.sample_steps,
        }


def load_diffusion_prior(spec: dict[str, Any], root: Path | str | None = None) -> DiffusionPrior:
    """A ``DDPMPipeline``/``DDIMPipeline`` folder (or a bare ``UNet2DModel`` folder with a scheduler) as a denoiser.

    Reference: Ho, Jain & Abbeel 2020, NeurIPS, "Denoising diffusion probabilistic models"; Efron 2011, JASA 106 (Tweedie's formula).

    Keys:
        path: the model folder (relative to the campaign file): a pipeline folder written by save_pretrained,
            a bare UNet2DModel folder, a hub-cache folder models--ORG--NAME, or a hub id ORG/NAME already
            in the local hub cache (never downloaded).
        img_shape: [C, H, W] of the campaign images (default the UNet's sample_size); H and W must be
            multiples of the UNet's downsampling factor 2^(blocks - 1).
        image_size: H (or [H, W]) instead of img_shape.
        data_range: [lo, hi] the network was trained on (default: training.json, else the scheduler's
            clip_sample_range, else [-1, 1] as every hub pixel model).
        image_range: [lo, hi] of the campaign images (default [0, 1]); the prior maps them to data_range.
        variant: weight-file variant to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).
        dtype: float32, float16 or bfloat16: the network's dtype (default float32); formulas stay in the
            chains' dtype.
        scheduler: a folder or scheduler_config.json, or {class: DDPMScheduler, ...config keys}; required
            for a bare UNet folder, else overrides the pipeline's scheduler/.
        class_label: the class of a class-conditional UNet (num_class_embeds), null for unconditional ones.
        sample_steps: scheduler steps of prior.sample (data.simulate); default DDPM: all T, DDIM: 50.
    """
    kind = "diffusion"
    check_keys(spec, PRIOR_KEYS[kind])
    sample_steps = check_sample_steps(spec.get("sample_steps"), kind)
    model = load_pixel_model(spec, root, kind, DIFFUSION_PIPELINES, DIFFUSION_SCHEDULERS)
    return DiffusionPrior(model.unet, model.scheduler, img_shape=model.img_shape, pixel_range=model.pixel_range,
                          class_label=model.class_label, clip_range=model.clip_range, sample_steps=sample_steps,
                          path=str(spec["path"]), source=model.source)
