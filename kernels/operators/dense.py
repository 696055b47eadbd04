"""Explicit matrices ``(m, C·H·W)``: ``cs`` (seeded Gaussian) and ``matrix`` (a ``.npy`` file); CG prox, exact pinv."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uqcampaign.kernels.errors import require, require_fit
from uqcampaign.kernels.operators.base import ImgShape, LinearOperator, _cast
from uqcampaign.kernels.operators.spec import load_array, param

__all__ = ["DenseOperator", "CompressedSensing", "MatrixOperator"]


class DenseOperator(LinearOperator):
    """An explicit matrix ``(m, C·H·W)`` on the C-order flattened image; obs ``(m,)``.

    Prox by the base's batched CG, ``norm_sq`` by its power iteration; ``pinv`` is exact
    (``torch.linalg.pinv`` of the matrix, SVD-based, computed once and cached).
    """

    kind = "matrix"

    def __init__(self, mat: Tensor, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        n = math.prod(img_shape)
        require_fit(
            mat.ndim == 2 and mat.shape[1] == n,
            f"operator {self.kind}: matrix has shape {tuple(mat.shape)} but images {tuple(img_shape)} need (m, {n}); fix the file or the image shape",
        )
        super().__init__(img_shape, (mat.shape[0],), spec)
        self.mat = mat.to(torch.float64)
        self.mat_pinv: Tensor | None = None

    def A(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ _cast(self.mat, x).T

    def A_T(self, y: Tensor) -> Tensor:
        return (y @ _cast(self.mat, y)).reshape(y.shape[0], *self.img_shape)

    def pinv(self, y: Tensor) -> Tensor:
        if self.mat_pinv is None:
            self.mat_pinv = torch.linalg.pinv(self.mat)
        y = self._batched(y)
        return (y @ _cast(self.mat_pinv, y).T).reshape(y.shape[0], *self.img_shape)

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        return self.mat.to(dtype=dtype).clone()


class CompressedSensing(DenseOperator):
    """Compressed sensing: a seeded Gaussian matrix ``(m, C·H·W)/√m`` on the flattened image; obs ``(m,)``.

    Spec ``{kind: cs, m: 64, seed: 0}``.

    Reference: Candès & Wakin 2008, IEEE Signal Processing Magazine 25(2), "An introduction to compressive sampling".

    Keys:
        m: number of measurements (rows of the matrix).
        seed: seed of numpy.random.default_rng that draws the matrix.
    """

    kind = "cs"
    KEYS = ("m", "seed")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> CompressedSensing:
        m = param(spec, "m", 64, "cs", integer=True, minimum=1)
        seed = param(spec, "seed", 0, "cs", integer=True, minimum=0)
        mat = np.random.default_rng(seed).standard_normal((m, math.prod(img_shape))) / math.sqrt(m)
        return cls(torch.from_numpy(mat), img_shape, {"m": m, "seed": seed})


class MatrixOperator(DenseOperator):
    """Any linear operator: a user matrix ``(m, C·H·W)`` acting on the C-order flattened image; obs ``(m,)``.

    Spec ``{kind: matrix, file: A.npy}``.

    Reference: none (the user's matrix).

    Keys:
        file: a .npy file holding the matrix, shape (m, C·H·W) (required).
    """

    kind = "matrix"
    KEYS = ("file",)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> MatrixOperator:
        require("file" in spec, "operator matrix: missing key 'file'; give {kind: matrix, file: A.npy}")
        mat = load_array(spec["file"], root, "matrix", "file")
        return cls(torch.from_numpy(mat), img_shape, {"file": str(spec["file"])})
