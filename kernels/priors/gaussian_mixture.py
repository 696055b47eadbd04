"""Exact priors ``gaussian`` and ``gmm``: a Gaussian mixture with exact denoiser, sampling and posterior.

``p(x_0) = Σ_k w_k N(x_0; m_k, diag(v_k))`` with ``weights (K,)``, ``means (K, C, H, W)`` and
``variances (K, C, H, W)``. A ``gaussian`` prior is the case ``K = 1`` and may instead carry a full
covariance ``(d, d)`` (``d = C·H·W``); it is eigendecomposed once, ``Σ = U diag(λ) Uᵀ``, after which
every formula is the diagonal one in the coordinates ``z = Uᵀ x`` (the density is rotation invariant).

Under VP noising ``x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε`` each component stays Gaussian:
``x_t | k ~ N(sqrt(ᾱ) m_k, ᾱ v_k + 1 - ᾱ)``, so Tweedie's ``E[x_0 | x_t]`` is exact (see :meth:`denoise`).

A **conditional** ``gmm`` (LATINO-PRO's exact test bed, issue 15) has weights that depend on a
condition vector ``c (k,)``: ``w(c) = softmax(W c)`` with ``logit_weights W (K, k)``. Everything
above holds for each ``c``; besides, ``∇_c log p(x | c) = Wᵀ (r(x) − w(c))`` with ``r_k(x)`` the
responsibilities of the components at ``x`` (:meth:`GaussianMixturePrior.condition_score`), and
``p(y | c) = Σ_k w_k(c) N(y; A m_k, A Σ_k Aᵀ + σ² I)`` is closed form
(:meth:`GaussianMixturePrior.posterior` ``.log_evidence``; the per-component terms are
``.component_log_evidence``), so ``∇_c log p(y | c) = Wᵀ (ρ(y) − w(c))`` with ``ρ`` the posterior
component weights.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.base import alpha_bar
from uqcampaign.kernels.priors.posterior import GaussianMixturePosterior, linear_gaussian_posterior
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys, resolve_path
from uqcampaign.kernels.schedule import linear_alphas_cumprod

__all__ = ["GaussianMixturePrior", "load_gaussian_prior", "load_gmm_prior"]

_LOG_2PI = math.log(2.0 * math.pi)


def _as_float64(value: Any, name: str) -> Tensor:
    """``value`` as a finite float64 CPU tensor; UQError naming ``name`` otherwise."""
    try:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, Tensor) else value)
    except (TypeError, ValueError) as err:
        raise UQError(f"prior {name} must be an array of numbers, got {type(value).__name__} ({err})") from None
    require(not t.is_complex(), f"prior {name} is complex; give real values")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    bad = int((~torch.isfinite(t)).sum())
    require(bad == 0, f"prior {name} has {bad} NaN/Inf entries out of {t.numel()}; fix the prior")
    return t


def _check_condition(logit_weights: Any, condition: Any, components: int) -> tuple[Tensor | None, Tensor | None]:
    """``(W (K, k), c (k,))`` float64, or ``(None, None)``; UQError unless both or neither are given with matching shapes."""
    if logit_weights is None and condition is None:
        return None, None
    require(logit_weights is not None, "a prior condition was given without logit_weights (K, k); give both or neither")
    require(condition is not None, "prior logit_weights were given without a default condition (k,); give both or neither")
    w = _as_float64(logit_weights, "logit_weights")
    c = _as_float64(condition, "condition")
    require(w.dim() == 2 and w.shape[0] == components and w.shape[1] >= 1,
            f"prior logit_weights must have shape (K, k) with K = {components} components and k >= 1, got {tuple(w.shape)}")
    require(c.shape == (w.shape[1],), f"prior condition must have shape ({w.shape[1]},) to match logit_weights {tuple(w.shape)}, got {tuple(c.shape)}")
    return w, c


class GaussianMixturePrior:
    """A Gaussian mixture prior on images ``(C, H, W)`` (kinds ``gmm`` and ``gaussian``).

    ``weights (K,)`` ≥ 0 summing to 1; ``means (K, C, H, W)``; either ``variances (K, C, H, W)`` > 0
    (diagonal covariances) or, for ``K = 1`` only, a full positive-definite ``covariance (d, d)``.
    Parameters are validated in float64; :meth:`to` picks the compute dtype/device, and every
    method also casts to the dtype/device of its input.

    Conditional mixture: ``logit_weights (K, k)`` and a default ``condition (k,)`` make the weights
    ``softmax(logit_weights @ condition)`` (``weights`` may then be ``None``; if given it must agree).
    ``denoise``/``consistency``, ``log_prob``, ``sample``, ``posterior`` take an optional
    ``condition (k,)`` (default: :attr:`condition`); :meth:`condition_score` gives ``∇_c log p(x | c)``.
    An unconditional prior has ``logit_weights = condition = None``.
    """

    is_latent = False

    def __init__(
        self,
        weights: Any,
        means: Any,
        variances: Any = None,
        *,
        covariance: Any = None,
        kind: str = "gmm",
        source: Mapping[str, Any] | None = None,
        logit_weights: Any = None,
        condition: Any = None,
    ) -> None:
        m = _as_float64(means, "means")
        self.logit_weights, self.condition = _check_condition(logit_weights, condition, m.shape[0] if m.dim() else 0)
        if self.logit_weights is not None:
            implied = torch.softmax(self.logit_weights @ self.condition, dim=0)
            if weights is not None:
                given = _as_float64(weights, "weights")
                require(
                    given.shape == implied.shape and bool(torch.allclose(given, implied, rtol=0.0, atol=1e-6)),
                    f"prior weights {given.tolist()} disagree with softmax(logit_weights @ condition) = {implied.tolist()}; "
                    "drop the weights (they follow from the condition) or fix them",
                )
            weights = implied
        require(weights is not None, "a gmm prior needs weights (K,), or logit_weights (K, k) with a condition (k,)")
        w = _as_float64(weights, "weights")
        require(w.dim() == 1 and w.shape[0] >= 1, f"prior weights must have shape (K,), got {tuple(w.shape)}")
        require(bool((w >= 0).all()), f"prior weights must be >= 0, got min {float(w.min()):.6g}; fix the weights")
        total = float(w.sum())
        require(abs(total - 1.0) <= 1e-6, f"prior weights sum to {total:.9g}, not 1 (tolerance 1e-6); normalise them")
        require(
            m.dim() == 4 and m.shape[0] == w.shape[0],
            f"prior means have shape {tuple(m.shape)} but weights have shape {tuple(w.shape)}; means must be (K, C, H, W) with K = {w.shape[0]}",
        )
        require((variances is None) != (covariance is None), "give a prior either diagonal variances (K, C, H, W) or a full covariance (d, d), exactly one")
        self.kind = kind
        self.img_shape: tuple[int, int, int] = tuple(int(s) for s in m.shape[1:])  # type: ignore[assignment]
        self.weights = w
        self.means = m
        d = math.prod(self.img_shape)
        if variances is not None:
            v = _as_float64(variances, "variances")
            require(
                v.shape == m.shape,
                f"prior variances have shape {tuple(v.shape)} but means have shape {tuple(m.shape)}; they must match",
            )
            require(bool((v > 0).all()), f"prior variances must be > 0, got min {float(v.min()):.6g}; fix the variances")
            self.variances: Tensor | None = v
            self.covariance: Tensor | None = None
            self._basis: Tensor | None = None  # identity: coordinates are pixels
            self._coord_means = m.reshape(-1, d)
            self._coord_vars = v.reshape(-1, d)
        else:
            cov = _as_float64(covariance, "covariance")
            require(w.shape[0] == 1, f"a full prior covariance needs one component, got K = {w.shape[0]}; use diagonal variances for a mixture")
            require(cov.shape == (d, d), f"prior covariance has shape {tuple(cov.shape)} but means have shape {tuple(m.shape)}; it must be ({d}, {d})")
            asym = float((cov - cov.T).abs().max())
            require(asym <= 1e-8 * float(cov.abs().max()), f"prior covariance is not symmetric (max |Σ - Σᵀ| = {asym:.3g}); symmetrise it")
            eigvals, basis = torch.linalg.eigh(cov)
            require(float(eigvals[0]) > 0, f"prior covariance is not positive definite (smallest eigenvalue {float(eigvals[0]):.3g}); fix it")
            self.variances = None
            self.covariance = cov
            self._basis = basis
            self._coord_means = m.reshape(1, d) @ basis
            self._coord_vars = eigvals.reshape(1, d)
        self.alphas_cumprod = linear_alphas_cumprod()
        self._source = dict(source) if source is not None else None
        self._affine: dict[tuple, tuple[Tensor, Tensor]] = {}  # one Gaussian's Tweedie map per (t, dtype, device)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def gaussian(cls, mean: Any, variance: Any = None, *, covariance: Any = None, source: Mapping[str, Any] | None = None) -> GaussianMixturePrior:
        """A ``gaussian`` prior: ``mean (C, H, W)`` with ``variance (C, H, W)`` or ``covariance (d, d)``."""
        m = _as_float64(mean, "mean")
        require(m.dim() == 3, f"gaussian prior mean must have shape (C, H, W), got {tuple(m.shape)}")
        var = None if variance is None else _as_float64(variance, "variance")
        if var is not None:
            require(var.shape == m.shape, f"gaussian prior variance has shape {tuple(var.shape)} but mean has shape {tuple(m.shape)}; they must match")
            var = var[None]
        return cls(torch.ones(1, dtype=torch.float64), m[None], var, covariance=covariance, kind="gaussian", source=source)

    @classmethod
    def from_npz(cls, path: Path | str, *, source: Mapping[str, Any] | None = None) -> GaussianMixturePrior:
        """A ``gmm`` prior from an ``.npz`` with ``weights (K,)``, ``means (K,C,H,W)``, ``variances (K,C,H,W)``.

        A conditional mixture holds ``logit_weights (K, k)`` and ``condition (k,)`` too (``weights``
        then optional): weights = ``softmax(logit_weights @ condition)``.
        """
        path = Path(path)
        arrays = _read_npz(path, required=("means", "variances"), optional=("weights", "logit_weights", "condition"))
        if "logit_weights" not in arrays:
            require("condition" not in arrays, f"prior file {path} has a condition but no logit_weights (K, k); save both or neither")
            require("weights" in arrays, f"prior file {path} has no key 'weights'; save it with weights, means, variances "
                    "(or logit_weights and condition for a conditional mixture)")
        else:
            require("condition" in arrays, f"prior file {path} has logit_weights but no default condition (k,); save both")
        return cls(arrays.get("weights"), arrays["means"], arrays["variances"], kind="gmm", source=source,
                   logit_weights=arrays.get("logit_weights"), condition=arrays.get("condition"))

    @property
    def is_conditional(self) -> bool:
        """True when the weights are ``softmax(logit_weights @ condition)``."""
        return self.logit_weights is not None

    def with_condition(self, condition: Any) -> GaussianMixturePrior:
        """A copy whose default condition is ``condition (k,)`` (weights recomputed); conditional priors only."""
        self._require_conditional("with_condition")
        c = _as_float64(condition, "condition")
        require(c.shape == self.condition.shape, f"condition has shape {tuple(c.shape)}; this prior takes ({self.condition.shape[0]},)")
        new = copy.copy(self)
        new.condition = c.to(device=self.condition.device, dtype=self.condition.dtype)
        new.weights = torch.softmax(self.logit_weights @ new.condition, dim=0)
        return new

    # -- denoising --------------------------------------------------------------------
    def _params(self, like: Tensor, condition: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(weights (K,), coord_means (K, d), coord_vars (K, d), basis (d, d) or None)`` cast like ``like``.

        ``condition (k,)``: the weights ``softmax(W c)`` (differentiable in ``c``) instead of the default ones.
        """
        cast = {"device": like.device, "dtype": like.dtype}
        basis = None if self._basis is None else self._basis.to(**cast)
        return self._weights(like, condition), self._coord_means.to(**cast), self._coord_vars.to(**cast), basis

    def _weights(self, like: Tensor, condition: Tensor | None) -> Tensor:
        """``w (K,)`` cast like ``like``: ``softmax(W c)`` for a given ``condition (k,)``, else the prior's weights."""
        if condition is None:
            return self.weights.to(device=like.device, dtype=like.dtype)
        return self._log_weights(like, condition).exp()

    def _log_weights(self, like: Tensor, condition: Tensor | None) -> Tensor:
        """``log w (K,)`` cast like ``like``: ``log_softmax(W c)`` for a given ``condition (k,)``, else the prior's."""
        cast = {"device": like.device, "dtype": like.dtype}
        if condition is None:
            return self.weights.to(**cast).log()
        self._require_conditional("a condition")
        require(
            isinstance(condition, Tensor) and tuple(condition.shape) == tuple(self.condition.shape),
            f"condition must be a tensor of shape ({self.condition.shape[0]},), got {getattr(condition, 'shape', type(condition).__name__)}",
        )
        return torch.log_softmax(self.logit_weights.to(**cast) @ condition.to(**cast), dim=0)

    def _require_conditional(self, what: str) -> None:
        require(
            self.logit_weights is not None,
            f"prior {self.kind!r} has no condition (its weights are fixed), so it takes no {what}; "
            "give the .npz logit_weights (K, k) and a condition (k,) to make the weights softmax(W c)",
        )

    def _check_images(self, x: Tensor, name: str) -> None:
        require(
            isinstance(x, Tensor) and x.dim() == 4 and tuple(x.shape[1:]) == self.img_shape and x.is_floating_point(),
            f"{name} must be a float tensor of shape (B, *{self.img_shape}), got {getattr(x, 'shape', type(x).__name__)}",
        )

    def denoise(self, x_t: Tensor, t: int | Tensor, condition: Tensor | None = None) -> Tensor:
        """Exact Tweedie denoiser ``E[x_0 | x_t]``: ``x_t (B, C, H, W)``, ``t`` int or ``(B,)`` → ``(B, C, H, W)``.

        Per component (coordinates ``z = Uᵀx``): ``s_k = ᾱ v_k + 1 - ᾱ``,
        ``E[x_0 | x_t, k] = m_k + sqrt(ᾱ) v_k / s_k · (x_t - sqrt(ᾱ) m_k)``, weighted by the
        responsibilities ``r_k ∝ w_k N(x_t; sqrt(ᾱ) m_k, s_k)`` (log-sum-exp). Differentiable, in
        ``x_t`` and in ``condition (k,)`` (conditional priors: the weights ``softmax(W c)``; default
        :attr:`condition`).
        """
        self._check_images(x_t, "x_t")
        if self.weights.shape[0] == 1 and isinstance(t, numbers.Integral) and not isinstance(t, bool):
            return self._gaussian_denoise(x_t, int(t))
        batch = x_t.shape[0]
        w, m, v, basis = self._params(x_t, condition)
        z = x_t.reshape(batch, -1)
        if basis is not None:
            z = z @ basis
        ab = alpha_bar(self.alphas_cumprod, t, z)[:, :, None]  # (B, 1, 1)
        scale = ab.sqrt()
        s = ab * v + (1.0 - ab)  # (B, K, d)
        r = z[:, None, :] - scale * m  # (B, K, d)
        per_component = m + scale * v / s * r  # (B, K, d)
        if w.shape[0] == 1:
            z0 = per_component[:, 0]
        else:
            log_r = self._log_weights(x_t, condition) - 0.5 * (r.square() / s + s.log()).sum(-1)  # (B, K)
            z0 = (torch.softmax(log_r, dim=-1)[:, :, None] * per_component).sum(1)
        if basis is not None:
            z0 = z0 @ basis.T
        return z0.reshape(x_t.shape)

    consistency = denoise

    def _gaussian_denoise(self, x_t: Tensor, t: int) -> Tensor:
        """One Gaussian (``K = 1``) at one step ``t``: Tweedie's map is affine, ``E[x_0 | x_t] = W_t x_t + c_t``
        with ``W_t = U diag(g) Uᵀ``, ``g = sqrt(ᾱ) v / (ᾱ v + 1 − ᾱ)`` and ``c_t = U (1 − sqrt(ᾱ) g) m`` (the
        formula of :meth:`denoise` with ``K = 1``, folded once per ``(t, dtype, device)``: samplers call
        it at one step many times)."""
        key = (t, x_t.dtype, x_t.device)
        if key not in self._affine:
            ab = alpha_bar(self.alphas_cumprod, t, x_t[:1]).reshape(()).to(torch.float64)
            m, v = self._coord_means[0].to(torch.float64), self._coord_vars[0].to(torch.float64)
            gain = ab.sqrt() * v / (ab * v + 1.0 - ab)
            offset = (1.0 - ab.sqrt() * gain) * m
            if self._basis is None:
                pair = (gain, offset)
            else:
                basis = self._basis.to(torch.float64)
                pair = ((basis * gain) @ basis.T, basis @ offset)  # W_t (symmetric), c_t in pixel coordinates
            self._affine[key] = tuple(a.to(dtype=x_t.dtype, device=x_t.device) for a in pair)
        weight, offset = self._affine[key]
        z = x_t.reshape(x_t.shape[0], -1)
        z0 = torch.addmm(offset, z, weight) if weight.dim() == 2 else torch.addcmul(offset, z, weight)
        return z0.reshape(x_t.shape)

    def score(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """``∇ log p_t(x_t) = (sqrt(ᾱ) E[x_0 | x_t] - x_t) / (1 - ᾱ)`` (Tweedie), ``(B, C, H, W)``."""
        ab = alpha_bar(self.alphas_cumprod, t, x_t)
        return (ab.sqrt() * self.denoise(x_t, t) - x_t) / (1.0 - ab)

    def _component_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; m_k, Σ_k)`` per image and component, ``x (B, C, H, W)`` → ``(B, K)``."""
        self._check_images(x, "x")
        _, m, v, basis = self._params(x)
        z = x.reshape(x.shape[0], -1)
        if basis is not None:
            z = z @ basis
        return -0.5 * ((z[:, None, :] - m).square() / v + v.log() + _LOG_2PI).sum(-1)

    def log_prob(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """``log p(x_0 | c)`` of images ``x (B, C, H, W)`` → ``(B,)`` (``condition (k,)``: default :attr:`condition`)."""
        return torch.logsumexp(self._log_weights(x, condition) + self._component_log_prob(x), dim=-1)

    def condition_score(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """``∇_c log p(x | c) = Wᵀ (r(x) − softmax(W c))`` per image: ``x (B, C, H, W)`` → ``(B, k)``.

        ``r_k(x) = w_k N(x; m_k, Σ_k) / p(x | c)`` are the responsibilities (closed form, no autograd).
        Conditional priors only; ``condition (k,)`` defaults to :attr:`condition`.
        """
        self._require_conditional("condition score")
        c = self.condition if condition is None else condition
        log_w = self._log_weights(x, c)  # (K,)
        responsibilities = torch.softmax(log_w + self._component_log_prob(x), dim=-1)  # (B, K)
        return (responsibilities - log_w.exp()) @ self.logit_weights.to(device=x.device, dtype=x.dtype)

    # -- exact sampling and posterior ----------------------------------------------------
    def sample(self, n: int, generator: torch.Generator, condition: Tensor | None = None) -> Tensor:
        """``n`` i.i.d. prior draws ``(n, C, H, W)`` on the generator's device, in the prior's dtype.

        ``condition (k,)``: draw from ``p(x | c)`` (conditional priors; default :attr:`condition`).
        """
        require(isinstance(n, int) and n >= 1, f"number of prior samples n = {n!r} must be an integer >= 1")
        like = torch.empty(0, dtype=self.means.dtype, device=generator.device)
        w, m, v, basis = self._params(like, None if condition is None else condition.detach())
        k = torch.multinomial(w, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, m.shape[1], generator=generator, device=like.device, dtype=like.dtype)
        z = m[k] + v[k].sqrt() * eps
        if basis is not None:
            z = z @ basis.T
        return z.reshape(n, *self.img_shape)

    def support(self, width: float = 6.0) -> tuple[Tensor, Tensor]:
        """Per-pixel box holding the prior's mass: ``(lo, hi)``, each ``(C, H, W)`` float64.

        ``lo = min_k (m_k − width·s_k)``, ``hi = max_k (m_k + width·s_k)`` with ``s_k`` the
        marginal std of component ``k`` per pixel (for a full covariance, its diagonal); mass
        outside is below ``2·Φ(−6) ≈ 2e-9`` per pixel at the default width. The Langevin
        samplers' ``box: auto``.
        """
        require(isinstance(width, (int, float)) and width > 0, f"support width = {width!r} must be > 0 (standard deviations)")
        means = self.means.detach().to("cpu", torch.float64)
        if self.variances is not None:
            stds = self.variances.detach().to("cpu", torch.float64).sqrt()
        else:
            stds = self.covariance.detach().to("cpu", torch.float64).diagonal().sqrt().reshape(1, *self.img_shape)
        return (means - width * stds).amin(0), (means + width * stds).amax(0)

    def covariances(self) -> Tensor:
        """Dense component covariances ``(K, d, d)``, float64 (``U diag(λ_k) Uᵀ``)."""
        return self._dense(self._coord_vars)

    def _dense(self, coord_diag: Tensor) -> Tensor:
        """``U diag(c_k) Uᵀ`` for ``coord_diag (K, d)``, float64 on CPU."""
        diag = torch.diag_embed(coord_diag.detach().to("cpu", torch.float64))
        if self._basis is None:
            return diag
        basis = self._basis.to("cpu", torch.float64)
        return basis @ diag @ basis.T

    def posterior(self, operator: Any, y: Tensor, sigma: float, condition: Tensor | None = None) -> GaussianMixturePosterior:
        """Exact ``p(x | y, c)`` for ``y = A x + σ ε``, ``A = operator.matrix()``; ``y: (*obs_shape)``.

        A Gaussian mixture again, computed in float64 (see :func:`linear_gaussian_posterior`); its
        ``log_evidence`` is ``log p(y | c)``. ``condition (k,)``: conditional priors (default :attr:`condition`).
        """
        d = math.prod(self.img_shape)
        op_shape = tuple(getattr(operator, "img_shape", self.img_shape))
        require(op_shape == self.img_shape, f"operator acts on images of shape {op_shape} but the prior's images are {self.img_shape}; use the same image shape")
        obs_shape = tuple(getattr(operator, "obs_shape", ()))
        y = torch.as_tensor(y)
        require(
            not obs_shape or tuple(y.shape) == obs_shape,
            f"measurement y has shape {tuple(y.shape)} but the operator observes {obs_shape}; pass one measurement",
        )
        matrix = operator.matrix(dtype=torch.float64).to("cpu")
        require(matrix.shape[1] == d, f"operator matrix has shape {tuple(matrix.shape)}; expected (m, {d}) for images {self.img_shape}")
        probe = torch.empty(0, dtype=torch.float64)
        weights = self._weights(probe, None if condition is None else condition.detach())
        return linear_gaussian_posterior(
            weights,
            self.means.reshape(-1, d).to("cpu", torch.float64),
            self.covariances(),
            self._dense(1.0 / self._coord_vars),
            matrix,
            y,
            sigma,
            self.img_shape,
        )

    # -- bookkeeping ------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-able description: the spec it was built from (if any) plus its shape.

        ``img_shape``, ``components`` and ``covariance`` are accepted back by :func:`build_prior` as checks.
        """
        info = {
            "img_shape": list(self.img_shape),
            "components": int(self.weights.shape[0]),
            "covariance": "full" if self._basis is not None else "diagonal",
        }
        if self.logit_weights is not None:
            info["condition_dim"] = int(self.logit_weights.shape[1])
        return {"kind": self.kind, **(self._source or {}), **info}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GaussianMixturePrior:
        """A copy with every parameter on ``device`` and in float ``dtype`` (ᾱ stays float64)."""
        require(dtype is None or dtype.is_floating_point, f"prior dtype must be a float dtype, got {dtype}; use torch.float32 or torch.float64")
        new = copy.copy(self)
        new._affine = {}  # maps folded from this copy's parameters only
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                cast_dtype = None if name == "alphas_cumprod" else dtype
                setattr(new, name, value.to(device=device, dtype=cast_dtype))
        return new

    def __repr__(self) -> str:
        cov = "full" if self._basis is not None else "diagonal"
        cond = "" if self.logit_weights is None else f", condition_dim={self.logit_weights.shape[1]}"
        return f"GaussianMixturePrior(kind={self.kind!r}, K={self.weights.shape[0]}, img_shape={self.img_shape}, covariance={cov}{cond})"


