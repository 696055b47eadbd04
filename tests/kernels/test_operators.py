"""Forward operators: adjointness, closed-form prox and pinv against dense linear algebra, specs, bad input.

Every property test runs over all operator cases of ``conftest.OPERATOR_CASES`` (the
``operator_case`` parameter) at small sizes, in float64 unless stated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.operators import (
    OPERATOR_KINDS,
    Blur,
    DenseOperator,
    LinearOperator,
    build_operator,
)

SHAPES = [(1, 8, 8), (3, 8, 8)]
F64 = torch.float64


def _randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _uses_cg(op: LinearOperator) -> bool:
    """Operators whose prox is the generic conjugate gradient (tolerance-limited, not closed form)."""
    return isinstance(op, DenseOperator)


def _dense_prox(mat: torch.Tensor, u: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``(MᵀM/σ² + I/δ)⁻¹ (Mᵀy/σ² + u/δ)`` chain by chain; ``u: (B, n)``, ``y: (m,)``, ``sigma, delta: (B,)``."""
    eye = torch.eye(mat.shape[1], dtype=mat.dtype)
    out = [torch.linalg.solve(mat.T @ mat / s**2 + eye / d, mat.T @ y / s**2 + ub / d) for ub, s, d in zip(u, sigma, delta)]
    return torch.stack(out)


# --------------------------------------------------------------------------- adjoint and matrix


@pytest.mark.parametrize("img_shape", SHAPES)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adjoint(operator_case, img_shape, dtype, rtol, make_operator):
    op = make_operator(operator_case, img_shape)
    x = _randn((4, *img_shape), 0, dtype)
    ax = op.A(x)
    # y = A x + z: z puts mass outside range(A) too, A x keeps <Ax, y> ≈ ||Ax||² away from 0 so the
    # relative error measures the adjoint, not a chance cancellation of the inner product
    y = ax + _randn((4, *op.obs_shape), 1, dtype)
    aty = op.A_T(y)
    assert ax.shape == (4, *op.obs_shape) and ax.dtype == dtype
    assert aty.shape == (4, *img_shape) and aty.dtype == dtype
    lhs, rhs = (ax * y).sum(dtype=F64), (x * aty).sum(dtype=F64)
    assert abs(lhs - rhs) <= rtol * abs(lhs)


