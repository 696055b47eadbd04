"""Measurements of a campaign: read from ``.npy`` files or simulated from the prior.

``data.simulate: {count: M}`` draws ``x_true`` from the prior with the campaign's simulation
generator and sets ``y = A x_true + σ ε`` (ε standard normal, same generator).
``data.y`` (and optional ``data.truth``) are ``.npy`` files of shape `(M, *obs_shape)` and
`(M, C, H, W)`, checked for shape and finiteness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.rng import simulation_generator
from uqcampaign.pipeline.config import Campaign

__all__ = ["load_or_simulate", "simulate", "read_array", "read_shape"]


def read_shape(path: str, what: str) -> tuple[int, ...]:
    """Shape of an ``.npy`` file without reading its data."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except FileNotFoundError:
        raise UQError(f"{path}: {what} file not found; fix the path in the campaign file (relative to its folder)") from None
    except (OSError, ValueError) as exc:
        raise UQError(f"{path}: cannot read {what} as a .npy array ({exc}); save it with numpy.save") from None


def read_array(path: str, what: str) -> np.ndarray:
    """A finite float array from an ``.npy`` file; UQError naming the file otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UQError(f"{path}: {what} file not found; fix the path in the campaign file (relative to its folder)") from None
    except (OSError, ValueError) as exc:
        raise UQError(f"{path}: cannot read {what} as a .npy array ({exc}); save it with numpy.save") from None
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UQError(f"{path}: {what} has dtype {array.dtype}; expected a real float array")
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UQError(f"{path}: {what} holds {int(bad.sum())} NaN/Inf values (first at index {index}); clean the data")
    return array.astype(np.float32)


def simulate(campaign: Campaign, prior: Any, operator: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y (M, *obs_shape), x_true (M, C, H, W))`` float32 from the campaign's simulation stream."""
    generator = simulation_generator(campaign.seed)
    with torch.no_grad():
        x = prior.sample(count, generator)  # (M, C, H, W), prior dtype
        x = x.to(torch.float64)
        noise = torch.randn(count, *operator.obs_shape, generator=generator, dtype=torch.float64)
        y = operator.A(x) + campaign.noise.sigma * noise
    return y.float().numpy(), x.float().numpy()


def load_or_simulate(campaign: Campaign, prior: Any, operator: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The campaign's measurements ``y (M, *obs_shape)`` and truth ``(M, C, H, W)`` or None."""
    data = campaign.data
    if data.simulate is not None:
        return simulate(campaign, prior, operator, data.simulate.count)
    obs_shape, img_shape = tuple(operator.obs_shape), tuple(operator.img_shape)
    y_path = campaign.resolve(data.y)
    y = read_array(y_path, "data.y")
    if y.ndim != 1 + len(obs_shape) or tuple(y.shape[1:]) != obs_shape:
        raise UQError(
            f"{y_path}: data.y has shape {y.shape} but the operator expects (M, {', '.join(map(str, obs_shape))}); "
            "stack the measurements along a first axis"
        )
    if y.shape[0] < 1:
        raise UQError(f"{y_path}: data.y holds no measurement (shape {y.shape})")
    x_true = None
    if data.truth is not None:
        x_path = campaign.resolve(data.truth)
        x_true = read_array(x_path, "data.truth")
        expected = (y.shape[0], *img_shape)
        if tuple(x_true.shape) != expected:
            raise UQError(f"{x_path}: data.truth has shape {x_true.shape} but {expected} is expected (one image per measurement of {y_path})")
    return y, x_true
