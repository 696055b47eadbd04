"""The ``consistency`` prior: a consistency model (Song et al. 2023), one network call maps x_t to x_0.

The folder is a diffusers ``ConsistencyModelPipeline`` (``UNet2DModel`` +
``CMStochasticIterativeScheduler``), the layout of ``openai/diffusers-cd_imagenet64_l2``
(class-conditional: ``num_class_embeds``, the ``class_label`` key picks the class).
Consistency models live in the variance-exploding (Karras) parameterisation
``x_σ = x_0 + σ ε``; a VP state maps onto it exactly (``x_t / sqrt(ᾱ_t) = x_0 + σ_t ε`` with
``σ_t = sqrt((1 - ᾱ_t)/ᾱ_t)``), so with ``σ`` clamped to ``[σ_min, σ_max]``, in network units:

    f(x_t, t) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, 250 log σ),   x = x_t / sqrt(ᾱ_t)
    c_skip = σ_d² / ((σ - σ_min)² + σ_d²),  c_out = (σ - σ_min) σ_d / sqrt(σ² + σ_d²),  c_in = 1 / sqrt(σ² + σ_d²)

(Song et al. 2023, eq. 7 and appendix C; diffusers' ``CMStochasticIterativeScheduler``), clamped
to ``[-1, 1]`` when the scheduler has ``clip_denoised: true`` (as its ``step``). The network's
schedule is the DDPM linear one (T = 1000, as the exact priors), which only chooses which σ a
step ``t`` means; campaign images are mapped to the network's range by
:class:`~uqcampaign.kernels.priors.pixel_range.PixelRange` (``alphas_cumprod`` = campaign ``ᾱ'``,
``σ'_t = σ_t / s``). ``denoise`` is the same one-step map (a consistency model has no Tweedie
denoiser; at small σ the two agree).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from uqcampaign.kernels.errors import require
from uqcampaign.kernels.priors.diffusion import check_sample_steps, timesteps_for
from uqcampaign.kernels.priors.network import NetworkPrior
from uqcampaign.kernels.priors.pixel_loading import load_pixel_model
from uqcampaign.kernels.priors.pixel_range import IDENTITY_RANGE, PixelRange
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys
from uqcampaign.kernels.schedule import linear_alphas_cumprod

__all__ = ["CONSISTENCY_PIPELINES", "ConsistencyPrior", "karras_consistency", "load_consistency_prior"]

CONSISTENCY_PIPELINES = ("ConsistencyModelPipeline",)


def karras_consistency(unet: torch.nn.Module, x: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float,
                       class_labels: Tensor | None = None) -> Tensor:
    """The consistency function ``f(x, σ)`` on VE states ``x (B, C, H, W)``, ``σ (B,)`` (see module docstring)."""
    s = sigma.view(-1, 1, 1, 1).to(x.dtype)
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_out = (s - sigma_min) * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1.0 / (s**2 + sigma_data**2).sqrt()
    timestep = 250.0 * torch.log(sigma.to(x.dtype) + 1e-44)
    return c_skip * x + c_out * unet(c_in * x, timestep, class_labels=class_labels).sample


class ConsistencyPrior(NetworkPrior):
    """Pixel prior from a consistency model; ``img_shape (C, H, W)``, ``alphas_cumprod (T,)`` float64 (campaign units)."""

    kind = "consistency"
    is_latent = False

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *, img_shape: tuple[int, int, int] | None = None,
                 pixel_range: PixelRange = IDENTITY_RANGE, class_label: int | None = None, clip_range: float | None = None,
                 sample_steps: int | None = None, path: str | None = None, source: dict[str, Any] | None = None) -> None:
        cfg = unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        require(cfg.in_channels == cfg.out_channels, f"prior {self.kind!r}: UNet maps {cfg.in_channels} to {cfg.out_channels} channels")
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.sigma_min = float(scheduler.config.sigma_min)
        self.sigma_max = float(scheduler.config.sigma_max)
        self.sigma_data = float(scheduler.config.sigma_data)
        self.img_shape: tuple[int, int, int] = tuple(img_shape) if img_shape is not None else (int(cfg.in_channels), int(h), int(w))
        self.network_alphas_cumprod: Tensor = linear_alphas_cumprod()
        self.pixel_range = pixel_range
        self.alphas_cumprod: Tensor = pixel_range.campaign_alphas_cumprod(self.network_alphas_cumprod)
        self.class_label = class_label
        self.clip_range = clip_range
        self.sample_steps = sample_steps
        self.path = path
        self.source = dict(source or {})

    def _network_consistency(self, x_net: Tensor, t: int | Tensor) -> Tensor:
        """``f`` on a network VP state ``x_net (B, C, H, W)`` at the linear ``ᾱ_t``, in network units."""
        param = next(self.unet.parameters())
        x = x_net.to(device=param.device, dtype=param.dtype)
        steps = timesteps_for(t, x.shape[0], self.network_alphas_cumprod.shape[0], x.device)
        ab = self.network_alphas_cumprod.to(x.device)[steps]
        sigma = ((1.0 - ab) / ab).sqrt().clamp(self.sigma_min, self.sigma_max)
        x_ve = x / ab.sqrt().to(x.dtype).view(-1, 1, 1, 1)
        out = karras_consistency(self.unet, x_ve, sigma, self.sigma_min, self.sigma_data, self._class_labels(x.shape[0], x.device))
        if self.clip_range is not None:
            out = out.clamp(-self.clip_range, self.clip_range)
        return out.to(device=x_net.device, dtype=x_net.dtype)

    def consistency(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """One-step ``x_t -> x_0`` in campaign units: ``x_t (B, C, H, W)`` (VP at ``ᾱ'_t``), ``t`` int or ``(B,)`` -> ``(B, C, H, W)``."""
        self._check_shape(x_t, self.img_shape)
        return self.pixel_range.campaign_map(self._network_consistency, x_t, t, self.network_alphas_cumprod)

    denoise = consistency

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws ``(n, C, H, W)`` in campaign units, float32: diffusers' ``ConsistencyModelPipeline`` loop
        (``sample_steps`` consistency evaluations, default 1, Song et al. 2023 Algorithm 1), noise from ``generator``."""
        n = self._check_count(n)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.sample_step_count(), device=self.device)
        x = self._noise((n, *self.img_shape), generator) * scheduler.init_noise_sigma
        labels = self._class_labels(n, self.device)
        with torch.no_grad():
            for t in scheduler.timesteps:
                scaled = scheduler.scale_model_input(x, t)
                out = self.unet(scaled.to(self.dtype), t, class_labels=labels).sample.to(x.dtype)
                x = scheduler.step(out, t, x, generator=generator).prev_sample
        return self.pixel_range.to_campaign(x)

    def sample_step_count(self) -> int:
        """``sample_steps``, else 1 (one consistency evaluation per draw)."""
        return int(self.sample_steps or 1)

    def _description(self) -> dict[str, Any]:
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "clip_denoised": self.clip_range,
            "sample_steps": self.sample_steps,
        }


def load_consistency_prior(spec: dict[str, Any], root: Path | str | None = None) -> ConsistencyPrior:
    """A ``ConsistencyModelPipeline`` folder (or a bare ``UNet2DModel`` folder with a scheduler) as a one-step map.

    Reference: Song, Dhariwal, Chen & Sutskever 2023, ICML, "Consistency models", eq. 7 and Algorithm 1.

    Keys:
        path: the model folder (relative to the campaign file): a pipeline folder written by save_pretrained,
            a bare UNet2DModel folder, a hub-cache folder models--ORG--NAME, or a hub id ORG/NAME already
            in the local hub cache (never downloaded).
        img_shape: [C, H, W] of the campaign images (default the UNet's sample_size); H and W must be
            multiples of the UNet's downsampling factor 2^(blocks - 1).
        image_size: H (or [H, W]) instead of img_shape.
        data_range: [lo, hi] the network was trained on (default: training.json, else [-1, 1]).
        image_range: [lo, hi] of the campaign images (default [0, 1]); the prior maps them to data_range.
        variant: weight-file variant to load, e.g. fp16.
        dtype: float32, float16 or bfloat16: the network's dtype (default float32).
        scheduler: a folder or scheduler_config.json, or {class: CMStochasticIterativeScheduler, ...};
            required for a bare UNet folder.
        class_label: the class of a class-conditional model (num_class_embeds, e.g. ImageNet 0..999),
            null for unconditional ones; checked when the prior loads.
        sample_steps: consistency evaluations of prior.sample (data.simulate); default 1.
    """
    kind = "consistency"
    check_keys(spec, PRIOR_KEYS[kind])
    sample_steps = check_sample_steps(spec.get("sample_steps"), kind)
    model = load_pixel_model(spec, root, kind, CONSISTENCY_PIPELINES, ("CMStochasticIterativeScheduler",))
    return ConsistencyPrior(model.unet, model.scheduler, img_shape=model.img_shape, pixel_range=model.pixel_range,
                            class_label=model.class_label, clip_range=model.clip_range, sample_steps=sample_steps,
                            path=str(spec["path"]), source=model.source)
