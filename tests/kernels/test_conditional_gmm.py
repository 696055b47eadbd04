"""The conditional ``gmm`` prior (weights = softmax(W c)): closed-form gradients, p(y | c), loading, errors.

LATINO-PRO's exact test bed (issue 15); the sampler itself is tested in test_latino_pro.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior
from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.problems import random_conditional_problem, random_problem

F64 = torch.float64


@pytest.fixture(scope="module")
def cproblem():
    return random_conditional_problem("inpaint", seed=3, img_shape=(1, 4, 8), components=4, condition_dim=3)


def test_generator_sizes_and_truth_drawn_at_the_true_condition(cproblem) -> None:
    prior = cproblem.problem.prior
    assert prior.is_conditional and prior.logit_weights.shape == (4, 3) and prior.condition.shape == (3,)
    assert torch.equal(prior.condition, torch.zeros(3, dtype=F64))  # c₀ = 0: the centre of C
    assert float(cproblem.condition_true.norm()) <= cproblem.radius
    assert set(cproblem.problem.prior_arrays) == {"means", "variances", "logit_weights", "condition"}
    again = random_conditional_problem("inpaint", seed=3, img_shape=(1, 4, 8), components=4, condition_dim=3)
    assert torch.equal(again.problem.y, cproblem.problem.y)  # reproducible
    for shape, k_comp, k_dim in (((1, 4, 4), 3, 2), ((1, 8, 8), 5, 4)):
        other = random_conditional_problem("blur", seed=0, img_shape=shape, components=k_comp, condition_dim=k_dim)
        assert other.logit_weights.shape == (k_comp, k_dim) and other.problem.x_true.shape == shape


def test_weights_are_the_softmax_of_the_logits_and_the_denoiser_uses_them(cproblem) -> None:
    prior = cproblem.problem.prior
    c = torch.tensor([0.7, -1.1, 0.4], dtype=F64)
    weights = torch.softmax(prior.logit_weights @ c, 0)
    fixed = GaussianMixturePrior(weights, prior.means, prior.variances)  # the same mixture, unconditional
    x_t = torch.randn(5, 1, 4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(prior.denoise(x_t, 120, condition=c), fixed.denoise(x_t, 120), atol=1e-13)
    assert torch.allclose(prior.with_condition(c).consistency(x_t, 120), fixed.denoise(x_t, 120), atol=1e-13)
    assert torch.allclose(prior.log_prob(x_t, condition=c), fixed.log_prob(x_t), atol=1e-12)
    assert torch.allclose(prior.with_condition(c).weights, weights, atol=1e-15)


def test_condition_score_is_the_gradient_of_log_p_x_given_c(cproblem) -> None:
    prior = cproblem.problem.prior
    x = prior.sample(6, torch.Generator().manual_seed(1), condition=cproblem.condition_true)
    c = torch.tensor([0.3, 0.9, -0.5], dtype=F64, requires_grad=True)
    (autograd,) = torch.autograd.grad(prior.log_prob(x, condition=c).sum(), c)
    closed = prior.condition_score(x, c.detach())
    assert closed.shape == (6, 3)
    assert torch.allclose(closed.sum(0), autograd, atol=1e-12)


def test_log_evidence_is_p_y_given_c_and_its_gradient_is_fishers_identity(cproblem) -> None:
    """log p(y | c) from the posterior equals the problem's closed form; its gradient equals autograd
    and E_{x|y,c}[∇_c log p(x | c)] estimated from exact posterior draws (Fisher's identity)."""
    prior, base = cproblem.problem.prior, cproblem.problem
    c = torch.tensor([-0.4, 1.2, 0.2], dtype=F64)
    posterior = prior.posterior(base.operator, base.y, base.sigma, condition=c)
    assert posterior.log_evidence == pytest.approx(float(cproblem.log_evidence(c)), abs=1e-10)
    # against a dense Gaussian evidence of each component
    a = base.operator.matrix(dtype=F64)
    covs = prior.covariances()
    dense = torch.stack([
        torch.distributions.MultivariateNormal(a @ m, a @ cov @ a.T + base.sigma**2 * torch.eye(a.shape[0], dtype=F64)).log_prob(base.y.reshape(-1))
        for m, cov in zip(prior.means.reshape(4, -1), covs)
    ])
    assert torch.allclose(posterior.component_log_evidence, dense, atol=1e-9)
    leaf = c.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(cproblem.log_evidence(leaf), leaf)
    assert torch.allclose(cproblem.log_evidence_grad(c), autograd, atol=1e-12)
    draws = posterior.sample(40_000, torch.Generator().manual_seed(2))
    fisher = prior.condition_score(draws, c).mean(0)
    assert torch.allclose(fisher, autograd, atol=0.02), (fisher, autograd)  # MC error ~ 0.005
    assert float(autograd.norm()) > 0.1  # not a trivially zero gradient


def test_maximise_finds_the_best_point_of_the_ball_and_the_box(cproblem) -> None:
    best, value = cproblem.maximise()
    assert value == pytest.approx(float(cproblem.log_evidence(best)), abs=1e-12)
    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 3))
    points = torch.tensor(d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(size=(4000, 1)) ** (1 / 3) * cproblem.radius)
    assert max(float(cproblem.log_evidence(p)) for p in points) <= value + 1e-9
    # on the sphere (one measurement's p(y | c) grows toward infinity): KKT, gradient along the outward normal
    assert float(best.norm()) == pytest.approx(cproblem.radius, abs=1e-6)
    grad = cproblem.log_evidence_grad(best)
    assert float(torch.nn.functional.cosine_similarity(grad, best, dim=0)) > 1 - 1e-6
    box_best, box_value = cproblem.maximise(box=(-0.5, 0.5))
    assert bool((box_best.abs() <= 0.5 + 1e-12).all())
    corners = torch.tensor(rng.uniform(-0.5, 0.5, size=(2000, 3)))
    assert max(float(cproblem.log_evidence(p)) for p in corners) <= box_value + 1e-9


