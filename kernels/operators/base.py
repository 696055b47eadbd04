"""The base of the operator ladder: :class:`LinearOperator` and the batched helpers every kind uses.

Subclasses give ``A`` and ``A_T``; the base gives generic fallbacks: ``prox_data`` by batched
conjugate gradient, ``pinv`` by CG on the normal equations, ``norm_sq`` by power iteration,
``matrix`` by applying ``A`` to the identity basis. Images are ``x: (B, C, H, W)``, measurements
``y: (B, *obs_shape)``; every method works in the dtype and device of its input, buffers are kept
in float64 and cast on use.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require

__all__ = ["LinearOperator", "ImgShape", "Scalar"]

ImgShape = tuple[int, int, int]
Scalar = float | Tensor


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
        self._obs_gram_eig: tuple[Tensor, Tensor] | None = None  # (λ (m,), U (m, m)) of A Aᵀ, generic fallback

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

    # -- the covariance σ²I + c A Aᵀ of the measurement space (twisted SMC) ----------
    @staticmethod
    def _check_cov(s2: float, c: float) -> None:
        require(math.isfinite(s2) and s2 > 0, f"noise variance s2 = {s2!r} must be finite and > 0")
        require(math.isfinite(c) and c >= 0, f"covariance scale c = {c!r} must be finite and >= 0")

    def obs_cov_solve(self, r: Tensor, s2: float, c: float) -> Tensor:
        """``(s2 I + c A Aᵀ)⁻¹ r`` on the measurement space; ``r: (B, *obs_shape)`` → ``(B, *obs_shape)``.

        The covariance of ``y`` given a Gaussian guess of ``x`` with variance ``c`` per pixel (the TDS
        twist, Wu et al. 2023). Generic: eigendecomposition ``A Aᵀ = U diag(λ) Uᵀ`` of the dense
        ``(m, m)`` matrix, computed once in float64 (exact; ``m = prod(obs_shape)``, small sizes).
        """
        self._check_cov(s2, c)
        lam, u = self._obs_gram_eigh()
        lam, u = _cast(lam, r), _cast(u, r)
        coords = r.reshape(r.shape[0], -1) @ u
        return ((coords / (s2 + c * lam)) @ u.T).reshape(r.shape)

    def obs_cov_logdet(self, s2: float, c: float) -> float:
        """``log det(s2 I + c A Aᵀ)`` over the ``m = prod(obs_shape)`` measurement coordinates, in float64."""
        self._check_cov(s2, c)
        lam, _ = self._obs_gram_eigh()
        return float(torch.log(s2 + c * lam.to(torch.float64)).sum())

    def _obs_gram_eigh(self) -> tuple[Tensor, Tensor]:
        """``(λ (m,), U (m, m))`` of ``A Aᵀ`` in float64 (λ clamped at 0), cached."""
        if self._obs_gram_eig is None:
            mat = self.matrix(torch.float64)
            lam, u = torch.linalg.eigh(mat @ mat.T)
            self._obs_gram_eig = (lam.clamp_min(0.0), u)
        return self._obs_gram_eig

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