# --------------------------------------------------------------------------- loaders


def _read_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``required`` (all) and ``optional`` (those present) of an ``.npz`` file."""
    require(path.is_file(), f"prior file not found: {path}; check the path")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UQError(f"cannot read prior file {path} as an .npz archive ({err}); save it with numpy.savez") from None
    require(hasattr(data, "files"), f"prior file {path} is a single array, not an .npz archive; save it with numpy.savez")
    with data:
        missing = [key for key in required if key not in data.files]
        if missing:
            raise UQError(f"prior file {path} has no key {missing[0]!r} (keys: {', '.join(data.files) or 'none'}); save it with {', '.join(required)}")
        return {key: np.asarray(data[key]) for key in (*required, *optional) if key in data.files}


def _check_described(prior: GaussianMixturePrior, spec: Mapping[str, Any]) -> GaussianMixturePrior:
    """UQError if the descriptive keys of ``spec`` (from ``describe()``) disagree with ``prior``."""
    info = prior.describe()
    for key in ("img_shape", "components", "covariance", "condition_dim"):
        if key in spec:
            given = list(spec[key]) if key == "img_shape" and isinstance(spec[key], (list, tuple)) else spec[key]
            require(given == info[key], f"{prior.kind} prior spec says {key} = {spec[key]!r} but the prior has {info[key]!r}; fix the spec or the file")
    return prior


def load_gmm_prior(spec: Mapping[str, Any], root: Path | None) -> GaussianMixturePrior:
    """Gaussian mixture with diagonal covariances, from an ``.npz`` file; exact denoiser, sampling and posterior.

    ``{kind: gmm, file: x.npz[, condition: [...]]}`` → :class:`GaussianMixturePrior` (``file`` relative to ``root``).
    A conditional mixture's file also holds ``logit_weights (K, k)`` and a default ``condition (k,)``:
    its weights are ``softmax(W c)``.

    Reference: Bishop 2006, Pattern Recognition and Machine Learning, Sections 2.3.3 and 9.2 (each component is conjugate).

    Keys:
        file: .npz file with weights (K,), means (K, C, H, W) and variances (K, C, H, W) (required); a conditional
            mixture holds logit_weights (K, k) and condition (k,) (weights then optional).
        condition: for a conditional mixture, a list of k numbers that replaces the file's default condition
            (as prompt does for a latent prior).
        condition_dim: k, the length of the condition; optional, checked against the prior.
        img_shape: [C, H, W] of the images; optional, checked against the prior (the store's description repeats it).
        components: number K of mixture components; optional, checked against the prior.
        covariance: "diagonal" or "full"; optional, checked against the prior.
    """
    check_keys(spec, PRIOR_KEYS["gmm"])
    require("file" in spec, "gmm prior spec needs a file: {kind: gmm, file: prior.npz}")
    path = resolve_path(spec["file"], root, "gmm prior file")
    source = {"file": str(spec["file"])}
    if "condition" in spec:
        source["condition"] = spec["condition"]
    prior = GaussianMixturePrior.from_npz(path, source=source)
    if "condition" in spec:
        prior = prior.with_condition(spec["condition"])
    return _check_described(prior, spec)


def load_gaussian_prior(spec: Mapping[str, Any], root: Path | None) -> GaussianMixturePrior:
    """Gaussian prior (diagonal or full covariance), from a file or inline; exact denoiser, sampling and posterior.

    ``{kind: gaussian, file: g.npz}`` or ``{kind: gaussian, shape: [C,H,W], mean: m, variance: v}``.

    Reference: Bishop 2006, Pattern Recognition and Machine Learning, Section 2.3.3 (Bayes' theorem for Gaussian variables).

    Keys:
        file: .npz file with mean (C, H, W) and either variance (C, H, W) or covariance (d, d), d = C·H·W;
            instead of shape, mean and variance.
        shape: [C, H, W] of the images, with inline mean and variance.
        mean: a number or nested lists broadcastable to shape.
        variance: a number > 0 or nested lists broadcastable to shape (diagonal covariance).
        img_shape: [C, H, W] of the images; optional, checked against the prior (the store's description repeats it).
        components: number K of mixture components; optional, checked against the prior.
        covariance: "diagonal" or "full"; optional, checked against the prior.
    """
    check_keys(spec, PRIOR_KEYS["gaussian"])
    inline = [key for key in ("shape", "mean", "variance") if key in spec]
    if "file" in spec:
        require(not inline, f"gaussian prior spec gives both a file and {', '.join(inline)}; give one of them")
        path = resolve_path(spec["file"], root, "gaussian prior file")
        arrays = _read_npz(path, required=("mean",), optional=("variance", "covariance"))
        require(
            ("variance" in arrays) != ("covariance" in arrays),
            f"gaussian prior file {path} must hold exactly one of 'variance' (C,H,W) and 'covariance' (d,d), beside 'mean'",
        )
        prior = GaussianMixturePrior.gaussian(
            arrays["mean"], arrays.get("variance"), covariance=arrays.get("covariance"), source={"file": str(spec["file"])}
        )
        return _check_described(prior, spec)
    missing = [key for key in ("shape", "mean", "variance") if key not in spec]
    require(not missing, f"gaussian prior spec needs a file or all of shape, mean, variance; missing {', '.join(missing)}")
    shape = spec["shape"]
    require(
        isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape),
        f"gaussian prior shape must be [C, H, W] with positive integers, got {shape!r}",
    )
    values = {}
    for key in ("mean", "variance"):
        arr = _as_float64(spec[key], key)
        try:
            values[key] = arr.expand(*shape).clone()
        except RuntimeError:
            raise UQError(f"gaussian prior {key} has shape {tuple(arr.shape)}, not broadcastable to shape {list(shape)}") from None
    source = {"shape": list(shape), "mean": spec["mean"], "variance": spec["variance"]}
    return _check_described(GaussianMixturePrior.gaussian(values["mean"], values["variance"], source=source), spec)
