"""Linear forward operators ``y = A x`` of the imaging inverse problems, batched over chains.

A ladder in the manner of deepinv's ``physics`` module:

* :class:`LinearOperator` — the base. Subclasses give ``A`` and ``A_T``; the base gives generic
  fallbacks: ``prox_data`` by batched conjugate gradient, ``pinv`` by CG on the normal equations,
  ``norm_sq`` by power iteration, ``matrix`` by applying ``A`` to the identity basis.
* :class:`DiagonalOperator` (``denoise``, ``inpaint``) and :class:`FourierDiagonalOperator`
  (``blur``, ``mri``): ``AᵀA`` is diagonal in the pixel or Fourier basis, so prox and pinv are closed form.
* :class:`SuperResolution`: ``A Aᵀ = I/f²``, prox by the Woodbury identity.
* :class:`DenseOperator` (``cs``, ``matrix``): an explicit ``(m, C·H·W)`` matrix; CG prox, exact pinv.

Images are ``x: (B, C, H, W)``, measurements ``y: (B, *obs_shape)``. Every method works in the
dtype and device of its input; buffers are kept in float64 and cast on use (``to`` avoids the cast).
Operators are built from a small dict with :func:`build_operator` and describe themselves with
``describe()`` (a JSON-able dict that rebuilds an identical operator).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from uqcampaign.kernels.errors import SpecFitError, UQError, require, require_fit

__all__ = [
    "OPERATOR_KINDS",
    "LinearOperator",
    "DiagonalOperator",
    "FourierDiagonalOperator",
    "Denoise",
    "Inpainting",
    "Blur",
    "SuperResolution",
    "MRI",
    "DenseOperator",
    "CompressedSensing",
    "MatrixOperator",
    "build_operator",
]

ImgShape = tuple[int, int, int]
Scalar = float | Tensor


# --------------------------------------------------------------------------- helpers


def _cast(t: Tensor, like: Tensor) -> Tensor:
    """``t`` on ``like``'s device, in ``like``'s float precision (complex stays complex, bool stays bool)."""
    return _move(t, like.device, like.dtype)


def _move(t: Tensor, device: torch.device | str | None, dtype: torch.dtype | None) -> Tensor:
    """Move a buffer; a float ``dtype`` maps a complex buffer to the matching complex dtype."""
    if dtype is None or not (t.is_floating_point() or t.is_complex()):
        return t.to(device=device)
    if t.is_complex():
        dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return t.to(device=device, dtype=dtype)


def _per_chain(value: Scalar, name: str, like: Tensor) -> Tensor:
    """``sigma`` or ``delta`` as a positive ``(B or 1, 1, 1, 1)`` tensor in ``like``'s dtype/device.

    Accepts a float, a 0-d tensor, or a tensor of ``B`` values (``(B,)`` or ``(B, 1, 1, 1)``).
    """
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1, 1, 1)
    batch = like.shape[0]
    require(
        t.shape[0] in (1, batch),
        f"{name} has {t.shape[0]} values but the batch has {batch} chains; give one value or one per chain",
    )
    bad = ~(t > 0) | ~torch.isfinite(t)
    if bool(bad.any()):
        raise UQError(f"{name} must be finite and > 0, got {t[bad][0].item()} ({int(bad.sum())} of {t.numel()} values bad); fix it")
    return t


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-chain inner product over all non-batch axes, shape ``(B, 1, ..., 1)``."""
    return (a * b).sum(dim=tuple(range(1, a.ndim)), keepdim=True)


