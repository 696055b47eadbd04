"""The pixel range of a learned prior: campaign images in their own units, the network in its own.

A network is trained on images in ``data_range = (lo, hi)`` (hub pixel models: ``[-1, 1]``;
the project's ``uqc train-prior`` pixel models: ``[0, 1]``); a campaign's images live in
``image_range`` (default ``[0, 1]``). The two are related by the affine map::

    x_net = a + s · x,    s = (hi − lo) / (hi' − lo'),   a = lo − s · lo'       (image_range = (lo', hi'))

Noise levels. A prior is met under VP noising ``x_t = sqrt(ᾱ'_t) x_0 + sqrt(1 − ᾱ'_t) ε`` in
campaign units. Dividing by ``sqrt(ᾱ'_t)`` gives the VE form ``x_0 + σ'_t ε`` with
``σ = sqrt((1 − ᾱ)/ᾱ)``; applying the map gives ``x_net,0 + s σ'_t ε``. So the campaign state at
step ``t`` is the network state at the *same* step ``t`` exactly when ``σ'_t = σ_t / s``::

    ᾱ'_t = 1 / (1 + σ_t² / s²) = s² ᾱ_t / (s² ᾱ_t + 1 − ᾱ_t)                       (campaign schedule)
    x_net,t = sqrt(ᾱ_t) (a + s x_t / sqrt(ᾱ'_t)) = κ_t x_t + a sqrt(ᾱ_t),  κ_t = sqrt(s² ᾱ_t + 1 − ᾱ_t)

and a prior's ``alphas_cumprod`` (what the samplers see) is ``ᾱ'``, not the network's ``ᾱ``.

Tweedie. ``E[x_0 | x_t] = (E[x_net,0 | x_net,t] − a) / s = (D_net(κ_t x_t + a sqrt(ᾱ_t), t) − a) / s``;
the same holds for any map to ``x_0`` (a consistency model's ``f``).

Score. ``∇ log p'_t(x_t) = (sqrt(ᾱ'_t) E[x_0 | x_t] − x_t) / (1 − ᾱ'_t)`` (Tweedie in campaign
units), equal to ``κ_t ∇ log p_t(x_net,t)``: the densities differ by the constant Jacobian ``κ_t^d``.

Prox and likelihood. ``y = A x + σ ε`` and ``prox_data`` act on campaign images: no change
(the denoiser and the decoder already return campaign units).

With ``s = 1, a = 0`` (the shipped priors) every map is the identity and is skipped, so their
figures are bit-for-bit those of the unmapped network.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from uqcampaign.kernels.errors import require
from uqcampaign.kernels.priors.base import alpha_bar

__all__ = ["IDENTITY_RANGE", "SD_VAE_RANGE", "SYMMETRIC_RANGE", "UNIT_RANGE", "PixelRange", "RangeMappedPrior", "parse_range"]

UNIT_RANGE = (0.0, 1.0)
SYMMETRIC_RANGE = (-1.0, 1.0)


def parse_range(value: Any, what: str) -> tuple[float, float]:
    """``[lo, hi]`` as floats with ``lo < hi``; UQError naming ``what`` otherwise."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    require(ok and float(value[0]) < float(value[1]), f"{what} = {value!r} must be [lo, hi] with finite lo < hi, e.g. [-1, 1]")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class PixelRange:
    """The affine map ``x_net = offset + scale · x`` from campaign units to network units (module docstring)."""

    data_range: tuple[float, float] = UNIT_RANGE
    image_range: tuple[float, float] = UNIT_RANGE

    @property
    def scale(self) -> float:
        """``s = (hi − lo) / (hi' − lo')``."""
        return (self.data_range[1] - self.data_range[0]) / (self.image_range[1] - self.image_range[0])

    @property
    def offset(self) -> float:
        """``a = lo − s · lo'``."""
        return self.data_range[0] - self.scale * self.image_range[0]

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0

    def to_network(self, x: Tensor) -> Tensor:
        """Campaign images ``x`` → network units ``a + s x`` (any shape)."""
        return x if self.identity else self.offset + self.scale * x

    def to_campaign(self, x_net: Tensor) -> Tensor:
        """Network units → campaign images ``(x_net − a) / s`` (any shape)."""
        return x_net if self.identity else (x_net - self.offset) / self.scale

    def campaign_alphas_cumprod(self, alphas_cumprod: Tensor) -> Tensor:
        """``ᾱ'_t = s² ᾱ_t / (s² ᾱ_t + 1 − ᾱ_t)``, ``(T,)`` float64 (the same tensor when the map is the identity)."""
        if self.identity:
            return alphas_cumprod
        ab = alphas_cumprod.to(torch.float64)
        s2 = self.scale**2
        return s2 * ab / (s2 * ab + 1.0 - ab)

    def campaign_map(self, network_map: Callable[[Tensor, Any], Tensor], x_t: Tensor, t: int | Tensor,
                     network_alphas_cumprod: Tensor) -> Tensor:
        """A network map to ``x_0`` seen in campaign units: ``(network_map(κ_t x_t + a sqrt(ᾱ_t), t) − a) / s``.

        ``x_t: (B, C, H, W)`` a campaign VP state at ``ᾱ'_t``; ``network_map`` takes a network VP
        state at ``ᾱ_t`` (``network_alphas_cumprod``) and returns network units. Differentiable in ``x_t``.
        """
        if self.identity:
            return network_map(x_t, t)
        ab = alpha_bar(network_alphas_cumprod, t, x_t)  # (B, 1, 1, 1) in x_t's dtype
        kappa = (self.scale**2 * ab + 1.0 - ab).sqrt()
        return self.to_campaign(network_map(kappa * x_t + self.offset * ab.sqrt(), t))

    def support(self) -> tuple[float, float]:
        """A box in campaign units holding essentially all prior mass: the data range mapped back,
        widened by its width on each side (``[0, 1]`` → ``[-1, 2]``, Laumont et al. 2022's ``C``)."""
        lo = (self.data_range[0] - self.offset) / self.scale
        hi = (self.data_range[1] - self.offset) / self.scale
        return lo - (hi - lo), hi + (hi - lo)

    def describe(self) -> dict[str, Any]:
        return {"data_range": list(self.data_range), "image_range": list(self.image_range)}


