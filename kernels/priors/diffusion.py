"""The ``diffusion`` prior: a diffusers ``UNet2DModel`` + DDPM/DDIM scheduler folder as a Tweedie denoiser.

Under variance-preserving noising ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` a network trained
with the mean-squared loss predicts a conditional mean, so

    ε-prediction:  E[x_0 | x_t] = (x_t - sqrt(1 - ᾱ_t) ε̂(x_t, t)) / sqrt(ᾱ_t)
    v-prediction:  E[x_0 | x_t] = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v̂(x_t, t)
    x0-prediction: E[x_0 | x_t] = x̂_0(x_t, t)

(Tweedie's formula, Efron 2011; v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0, Salimans & Ho 2022).

The network's parameters never require grad; a graph is built only when the caller's
``x_t`` requires grad (DPS' vector-Jacobian product). Chains go through in one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.network import NetworkPrior
from uqcampaign.kernels.priors.hf_loading import check_component_class, check_image_shape, open_model_folder
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys

__all__ = [
    "DIFFUSION_PIPELINES",
    "DiffusionPrior",
    "load_diffusion_prior",
    "timesteps_for",
    "tweedie_x0",
]

DIFFUSION_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
_UNETS = ("UNet2DModel",)
_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
_PREDICTIONS = ("epsilon", "v_prediction", "sample")


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


class DiffusionPrior(NetworkPrior):
    """Pixel prior from a ``UNet2DModel`` and its training schedule.

    ``img_shape = (C, H, W)`` comes from the UNet config; ``alphas_cumprod (T,)`` float64 from
    the scheduler. ``denoise`` and ``consistency`` take and return ``(B, C, H, W)`` in the
    caller's dtype; the network runs in its own dtype on its own device.
    """

    kind = "diffusion"
    is_latent = False

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *, path: str | None = None) -> None:
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
        self.img_shape: tuple[int, int, int] = (int(cfg.in_channels), int(h), int(w))
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.detach().to(torch.float64).clone()
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.path = path

    # -- the two maps the samplers call -----------------------------------------------------
    def denoise(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """``E[x_0 | x_t]``: x_t `(B, C, H, W)`, t int or LongTensor `(B,)` -> `(B, C, H, W)`."""
        self._check_shape(x_t, self.img_shape)
        x = x_t.to(device=self.device)  # the network runs in its dtype, Tweedie's formula in the caller's
        steps = timesteps_for(t, x.shape[0], self.num_train_timesteps, x.device)
        out = self.unet(x.to(self.dtype), steps).sample.to(x.dtype)
        alpha_bar = self.alphas_cumprod.to(x.device)[steps].to(x.dtype).view(-1, 1, 1, 1)
        return tweedie_x0(x, out, alpha_bar, self.prediction_type).to(device=x_t.device)

    def consistency(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """One-step map x_t -> x_0 used by LATINO: for a diffusion prior, the Tweedie denoiser."""
        return self.denoise(x_t, t)

    # -- bookkeeping ------------------------------------------------------------------------
    def _description(self) -> dict[str, Any]:
        return {
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
        }


def _load_unet_and_scheduler(folder: Path, kind: str, schedulers: tuple[str, ...]) -> tuple[Any, Any]:
    """``(UNet2DModel, scheduler)`` of a pipeline folder, offline, safetensors only."""
    import diffusers

    unet_cfg = check_component_class(folder, "unet", "config.json", kind, _UNETS)
    sched_cfg = check_component_class(folder, "scheduler", "scheduler_config.json", kind, schedulers)
    require(any((folder / "unet").glob("*.safetensors")),
            f"prior {kind!r}: {str(folder / 'unet')!r} has no .safetensors weights; save the model with save_pretrained(safe_serialization=True)")
    unet_cls = getattr(diffusers, unet_cfg["_class_name"])
    sched_cls = getattr(diffusers, sched_cfg["_class_name"])
    try:
        unet = unet_cls.from_pretrained(folder, subfolder="unet", use_safetensors=True, local_files_only=True)
        scheduler = sched_cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UQError(f"prior {kind!r}: cannot load {str(folder)!r}: {first}") from None
    return unet, scheduler


def load_diffusion_prior(spec: dict[str, Any], root: Path | str | None = None) -> DiffusionPrior:
    """Diffusion model (a diffusers UNet2DModel and its scheduler): ε- or v-prediction turned into the Tweedie denoiser.

    Builds a :class:`DiffusionPrior` from ``{kind: diffusion, path: folder}``; nothing is fetched from the hub.

    Reference: Ho, Jain & Abbeel 2020, NeurIPS, "Denoising diffusion probabilistic models"; Efron 2011, JASA 106 (Tweedie's formula).

    Keys:
        path: a DDPMPipeline / DDIMPipeline folder written by save_pretrained (safetensors weights), relative
            to the campaign file's folder (required).
        img_shape: [C, H, W] the campaign's images must have; optional, checked against the model.
        image_size: H (or [H, W]) the campaign's images must have; optional, checked against the model.
    """
    check_keys(spec, PRIOR_KEYS["diffusion"])
    folder, _ = open_model_folder(spec, root, "diffusion", DIFFUSION_PIPELINES)
    unet, scheduler = _load_unet_and_scheduler(folder, "diffusion", _SCHEDULERS)
    prior = DiffusionPrior(unet, scheduler, path=str(spec["path"]))
    check_image_shape(spec, prior.img_shape, "diffusion")
    return prior
