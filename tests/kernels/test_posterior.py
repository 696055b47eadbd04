"""Exact Gaussian-mixture posterior: brute-force Bayes, conjugate formulas, sampling, quantiles, errors."""

from __future__ import annotations

import math

import pytest
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_prior
from uqcampaign.kernels.operators import DenseOperator, build_operator
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior
from uqcampaign.kernels.priors.posterior import GaussianMixturePosterior
from uqcampaign.kernels.schedule import linear_alphas_cumprod

F64 = torch.float64


def assert_close(got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Elementwise |got - expected| <= atol (torch.testing's first import costs ~4 s)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = float((got - expected).abs().max())
    assert err <= atol, f"max error {err:.3g} > {atol}"


def random_gmm(k: int, shape: tuple[int, int, int], seed: int) -> GaussianMixturePrior:
    """``k`` overlapping diagonal components on ``shape`` images (the random problems' GMM, float64)."""
    return random_prior("gmm", seed, shape, components=k)[0]


# --------------------------------------------------------------------------- brute force


@pytest.mark.parametrize(
    ("matrix", "y", "sigma"),
    [
        ([[1.0, 0.6]], [0.9], 0.15),  # one observation of two pixels: the posterior keeps several modes
        ([[0.8, -0.3], [0.0, 0.0]], [0.2, 0.0], 0.1),  # a zero row of A
    ],
)
def test_posterior_equals_dense_bayes_on_a_two_pixel_grid(matrix: list, y: list, sigma: float) -> None:
    """Mean, marginal std and component weights against prior × likelihood integrated on a 2-D grid."""
    prior = random_gmm(3, (1, 1, 2), seed=1)
    a, y = torch.tensor(matrix, dtype=F64), torch.tensor(y, dtype=F64)
    post = prior.posterior(DenseOperator(a, (1, 1, 2)), y, sigma)

    grid = torch.linspace(-2.0, 3.0, 801, dtype=F64)  # step 0.00625 ≪ the smallest posterior std (~0.05)
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1)  # (N, 2)
    w, m, v = prior.weights, prior.means.reshape(3, 2), prior.variances.reshape(3, 2)
    log_components = w.log() - 0.5 * ((points[:, None, :] - m) ** 2 / v + (2 * math.pi * v).log()).sum(-1)  # (N, K)
    log_lik = -0.5 * ((points @ a.T - y) ** 2).sum(-1) / sigma**2
    joint = torch.softmax((log_components + log_lik[:, None]).reshape(-1), dim=0).reshape(-1, 3)  # p(x, k | y) on the grid
    density = joint.sum(1)
    mean = (density[:, None] * points).sum(0)
    std = (density[:, None] * (points - mean) ** 2).sum(0).sqrt()

    assert_close(post.mean().reshape(2), mean, atol=1e-10)
    assert_close(post.marginal_std().reshape(2), std, atol=1e-10)
    assert_close(post.weights, joint.sum(0), atol=1e-10)
    # log p(y) = log ∫ p(y | x) p(x) dx, with the likelihood's normalising constant of m = len(y) dims
    cell = float(grid[1] - grid[0]) ** 2
    log_norm = -0.5 * len(y) * math.log(2 * math.pi * sigma**2)
    evidence = float(torch.logsumexp((log_components + log_lik[:, None]).reshape(-1), dim=0)) + math.log(cell) + log_norm
    assert abs(post.log_evidence - evidence) < 1e-6


def test_full_gaussian_posterior_equals_conjugate_formulas() -> None:
    d = 6
    g = torch.Generator().manual_seed(2)
    b = torch.randn(d, d, generator=g, dtype=F64)
    cov0 = 0.02 * (b @ b.T / d + 0.2 * torch.eye(d, dtype=F64))
    m0 = torch.rand(d, generator=g, dtype=F64)
    a = torch.randn(4, d, generator=g, dtype=F64)
    y, sigma = torch.randn(4, generator=g, dtype=F64), 0.1
    prior = GaussianMixturePrior.gaussian(m0.reshape(1, 2, 3), covariance=cov0)
    post = prior.posterior(DenseOperator(a, (1, 2, 3)), y, sigma)
    cov = torch.linalg.inv(a.T @ a / sigma**2 + torch.linalg.inv(cov0))  # well conditioned here
    mean = cov @ (a.T @ y / sigma**2 + torch.linalg.solve(cov0, m0))
    assert_close(post.means[0], mean, atol=1e-10)
    assert_close(post.covariances[0], cov, atol=1e-12)
    assert_close(post.marginal_std().reshape(d), cov.diagonal().sqrt(), atol=1e-12)
    assert post.weights.tolist() == [1.0]


@pytest.mark.parametrize("t", [30, 300])
def test_denoising_posterior_mean_is_the_tweedie_denoiser(t: int) -> None:
    """x_t / sqrt(ᾱ) = x_0 + sqrt((1-ᾱ)/ᾱ) ε: the posterior mean of a `denoise` problem is E[x_0 | x_t]."""
    shape = (1, 4, 4)
    prior = random_gmm(4, shape, seed=3)
    ab = float(linear_alphas_cumprod()[t])
    x_t = prior.sample(1, torch.Generator().manual_seed(4)) * math.sqrt(ab)
    x_t = x_t + math.sqrt(1 - ab) * torch.randn(1, *shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    post = prior.posterior(build_operator({"kind": "denoise"}, shape), x_t[0] / math.sqrt(ab), math.sqrt((1 - ab) / ab))
    assert_close(post.mean(), prior.denoise(x_t, t)[0], atol=1e-10)


def test_diagonal_prior_given_as_full_covariance_gives_the_same_posterior() -> None:
    shape = (1, 3, 3)
    g = torch.Generator().manual_seed(6)
    mean, var = torch.rand(*shape, generator=g, dtype=F64), 0.02 + 0.05 * torch.rand(*shape, generator=g, dtype=F64)
    op = build_operator({"kind": "cs", "m": 5, "seed": 1}, shape)
    y = torch.randn(5, generator=g, dtype=F64)
    diag = GaussianMixturePrior.gaussian(mean, var).posterior(op, y, 0.05)
    full = GaussianMixturePrior.gaussian(mean, covariance=torch.diag(var.reshape(-1))).posterior(op, y, 0.05)
    assert_close(full.means, diag.means, atol=1e-12)
    assert_close(full.covariances, diag.covariances, atol=1e-12)


# --------------------------------------------------------------------------- sampling and marginals


@pytest.mark.parametrize("operator", [{"kind": "inpaint", "fraction": 0.5, "seed": 0}, {"kind": "blur", "sigma": 1.0, "size": 3}])
def test_posterior_samples_have_the_exact_moments_and_marginal_cdf(operator: dict) -> None:
    shape, n = (1, 3, 3), 20_000
    prior = random_gmm(3, shape, seed=7)
    op = build_operator(operator, shape)
    x = prior.sample(1, torch.Generator().manual_seed(8))
    y = op.A(x)[0] + 0.1 * torch.randn(op.obs_shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    post = prior.posterior(op, y, 0.1)
    draws = post.sample(n, torch.Generator().manual_seed(10))
    assert draws.shape == (n, *shape) and draws.dtype == F64
    mean, std = post.mean(), post.marginal_std()
    assert ((draws.mean(0) - mean).abs() <= 4 * std / math.sqrt(n)).all()
    # Var of the sample variance ≈ (μ4 − σ⁴)/n, μ4 estimated from the draws.
    mu4 = ((draws - mean) ** 4).mean(0)
    assert ((draws.var(0) - std**2).abs() <= 4 * ((mu4 - std**4) / n).sqrt()).all()
    # Marginal CDF at the exact quartiles against the empirical CDF (binomial standard error).
    for level in (0.25, 0.5, 0.75):
        q = post.quantile(level)
        assert ((draws <= q).double().mean(0) - level).abs().max() <= 4 * math.sqrt(level * (1 - level) / n)


def test_quantile_inverts_the_cdf_and_the_exact_interval_has_its_level() -> None:
    shape = (1, 4, 4)
    prior = random_gmm(5, shape, seed=11)
    op = build_operator({"kind": "cs", "m": 6, "seed": 2}, shape)
    y = op.A(prior.sample(1, torch.Generator().manual_seed(12)))[0]
    post = prior.posterior(op, y, 0.05)
    levels = torch.tensor([1e-4, 0.05, 0.5, 0.95, 1 - 1e-4], dtype=F64)
    q = post.quantile(levels)
    assert q.shape == (5, *shape) and bool((q.diff(dim=0) > 0).all())
    assert_close(post.marginal_cdf(q), levels.reshape(-1, 1, 1, 1).expand_as(q), atol=1e-12)
    for level in (0.5, 0.9, 0.99):
        lower, upper = post.equal_tailed_interval(level)
        mass = post.interval_mass(lower, upper)
        assert mass.shape == shape
        assert_close(mass, torch.full(shape, level, dtype=F64), atol=1e-6)


def test_posterior_sampling_is_reproducible() -> None:
    prior = random_gmm(3, (1, 2, 2), seed=13)
    post = prior.posterior(build_operator({"kind": "denoise"}, (1, 2, 2)), torch.full((1, 2, 2), 0.5, dtype=F64), 0.1)
    assert torch.equal(post.sample(7, torch.Generator().manual_seed(3)), post.sample(7, torch.Generator().manual_seed(3)))


# --------------------------------------------------------------------------- bad input


def test_bad_posterior_inputs_raise_uqerror() -> None:
    shape = (1, 2, 2)
    prior = random_gmm(2, shape, seed=14)
    op = build_operator({"kind": "cs", "m": 3, "seed": 0}, shape)
    y = torch.zeros(3, dtype=F64)
    with pytest.raises(UQError, match=r"sigma = 0\.0 must be a finite number > 0"):
        prior.posterior(op, y, 0.0)
    with pytest.raises(UQError, match=r"sigma = -1"):
        prior.posterior(op, y, -1)
    with pytest.raises(UQError, match=r"y has shape \(4,\) but the operator observes \(3,\)"):
        prior.posterior(op, torch.zeros(4, dtype=F64), 0.1)
    with pytest.raises(UQError, match=r"y has 1 NaN/Inf entries"):
        prior.posterior(op, torch.tensor([0.0, float("nan"), 0.0], dtype=F64), 0.1)
    with pytest.raises(UQError, match=r"operator acts on images of shape \(1, 3, 3\) but the prior's images are \(1, 2, 2\)"):
        prior.posterior(build_operator({"kind": "denoise"}, (1, 3, 3)), torch.zeros(1, 3, 3, dtype=F64), 0.1)
    post = prior.posterior(op, y, 0.1)
    with pytest.raises(UQError, match=r"quantile level must be .* in \(0, 1\), got 1\.0"):
        post.quantile(1.0)
    with pytest.raises(UQError, match=r"marginal_cdf wants values of shape"):
        post.marginal_cdf(torch.zeros(2, 3, dtype=F64))
    with pytest.raises(UQError, match=r"covariances \(2, 3, 3\) do not fit K = 2, d = 4"):
        GaussianMixturePosterior(post.weights, post.means, torch.eye(3, dtype=F64).expand(2, 3, 3), shape)