IDENTITY_RANGE = PixelRange(UNIT_RANGE, UNIT_RANGE)  # network units = campaign units
SD_VAE_RANGE = PixelRange(SYMMETRIC_RANGE, UNIT_RANGE)  # [0, 1] images, a VAE on [-1, 1] (Stable Diffusion)


class RangeMappedPrior:
    """A pixel prior defined in network units (``inner``) seen in campaign units through ``pixel_range``.

    ``denoise``/``consistency`` go through :meth:`PixelRange.campaign_map` (the code the learned
    priors use), ``alphas_cumprod`` is the campaign schedule ``ᾱ'`` and ``sample`` maps the inner
    draws back. With an exact ``inner`` (a Gaussian mixture in ``[-1, 1]`` units) this is an exact
    prior in campaign units: the test of the range equations.
    """

    is_latent = False

    def __init__(self, inner: Any, pixel_range: PixelRange) -> None:
        require(not getattr(inner, "is_latent", False), "RangeMappedPrior wraps a pixel prior; latent priors map the range in encode/decode")
        self.inner = inner
        self.pixel_range = pixel_range
        self.kind = inner.kind
        self.img_shape = tuple(inner.img_shape)
        self.alphas_cumprod = pixel_range.campaign_alphas_cumprod(inner.alphas_cumprod)

    def denoise(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """``E[x_0 | x_t]`` in campaign units; ``x_t (B, C, H, W)``."""
        return self.pixel_range.campaign_map(self.inner.denoise, x_t, t, self.inner.alphas_cumprod)

    def consistency(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """The inner one-step map in campaign units; ``x_t (B, C, H, W)``."""
        return self.pixel_range.campaign_map(self.inner.consistency, x_t, t, self.inner.alphas_cumprod)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` inner draws mapped to campaign units, ``(n, C, H, W)``."""
        return self.pixel_range.to_campaign(self.inner.sample(n, generator))

    def support(self) -> tuple[float, float]:
        return self.pixel_range.support()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), **self.pixel_range.describe()}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RangeMappedPrior:
        new = copy.copy(self)
        new.inner = self.inner.to(device=device, dtype=dtype)
        return new