@pytest.mark.parametrize("img_shape", SHAPES)
def test_matrix_applies_A(operator_case, img_shape, make_operator):
    op = make_operator(operator_case, img_shape)
    mat = op.matrix()
    assert mat.shape == (math.prod(op.obs_shape), math.prod(img_shape)) and mat.dtype == F64
    x = _randn((2, *img_shape), 2)
    torch.testing.assert_close(x.reshape(2, -1) @ mat.T, op.A(x).reshape(2, -1), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- prox


@pytest.mark.parametrize("img_shape", SHAPES)
def test_prox_equals_dense_solve(operator_case, img_shape, make_operator):
    op = make_operator(operator_case, img_shape)
    mat = op.matrix()
    u = _randn((3, *img_shape), 3)
    y = _randn(op.obs_shape, 4)  # one measurement, broadcast over the chains
    delta = torch.tensor([0.05, 0.5, 5.0], dtype=F64)  # per chain
    sigma = 0.1
    got = op.prox_data(u, y, sigma, delta.reshape(3, 1, 1, 1))
    want = _dense_prox(mat, u.reshape(3, -1), y.reshape(-1), torch.full((3,), sigma, dtype=F64), delta)
    assert got.shape == u.shape
    # closed forms are exact to rounding; CG stops at residual 1e-11, condition number ≤ 1 + 5·||A||²/σ² ≈ 2500
    assert _rel(got.reshape(3, -1), want) < (1e-7 if _uses_cg(op) else 1e-10)


def test_prox_per_chain_sigma_and_delta(operator_case, make_operator):
    op = make_operator(operator_case, (3, 8, 8))
    u = _randn((3, 3, 8, 8), 5)
    y = _randn((3, *op.obs_shape), 6)
    sigma, delta = torch.tensor([0.05, 0.1, 0.3], dtype=F64), torch.tensor([2.0, 0.2, 0.02], dtype=F64)
    batched = op.prox_data(u, y, sigma, delta)
    for b in range(3):
        single = op.prox_data(u[b : b + 1], y[b], float(sigma[b]), float(delta[b]))
        assert _rel(batched[b : b + 1], single) < (1e-7 if _uses_cg(op) else 1e-13)


def test_generic_cg_prox_matches_closed_form(operator_case, make_operator):
    """The base-class CG fallback and each operator's own prox solve the same problem."""
    op = make_operator(operator_case, (1, 8, 8))
    u, y = _randn((2, 1, 8, 8), 7), _randn((2, *op.obs_shape), 8)
    delta = torch.tensor([0.3, 3.0], dtype=F64)
    assert _rel(LinearOperator.prox_data(op, u, y, 0.2, delta), op.prox_data(u, y, 0.2, delta)) < 1e-8


def test_prox_float32_runs_in_float32(operator_case, make_operator):
    op = make_operator(operator_case, (1, 8, 8))
    u, y = _randn((2, 1, 8, 8), 9), _randn(op.obs_shape, 10)
    got = op.prox_data(u.float(), y.float(), 0.1, 0.5)
    assert got.dtype == torch.float32
    assert _rel(got.double(), op.prox_data(u, y, 0.1, 0.5)) < 1e-4


# --------------------------------------------------------------------------- measurement covariance σ²I + c A Aᵀ


@pytest.mark.parametrize("img_shape", SHAPES)
@pytest.mark.parametrize("c", [0.0, 0.02, 3.0, 2.5e4])  # the TDS twist scales (1 − ᾱ_t)/ᾱ_t from t = 0 to T
def test_obs_cov_solve_and_logdet_equal_dense(operator_case, img_shape, c, make_operator):
    op = make_operator(operator_case, img_shape)
    mat = op.matrix()
    s2 = 0.05**2
    cov = s2 * torch.eye(mat.shape[0], dtype=F64) + c * mat @ mat.T
    r = _randn((3, *op.obs_shape), 16)
    got = op.obs_cov_solve(r, s2, c)
    want = torch.linalg.solve(cov, r.reshape(3, -1).T).T
    assert got.shape == r.shape
    # exact forms; the dense solve (LU) and the generic eigh round at ~1e-16 × the condition number (≤ 1e7)
    assert _rel(got.reshape(3, -1), want) < 1e-8
    # a sum of m logarithms, each rounded by dense LU / eigh at ~1e-16 × the condition number (≤ 1e7)
    tol = 1e-9 * mat.shape[0]
    assert op.obs_cov_logdet(s2, c) == pytest.approx(float(torch.linalg.slogdet(cov)[1]), rel=0, abs=tol)
    # the generic fallback (dense eigendecomposition) agrees with each family's closed form
    assert _rel(LinearOperator.obs_cov_solve(op, r, s2, c), got) < 1e-8
    assert LinearOperator.obs_cov_logdet(op, s2, c) == pytest.approx(op.obs_cov_logdet(s2, c), rel=0, abs=tol)


def test_obs_cov_solve_float32_has_no_cancellation(operator_case, make_operator):
    """At c/σ² = 1e7 (the twist at t ≈ T) float32 keeps ~1e-6: no difference of near-equal terms."""
    op = make_operator(operator_case, (1, 8, 8))
    r = _randn((2, *op.obs_shape), 17)
    want = op.obs_cov_solve(r, 0.05**2, 2.5e4)
    got = op.to(dtype=torch.float32).obs_cov_solve(r.float(), 0.05**2, 2.5e4)
    assert got.dtype == torch.float32 and _rel(got.double(), want) < 1e-4


def test_obs_cov_refuses_bad_scales(make_operator):
    op = make_operator("blur", (1, 8, 8))
    with pytest.raises(UQError, match="s2"):
        op.obs_cov_logdet(0.0, 1.0)
    with pytest.raises(UQError, match="scale c"):
        op.obs_cov_solve(torch.zeros(1, 1, 8, 8), 1.0, -1.0)


# --------------------------------------------------------------------------- pinv and norm


@pytest.mark.parametrize("img_shape", SHAPES)
def test_pinv_equals_dense_pinv(operator_case, img_shape, make_operator):
    op = make_operator(operator_case, img_shape)
    mat = op.matrix()
    y = _randn((2, *op.obs_shape), 11)
    if isinstance(op, Blur):
        # pinv is the truncated inverse filter = the dense pinv with the same relative cut-off;
        # no singular value may sit near the cut-off, or the comparison would be ill-posed
        s = torch.linalg.svdvals(mat)
        assert ((s / s.max() - Blur.PINV_RTOL).abs() > 0.01 * Blur.PINV_RTOL).all()
        mat_pinv = torch.linalg.pinv(mat, rtol=Blur.PINV_RTOL)
    else:
        mat_pinv = torch.linalg.pinv(mat)
    got = op.pinv(y)
    assert got.shape == (2, *img_shape)
    assert _rel(got.reshape(2, -1), y.reshape(2, -1) @ mat_pinv.T) < 1e-9
    assert _rel(op.pinv(y[0]), got[:1]) < 1e-12  # unbatched y, same up to FFT rounding


def test_blur_truncates_only_the_tiny_frequencies(make_operator):
    """``blur`` (σ=1, size 5, 8×8) cuts some frequencies; ``blur-sharp`` none, so its pinv is the inverse."""
    assert bool((make_operator("blur", (1, 8, 8)).gram_hat_pinv == 0).any())
    sharp = make_operator("blur-sharp", (1, 8, 8))
    x = _randn((2, 1, 8, 8), 12)
    assert _rel(sharp.pinv(sharp.A(x)), x) < 1e-12


def test_generic_cg_pinv_is_least_norm(operator_case, make_operator):
    """The base-class fallback (CG on the normal equations from 0) gives the least-norm solution."""
    if operator_case == "blur":
        pytest.skip("blur's pinv truncates on purpose; plain CG inverts the tiny frequencies too")
    op = make_operator(operator_case, (1, 8, 8))
    y = _randn((2, *op.obs_shape), 13)
    want = y.reshape(2, -1) @ torch.linalg.pinv(op.matrix()).T
    assert _rel(LinearOperator.pinv(op, y).reshape(2, -1), want) < 1e-7


def test_norm_sq(operator_case, make_operator):
    op = make_operator(operator_case, (3, 8, 8))
    want = float(torch.linalg.matrix_norm(op.matrix(), ord=2) ** 2)
    assert op.norm_sq() == pytest.approx(want, rel=1e-9)
    assert LinearOperator._power_iteration(op) == pytest.approx(want, rel=1e-9)  # generic fallback


# --------------------------------------------------------------------------- spec, dtype, measurement


@pytest.mark.parametrize("img_shape", SHAPES)
def test_describe_round_trip(operator_case, img_shape, make_operator, tmp_path):
    op = make_operator(operator_case, img_shape)
    spec = json.loads(json.dumps(op.describe()))
    again = build_operator(spec, img_shape, root=tmp_path)
    assert type(again) is type(op) and again.describe() == op.describe() and spec["kind"] in OPERATOR_KINDS
    assert torch.equal(again.matrix(), op.matrix())


def test_to_float32(operator_case, make_operator):
    op = make_operator(operator_case, (3, 8, 8))
    op32 = op.to(dtype=torch.float32)
    buffers = [v for v in vars(op32).values() if isinstance(v, torch.Tensor)]
    assert all(b.dtype in (torch.float32, torch.complex64) for b in buffers)
    assert op32.describe() == op.describe() and op.to(dtype=F64).describe() == op.describe()
    x = _randn((2, 3, 8, 8), 14)
    assert _rel(op32.A(x.float()).double(), op.A(x)) < 1e-5
    with pytest.raises(UQError, match="float dtype"):
        op.to(dtype=torch.int64)


def test_check_measurement(operator_case, make_operator):
    op = make_operator(operator_case, (3, 8, 8))
    y = _randn((2, *op.obs_shape), 15)
    op.check_measurement(y)
    op.check_measurement(y[0])
    op.check_measurement(y[0].numpy())
    wrong = torch.zeros(5, 7)
    with pytest.raises(UQError, match=r"shape \(5, 7\).*expects " + str(op.obs_shape).replace("(", r"\(").replace(")", r"\)")):
        op.check_measurement(wrong)
    bad = y.clone().reshape(-1)
    bad[[0, 5]] = float("nan")
    bad[9] = float("inf")
    with pytest.raises(UQError, match=f"3 NaN/Inf entries out of {y.numel()}"):
        op.check_measurement(bad.reshape(y.shape))


def test_mri_measurement_is_real_pair_of_centred_kspace(make_operator):
    op = make_operator("mri", (2, 8, 8))
    x = _randn((3, 2, 8, 8), 16)
    y = op.A(x)
    assert y.shape == (3, 2, 8, 8, 2) and not y.is_complex()
    kspace = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    torch.testing.assert_close(torch.view_as_complex(y), kspace * op.mask, rtol=1e-12, atol=1e-12)
    with pytest.raises(UQError, match="is complex"):
        op.check_measurement(torch.zeros(2, 8, 8, 2, dtype=torch.complex128))


def test_blur_is_centred_circular_convolution(make_operator):
    op = make_operator("blur", (1, 8, 8))
    x = _randn((2, 1, 8, 8), 17)
    r = torch.arange(5, dtype=F64) - 2
    g = torch.exp(-(r**2) / 2)
    kernel = g[:, None] * g[None, :] / (g.sum() ** 2)
    # (k ⊛ x)[i, j] = Σ_ab k[a, b] x[i − (a − 2), j − (b − 2)] with wrap-around
    want = sum(kernel[a, b] * torch.roll(x, shifts=(a - 2, b - 2), dims=(-2, -1)) for a in range(5) for b in range(5))
    torch.testing.assert_close(op.A(x), want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- seeded masks


def test_inpaint_seeded_mask():
    op = build_operator({"kind": "inpaint", "fraction": 0.25, "seed": 3}, (3, 8, 8))
    kept = op.A(torch.ones(1, 3, 8, 8, dtype=F64))[0]
    assert int(kept[0].sum()) == 16  # exactly round(0.25 · 64) positions
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[0], kept[2])  # shared over channels
    same = build_operator({"kind": "inpaint", "fraction": 0.25, "seed": 3}, (3, 8, 8))
    other = build_operator({"kind": "inpaint", "fraction": 0.25, "seed": 4}, (3, 8, 8))
    assert torch.equal(same.weights, op.weights) and not torch.equal(other.weights, op.weights)


def test_mri_seeded_mask_samples_columns_and_centre():
    op = build_operator({"kind": "mri", "acceleration": 4, "center_fraction": 0.125, "seed": 0}, (1, 16, 16))
    mask = op.mask[0]
    assert torch.equal(mask, mask[:1].expand(16, 16))  # whole columns
    columns = mask[0]
    assert int(columns.sum()) == 4 and bool(columns[7:9].all())  # 16/4 columns, centre pair incl. DC (8)
    other = build_operator({"kind": "mri", "acceleration": 4, "center_fraction": 0.125, "seed": 1}, (1, 16, 16))
    assert not torch.equal(other.mask, op.mask)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, sigma, delta, message",
    [
        ("sigma zero", 0.0, 1.0, "sigma must be finite and > 0, got 0.0"),
        ("sigma nan", float("nan"), 1.0, "sigma must be finite and > 0"),
        ("delta negative", 0.1, -1.0, "delta must be finite and > 0, got -1.0"),
        ("delta one chain zero", 0.1, torch.tensor([1.0, 0.0]), r"delta must be finite and > 0, got 0.0 \(1 of 2 values bad\)"),
        ("delta wrong count", 0.1, torch.tensor([1.0, 2.0, 3.0]), "delta has 3 values but the batch has 2 chains"),
    ],
)
def test_prox_rejects_bad_sigma_delta(operator_case, make_operator, name, sigma, delta, message):
    op = make_operator(operator_case, (1, 8, 8))
    with pytest.raises(UQError, match=message):
        op.prox_data(torch.zeros(2, 1, 8, 8, dtype=F64), torch.zeros(op.obs_shape, dtype=F64), sigma, delta)