def _conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve ``apply(x) = b`` for a symmetric positive (semi-)definite map, chain by chain in one batch.

    Stops when every chain has ``||b − apply(x)|| ≤ tol ||b||`` or after ``max_iter`` iterations.
    On a singular but consistent system started at ``x0 = 0`` the iterates stay in the range of
    ``apply``, so CG returns the least-norm solution.
    """
    x = x0.clone()
    r = b - apply(x)
    p = r.clone()
    rs = _dot(r, r)
    target = tol**2 * _dot(b, b)
    for _ in range(max_iter):
        if bool((rs <= target).all()):
            break
        ap = apply(p)
        p_ap = _dot(p, ap)
        alpha = torch.where(p_ap > 0, rs / p_ap, torch.zeros_like(rs))  # converged chains stand still
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        beta = torch.where(rs > 0, rs_new / rs, torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


# --------------------------------------------------------------------------- base


class LinearOperator:
    """A linear map from images ``(B, C, H, W)`` to measurements ``(B, *obs_shape)``.

    Subclasses implement ``A`` and ``A_T``; everything else has a generic fallback that a
    subclass overrides when a closed form exists.
    """

    kind: ClassVar[str] = ""
    #: spec keys besides ``kind`` that :func:`build_operator` accepts for this kind
    KEYS: ClassVar[tuple[str, ...]] = ()
    #: conjugate-gradient relative residual per dtype, and iteration cap (prox and generic pinv)
    CG_TOL: ClassVar[dict[torch.dtype, float]] = {torch.float64: 1e-11, torch.float32: 1e-6}
    CG_MAX_ITER: ClassVar[int] = 1000

    def __init__(self, img_shape: ImgShape, obs_shape: tuple[int, ...], spec: Mapping[str, Any] | None = None) -> None:
        self.img_shape = tuple(int(s) for s in img_shape)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self._spec = None if spec is None else {"kind": self.kind, **spec}
        self._norm_sq: float | None = None

    # -- the map ----------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W)`` → ``y: (B, *obs_shape)``."""
        raise NotImplementedError

    def A_T(self, y: Tensor) -> Tensor:
        """Exact adjoint: ``y: (B, *obs_shape)`` → ``(B, C, H, W)``, ``<A x, y> = <x, Aᵀ y>``."""
        raise NotImplementedError

    def _gram(self, x: Tensor) -> Tensor:
        """``AᵀA x``, ``(B, C, H, W)``."""
        return self.A_T(self.A(x))

    def _batched(self, y: Tensor) -> Tensor:
        """``y`` with a leading batch axis: ``(*obs)`` → ``(1, *obs)``."""
        return y.unsqueeze(0) if y.ndim == len(self.obs_shape) else y

    # -- solvers (generic fallbacks) --------------------------------------------------
    def pinv(self, y: Tensor) -> Tensor:
        """Least-norm least-squares solution ``A⁺ y``, ``(B, C, H, W)``; ``y``: ``(*obs)`` or ``(B, *obs)``.

        Generic: CG on ``AᵀA x = Aᵀ y`` from ``x = 0`` (stays in range(Aᵀ), hence least norm).
        """
        b = self.A_T(self._batched(y))
        return _conjugate_gradient(self._gram, b, torch.zeros_like(b), self.CG_TOL.get(b.dtype, 1e-6), self.CG_MAX_ITER)

    def prox_data(self, u: Tensor, y: Tensor, sigma: Scalar, delta: Scalar) -> Tensor:
        """``argmin_x ||A x − y||²/(2σ²) + ||x − u||²/(2δ)``, i.e. ``(AᵀA/σ² + I/δ)⁻¹ (Aᵀy/σ² + u/δ)``.

        ``u: (B, C, H, W)``, ``y: (*obs)`` or ``(B, *obs)``; ``sigma``, ``delta``: floats or per-chain
        tensors broadcastable to ``(B, 1, 1, 1)``. Generic: batched CG, warm-started at ``u``.
        """
        s2, d = self._check_sigma_delta(u, sigma, delta)
        b = self.A_T(self._batched(_cast(y, u))) / s2 + u / d
        tol = self.CG_TOL.get(u.dtype, 1e-6)
        return _conjugate_gradient(lambda x: self._gram(x) / s2 + x / d, b, u, tol, self.CG_MAX_ITER)

    @staticmethod
    def _check_sigma_delta(u: Tensor, sigma: Scalar, delta: Scalar) -> tuple[Tensor, Tensor]:
        """``(σ², δ)`` as ``(B or 1, 1, 1, 1)`` tensors; UQError unless both are > 0."""
        return _per_chain(sigma, "sigma", u) ** 2, _per_chain(delta, "delta", u)

    def norm_sq(self) -> float:
        """``||A||²``, the largest eigenvalue of ``AᵀA`` (generic: power iteration, cached)."""
        if self._norm_sq is None:
            self._norm_sq = self._power_iteration()
        return self._norm_sq

    def _power_iteration(self, max_iter: int = 2000, tol: float = 1e-12) -> float:
        """Power iteration on ``AᵀA`` in float64 from a fixed-seed start (never the global RNG)."""
        gen = torch.Generator().manual_seed(0)
        v = torch.randn((1, *self.img_shape), generator=gen, dtype=torch.float64).to(self._device())
        v = v / v.norm()
        estimate = 0.0
        for _ in range(max_iter):
            w = self._gram(v)
            new = float(_dot(v, w))  # Rayleigh quotient, ||v|| = 1
            norm = float(w.norm())
            if norm == 0.0:
                return 0.0
            v = w / norm
            if abs(new - estimate) <= tol * abs(new):
                return new
            estimate = new
        return estimate

    def _device(self) -> torch.device:
        """The device of the operator's buffers (CPU when it holds none)."""
        for value in vars(self).values():
            if isinstance(value, Tensor):
                return value.device
        return torch.device("cpu")

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Dense ``(prod(obs_shape), C·H·W)`` matrix on the C-order flattened image (small sizes only)."""
        n = math.prod(self.img_shape)
        columns = []
        for start in range(0, n, 256):  # identity basis in blocks of 256 images
            eye = torch.eye(n, dtype=dtype, device=self._device())[start : start + 256]
            columns.append(self.A(eye.reshape(-1, *self.img_shape)).reshape(eye.shape[0], -1))
        return torch.cat(columns).T.contiguous()

    # -- bookkeeping ------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-able spec that :func:`build_operator` turns back into an identical operator."""
        require(
            self._spec is not None,
            f"this {self.kind} operator was built from tensors, not a spec; build it with build_operator to describe it",
        )
        return dict(self._spec)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LinearOperator:
        """A copy with every buffer on ``device`` and in float ``dtype`` (complex buffers in the matching complex dtype)."""
        require(
            dtype is None or dtype.is_floating_point,
            f"operator dtype must be a float dtype, got {dtype}; use torch.float32 or torch.float64",
        )
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(new, name, _move(value, device, dtype))
        return new

    def check_measurement(self, y: Any) -> None:
        """UQError unless ``y`` has shape ``(*obs_shape)`` or ``(B, *obs_shape)``, is real and finite."""
        shape = tuple(getattr(y, "shape", ()))
        what = f"the {self.kind} operator on images of shape {self.img_shape}"
        require(
            shape == self.obs_shape or shape[1:] == self.obs_shape,
            f"measurement y has shape {shape} but {what} expects {self.obs_shape} or (batch, *{self.obs_shape}); check data.y or the operator spec",
        )
        t = torch.as_tensor(y)
        require(not t.is_complex(), f"measurement y is complex; {what} expects a real array of shape {self.obs_shape}")
        bad = int((~torch.isfinite(t)).sum())
        require(bad == 0, f"measurement y has {bad} NaN/Inf entries out of {t.numel()}; remove or replace them")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(img_shape={self.img_shape}, obs_shape={self.obs_shape}, spec={self._spec})"


