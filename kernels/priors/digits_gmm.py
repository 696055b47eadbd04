"""A Gaussian-mixture prior of handwritten digits: the shipped ``priors/digits16.npz``.

scikit-learn's digits (1797 images, 8×8, values 0..16) are scaled to [0, 1], upsampled
bilinearly to ``size × size`` and fitted by a diagonal-covariance Gaussian mixture.
Regenerate the shipped file with::

    python -m uqcampaign.kernels.priors.digits_gmm --out priors/digits16.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior

__all__ = ["digits_images", "fit_digits_gmm", "save_gmm_npz"]

REG_COVAR = 1e-3  # variance floor: keeps background pixels (all 0 in the data) at std ≈ 0.03


def digits_images(size: int = 16) -> np.ndarray:
    """scikit-learn's digits as ``(1797, 1, size, size)`` float64 in [0, 1] (bilinear upsampling)."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    require(isinstance(size, int) and size >= 8, f"digits size = {size!r} must be an integer >= 8 (the data are 8×8)")
    images = load_digits().images / 16.0  # (n, 8, 8)
    upsampled = zoom(images, (1, size / 8, size / 8), order=1)
    return np.clip(upsampled, 0.0, 1.0)[:, None]


def fit_digits_gmm(size: int = 16, components: int = 8, seed: int = 0) -> GaussianMixturePrior:
    """A ``gmm`` prior of shape ``(1, size, size)`` with ``components`` diagonal components."""
    from sklearn.mixture import GaussianMixture

    require(isinstance(components, int) and components >= 1, f"components = {components!r} must be an integer >= 1")
    images = digits_images(size)
    model = GaussianMixture(n_components=components, covariance_type="diag", reg_covar=REG_COVAR, random_state=seed)
    model.fit(images.reshape(images.shape[0], -1))
    shape = (components, 1, size, size)
    weights = model.weights_ / model.weights_.sum()
    return GaussianMixturePrior(weights, model.means_.reshape(shape), model.covariances_.reshape(shape), kind="gmm")


def save_gmm_npz(prior: GaussianMixturePrior, path: Path | str) -> Path:
    """Write ``weights``, ``means``, ``variances`` (float32) of a diagonal ``prior`` to ``path``."""
    require(prior.variances is not None, "only a diagonal-covariance mixture can be saved as a gmm .npz")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = prior.weights.numpy().astype(np.float32)
    np.savez_compressed(
        path,
        weights=weights / weights.sum(dtype=np.float64).astype(np.float32),
        means=prior.means.numpy().astype(np.float32),
        variances=prior.variances.numpy().astype(np.float32),
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("priors/digits16.npz"), help="output .npz file")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--components", type=int, default=8, help="mixture components")
    parser.add_argument("--seed", type=int, default=0, help="scikit-learn random_state")
    args = parser.parse_args(argv)
    path = save_gmm_npz(fit_digits_gmm(args.size, args.components, args.seed), args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
