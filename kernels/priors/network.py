"""What every prior holding ``diffusers`` networks shares: pixel range, device, dtype, shapes, class labels, ``to``."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.pixel_range import IDENTITY_RANGE, PixelRange

__all__ = ["NetworkPrior", "check_class_label", "unet_downsampling"]


def unet_downsampling(config: Any) -> int:
    """The factor a ``UNet2DModel`` downsamples by: ``2^(blocks − 1)`` (every down block but the last halves the side)."""
    return 2 ** (len(config["down_block_types"]) - 1)


def check_class_label(config: Any, label: Any, kind: str) -> int | None:
    """The ``class_label`` key checked against a ``UNet2DModel`` config (before any weight is read).

    A class-conditional model (``num_class_embeds`` or ``class_embed_type`` set) needs one label in
    ``[0, num_class_embeds)``; an unconditional one takes none (``null``).
    """
    classes = config.get("num_class_embeds")
    conditional = classes is not None or config.get("class_embed_type") is not None
    if not conditional:
        require(label is None, f"prior {kind!r}: class_label = {label!r} but the model is unconditional (no num_class_embeds); "
                               "remove class_label or set it to null")
        return None
    span = f"an integer in [0, {classes})" if classes is not None else "an integer"
    require(label is not None, f"prior {kind!r}: the model is class-conditional ({classes} classes); add class_label: {span} to the prior")
    require(isinstance(label, int) and not isinstance(label, bool) and label >= 0 and (classes is None or label < classes),
            f"prior {kind!r}: class_label = {label!r} must be {span}")
    return int(label)


class NetworkPrior:
    """Base of the learned priors (`diffusion`, `consistency`, `latent-consistency`).

    Subclasses set ``kind``, ``unet``, ``img_shape``, ``pixel_range`` (:class:`PixelRange`),
    ``alphas_cumprod (T,)`` float64 in campaign units and list in ``_networks`` the
    ``torch.nn.Module`` attributes and in ``_tensors`` the tensors (or tuples of tensors) that
    follow the prior to a device / dtype. ``network_calls``: UNet evaluations per call of
    ``denoise``/``consistency`` (2 under classifier-free guidance); samplers count ``nfe`` with it.
    ``sample_calls``: UNet evaluations per image of :meth:`sample` (its steps × ``network_calls``),
    the cost of a chain started at a prior draw (``init: prior``).
    ``source``: the loader's record of how the prior was built (kept in :meth:`describe`).
    """

    kind: str
    path: str | None
    img_shape: tuple[int, int, int]
    unet: torch.nn.Module
    scheduler: Any
    alphas_cumprod: Tensor
    pixel_range: PixelRange = IDENTITY_RANGE
    network_calls: int = 1
    class_label: int | None = None
    source: dict[str, Any]
    _networks: tuple[str, ...] = ("unet",)
    _tensors: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def support(self) -> tuple[float, float]:
        """A box ``(lo, hi)`` in campaign units holding essentially all prior mass (:meth:`PixelRange.support`)."""
        return self.pixel_range.support()

    @property
    def sample_calls(self) -> int:
        """UNet evaluations per image of :meth:`sample`: ``sample_step_count() × network_calls``."""
        return self.sample_step_count() * self.network_calls

    def sample_step_count(self) -> int:
        """Steps of :meth:`sample` (``sample_steps``, else the kind's default)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able description kept in the store's attrs: the common fields plus :meth:`_description`."""
        return {
            "kind": self.kind,
            "path": self.path,
            "network": type(self.unet).__name__,
            "parameters": int(sum(p.numel() for name in self._networks for p in getattr(self, name).parameters())),
            "scheduler": type(self.scheduler).__name__,
            "img_shape": list(self.img_shape),
            **self.pixel_range.describe(),
            "network_dtype": str(self.dtype).removeprefix("torch."),
            "network_calls": self.network_calls,
            "sample_calls": self.sample_calls,
            **({"class_label": self.class_label} if self.class_label is not None else {}),
            **self._description(),
            **getattr(self, "source", {}),
        }

    def _description(self) -> dict[str, Any]:
        """The fields of :meth:`describe` proper to a subclass."""
        return {}

    def _class_labels(self, batch: int, device: torch.device) -> Tensor | None:
        """``class_labels (batch,)`` for a class-conditional UNet, None otherwise."""
        if self.class_label is None:
            return None
        return torch.full((batch,), self.class_label, dtype=torch.long, device=device)

    def _check_shape(self, x: Tensor, shape: tuple[int, ...], what: str = "images") -> None:
        """Raise UQError unless ``x`` is ``(B, *shape)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
            raise UQError(
                f"prior {self.kind!r} takes {what} (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}; "
                "resize the data or set the prior's image_size to the data's"
            )

    @staticmethod
    def _check_count(n: Any) -> int:
        require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f"number of prior samples n = {n!r} must be an integer >= 1")
        return n

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Standard normal noise drawn on the generator's device (the same draws on any prior device), float32 on the prior's device."""
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(self.device)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
        """A copy whose networks and tensors are on ``device`` in float ``dtype`` (self when nothing changes).

        Networks are copied only when they move, so a prior shared by samplers is never
        changed under them; ``alphas_cumprod`` stays float64.
        """
        require(dtype is None or dtype.is_floating_point, f"prior dtype must be a float dtype, got {dtype}; use torch.float32 or torch.float64")
        target = None if device is None else torch.device(device)
        if (target is None or target.type == self.device.type) and (dtype is None or dtype == self.dtype):
            return self
        new = copy.copy(self)
        for name in self._networks:
            setattr(new, name, copy.deepcopy(getattr(self, name)).to(device=device, dtype=dtype))
        for name in self._tensors:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                setattr(new, name, tuple(v.to(device=device, dtype=dtype) for v in value))
            else:
                setattr(new, name, value.to(device=device, dtype=dtype))
        if device is not None:
            new.alphas_cumprod = self.alphas_cumprod.to(device)
        return new
