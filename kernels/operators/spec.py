"""Reading operator specs: checked numeric parameters, ``.npy`` arrays and 0/1 mask files."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uqcampaign.kernels.errors import SpecFitError, require, require_fit
from uqcampaign.kernels.operators.base import ImgShape

__all__ = ["FILE_KEYS", "param", "load_array", "file_mask"]

#: spec keys whose value is the path of a ``.npy`` file (relative to the campaign file's folder)
FILE_KEYS: tuple[str, ...] = ("mask", "file")


def param(
    spec: Mapping[str, Any],
    key: str,
    default: float,
    kind: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
) -> Any:
    """``spec[key]`` (or ``default``) checked to be a finite number (an integer if asked) in range."""
    value = spec.get(key, default)
    wanted = numbers.Integral if integer else numbers.Real
    require(
        isinstance(value, wanted) and not isinstance(value, bool) and math.isfinite(value),
        f"operator {kind}: {key}={value!r} must be {'an integer' if integer else 'a finite number'}",
    )
    too_low = minimum is not None and (value < minimum or (exclusive and value == minimum))
    require(not too_low, f"operator {kind}: {key}={value} must be {'>' if exclusive else '>='} {minimum}; fix the spec")
    require(maximum is None or value <= maximum, f"operator {kind}: {key}={value} must be <= {maximum}; fix the spec")
    return int(value) if integer else float(value)




def load_array(path: Any, root: Path | None, kind: str, key: str) -> np.ndarray:
    """A finite float64 array from a ``.npy`` file; ``path`` is relative to ``root`` unless absolute."""
    resolved = Path(path)
    if not resolved.is_absolute() and root is not None:
        resolved = root / resolved
    require_fit(
        resolved.is_file(),
        f"operator {kind}: {key} file not found: {resolved}; check the path (relative paths start at the campaign file's folder)",
    )
    try:
        arr = np.load(resolved, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise SpecFitError(f"operator {kind}: cannot read the {key} file {resolved} as a .npy array ({err})") from None
    require_fit(
        isinstance(arr, np.ndarray),
        f"operator {kind}: the {key} file {resolved} is not a single .npy array; save it with numpy.save",
    )
    require_fit(
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool,
        f"operator {kind}: {key} file {resolved} holds {arr.dtype}, not numbers",
    )
    arr = arr.astype(np.float64)
    bad = int((~np.isfinite(arr)).sum())
    require_fit(bad == 0, f"operator {kind}: {key} file {resolved} has {bad} NaN/Inf entries; fix the file")
    return arr


def file_mask(spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None, kind: str, generation: tuple[str, ...]) -> Tensor:
    """The 0/1 mask of ``spec["mask"]``, a ``(C, H, W)`` or ``(H, W)`` ``.npy`` file, as ``(C or 1, H, W)``.

    ``generation`` lists the keys that draw a mask instead; giving both is an error.
    """
    both = [k for k in generation if k in spec]
    require(
        not both,
        f"operator {kind}: spec gives both 'mask' and {', '.join(map(repr, both))}; give a mask file or the generation parameters, not both",
    )
    c, h, w = img_shape
    mask = load_array(spec["mask"], root, kind, "mask")
    require_fit(
        mask.shape in [(c, h, w), (h, w)],
        f"operator {kind}: mask has shape {mask.shape}, expected one of {[(c, h, w), (h, w)]}; fix the mask file",
    )
    bad = int(((mask != 0) & (mask != 1)).sum())
    require_fit(bad == 0, f"operator {kind}: mask has {bad} entries that are not 0 or 1; save a 0/1 mask")
    return torch.from_numpy(mask).reshape(-1, h, w)
