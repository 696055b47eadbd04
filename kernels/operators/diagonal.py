"""Operators diagonal in the pixel basis (``AᵀA = diag(w²)``): ``denoise`` and ``inpaint``; prox and pinv elementwise."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uqcampaign.kernels.errors import require_fit
from uqcampaign.kernels.operators.base import ImgShape, LinearOperator, Scalar, _cast
from uqcampaign.kernels.operators.spec import file_mask, param

__all__ = ["DiagonalOperator", "Denoise", "Inpainting"]


class DiagonalOperator(LinearOperator):
    """``A x = w ⊙ x`` with ``w`` broadcastable to ``(C, H, W)``: ``AᵀA = diag(w²)``, everything elementwise."""

    def __init__(self, weights: Tensor, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(img_shape, img_shape, spec)
        self.weights = weights.to(torch.float64)
        self.weights_inv = torch.where(self.weights != 0, 1.0 / self.weights, torch.zeros_like(self.weights))

    def A(self, x: Tensor) -> Tensor:
        return _cast(self.weights, x) * x

    A_T = A

    def pinv(self, y: Tensor) -> Tensor:
        y = self._batched(y)
        return _cast(self.weights_inv, y) * y

    def prox_data(self, u: Tensor, y: Tensor, sigma: Scalar, delta: Scalar) -> Tensor:
        s2, d = self._check_sigma_delta(u, sigma, delta)
        w = _cast(self.weights, u)
        return (w * _cast(y, u) / s2 + u / d) / (w * w / s2 + 1.0 / d)

    def norm_sq(self) -> float:
        return float((self.weights**2).max())

    def obs_cov_solve(self, r: Tensor, s2: float, c: float) -> Tensor:
        """``A Aᵀ = diag(w²)``: elementwise ``r / (s2 + c w²)``."""
        self._check_cov(s2, c)
        return r / (s2 + c * _cast(self.weights, r) ** 2)

    def obs_cov_logdet(self, s2: float, c: float) -> float:
        self._check_cov(s2, c)
        return float(torch.log(s2 + c * self.weights**2).expand(self.obs_shape).sum())


class Denoise(DiagonalOperator):
    """Denoising: the identity, ``y = x``; obs ``(C, H, W)``.

    Spec ``{kind: denoise}``.

    Reference: none (the identity).

    Keys: none.
    """

    kind = "denoise"

    def __init__(self, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(torch.ones(1, 1, 1, dtype=torch.float64), img_shape, spec)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> Denoise:
        return cls(img_shape, {})


class Inpainting(DiagonalOperator):
    """Inpainting: a 0/1 pixel mask, ``y = M ⊙ x``; obs ``(C, H, W)`` (missing pixels are 0).

    Spec ``{kind: inpaint, fraction: 0.5, seed: 0}`` or ``{kind: inpaint, mask: file.npy}``.

    Reference: deepinv.physics.Inpainting; the inpainting experiments of Laumont et al. 2022, SIAM J. Imaging Sci. 15(2).

    Keys:
        fraction: fraction of the H·W pixel positions kept, in (0, 1]: exactly round(fraction·H·W) positions,
            shared over channels (a missing pixel loses all its channels).
        seed: seed of numpy.random.default_rng that draws the kept positions.
        mask: a .npy file of 0/1 values, (C, H, W) or (H, W), instead of fraction and seed.
    """

    kind = "inpaint"
    KEYS = ("fraction", "seed", "mask")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> Inpainting:
        if "mask" in spec:
            return cls(file_mask(spec, img_shape, root, "inpaint", ("fraction", "seed")), img_shape, {"mask": str(spec["mask"])})
        _, h, w = img_shape
        fraction = param(spec, "fraction", 0.5, "inpaint", minimum=0.0, exclusive=True, maximum=1.0)
        seed = param(spec, "seed", 0, "inpaint", integer=True, minimum=0)
        n_keep = round(fraction * h * w)
        require_fit(
            n_keep > 0,
            f"operator inpaint: fraction={fraction} keeps no pixel of a {h}x{w} image; raise it above {0.5 / (h * w):.2g}",
        )
        keep = np.random.default_rng(seed).permutation(h * w)[:n_keep]
        mask = np.zeros(h * w)
        mask[keep] = 1.0
        return cls(torch.from_numpy(mask).reshape(1, h, w), img_shape, {"fraction": fraction, "seed": seed})
