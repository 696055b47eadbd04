"""Training sets that ship with installed packages: a known Gaussian mixture and scikit-learn's digits.

A dataset draws its own batches from a ``torch.Generator``, so a training run is a pure
function of ``(seed, step)`` and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from uqcampaign.kernels.errors import require

__all__ = ["DATASETS", "Dataset", "GMM8_SEED", "gmm8_prior", "digits16", "DIGIT_NAMES", "get_dataset", "held_out_measurements"]

GMM8_SEED = 0
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_TRAIN = 1500  # images [0, 1500) train, [1500, 1797) are held out for tests


def gmm8_prior(seed: int = GMM8_SEED):
    """The known Gaussian mixture on ``(1, 8, 8)`` images, ``K = 5`` (issue 6's ground truth).

    Means are smooth random patterns in ``[0, 1]`` (a seeded 4×4 grid upsampled bilinearly),
    per-pixel variances in ``[0.005, 0.03]``, weights ``(0.3, 0.25, 0.2, 0.15, 0.1)``.
    Returns a :class:`~uqcampaign.kernels.priors.gaussian_mixture.GaussianMixturePrior`.
    """
    from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior

    rng = np.random.default_rng(seed)
    coarse = torch.as_tensor(rng.uniform(0.0, 1.0, size=(5, 1, 4, 4)))
    means = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=True)
    variances = rng.uniform(0.005, 0.03, size=(5, 1, 8, 8))
    weights = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    return GaussianMixturePrior(weights, means.numpy(), variances, kind="gmm")


@lru_cache(maxsize=2)
def digits16(split: str = "train") -> tuple[Tensor, Tensor]:
    """scikit-learn's handwritten digits upsampled to 16×16: ``(images (N, 1, 16, 16) in [0, 1], labels (N,))``.

    ``split`` is ``"train"`` (first 1500 images) or ``"test"`` (the 297 held-out ones).
    """
    require(split in ("train", "test"), f"digits split {split!r} must be 'train' or 'test'")
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    images = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    labels = torch.as_tensor(data.target, dtype=torch.long)
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return images[part].contiguous(), labels[part].contiguous()


@dataclass(frozen=True)
class Dataset:
    """A named training set: ``sample(n, generator) -> (images (n, C, H, W) float32, labels (n,) or None)``."""

    name: str
    img_shape: tuple[int, int, int]
    labelled: bool

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if self.name == "gmm8":
            return gmm8_prior().sample(n, generator).to(torch.float32), None
        images, labels = digits16("train")
        index = torch.randint(0, images.shape[0], (n,), generator=generator)
        return images[index], labels[index]


DATASETS: dict[str, Dataset] = {
    "gmm8": Dataset("gmm8", (1, 8, 8), labelled=False),
    "digits16": Dataset("digits16", (1, 16, 16), labelled=True),
}


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name``; UQError listing the choices otherwise."""
    require(name in DATASETS, f"unknown training dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def held_out_measurements(operator: object, sigma: float, count: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` held-out digits (the first of the test split) and ``y = A x + σ ε``.

    Returns ``(x (count, 1, 16, 16), y (count, *obs_shape), labels (count,))``; ε from ``seed``.
    """
    images, labels = digits16("test")
    require(1 <= count <= images.shape[0], f"count = {count} must be in [1, {images.shape[0]}]")
    x = images[:count]
    y = operator.A(x)
    y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return x, y, labels[:count]
