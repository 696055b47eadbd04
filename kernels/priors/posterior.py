"""The exact posterior of a Gaussian-mixture prior under a linear Gaussian likelihood.

Prior ``Σ_k w_k N(m_k, Σ0_k)``, likelihood ``y = A x + σ ε``. Each component is conjugate:

    Σ_k = (AᵀA/σ² + Σ0_k⁻¹)⁻¹,   μ_k = Σ_k (Aᵀy/σ² + Σ0_k⁻¹ m_k),
    w_k' ∝ w_k N(y; A m_k, A Σ0_k Aᵀ + σ² I)          (the evidence of component k),

so ``p(x | y)`` is a Gaussian mixture again. Everything is float64, with Cholesky factors and
triangular solves rather than explicit inverses. Vectors are C-order flattened images, ``d = C·H·W``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from uqcampaign.kernels.errors import require

__all__ = ["GaussianMixturePosterior", "linear_gaussian_posterior"]

_LOG_2PI = math.log(2.0 * math.pi)


def _cholesky(matrices: Tensor, what: str) -> Tensor:
    """Lower Cholesky factors of ``(K, n, n)`` positive-definite matrices; UQError if one is not."""
    factor, info = torch.linalg.cholesky_ex(matrices)
    bad = int((info != 0).sum())
    require(bad == 0, f"{what} of {bad} component(s) is not positive definite; check the prior covariances and sigma")
    return factor


class GaussianMixturePosterior:
    """An exact posterior ``p(x | y) = Σ_k w_k N(μ_k, Σ_k)`` of one measurement.

    ``weights (K,)``, ``means (K, d)``, ``covariances (K, d, d)`` (float64, CPU), ``img_shape = (C, H, W)``;
    ``log_evidence``: the exact ``log p(y) = log Σ_k w_k N(y; A m_k, A Σ0_k Aᵀ + σ² I)`` (None when unknown);
    ``component_log_evidence (K,)``: the terms ``log N(y; A m_k, A Σ0_k Aᵀ + σ² I)`` without the prior
    weights (None when unknown), so that ``log p(y)`` under other weights ``w'`` is
    ``logsumexp(log w' + component_log_evidence)`` (a conditional prior's ``log p(y | c)``).
    Per-pixel marginals are mixtures of normals: ``F_i(x) = Σ_k w_k Φ((x − μ_ki) / s_ki)``.
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covariances: Tensor,
        img_shape: tuple[int, int, int],
        log_evidence: float | None = None,
        component_log_evidence: Tensor | None = None,
    ) -> None:
        d = math.prod(img_shape)
        k = weights.shape[0]
        require(
            weights.dim() == 1 and means.shape == (k, d) and covariances.shape == (k, d, d),
            f"posterior shapes weights {tuple(weights.shape)}, means {tuple(means.shape)}, covariances {tuple(covariances.shape)} "
            f"do not fit K = {k}, d = {d} (images {tuple(img_shape)})",
        )
        self.img_shape = tuple(int(s) for s in img_shape)
        self.log_evidence = log_evidence  # log p(y), when built from a prior and a measurement
        self.component_log_evidence = None if component_log_evidence is None else component_log_evidence.to(torch.float64)
        self.weights = weights.to(torch.float64)
        self.means = means.to(torch.float64)
        self.covariances = covariances.to(torch.float64)
        self._scale_tril = _cholesky(self.covariances, "posterior covariance")  # (K, d, d)
        self._stds = self.covariances.diagonal(dim1=-2, dim2=-1).sqrt()  # (K, d)

    # -- draws and moments ---------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` i.i.d. posterior draws ``(n, C, H, W)``, float64 on the generator's device."""
        require(isinstance(n, int) and n >= 1, f"number of posterior samples n = {n!r} must be an integer >= 1")
        device = generator.device
        weights, means, tril = (t.to(device) for t in (self.weights, self.means, self._scale_tril))
        component = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, means.shape[1], generator=generator, device=device, dtype=torch.float64)
        x = torch.empty_like(eps)
        for k in range(weights.shape[0]):  # K is small; each draw gets μ_k + L_k ε
            rows = (component == k).nonzero(as_tuple=True)[0]
            x[rows] = means[k] + eps[rows] @ tril[k].T
        return x.reshape(n, *self.img_shape)

    def mean(self) -> Tensor:
        """Posterior mean ``(C, H, W)``."""
        return (self.weights[:, None] * self.means).sum(0).reshape(self.img_shape)

    def marginal_std(self) -> Tensor:
        """Per-pixel posterior std ``(C, H, W)``: ``sqrt(Σ_k w_k (s_k² + μ_k²) − mean²)``."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None] * (self._stds.square() + self.means.square())).sum(0)
        return (second - mean.square()).clamp_min(0.0).sqrt().reshape(self.img_shape)

    # -- per-pixel marginals -------------------------------------------------------------
    def marginal_cdf(self, x: Tensor) -> Tensor:
        """Per-pixel mixture CDF at ``x (..., C, H, W)`` → same shape, float64."""
        x = torch.as_tensor(x).to(device=self.means.device, dtype=torch.float64)
        require(
            tuple(x.shape[-3:]) == self.img_shape,
            f"marginal_cdf wants values of shape (..., *{self.img_shape}), got {tuple(x.shape)}",
        )
        flat = x.reshape(-1, 1, math.prod(self.img_shape))  # (N, 1, d)
        cdf = torch.special.ndtr((flat - self.means) / self._stds)  # (N, K, d)
        return (self.weights[:, None] * cdf).sum(1).reshape(x.shape)

    def interval_mass(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Exact posterior mass of ``[lower, upper]`` per pixel; ``lower, upper (C, H, W)`` → ``(C, H, W)``."""
        return self.marginal_cdf(upper) - self.marginal_cdf(lower)

    def quantile(self, level: float | Tensor, iterations: int = 100) -> Tensor:
        """Per-pixel quantile of the posterior marginals by bisection on the mixture CDF.

        ``level``: a number in (0, 1) → ``(C, H, W)``; or a tensor of levels ``(L,)`` → ``(L, C, H, W)``.
        The root lies between the smallest and largest component quantile, which bracket it.
        """
        levels = torch.as_tensor(level, dtype=torch.float64)
        require(
            levels.dim() <= 1 and bool(((levels > 0) & (levels < 1)).all()),
            f"quantile level must be a number (or 1-D tensor of numbers) in (0, 1), got {level!r}",
        )
        q = levels.reshape(-1, 1, 1)  # (L, 1, 1)
        component_quantiles = self.means + self._stds * torch.special.ndtri(q)  # (L, K, d)
        lo = component_quantiles.min(1).values  # (L, d): every F_k(lo) <= q, hence F(lo) <= q
        hi = component_quantiles.max(1).values
        target = q[:, :, 0]  # (L, 1)
        for _ in range(iterations):  # float64 bisection: 100 halvings reach machine precision
            mid = 0.5 * (lo + hi)
            below = (self.weights[:, None] * torch.special.ndtr((mid[:, None, :] - self.means) / self._stds)).sum(1) < target
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        result = (0.5 * (lo + hi)).reshape(-1, *self.img_shape)
        return result[0] if levels.dim() == 0 else result

    def equal_tailed_interval(self, level: float) -> tuple[Tensor, Tensor]:
        """The exact per-pixel equal-tailed ``level`` interval ``(lower, upper)``, each ``(C, H, W)``."""
        require(isinstance(level, (int, float)) and 0 < level < 1, f"interval level must be in (0, 1), got {level!r}")
        bounds = self.quantile(torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
        return bounds[0], bounds[1]

    def __repr__(self) -> str:
        return f"GaussianMixturePosterior(K={self.weights.shape[0]}, img_shape={self.img_shape})"


def _check_sigma(sigma: Any) -> float:
    """``sigma`` (a number or a one-element tensor) as a float; UQError unless finite and > 0."""
    value = sigma.item() if isinstance(sigma, Tensor) and sigma.numel() == 1 else sigma
    require(
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
        f"noise sigma = {sigma!r} must be a finite number > 0; set noise.sigma to the measurement noise std",
    )
    return float(value)


def linear_gaussian_posterior(
    weights: Tensor,
    means: Tensor,
    covariances: Tensor,
    precisions: Tensor | None,
    matrix: Tensor,
    y: Tensor,
    sigma: float,
    img_shape: tuple[int, int, int],
) -> GaussianMixturePosterior:
    """Exact posterior of the prior ``Σ_k w_k N(m_k, Σ0_k)`` given ``y = A x + σ ε``.

    ``weights (K,)``, ``means (K, d)``, ``covariances (K, d, d)``, ``precisions (K, d, d)`` (``Σ0_k⁻¹``,
    computed from ``covariances`` by Cholesky when ``None``), ``matrix`` = A ``(m, d)``, ``y`` with
    ``m`` entries (any shape), ``sigma`` > 0. Zero rows of A are fine.
    """
    s2 = _check_sigma(sigma) ** 2
    to64 = {"device": "cpu", "dtype": torch.float64}
    a = matrix.to(**to64)
    y = torch.as_tensor(y).to(**to64).reshape(-1)
    m_obs, d = a.shape
    require(y.numel() == m_obs, f"measurement y has {y.numel()} entries but the operator matrix has {m_obs} rows; pass one measurement")
    bad = int((~torch.isfinite(y)).sum())
    require(bad == 0, f"measurement y has {bad} NaN/Inf entries out of {y.numel()}; remove or replace them")
    weights, means, covariances = weights.to(**to64), means.to(**to64), covariances.to(**to64)
    if precisions is None:
        precisions = torch.cholesky_inverse(_cholesky(covariances, "prior covariance"))
    precisions = precisions.to(**to64)

    # 1. Component posteriors in information form: P_k = AᵀA/σ² + Σ0_k⁻¹ = L_k L_kᵀ.
    precision = a.T @ a / s2 + precisions  # (K, d, d)
    factor = _cholesky(0.5 * (precision + precision.mT), "posterior precision")
    rhs = (a.T @ y / s2)[None, :, None] + precisions @ means[:, :, None]  # (K, d, 1)
    post_means = torch.cholesky_solve(rhs, factor)[..., 0]  # (K, d)
    post_covs = torch.cholesky_inverse(factor)
    post_covs = 0.5 * (post_covs + post_covs.mT)

    # 2. Component evidences log N(y; A m_k, S_k), S_k = A Σ0_k Aᵀ + σ² I = R_k R_kᵀ.
    evidence_cov = a @ covariances @ a.T + s2 * torch.eye(m_obs, dtype=torch.float64)
    chol = _cholesky(0.5 * (evidence_cov + evidence_cov.mT), "evidence covariance")
    resid = (y - means @ a.T)[:, :, None]  # (K, m, 1)
    white = torch.linalg.solve_triangular(chol, resid, upper=False)[..., 0]  # R_k⁻¹ (y − A m_k)
    log_evidence = -0.5 * white.square().sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * m_obs * _LOG_2PI

    # 3. Posterior weights w_k' ∝ w_k N(y; A m_k, S_k), normalised by log-sum-exp.
    log_w = weights.log() + log_evidence
    require(bool(torch.isfinite(log_w).any()), "every prior component has zero weight or zero evidence for this y; check y and sigma")
    post_weights = torch.softmax(log_w, dim=0)
    return GaussianMixturePosterior(
        post_weights, post_means, post_covs, img_shape, float(torch.logsumexp(log_w, dim=0)), component_log_evidence=log_evidence
    )