def _save(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return path.name


def _savez(path: Path) -> str:
    np.savez(path, A=np.ones((2, 64)))
    return path.name


@pytest.mark.parametrize(
    "make, img_shape, message",
    [
        (lambda d: {"kind": "deblur"}, (1, 8, 8), "unknown operator kind 'deblur'; choose one of denoise, inpaint, blur, superres, mri, cs, matrix"),
        (lambda d: {"sigma": 1.0}, (1, 8, 8), "unknown operator kind None"),
        (lambda d: "blur", (1, 8, 8), "operator spec must be a mapping"),
        (lambda d: {"kind": "blur", "sigma": 1.0, "sizes": 3}, (1, 8, 8), "unknown key 'sizes' in the blur operator spec; allowed keys: sigma, size"),
        (lambda d: {"kind": "denoise", "seed": 0}, (1, 8, 8), "unknown key 'seed' in the denoise operator spec; allowed keys: none"),
        (lambda d: {"kind": "denoise"}, (8, 8), r"img_shape must be \(C, H, W\)"),
        (lambda d: {"kind": "superres", "factor": 3}, (1, 8, 8), r"factor=3 does not divide the image size \(8, 8\)"),
        (lambda d: {"kind": "superres", "factor": 0}, (1, 8, 8), "factor=0 must be >= 1"),
        (lambda d: {"kind": "blur", "sigma": -1.0}, (1, 8, 8), "sigma=-1.0 must be > 0"),
        (lambda d: {"kind": "blur", "size": 4}, (1, 8, 8), "size=4 must be odd"),
        (lambda d: {"kind": "blur", "size": 11}, (1, 8, 8), "size=11 exceeds the image size"),
        (lambda d: {"kind": "inpaint", "fraction": 0.0}, (1, 8, 8), "fraction=0.0 must be > 0"),
        (lambda d: {"kind": "inpaint", "fraction": 1.5}, (1, 8, 8), "fraction=1.5 must be <= 1.0"),
        (lambda d: {"kind": "inpaint", "fraction": 0.001}, (1, 8, 8), "fraction=0.001 keeps no pixel of a 8x8 image"),
        (lambda d: {"kind": ["blur"]}, (1, 8, 8), r"unknown operator kind \['blur'\]"),
        (lambda d: {"kind": "inpaint", "seed": 1.5}, (1, 8, 8), "seed=1.5 must be an integer"),
        (lambda d: {"kind": "cs", "m": True}, (1, 8, 8), "m=True must be an integer"),
        (lambda d: {"kind": "mri", "acceleration": 0.5}, (1, 8, 8), "acceleration=0.5 must be >= 1.0"),
        (lambda d: {"kind": "inpaint", "mask": _save(d / "m.npy", np.ones((2, 8, 8))), "fraction": 0.5}, (1, 8, 8), "gives both 'mask' and 'fraction'"),
        (lambda d: {"kind": "inpaint", "mask": _save(d / "m.npy", np.ones((2, 8, 8)))}, (3, 8, 8), r"mask has shape \(2, 8, 8\), expected one of \[\(3, 8, 8\), \(8, 8\)\]"),
        (lambda d: {"kind": "inpaint", "mask": _save(d / "m.npy", np.full((8, 8), 0.5))}, (1, 8, 8), "mask has 64 entries that are not 0 or 1"),
        (lambda d: {"kind": "mri", "mask": _save(d / "m.npy", np.ones((4, 8)))}, (1, 8, 8), r"mask has shape \(4, 8\)"),
        (lambda d: {"kind": "matrix", "file": _save(d / "A.npy", np.ones((5, 63)))}, (1, 8, 8), r"matrix has shape \(5, 63\) but images \(1, 8, 8\) need \(m, 64\)"),
        (lambda d: {"kind": "matrix", "file": _save(d / "A.npy", np.array([[np.nan] * 64, [np.inf] * 64]))}, (1, 8, 8), "has 128 NaN/Inf entries"),
        (lambda d: {"kind": "matrix", "file": _save(d / "A.npy", np.array(["a"]))}, (1, 8, 8), "holds <U1, not numbers"),
        (lambda d: {"kind": "matrix"}, (1, 8, 8), "missing key 'file'"),
        (lambda d: {"kind": "matrix", "file": _savez(d / "A.npz")}, (1, 8, 8), "is not a single .npy array"),
    ],
)
def test_build_rejects_bad_spec(make, img_shape, message, tmp_path):
    with pytest.raises(UQError, match=message):
        build_operator(make(tmp_path), img_shape, root=tmp_path)


@pytest.mark.parametrize("spec", [{"kind": "inpaint", "mask": "nope.npy"}, {"kind": "mri", "mask": "nope.npy"}, {"kind": "matrix", "file": "nope.npy"}])
def test_missing_file_names_the_path(spec, tmp_path):
    with pytest.raises(UQError, match="file not found: " + str(tmp_path / "nope.npy")):
        build_operator(spec, (1, 8, 8), root=tmp_path)


def test_unreadable_file(tmp_path):
    (tmp_path / "A.npy").write_text("not an array")
    with pytest.raises(UQError, match="cannot read the file file .*A.npy as a .npy array"):
        build_operator({"kind": "matrix", "file": "A.npy"}, (1, 8, 8), root=tmp_path)


def test_describe_needs_a_spec():
    op = Blur(torch.ones(3, 3) / 9, (1, 8, 8))
    with pytest.raises(UQError, match="built from tensors, not a spec"):
        op.describe()


def test_errors_that_depend_on_the_image_or_a_file_are_spec_fit_errors(tmp_path):
    """The campaign loader checks specs without the image shape or the files: it relies on this split."""
    from uqcampaign.kernels.errors import SpecFitError

    for spec, shape in [({"kind": "superres", "factor": 3}, (1, 16, 16)), ({"kind": "blur", "size": 31}, (1, 16, 16)),
                        ({"kind": "inpaint", "fraction": 0.001}, (1, 8, 8)), ({"kind": "matrix", "file": str(tmp_path / "A.npy")}, (1, 4, 4)),
                        ({"kind": "inpaint", "mask": str(tmp_path / "m.npy")}, (1, 4, 4))]:
        with pytest.raises(SpecFitError):
            build_operator(spec, shape)
    for spec in [{"kind": "blur", "size": 4}, {"kind": "inpaint", "fraction": 1.5}, {"kind": "matrix"}, {"kind": "inpaint", "fracton": 0.5}]:
        with pytest.raises(UQError) as info:
            build_operator(spec, (1, 16, 16))
        assert not isinstance(info.value, SpecFitError), spec