# --------------------------------------------------------------------------- diagonal in pixels


class DiagonalOperator(LinearOperator):
    """``A x = w ⊙ x`` with ``w`` broadcastable to ``(C, H, W)``: ``AᵀA = diag(w²)``, everything elementwise."""

    def __init__(self, weights: Tensor, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(img_shape, img_shape, spec)
        self.weights = weights.to(torch.float64)
        self.weights_inv = torch.where(self.weights != 0, 1.0 / self.weights, torch.zeros_like(self.weights))

    def A(self, x: Tensor) -> Tensor:
        return _cast(self.weights, x) * x

    A_T = A

    def pinv(self, y: Tensor) -> Tensor:
        y = self._batched(y)
        return _cast(self.weights_inv, y) * y

    def prox_data(self, u: Tensor, y: Tensor, sigma: Scalar, delta: Scalar) -> Tensor:
        s2, d = self._check_sigma_delta(u, sigma, delta)
        w = _cast(self.weights, u)
        return (w * _cast(y, u) / s2 + u / d) / (w * w / s2 + 1.0 / d)

    def norm_sq(self) -> float:
        return float((self.weights**2).max())


class Denoise(DiagonalOperator):
    """Identity: ``y = x``, obs ``(C, H, W)``. Spec ``{kind: denoise}``."""

    kind = "denoise"

    def __init__(self, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(torch.ones(1, 1, 1, dtype=torch.float64), img_shape, spec)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> Denoise:
        return cls(img_shape, {})


class Inpainting(DiagonalOperator):
    """Pixel mask: ``y = M ⊙ x``, obs ``(C, H, W)``, ``M`` of 0/1 values.

    Spec ``{kind: inpaint, fraction: 0.5, seed: 0}`` keeps exactly ``round(fraction·H·W)`` pixel
    positions, drawn with ``numpy.random.default_rng(seed)`` and shared over channels (a missing
    pixel loses all its channels); or ``{kind: inpaint, mask: file.npy}`` with a ``(C, H, W)`` or
    ``(H, W)`` array of 0/1.
    """

    kind = "inpaint"
    KEYS = ("fraction", "seed", "mask")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> Inpainting:
        if "mask" in spec:
            return cls(_file_mask(spec, img_shape, root, "inpaint", ("fraction", "seed")), img_shape, {"mask": str(spec["mask"])})
        _, h, w = img_shape
        fraction = _param(spec, "fraction", 0.5, "inpaint", minimum=0.0, exclusive=True, maximum=1.0)
        seed = _param(spec, "seed", 0, "inpaint", integer=True, minimum=0)
        n_keep = round(fraction * h * w)
        require_fit(
            n_keep > 0,
            f"operator inpaint: fraction={fraction} keeps no pixel of a {h}x{w} image; raise it above {0.5 / (h * w):.2g}",
        )
        keep = np.random.default_rng(seed).permutation(h * w)[:n_keep]
        mask = np.zeros(h * w)
        mask[keep] = 1.0
        return cls(torch.from_numpy(mask).reshape(1, h, w), img_shape, {"fraction": fraction, "seed": seed})


# --------------------------------------------------------------------------- diagonal in Fourier


class FourierDiagonalOperator(LinearOperator):
    """Operators with ``AᵀA = Fᴴ diag(g) F`` for a real, symmetric ``g(k) ≥ 0`` on the 2-D DFT grid.

    ``g`` is held on the half grid of ``rfft2``, ``(1 or C, H, W//2 + 1)``; since ``g(k) = g(−k)`` the
    products below are Hermitian-symmetric and ``irfft2`` returns them exactly. Then

        prox:  x = F⁻¹[ F(Aᵀy/σ² + u/δ) / (g/σ² + 1/δ) ]
        pinv:  x = F⁻¹[ F(Aᵀy) · g⁺ ],  g⁺ = 1/g where g > PINV_RTOL²·max g, else 0

    (``(AᵀA)⁺Aᵀ = A⁺``; the threshold on ``g = s²`` is ``PINV_RTOL`` on the singular values ``s``).
    """

    #: singular values below PINV_RTOL × the largest are treated as zero by ``pinv``
    PINV_RTOL: ClassVar[float] = 1e-3

    def __init__(self, gram_hat: Tensor, img_shape: ImgShape, obs_shape: tuple[int, ...], spec: Mapping[str, Any] | None) -> None:
        super().__init__(img_shape, obs_shape, spec)
        self.gram_hat = gram_hat.to(torch.float64)
        keep = self.gram_hat > self.PINV_RTOL**2 * self.gram_hat.max()
        self.gram_hat_pinv = torch.where(keep, 1.0 / self.gram_hat, torch.zeros_like(self.gram_hat))

    def _filter(self, x: Tensor, multiplier: Tensor) -> Tensor:
        """``F⁻¹[multiplier · F x]`` on the last two axes, ``x: (B, C, H, W)``."""
        return torch.fft.irfft2(torch.fft.rfft2(x) * multiplier, s=x.shape[-2:])

    def pinv(self, y: Tensor) -> Tensor:
        z = self.A_T(self._batched(y))
        return self._filter(z, _cast(self.gram_hat_pinv, z))

    def prox_data(self, u: Tensor, y: Tensor, sigma: Scalar, delta: Scalar) -> Tensor:
        s2, d = self._check_sigma_delta(u, sigma, delta)
        b = self.A_T(self._batched(_cast(y, u))) / s2 + u / d
        return self._filter(b, 1.0 / (_cast(self.gram_hat, u) / s2 + 1.0 / d))

    def norm_sq(self) -> float:
        return float(self.gram_hat.max())


class Blur(FourierDiagonalOperator):
    """Circular convolution with a normalised Gaussian kernel, by FFT; obs ``(C, H, W)``.

    Spec ``{kind: blur, sigma: 2.0, size: 9}`` (``size`` odd, ≤ H and W). ``A x = F⁻¹[K̂ · F x]``,
    ``Aᵀ y = F⁻¹[conj(K̂) · F y]`` (correlation), ``g = |K̂|²``. ``pinv`` is the truncated inverse
    filter: frequencies with ``|K̂| ≤ PINV_RTOL · max|K̂|`` are set to zero, which is
    ``torch.linalg.pinv(matrix(), rtol=PINV_RTOL)``.
    """

    kind = "blur"
    KEYS = ("sigma", "size")

    def __init__(self, kernel: Tensor, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        _, h, w = img_shape
        size = kernel.shape[-1]
        padded = torch.zeros(h, w, dtype=torch.float64)
        padded[:size, :size] = kernel
        # centre of the kernel at pixel (0, 0), wrapping around: circular convolution
        padded = torch.roll(padded, shifts=(-(size // 2), -(size // 2)), dims=(0, 1))
        self.kernel_hat = torch.fft.rfft2(padded)[None]  # (1, H, W//2 + 1), complex
        super().__init__(self.kernel_hat.abs() ** 2, img_shape, img_shape, spec)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> Blur:
        sigma = _param(spec, "sigma", 2.0, "blur", minimum=0.0, exclusive=True)
        size = _param(spec, "size", 9, "blur", integer=True, minimum=1)
        require(
            size % 2 == 1,
            f"operator blur: size={size} must be odd so the kernel has a centre pixel; use {size + 1}",
        )
        require_fit(
            size <= min(img_shape[1:]),
            f"operator blur: size={size} exceeds the image size {img_shape[1:]}; use a kernel of at most {min(img_shape[1:])} pixels",
        )
        r = torch.arange(size, dtype=torch.float64) - size // 2
        g1 = torch.exp(-(r**2) / (2 * sigma**2))
        kernel = g1[:, None] * g1[None, :]
        return cls(kernel / kernel.sum(), img_shape, {"sigma": sigma, "size": size})

    def A(self, x: Tensor) -> Tensor:
        return self._filter(x, _cast(self.kernel_hat, x))

    def A_T(self, y: Tensor) -> Tensor:
        return self._filter(y, _cast(self.kernel_hat, y).conj())


class MRI(FourierDiagonalOperator):
    """Single-coil MRI: orthonormal 2-D FFT, k-space centred (``fftshift``), then a 0/1 sampling mask.

    ``y = M ⊙ fftshift(F x)`` stored as a real tensor, obs ``(C, H, W, 2)`` (real, imaginary).
    Spec ``{kind: mri, acceleration: 4, center_fraction: 0.08, seed: 0}`` samples whole k-space
    columns (the last axis): the ``max(1, round(W·center_fraction))`` centre columns and random
    others, ``max(n_centre, round(W/acceleration))`` in all (exact acceleration, numpy
    ``default_rng(seed)``); or ``{kind: mri, mask: file.npy}`` with a ``(H, W)`` or ``(C, H, W)`` 0/1
    mask in the same centred order.

    For real ``x``, ``AᵀA = Re(Fᴴ M F) = Fᴴ M_s F`` with the symmetrised mask
    ``M_s(k) = (M(k) + M(−k))/2`` (``F x`` is Hermitian), so ``g = M_s``.
    """

    kind = "mri"
    KEYS = ("acceleration", "center_fraction", "seed", "mask")

    def __init__(self, mask: Tensor, img_shape: ImgShape, spec: Mapping[str, Any] | None = None) -> None:
        _, _, w = img_shape
        self.mask = mask.to(torch.float64)  # centred order, (1 or C, H, W)
        m = torch.fft.ifftshift(self.mask, dim=(-2, -1))  # DFT order
        m_neg = torch.roll(torch.flip(m, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # M(−k mod N)
        super().__init__(((m + m_neg) / 2)[..., : w // 2 + 1], img_shape, (*img_shape, 2), spec)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> MRI:
        if "mask" in spec:
            generation = ("acceleration", "center_fraction", "seed")
            return cls(_file_mask(spec, img_shape, root, "mri", generation), img_shape, {"mask": str(spec["mask"])})
        _, h, w = img_shape
        acceleration = _param(spec, "acceleration", 4, "mri", minimum=1.0)
        center = _param(spec, "center_fraction", 0.08, "mri", minimum=0.0, exclusive=True, maximum=1.0)
        seed = _param(spec, "seed", 0, "mri", integer=True, minimum=0)
        n_centre = max(1, round(w * center))
        n_total = max(n_centre, round(w / acceleration))
        columns = np.zeros(w, dtype=bool)
        start = (w - n_centre + 1) // 2  # the band holds the DC column w // 2
        columns[start : start + n_centre] = True
        others = np.flatnonzero(~columns)
        columns[np.random.default_rng(seed).choice(others, n_total - n_centre, replace=False)] = True
        mask = np.broadcast_to(columns.astype(np.float64), (1, h, w)).copy()
        params = {"acceleration": acceleration, "center_fraction": center, "seed": seed}
        return cls(torch.from_numpy(mask), img_shape, params)

    def A(self, x: Tensor) -> Tensor:
        k = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return torch.view_as_real(_cast(self.mask, x) * k)

    def A_T(self, y: Tensor) -> Tensor:
        k = _cast(self.mask, y) * torch.view_as_complex(y.contiguous())
        return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho").real


# --------------------------------------------------------------------------- pooling


class SuperResolution(LinearOperator):
    """Average pooling by ``factor`` f: obs ``(C, H/f, W/f)``. Spec ``{kind: superres, factor: 2}``.

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
        factor = _param(spec, "factor", 2, "superres", integer=True, minimum=1)
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


# --------------------------------------------------------------------------- dense


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
    """Seeded Gaussian matrix ``(m, C·H·W)/√m`` (numpy ``default_rng(seed)``). Spec ``{kind: cs, m: 64, seed: 0}``."""

    kind = "cs"
    KEYS = ("m", "seed")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> CompressedSensing:
        m = _param(spec, "m", 64, "cs", integer=True, minimum=1)
        seed = _param(spec, "seed", 0, "cs", integer=True, minimum=0)
        mat = np.random.default_rng(seed).standard_normal((m, math.prod(img_shape))) / math.sqrt(m)
        return cls(torch.from_numpy(mat), img_shape, {"m": m, "seed": seed})


class MatrixOperator(DenseOperator):
    """A user matrix from a ``.npy`` file of shape ``(m, C·H·W)``. Spec ``{kind: matrix, file: A.npy}``."""

    kind = "matrix"
    KEYS = ("file",)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None) -> MatrixOperator:
        require("file" in spec, "operator matrix: missing key 'file'; give {kind: matrix, file: A.npy}")
        mat = _load_array(spec["file"], root, "matrix", "file")
        return cls(torch.from_numpy(mat), img_shape, {"file": str(spec["file"])})


# --------------------------------------------------------------------------- building


_REGISTRY: dict[str, type[LinearOperator]] = {
    cls.kind: cls for cls in (Denoise, Inpainting, Blur, SuperResolution, MRI, CompressedSensing, MatrixOperator)
}
OPERATOR_KINDS: tuple[str, ...] = tuple(_REGISTRY)  # denoise, inpaint, blur, superres, mri, cs, matrix


def build_operator(spec: Mapping[str, Any], img_shape: tuple[int, int, int], root: Path | None = None) -> LinearOperator:
    """Build an operator from its spec, e.g. ``{"kind": "blur", "sigma": 2.0, "size": 9}``.

    ``img_shape = (C, H, W)``. Relative file paths (``mask``, ``file``) are resolved against
    ``root`` (the campaign file's folder); ``describe()`` keeps them as given.
    """
    require(isinstance(spec, Mapping), f"operator spec must be a mapping like {{kind: blur, sigma: 2.0}}, got {spec!r}")
    kind = spec.get("kind")
    require(
        isinstance(kind, str) and kind in _REGISTRY,
        f"unknown operator kind {kind!r}; choose one of {', '.join(OPERATOR_KINDS)}",
    )
    shape = tuple(img_shape)
    require(
        len(shape) == 3 and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape),
        f"img_shape must be (C, H, W) with positive integers, got {img_shape!r}",
    )
    cls = _REGISTRY[kind]
    params = {k: v for k, v in spec.items() if k != "kind"}
    for key in params:
        require(
            key in cls.KEYS,
            f"unknown key {key!r} in the {kind} operator spec; allowed keys: {', '.join(cls.KEYS) or 'none'}",
        )
    return cls.from_spec(params, tuple(int(s) for s in shape), None if root is None else Path(root))


def _param(
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




def _load_array(path: Any, root: Path | None, kind: str, key: str) -> np.ndarray:
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


def _file_mask(spec: Mapping[str, Any], img_shape: ImgShape, root: Path | None, kind: str, generation: tuple[str, ...]) -> Tensor:
    """The 0/1 mask of ``spec["mask"]``, a ``(C, H, W)`` or ``(H, W)`` ``.npy`` file, as ``(C or 1, H, W)``.

    ``generation`` lists the keys that draw a mask instead; giving both is an error.
    """
    both = [k for k in generation if k in spec]
    require(
        not both,
        f"operator {kind}: spec gives both 'mask' and {', '.join(map(repr, both))}; give a mask file or the generation parameters, not both",
    )
    c, h, w = img_shape
    mask = _load_array(spec["mask"], root, kind, "mask")
    require_fit(
        mask.shape in [(c, h, w), (h, w)],
        f"operator {kind}: mask has shape {mask.shape}, expected one of {[(c, h, w), (h, w)]}; fix the mask file",
    )
    bad = int(((mask != 0) & (mask != 1)).sum())
    require_fit(bad == 0, f"operator {kind}: mask has {bad} entries that are not 0 or 1; save a 0/1 mask")
    return torch.from_numpy(mask).reshape(-1, h, w)
