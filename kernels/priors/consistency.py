"""The ``consistency`` prior: a consistency model (Song et al. 2023), one network call maps x_t to x_0.

The folder is a diffusers ``ConsistencyModelPipeline`` (``UNet2DModel`` +
``CMStochasticIterativeScheduler``), the layout of ``openai/diffusers-cd_imagenet64_l2``.
Consistency models live in the variance-exploding (Karras) parameterisation
``x_σ = x_0 + σ ε``; a VP state maps onto it exactly (``x_t / sqrt(ᾱ_t) = x_0 + σ_t ε`` with
``σ_t = sqrt((1 - ᾱ_t)/ᾱ_t)``), so with ``σ`` clamped to ``[σ_min, σ_max]``:

    f(x_t, t) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, 250 log σ),   x = x_t / sqrt(ᾱ_t)
    c_skip = σ_d² / ((σ - σ_min)² + σ_d²),  c_out = (σ - σ_min) σ_d / sqrt(σ² + σ_d²),  c_in = 1 / sqrt(σ² + σ_d²)

(Song et al. 2023, eq. 7 and appendix C; diffusers' ``CMStochasticIterativeScheduler``).
The prior's schedule ``alphas_cumprod`` is the DDPM linear one (T = 1000, as the exact priors),
which only chooses which σ a step ``t`` means. ``denoise`` is the same one-step map (a
consistency model has no Tweedie denoiser; at small σ the two agree).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.diffusion import timesteps_for
from uqcampaign.kernels.priors.network import NetworkPrior
from uqcampaign.kernels.priors.hf_loading import check_component_class, check_image_shape, open_model_folder
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys
from uqcampaign.kernels.schedule import linear_alphas_cumprod

__all__ = ["CONSISTENCY_PIPELINES", "ConsistencyPrior", "load_consistency_prior", "karras_consistency"]

CONSISTENCY_PIPELINES = ("ConsistencyModelPipeline",)


def karras_consistency(unet: torch.nn.Module, x: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float) -> Tensor:
    """The consistency function ``f(x, σ)`` on VE states ``x (B, C, H, W)``, ``σ (B,)`` (see module docstring)."""
    s = sigma.view(-1, 1, 1, 1).to(x.dtype)
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_out = (s - sigma_min) * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1.0 / (s**2 + sigma_data**2).sqrt()
    timestep = 250.0 * torch.log(sigma.to(x.dtype) + 1e-44)
    return c_skip * x + c_out * unet(c_in * x, timestep).sample


class ConsistencyPrior(NetworkPrior):
    """Pixel prior from a consistency model; ``img_shape (C, H, W)``, ``alphas_cumprod (T,)`` float64."""

    kind = "consistency"
    is_latent = False

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *, path: str | None = None) -> None:
        cfg = unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        require(cfg.in_channels == cfg.out_channels, f"prior {self.kind!r}: UNet maps {cfg.in_channels} to {cfg.out_channels} channels")
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.sigma_min = float(scheduler.config.sigma_min)
        self.sigma_max = float(scheduler.config.sigma_max)
        self.sigma_data = float(scheduler.config.sigma_data)
        self.img_shape: tuple[int, int, int] = (int(cfg.in_channels), int(h), int(w))
        self.alphas_cumprod: Tensor = linear_alphas_cumprod()
        self.path = path

    def consistency(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """One-step ``x_t -> x_0``: ``x_t (B, C, H, W)`` (VP), ``t`` int or ``(B,)`` -> ``(B, C, H, W)``."""
        self._check_shape(x_t, self.img_shape)
        param = next(self.unet.parameters())
        x = x_t.to(device=param.device, dtype=param.dtype)
        steps = timesteps_for(t, x.shape[0], self.alphas_cumprod.shape[0], x.device)
        ab = self.alphas_cumprod.to(x.device)[steps]
        sigma = ((1.0 - ab) / ab).sqrt().clamp(self.sigma_min, self.sigma_max)
        x_ve = x / ab.sqrt().to(x.dtype).view(-1, 1, 1, 1)
        out = karras_consistency(self.unet, x_ve, sigma, self.sigma_min, self.sigma_data)
        return out.to(device=x_t.device, dtype=x_t.dtype)

    denoise = consistency

    def _description(self) -> dict[str, Any]:
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }


def load_consistency_prior(spec: dict[str, Any], root: Path | str | None = None) -> ConsistencyPrior:
    """Consistency model (diffusers UNet2DModel + CMStochasticIterativeScheduler): one network call maps x_t to x_0.

    Builds a :class:`ConsistencyPrior` from ``{kind: consistency, path: folder}`` (offline, safetensors).

    Reference: Song, Dhariwal, Chen & Sutskever 2023, ICML, "Consistency models".

    Keys:
        path: a ConsistencyModelPipeline folder written by save_pretrained (safetensors weights), relative to
            the campaign file's folder (required).
        img_shape: [C, H, W] the campaign's images must have; optional, checked against the model.
        image_size: H (or [H, W]) the campaign's images must have; optional, checked against the model.
    """
    kind = "consistency"
    check_keys(spec, PRIOR_KEYS[kind])
    folder, _ = open_model_folder(spec, root, kind, CONSISTENCY_PIPELINES)
    check_component_class(folder, "unet", "config.json", kind, ("UNet2DModel",))
    check_component_class(folder, "scheduler", "scheduler_config.json", kind, ("CMStochasticIterativeScheduler",))
    require(any((folder / "unet").glob("*.safetensors")),
            f"prior {kind!r}: {str(folder / 'unet')!r} has no .safetensors weights; save the model with save_pretrained(safe_serialization=True)")
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, local_files_only=True)
        scheduler = CMStochasticIterativeScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UQError(f"prior {kind!r}: cannot load {str(folder)!r}: {first}") from None
    prior = ConsistencyPrior(unet, scheduler, path=str(spec["path"]))
    check_image_shape(spec, prior.img_shape, kind)
    return prior
