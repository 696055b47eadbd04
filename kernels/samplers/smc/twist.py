"""The Gaussian twist ``log N(y; A u, σ² I + c A Aᵀ)`` of both SMC kernels, batched over particles.

``tds`` takes ``u = x̂₀(x_t)`` and ``c = (1 − ᾱ_t)/ᾱ_t`` (Wu et al. 2023, NeurIPS, §3.3 and App. D:
the twist of a linear-Gaussian likelihood); ``smc-anneal`` takes ``u = x_t/√ᾱ_t`` with the same
``c`` (the likelihood of ``x_0 = u + √c ε``; Cardoso et al. 2024, ICLR, "Monte Carlo guided
diffusion"). The covariance acts on the measurement space; its solve and log-determinant are the
operator's exact ``obs_cov_solve`` / ``obs_cov_logdet``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["gaussian_log_density"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(residual: Tensor, operator: Any, sigma: float, c: float) -> tuple[Tensor, Tensor]:
    """``(log N(r; 0, Σ) (B,) float64, Σ⁻¹ r (B, *obs_shape) in r's dtype)``, ``Σ = σ² I + c A Aᵀ``.

    ``residual: (B, *obs_shape)``, ``r = y − A u``. The quadratic form is taken in float64 (log-weights
    of ``m``-dimensional Gaussians are large numbers; their differences matter).
    """
    r64 = residual.detach().to(torch.float64)
    solved = operator.obs_cov_solve(r64, sigma**2, c)
    m = math.prod(residual.shape[1:])
    log_density = -0.5 * ((r64 * solved).flatten(1).sum(1) + operator.obs_cov_logdet(sigma**2, c) + m * _LOG_2PI)
    return log_density, solved.to(residual.dtype)