def test_at_gives_the_posterior_at_another_condition(cproblem) -> None:
    c = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    at = cproblem.at(c)
    assert torch.equal(at.prior.condition, c)
    expected = cproblem.problem.prior.posterior(cproblem.problem.operator, cproblem.problem.y, cproblem.problem.sigma, condition=c)
    assert torch.allclose(at.posterior.weights, expected.weights) and at.posterior.log_evidence == pytest.approx(expected.log_evidence)


def test_npz_round_trip_with_and_without_weights(tmp_path: Path, cproblem) -> None:
    arrays = cproblem.problem.prior_arrays
    np.savez(tmp_path / "cond.npz", **arrays)
    prior = build_prior({"kind": "gmm", "file": "cond.npz"}, tmp_path)
    assert prior.is_conditional and torch.equal(prior.condition, torch.zeros(3, dtype=F64))
    desc = prior.describe()
    assert desc["condition_dim"] == 3
    assert build_prior(desc, tmp_path).describe() == desc  # describe() rebuilds it, condition_dim checked
    moved = build_prior({"kind": "gmm", "file": "cond.npz", "condition": [0.5, -0.5, 1.0]}, tmp_path)
    assert torch.allclose(moved.weights, torch.softmax(moved.logit_weights @ torch.tensor([0.5, -0.5, 1.0], dtype=F64), 0))
    assert build_prior(moved.describe(), tmp_path).describe() == moved.describe()
    with_weights = {**arrays, "weights": torch.softmax(torch.as_tensor(arrays["logit_weights"]) @ torch.zeros(3, dtype=F64), 0).numpy()}
    np.savez(tmp_path / "cond_w.npz", **with_weights)
    assert torch.allclose(build_prior({"kind": "gmm", "file": "cond_w.npz"}, tmp_path).weights, prior.weights)
    plain = build_prior({"kind": "gmm", "file": str(Path(__file__).resolve().parents[2] / "priors" / "digits16.npz")})
    assert not plain.is_conditional and "condition_dim" not in plain.describe()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"condition": None}, "no default condition"),
        ({"logit_weights": None}, "a condition but no logit_weights"),
        ({"condition": np.zeros(2)}, "shape"),
        ({"logit_weights": np.zeros((3, 3))}, "K = 4"),
        ({"weights": np.full(4, 0.25) + np.array([0.1, -0.1, 0.0, 0.0])}, "disagree"),
        ({"condition": np.array([np.nan, 0.0, 0.0])}, "NaN"),
    ],
)
def test_bad_conditional_files_raise_uqerror(tmp_path: Path, cproblem, change: dict, message: str) -> None:
    arrays = {**cproblem.problem.prior_arrays, **change}
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(UQError, match=message):
        build_prior({"kind": "gmm", "file": "bad.npz"}, tmp_path)


def test_an_unconditional_prior_takes_no_condition() -> None:
    prior = random_problem("inpaint", "gmm", seed=0).prior
    x = prior.sample(2, torch.Generator().manual_seed(0))
    for call in (lambda: prior.condition_score(x), lambda: prior.denoise(x, 10, condition=torch.zeros(2, dtype=F64)),
                 lambda: prior.with_condition([0.0])):
        with pytest.raises(UQError, match="has no condition"):
            call()
    with pytest.raises(UQError, match="condition must be a tensor of shape"):
        random_conditional_problem("denoise", 0).problem.prior.log_prob(x, condition=torch.zeros(5, dtype=F64))


def test_the_conditional_prior_satisfies_its_protocol(cproblem) -> None:
    from uqcampaign.kernels.priors.base import ConditionalExactPrior, ExactPrior

    assert isinstance(cproblem.problem.prior, ConditionalExactPrior) and isinstance(cproblem.problem.prior, ExactPrior)
