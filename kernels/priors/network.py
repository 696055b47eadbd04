"""What every prior holding ``diffusers`` networks shares: device, dtype, input shapes, ``to``."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require

__all__ = ["NetworkPrior"]


class NetworkPrior:
    """Base of the learned priors (`diffusion`, `consistency`, `latent-consistency`).

    Subclasses set ``kind``, ``unet``, ``alphas_cumprod (T,)`` float64 and list in
    ``_networks`` the ``torch.nn.Module`` attributes and in ``_tensors`` the tensors that
    follow the prior to a device / dtype.
    """

    kind: str
    path: str | None
    img_shape: tuple[int, int, int]
    unet: torch.nn.Module
    scheduler: Any
    alphas_cumprod: Tensor
    _networks: tuple[str, ...] = ("unet",)
    _tensors: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        """JSON-able description kept in the store's attrs: the common fields plus :meth:`_description`."""
        return {
            "kind": self.kind,
            "path": self.path,
            "network": type(self.unet).__name__,
            "parameters": int(sum(p.numel() for name in self._networks for p in getattr(self, name).parameters())),
            "scheduler": type(self.scheduler).__name__,
            "img_shape": list(self.img_shape),
            **self._description(),
        }

    def _description(self) -> dict[str, Any]:
        """The fields of :meth:`describe` proper to a subclass."""
        return {}

    def _check_shape(self, x: Tensor, shape: tuple[int, ...], what: str = "images") -> None:
        """Raise UQError unless ``x`` is ``(B, *shape)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
            raise UQError(
                f"prior {self.kind!r} takes {what} (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}; "
                "resize the data or use a prior trained at that size"
            )

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
            setattr(new, name, getattr(self, name).to(device=device, dtype=dtype))
        if device is not None:
            new.alphas_cumprod = self.alphas_cumprod.to(device)
        return new
