"""Measurements of a campaign: read from ``.npy`` files or simulated from the prior.

``data.simulate: {count: M}`` draws each ``x_true[m]`` from the prior and sets
``y[m] = A x_true[m] + σ ε`` (ε standard normal) with measurement ``m``'s own generator
(:func:`~uqcampaign.kernels.rng.simulation_generator`): the first M measurements are the same
whatever ``count`` is, so a campaign grows by simulating only its new measurements.
``data.y`` (and optional ``data.truth``) are ``.npy`` files of shape `(M, *obs_shape)` and
`(M, C, H, W)`, checked for shape and finiteness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.rng import replicate_generator, simulation_generator
from uqcampaign.pipeline.config import Campaign

__all__ = ["load_or_simulate", "simulate", "read_measurement_files", "read_array", "read_shape"]


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


def simulate(campaign: Campaign, prior: Any, operator: Any, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y (stop − first, *obs_shape), x_true (stop − first, C, H, W))`` float32 of measurements ``first..stop-1``.

    Measurement ``m`` draws its truth from the prior and its noise from its own stream
    ``simulation_generator(seed, m)``: a measurement never depends on how many are simulated.
    With ``replicates: R`` measurement ``m`` measures truth ``g = m // R``, drawn with
    ``simulation_generator(seed, g)``; its noise follows from that generator when ``m = g·R`` and
    comes from ``replicate_generator(seed, m)`` otherwise (each truth is drawn once per call).
    """
    ys, xs = [], []
    replicates = campaign.replicates
    truth: tuple[int, torch.Tensor, torch.Generator] | None = None  # (g, x, its generator after the draw)
    with torch.no_grad():
        for m in range(first, stop):
            g = m // replicates
            if truth is None or truth[0] != g:
                generator = simulation_generator(campaign.seed, g)
                truth = (g, prior.sample(1, generator).to(torch.float64), generator)  # x: (1, C, H, W)
            x = truth[1]
            generator = truth[2] if m == g * replicates else replicate_generator(campaign.seed, m)
            noise = torch.randn(1, *operator.obs_shape, generator=generator, dtype=torch.float64)
            ys.append((operator.A(x) + campaign.noise.sigma * noise).float().numpy())
            xs.append(x.float().numpy())
    img_shape, obs_shape = tuple(operator.img_shape), tuple(operator.obs_shape)
    y = np.concatenate(ys) if ys else np.empty((0, *obs_shape), np.float32)
    x = np.concatenate(xs) if xs else np.empty((0, *img_shape), np.float32)
    return y, x


def read_measurement_files(campaign: Campaign, operator: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``data.y`` `(M, *obs_shape)` and ``data.truth`` `(M, C, H, W)` or None, checked against the operator."""
    data = campaign.data
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


def load_or_simulate(campaign: Campaign, prior: Any, operator: Any, first: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The campaign's measurements ``first..M-1``: ``y (M − first, *obs_shape)`` and truth ``(M − first, C, H, W)`` or None."""
    if campaign.data.simulate is not None:
        return simulate(campaign, prior, operator, first, campaign.data.simulate.count)
    y, x_true = read_measurement_files(campaign, operator)
    return y[first:], None if x_true is None else x_true[first:]
