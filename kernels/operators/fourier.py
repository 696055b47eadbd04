"""Operators diagonal in the Fourier basis (``AᵀA = Fᴴ diag(g) F``): ``blur`` and ``mri``; prox and pinv by FFT."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from uqcampaign.kernels.errors import require, require_fit
from uqcampaign.kernels.operators.base import ImgShape, LinearOperator, Scalar, _cast
from uqcampaign.kernels.operators.spec import file_mask, param

__all__ = ["FourierDiagonalOperator", "Blur", "MRI"]


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

    def obs_cov_logdet(self, s2: float, c: float) -> float:
        """Sylvester: ``log det(s2 I_m + c A Aᵀ) = m log s2 + Σ_k log(1 + c g(k)/s2)`` over the full DFT grid
        of every channel (``g`` is held on the ``rfft2`` half grid: columns ``1 … ⌈W/2⌉−1`` stand for two)."""
        self._check_cov(s2, c)
        w = self.img_shape[2]
        multiplicity = torch.full((w // 2 + 1,), 2.0, dtype=torch.float64)
        multiplicity[0] = 1.0
        if w % 2 == 0:
            multiplicity[-1] = 1.0
        per_channel = self.img_shape[0] // self.gram_hat.shape[0]
        spectrum = (torch.log1p(c * self.gram_hat / s2) * multiplicity).sum() * per_channel
        return math.prod(self.obs_shape) * math.log(s2) + float(spectrum)


class Blur(FourierDiagonalOperator):
    """Deblurring: circular convolution with a normalised Gaussian kernel, by FFT; obs ``(C, H, W)``.

    Reference: Hansen, Nagy & O'Leary 2006, Deblurring Images: Matrices, Spectra, and Filtering, SIAM (periodic boundary conditions).

    Keys:
        sigma: standard deviation of the Gaussian kernel, in pixels (> 0).
        size: width of the square kernel in pixels: odd, at most H and W.

    Spec ``{kind: blur, sigma: 2.0, size: 9}``. ``A x = F⁻¹[K̂ · F x]``,
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
        sigma = param(spec, "sigma", 2.0, "blur", minimum=0.0, exclusive=True)
        size = param(spec, "size", 9, "blur", integer=True, minimum=1)
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

    def obs_cov_solve(self, r: Tensor, s2: float, c: float) -> Tensor:
        """A convolution is normal (``A Aᵀ = AᵀA``): ``F⁻¹[F r / (s2 + c g)]``."""
        self._check_cov(s2, c)
        return self._filter(r, 1.0 / (s2 + c * _cast(self.gram_hat, r)))


class MRI(FourierDiagonalOperator):
    """Single-coil MRI: orthonormal 2-D FFT, k-space centred, then a 0/1 mask of sampled columns; obs ``(C, H, W, 2)``.

    ``y = M ⊙ fftshift(F x)`` stored as a real tensor (real, imaginary). Spec ``{kind: mri,
    acceleration: 4, center_fraction: 0.08, seed: 0}`` or ``{kind: mri, mask: file.npy}``.

    Reference: Zbontar et al. 2018, fastMRI, arXiv:1811.08839 (random column masks with a fully sampled centre).

    Keys:
        acceleration: W / (columns sampled), >= 1: max(n_centre, round(W/acceleration)) columns in all.
        center_fraction: fraction of the W columns sampled around the centre of k-space, in (0, 1]:
            n_centre = max(1, round(W·center_fraction)).
        seed: seed of numpy.random.default_rng that draws the other sampled columns.
        mask: a .npy file of 0/1 values, (H, W) or (C, H, W), in the centred k-space order, instead of the three keys above.

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
            return cls(file_mask(spec, img_shape, root, "mri", generation), img_shape, {"mask": str(spec["mask"])})
        _, h, w = img_shape
        acceleration = param(spec, "acceleration", 4, "mri", minimum=1.0)
        center = param(spec, "center_fraction", 0.08, "mri", minimum=0.0, exclusive=True, maximum=1.0)
        seed = param(spec, "seed", 0, "mri", integer=True, minimum=0)
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

    def obs_cov_solve(self, r: Tensor, s2: float, c: float) -> Tensor:
        """``(s2 I + c A Aᵀ)⁻¹ r`` in k-space, exact and without cancellation.

        With ``u`` the complex k-space field of ``r`` (DFT order) and ``(J u)(k) = conj(u(−k))``,
        ``A Aᵀ = M (I + J)/2 M`` (``F`` of a real image is Hermitian). Unsampled ``k``: ``u/s2``.
        Sampled ``k`` whose mirror ``−k`` is sampled too (``k = −k`` included): ``J`` is an involution
        there, ``(s2 I + c(I+J)/2)⁻¹ = a I + b J`` with ``a = (2 s2 + c)/(2 s2 (s2 + c))``,
        ``b = −c/(2 s2 (s2 + c))``. Sampled ``k`` with unsampled mirror: ``u/(s2 + c/2)``.
        """
        self._check_cov(s2, c)
        mask = torch.fft.ifftshift(_cast(self.mask, r), dim=(-2, -1))  # DFT order
        mirror = torch.roll(torch.flip(mask, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # M(−k)
        both = mask * mirror
        a = both * (2 * s2 + c) / (2 * s2 * (s2 + c)) + (mask - both) / (s2 + c / 2) + (1 - mask) / s2
        b = -both * c / (2 * s2 * (s2 + c))
        u = torch.fft.ifftshift(torch.view_as_complex(r.contiguous()), dim=(-2, -1))
        u_mirror = torch.roll(torch.flip(mask * u, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1)).conj()  # J(M u)
        x = a * u + b * u_mirror
        return torch.view_as_real(torch.fft.fftshift(x, dim=(-2, -1))).contiguous()
