"""Small fixtures shared by the kernel tests: operator specs of every kind, file-based ones written under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Operator cases by name: a spec factory (folder for files, image shape) -> spec dict.
# Files are written with fixed seeds, relative names resolved against the folder.


def _inpaint_file(folder: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    mask_shape = shape if shape[0] > 1 else shape[1:]  # both accepted layouts: (C, H, W) and (H, W)
    np.save(folder / "inpaint_mask.npy", (np.random.default_rng(1).random(mask_shape) < 0.6).astype(np.float32))
    return {"kind": "inpaint", "mask": "inpaint_mask.npy"}


def _mri_file(folder: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    # a random (not column) 0/1 mask: M(k) != M(-k) almost everywhere, the hard case for AᵀA
    mask_shape = shape if shape[0] > 1 else shape[1:]  # both accepted layouts: (C, H, W) and (H, W)
    np.save(folder / "mri_mask.npy", (np.random.default_rng(2).random(mask_shape) < 0.5).astype(np.float64))
    return {"kind": "mri", "mask": "mri_mask.npy"}


def _matrix_file(folder: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    n = int(np.prod(shape))
    rng = np.random.default_rng(3)
    # rank-deficient (rank 20 < m = 40): pinv must give the least-norm solution
    mat = rng.standard_normal((40, 20)) @ rng.standard_normal((20, n)) / n
    np.save(folder / "A.npy", mat)
    return {"kind": "matrix", "file": "A.npy"}


OPERATOR_CASES: dict[str, Callable[[Path, tuple[int, int, int]], dict[str, Any]]] = {
    "denoise": lambda folder, shape: {"kind": "denoise"},
    "inpaint": lambda folder, shape: {"kind": "inpaint", "fraction": 0.5, "seed": 0},
    "inpaint-file": _inpaint_file,
    "blur": lambda folder, shape: {"kind": "blur", "sigma": 1.0, "size": 5},  # truncates |K̂| < 1e-3 on 8×8
    "blur-sharp": lambda folder, shape: {"kind": "blur", "sigma": 0.5, "size": 3},  # min |K̂| ≈ 0.33
    "superres": lambda folder, shape: {"kind": "superres", "factor": 2},
    "mri": lambda folder, shape: {"kind": "mri", "acceleration": 2, "center_fraction": 0.25, "seed": 0},
    "mri-file": _mri_file,
    "cs": lambda folder, shape: {"kind": "cs", "m": 32, "seed": 0},
    "matrix": _matrix_file,
}



def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``operator_case`` runs once per case of :data:`OPERATOR_CASES`."""
    if "operator_case" in metafunc.fixturenames:
        metafunc.parametrize("operator_case", list(OPERATOR_CASES))


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[[str, tuple[int, int, int]], dict[str, Any]]:
    """``make_spec(case, img_shape)``: the spec of an operator case, its files written in ``tmp_path``."""
    return lambda case, shape: OPERATOR_CASES[case](tmp_path, shape)


@pytest.fixture
def make_operator(make_spec: Callable, tmp_path: Path) -> Callable[[str, tuple[int, int, int]], Any]:
    """``make_operator(case, img_shape)``: the operator of a case, built with ``root=tmp_path``."""
    from uqcampaign.kernels.operators import build_operator

    return lambda case, shape: build_operator(make_spec(case, shape), shape, root=tmp_path)
