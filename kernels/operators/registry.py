"""Build an operator from its spec: ``build_operator({"kind": "blur", "sigma": 2.0, "size": 9}, (1, 64, 64))``."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.operators.base import LinearOperator
from uqcampaign.kernels.operators.dense import CompressedSensing, MatrixOperator
from uqcampaign.kernels.operators.diagonal import Denoise, Inpainting
from uqcampaign.kernels.operators.fourier import MRI, Blur
from uqcampaign.kernels.operators.superres import SuperResolution

__all__ = ["OPERATOR_KINDS", "OPERATOR_CLASSES", "build_operator"]


OPERATOR_CLASSES: dict[str, type[LinearOperator]] = {
    cls.kind: cls for cls in (Denoise, Inpainting, Blur, SuperResolution, MRI, CompressedSensing, MatrixOperator)
}
OPERATOR_KINDS: tuple[str, ...] = tuple(OPERATOR_CLASSES)  # denoise, inpaint, blur, superres, mri, cs, matrix


def build_operator(spec: Mapping[str, Any], img_shape: tuple[int, int, int], root: Path | None = None) -> LinearOperator:
    """Build an operator from its spec, e.g. ``{"kind": "blur", "sigma": 2.0, "size": 9}``.

    ``img_shape = (C, H, W)``. Relative file paths (``mask``, ``file``) are resolved against
    ``root`` (the campaign file's folder); ``describe()`` keeps them as given.
    """
    require(isinstance(spec, Mapping), f"operator spec must be a mapping like {{kind: blur, sigma: 2.0}}, got {spec!r}")
    kind = spec.get("kind")
    require(
        isinstance(kind, str) and kind in OPERATOR_CLASSES,
        f"unknown operator kind {kind!r}; choose one of {', '.join(OPERATOR_KINDS)}",
    )
    shape = tuple(img_shape)
    require(
        len(shape) == 3 and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape),
        f"img_shape must be (C, H, W) with positive integers, got {img_shape!r}",
    )
    cls = OPERATOR_CLASSES[kind]
    params = {k: v for k, v in spec.items() if k != "kind"}
    for key in params:
        require(
            key in cls.KEYS,
            f"unknown key {key!r} in the {kind} operator spec; allowed keys: {', '.join(cls.KEYS) or 'none'}",
        )
    return cls.from_spec(params, tuple(int(s) for s in shape), None if root is None else Path(root))


