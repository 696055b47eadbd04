"""``superres``: average pooling by an integer factor; prox by the Woodbury identity (``A Aᵀ = I/f²``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from uqcampaign.kernels.errors import require_fit
from uqcampaign.kernels.operators.base import ImgShape, LinearOperator, Scalar, _cast
from uqcampaign.kernels.operators.spec import param

__all__ = ["SuperResolution"]


class SuperResolution(LinearOperator):
    """Super-resolution: average pooling by an integer factor f; obs ``(C, H/f, W/f)``.

    Spec ``{kind: superres, factor: 2}``.

    Reference: deepinv.physics.Downsampling with a box filter.

    Keys:
        factor: the integer f; it must divide H and W.

    ``Aᵀ y`` = nearest upsampling / f², so ``A Aᵀ = I/f²``. Woodbury:
    ``(AᵀA/σ² + I/δ)⁻¹ = δ I − δ² AᵀA / (σ² + δ/f²)``; and ``A⁺ = Aᵀ(A Aᵀ)⁻¹ = f² Aᵀ``.
    """

    kind = "superres"
    KEYS = ("factor",)

    def __init__(self, factor: int, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        c, h, w = img_shape
        require_fit(
            h % factor == 0 and w % factor == 0,
            f"operator superres: factor={factor} does not divide the image size {(h, w)}; pick a factor dividing both",
        )
        super().__init__(img_shape, (c, h // factor, w // factor), spec)
        self.factor = factor

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> SuperResolution:
        factor = param(spec, "factor", 2, "superres", integer=True, minimum=1)
        return cls(factor, img_shape, {"factor": factor})

    def A(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def A_T(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f**2

    def pinv(self, y: Tensor) -> Tensor:
        return self.A_T(self._batched(y)) * self.factor**2

    def prox_data(self, u: Tensor, y: Tensor, sigma: Scalar, delta: Scalar) -> Tensor:
        s2, d = self._check_sigma_delta(u, sigma, delta)
        r = self.A_T(self._batched(_cast(y, u))) / s2 + u / d
        return d * r - d**2 / (s2 + d / self.factor**2) * self._gram(r)

    def norm_sq(self) -> float:
        return 1.0 / self.factor**2

    def obs_cov_solve(self, r: Tensor, s2: float, c: float) -> Tensor:
        """``A Aᵀ = I/f²``: ``r / (s2 + c/f²)``."""
        self._check_cov(s2, c)
        return r / (s2 + c / self.factor**2)

    def obs_cov_logdet(self, s2: float, c: float) -> float:
        self._check_cov(s2, c)
        return math.prod(self.obs_shape) * math.log(s2 + c / self.factor**2)
