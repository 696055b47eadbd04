"""Random exact test problems: a Gaussian / GMM prior, an operator, a truth, a measurement and its exact posterior.

Tests, pipeline tests and benchmarks reuse these generators, so every sampler is judged on
the same problems. Everything is drawn from fixed seeds (numpy ``SeedSequence`` for the
prior, ``torch.Generator`` for the truth and the noise): the same arguments give the same
problem on every machine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.operators import OPERATOR_KINDS, LinearOperator, build_operator
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior
from uqcampaign.kernels.priors.posterior import GaussianMixturePosterior

__all__ = [
    "Problem",
    "PROBLEM_PRIOR_KINDS",
    "SampleScore",
    "operator_spec",
    "random_prior",
    "random_problem",
    "exact_problem",
    "ConditionalProblem",
    "random_conditional_problem",
    "multimodal_problem",
    "score_samples",
    "PriorDrawScore",
    "score_prior_draws",
]

PROBLEM_PRIOR_KINDS = ("gaussian", "gmm")


@dataclass(frozen=True)
class Problem:
    """One exact inverse problem ``y = A x_true + σ ε``.

    ``x_true: (C, H, W)``; ``y: (*obs_shape)``; ``posterior`` is the exact ``p(x | y)``.
    ``operator_spec`` rebuilds the operator with ``build_operator``; ``prior_arrays`` holds the
    prior's numpy arrays (``weights``, ``means``, ``variances`` or ``covariance``) so that a
    pipeline test can write them to an ``.npz``.
    """

    operator: LinearOperator
    prior: GaussianMixturePrior
    x_true: torch.Tensor
    y: torch.Tensor
    sigma: float
    posterior: GaussianMixturePosterior
    operator_spec: dict
    prior_arrays: dict


def operator_spec(kind: str, seed: int, img_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The operator spec used by :func:`random_problem` for ``kind`` (small, well-posed-ish sizes).

    ``cs`` takes 8 random projections on 16-pixel images (half the pixels, as in issue 3).
    """
    require(kind in OPERATOR_KINDS and kind != "matrix", f"random problems support operators {OPERATOR_KINDS[:-1]}, got {kind!r}")
    d = math.prod(img_shape)
    specs: dict[str, dict[str, Any]] = {
        "denoise": {},
        "inpaint": {"fraction": 0.5, "seed": seed},
        "blur": {"sigma": 1.0, "size": 3},
        "superres": {"factor": 2},
        "mri": {"acceleration": 2, "center_fraction": 0.25, "seed": seed},
        "cs": {"m": max(1, d // 2), "seed": seed},
    }
    return {"kind": kind, **specs[kind]}


def random_prior(
    prior_kind: str, seed: int, img_shape: tuple[int, int, int] = (1, 4, 4), components: int = 4
) -> tuple[GaussianMixturePrior, dict[str, np.ndarray]]:
    """A random exact prior and its arrays.

    ``gaussian``: mean ~ U(0.3, 0.7) per pixel, full covariance
    ``s² (0.5 K + 0.5 I)`` with ``K`` a squared-exponential kernel (length 1 pixel, none across
    channels) and ``s = 0.25``: pixel variance ``s² = 0.0625`` (std 0.25), eigenvalues in
    ``[s²/2, s²(1 + λ_max(K))/2]`` (on 4×4 images 0.032 to 0.17). ``gmm``: ``components``
    diagonal components, weights ~ Dirichlet(4), means = a common U(0.3, 0.7) image plus
    N(0, 0.12²) offsets per component and pixel (overlapping components, so posteriors keep
    several of them), per-pixel stds ~ U(0.15, 0.25).
    """
    require(prior_kind in PROBLEM_PRIOR_KINDS, f"random problems support prior kinds {PROBLEM_PRIOR_KINDS}, got {prior_kind!r}")
    require(isinstance(components, int) and components >= 1, f"components = {components!r} must be an integer >= 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1 if prior_kind == "gaussian" else 2]))
    c, h, w = img_shape
    d = c * h * w
    if prior_kind == "gaussian":
        mean = rng.uniform(0.3, 0.7, size=img_shape)
        grid = np.stack(np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(d, 3).astype(float)
        sq = ((grid[:, None, 1:] - grid[None, :, 1:]) ** 2).sum(-1) + 1e6 * (grid[:, None, 0] != grid[None, :, 0])
        covariance = 0.25**2 * (0.5 * np.exp(-0.5 * sq) + 0.5 * np.eye(d))
        arrays = {"mean": mean, "covariance": covariance}
        return GaussianMixturePrior.gaussian(mean, covariance=covariance), arrays
    weights = rng.dirichlet(np.full(components, 4.0))
    means = rng.uniform(0.3, 0.7, size=img_shape) + rng.normal(0.0, 0.12, size=(components, *img_shape))
    variances = rng.uniform(0.15, 0.25, size=(components, *img_shape)) ** 2
    arrays = {"weights": weights, "means": means, "variances": variances}
    return GaussianMixturePrior(weights, means, variances, kind="gmm"), arrays


def _measure(operator: LinearOperator, prior: GaussianMixturePrior, seed: int, sigma: float, dtype: torch.dtype):
    """Truth ``x ~ prior`` and ``y = A x + σ ε`` from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]))
    x_true = prior.sample(1, generator).to(torch.float64)
    clean = operator.A(x_true)
    y = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return x_true[0].to(dtype), y[0].to(dtype)


def exact_problem(
    spec: dict[str, Any],
    prior: GaussianMixturePrior,
    arrays: dict[str, np.ndarray],
    seed: int,
    sigma: float = 0.05,
    dtype: torch.dtype = torch.float64,
) -> Problem:
    """The exact problem of an operator ``spec`` and a prior: ``x_true ~ prior`` and
    ``y = A x_true + σ ε`` from ``seed``, the exact posterior in float64; operator and prior cast to ``dtype``."""
    require(sigma > 0, f"sigma = {sigma!r} must be > 0")
    operator = build_operator(spec, prior.img_shape)
    x_true, y = _measure(operator, prior, seed, sigma, dtype)
    posterior = prior.posterior(operator, y.to(torch.float64), sigma)
    return Problem(operator.to(dtype=dtype), prior.to(dtype=dtype), x_true, y, float(sigma), posterior, spec, arrays)


def random_problem(
    operator_kind: str,
    prior_kind: str,
    seed: int,
    img_shape: tuple[int, int, int] = (1, 4, 4),
    components: int = 4,
    sigma: float = 0.05,
    dtype: torch.dtype = torch.float64,
) -> Problem:
    """A random exact problem: prior from :func:`random_prior`, operator from :func:`operator_spec`,
    ``x_true ~ prior``, ``y = A x_true + σ ε``; operator and prior cast to ``dtype``."""
    prior, arrays = random_prior(prior_kind, seed, img_shape, components)
    return exact_problem(operator_spec(operator_kind, seed, img_shape), prior, arrays, seed, sigma, dtype)


@dataclass(frozen=True)
class ConditionalProblem:
    """An exact problem whose GMM prior has condition-dependent weights ``softmax(W c)`` (LATINO-PRO's test bed).

    ``problem``: the :class:`Problem` at the prior's default condition ``c₀ = problem.prior.condition``
    (its ``posterior`` is ``p(x | y, c₀)``; ``prior_arrays`` holds ``logit_weights`` and ``condition`` too);
    ``condition_true (k,)``: the condition the truth was drawn with, ``x_true ~ p(x | c_true)``;
    ``radius``: the projection set ``C = {c : ||c − c₀|| ≤ radius}`` within which ``c`` is estimated;
    ``component_log_evidence (K,)``: ``log N(y; A m_j, A Σ_j Aᵀ + σ² I)``, so that
    ``log p(y | c) = logsumexp(log_softmax(W c) + component_log_evidence)`` (:meth:`log_evidence`).
    """

    problem: Problem
    condition_true: torch.Tensor
    radius: float
    component_log_evidence: torch.Tensor

    @property
    def logit_weights(self) -> torch.Tensor:
        """``W (K, k)``, float64."""
        return self.problem.prior.logit_weights.to(torch.float64)

    def log_evidence(self, condition: torch.Tensor) -> torch.Tensor:
        """The exact ``log p(y | c)`` (0-d float64, differentiable in ``condition (k,)``)."""
        c = torch.as_tensor(condition, dtype=torch.float64)
        return torch.logsumexp(torch.log_softmax(self.logit_weights @ c, dim=0) + self.component_log_evidence, dim=0)

    def log_evidence_grad(self, condition: torch.Tensor) -> torch.Tensor:
        """``∇_c log p(y | c) = Wᵀ (ρ(c) − softmax(W c))`` (closed form), ``(k,)`` float64."""
        c = torch.as_tensor(condition, dtype=torch.float64)
        log_w = torch.log_softmax(self.logit_weights @ c, dim=0)
        rho = torch.softmax(log_w + self.component_log_evidence, dim=0)
        return self.logit_weights.T @ (rho - log_w.exp())

    def maximise(self, box: tuple[float, float] | None = None, starts: int = 6, seed: int = 0) -> tuple[torch.Tensor, float]:
        """``(c*, log p(y | c*))``: the maximiser of the exact ``log p(y | c)`` over ``C`` by scipy, best of ``starts`` random starts.

        ``C`` is the ball of :attr:`radius` around ``c₀`` (SLSQP with the constraint ``||c − c₀||² <= r²``)
        or, given ``box = (lo, hi)``, that box (L-BFGS-B with bounds). The closed-form gradient is used.
        """
        from scipy.optimize import minimize

        centre = self.problem.prior.condition.to(torch.float64).numpy()
        k = centre.shape[0]
        fun = lambda c: -float(self.log_evidence(torch.as_tensor(c)))
        jac = lambda c: -self.log_evidence_grad(torch.as_tensor(c)).numpy()
        rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
        best = None
        for _ in range(starts):
            if box is None:
                direction = rng.normal(size=k)
                x0 = centre + direction / np.linalg.norm(direction) * rng.uniform() * self.radius
                ball = {"type": "ineq", "fun": lambda c: self.radius**2 - (c - centre) @ (c - centre), "jac": lambda c: -2 * (c - centre)}
                result = minimize(fun, x0, jac=jac, method="SLSQP", constraints=[ball], options={"ftol": 1e-14, "maxiter": 1000})
            else:
                x0 = rng.uniform(box[0], box[1], size=k)
                result = minimize(fun, x0, jac=jac, method="L-BFGS-B", bounds=[tuple(box)] * k, options={"ftol": 1e-15, "gtol": 1e-10})
            if best is None or result.fun < best.fun:
                best = result
        return torch.as_tensor(best.x, dtype=torch.float64), -float(best.fun)

    def at(self, condition: torch.Tensor) -> Problem:
        """The :class:`Problem` with the prior's condition set to ``condition (k,)`` and the exact ``p(x | y, c)``."""
        base = self.problem
        prior = base.prior.with_condition(torch.as_tensor(condition, dtype=torch.float64))
        posterior = prior.to(dtype=torch.float64).posterior(base.operator.to(dtype=torch.float64), base.y.to(torch.float64), base.sigma)
        return dataclasses.replace(base, prior=prior, posterior=posterior)


def random_conditional_problem(
    operator_kind: str,
    seed: int,
    img_shape: tuple[int, int, int] = (1, 4, 4),
    components: int = 4,
    condition_dim: int = 3,
    sigma: float = 0.05,
    dtype: torch.dtype = torch.float64,
) -> ConditionalProblem:
    """A random conditional-GMM problem (issue 15: 16–64 pixels, ``K`` = 3–5, ``k`` = 2–4).

    Means and variances are :func:`random_prior`'s ``gmm``; ``logit_weights W ~ N(0, 1)`` ``(K, k)``;
    the default condition ``c₀ = 0`` (equal weights) is the centre of ``C``, a ball of radius 2
    (logits ``W c`` of a few units: weights between near-uniform and near-one-hot); the truth is
    drawn at ``c_true``, uniform in that ball, ``x_true ~ p(x | c_true)``, ``y = A x_true + σ ε``.
    """
    require(sigma > 0, f"sigma = {sigma!r} must be > 0")
    require(isinstance(condition_dim, int) and condition_dim >= 1, f"condition_dim = {condition_dim!r} must be an integer >= 1")
    spec = operator_spec(operator_kind, seed, img_shape)
    operator = build_operator(spec, img_shape)
    _, arrays = random_prior("gmm", seed, img_shape, components)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    radius = 2.0
    logit_weights = rng.normal(0.0, 1.0, size=(components, condition_dim))
    direction = rng.normal(size=condition_dim)
    condition_true = radius * rng.uniform() ** (1.0 / condition_dim) * direction / np.linalg.norm(direction)
    arrays = {"means": arrays["means"], "variances": arrays["variances"], "logit_weights": logit_weights,
              "condition": np.zeros(condition_dim)}
    prior = GaussianMixturePrior(None, arrays["means"], arrays["variances"], kind="gmm", logit_weights=logit_weights,
                                 condition=arrays["condition"])
    x_true, y = _measure(operator, prior.with_condition(condition_true), seed, sigma, dtype)
    posterior = prior.posterior(operator, y.to(torch.float64), sigma)
    problem = Problem(operator.to(dtype=dtype), prior.to(dtype=dtype), x_true, y, float(sigma), posterior, spec, arrays)
    return ConditionalProblem(problem, torch.as_tensor(condition_true, dtype=torch.float64), radius, posterior.component_log_evidence)


def multimodal_problem(dtype: torch.dtype = torch.float64, centre: float = 0.0) -> Problem:
    """A two-mode GMM posterior that traps PnP-ULA chains (the R̂ fixture).

    Images ``(1, 4, 4)``, inpainting of half the pixels (``{kind: inpaint, fraction: 0.5,
    seed: 0}``), σ = 0.05. The prior has two equally weighted components with std 0.1 per
    pixel that agree (mean 0.5) on the observed pixels and differ on the 8 missing ones
    (means +0.4 and −0.4), so the posterior has two modes of weight ≈ 0.5 each, 8 std apart
    per missing pixel (a Mahalanobis distance ≈ 23 between the modes; the log-density at the
    midpoint is ≈ 8 nats per missing pixel, ≈ 64 nats in all, below the modes). ``centre``
    shifts both modes on the missing pixels (means ``centre ± 0.4``; weights stay ≈ 0.5 each).

    What ULA does there: its chains start at ``pinv(y)``, which is 0 on the missing pixels,
    exactly between the modes; the first few Langevin steps push each chain to one mode at
    random (about half the chains each way: 7 of 16 in ``tests/kernels/test_ula.py``) and no
    chain ever crosses afterwards (the barrier is far beyond any run). Each chain alone looks converged; pooled
    chains cover both modes; between-chain variance is huge: R̂ ≫ 1. With ``centre = 0.3`` (modes
    at 0.7 and −0.1), ``pinv(y)`` lies in the lower mode's basin: every chain started there ends in
    that mode and R̂ sees nothing, while chains started at prior draws populate both.
    """
    img_shape = (1, 4, 4)
    spec = {"kind": "inpaint", "fraction": 0.5, "seed": 0}
    operator = build_operator(spec, img_shape)
    observed = operator.weights.expand(img_shape).numpy() > 0
    means = np.stack([np.where(observed, 0.5, centre + 0.4), np.where(observed, 0.5, centre - 0.4)])
    variances = np.full((2, *img_shape), 0.1**2)
    weights = np.array([0.5, 0.5])
    prior = GaussianMixturePrior(weights, means, variances, kind="gmm")
    arrays = {"weights": weights, "means": means, "variances": variances}
    return exact_problem(spec, prior, arrays, 0, 0.05, dtype)


@dataclass(frozen=True)
class SampleScore:
    """How close samples are to the exact posterior (DESIGN §8).

    ``ratio``: sliced-Wasserstein distance to exact samples over the floor (the mean distance
    between pairs of exact sample sets of the same size); ``mass``: exact posterior mass of the
    per-pixel 90% equal-tailed interval of the samples, mean over pixels; ``std_ratio``: sample
    std over exact marginal std, mean over pixels.
    """

    ratio: float
    mass: float
    std_ratio: float
    sw: float
    floor: float


def score_samples(problem: Problem, samples: torch.Tensor, seed: int = 0, floor_pairs: int = 3, level: float = 0.9) -> SampleScore:
    """Score ``samples (n, C, H, W)`` against ``problem.posterior`` (exact draws from ``seed``)."""
    from uqcampaign.kernels.metrics import equal_tailed_interval, sliced_wasserstein

    n = samples.shape[0]
    generator = torch.Generator().manual_seed(seed)

    def projections() -> torch.Generator:  # the same 64 directions for every distance
        return torch.Generator().manual_seed(seed + 1)

    reference = problem.posterior.sample(n, generator)
    floors = [
        sliced_wasserstein(problem.posterior.sample(n, generator), problem.posterior.sample(n, generator), generator=projections())
        for _ in range(floor_pairs)
    ]
    floor = sum(floors) / floor_pairs
    sw = sliced_wasserstein(samples, reference, generator=projections())
    lower, upper = equal_tailed_interval(samples, level)
    mass = float(problem.posterior.interval_mass(lower, upper).mean())
    std_ratio = float((samples.to(torch.float64).std(0) / problem.posterior.marginal_std()).mean())
    return SampleScore(sw / floor, mass, std_ratio, sw, floor)


@dataclass(frozen=True)
class PriorDrawScore:
    """How close draws of a (learned) prior are to a known Gaussian mixture.

    ``z_mean``/``z_std``: the largest per-pixel |z| of the sample mean / std (:func:`~uqcampaign.kernels.metrics.mixture_moment_z`),
    ``beyond_mean``/``beyond_std``: pixels with |z| > 3, ``mean_z_std``: the mean z of the std (its sign: over- or
    under-dispersion); ``sw``: sliced-Wasserstein distance to as many mixture draws, ``floor``: between two
    independent sets of mixture draws (the same 64 directions).
    """

    z_mean: float
    z_std: float
    beyond_mean: int
    beyond_std: int
    mean_z_std: float
    sw: float
    floor: float


def score_prior_draws(mixture: GaussianMixturePrior, draws: torch.Tensor, seed: int = 1) -> PriorDrawScore:
    """Score ``draws (n, C, H, W)`` against the mixture they should follow (reference draws from ``seed``, ``seed + 1``)."""
    from uqcampaign.kernels.metrics import mixture_moment_z, sliced_wasserstein

    n = draws.shape[0]
    z_mean, z_std = mixture_moment_z(draws, mixture.weights, mixture.means, mixture.variances)
    reference = mixture.sample(n, torch.Generator().manual_seed(seed)).to(torch.float64)
    other = mixture.sample(n, torch.Generator().manual_seed(seed + 1)).to(torch.float64)
    floor = sliced_wasserstein(reference, other, generator=torch.Generator().manual_seed(seed + 2))
    sw = sliced_wasserstein(draws.to(torch.float64), reference, generator=torch.Generator().manual_seed(seed + 2))
    return PriorDrawScore(float(z_mean.abs().max()), float(z_std.abs().max()), int((z_mean.abs() > 3).sum()),
                          int((z_std.abs() > 3).sum()), float(z_std.mean()), sw, floor)
