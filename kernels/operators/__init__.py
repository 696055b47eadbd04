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

from uqcampaign.kernels.operators.base import LinearOperator
from uqcampaign.kernels.operators.dense import CompressedSensing, DenseOperator, MatrixOperator
from uqcampaign.kernels.operators.diagonal import Denoise, DiagonalOperator, Inpainting
from uqcampaign.kernels.operators.fourier import MRI, Blur, FourierDiagonalOperator
from uqcampaign.kernels.operators.registry import OPERATOR_CLASSES, OPERATOR_KINDS, build_operator
from uqcampaign.kernels.operators.superres import SuperResolution

__all__ = [
    "OPERATOR_KINDS",
    "OPERATOR_CLASSES",
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
