"""SMC over the reverse diffusion (issue 14): resampling, weights, log-evidence, pooled draws, the sampler kinds.

Fast tests check the pieces against definitions and the log-evidence of both kernels against the
exact evidence of the model they sample: with a one-component (Gaussian, diagonal) prior and the
exact denoiser the DDPM reverse chain is linear-Gaussian, so its own ``p(y)`` is known in closed
form (:func:`chain_log_evidence`) whatever the number of steps. The statistical tests against the
exact posterior are in ``test_smc_posterior.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_problem
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.smc import anneal, tds
from uqcampaign.kernels.samplers.smc.base import SMCState, gather, resample, reverse_schedule, reweight
from uqcampaign.kernels.samplers.smc.resampling import ess, normalize, systematic
from uqcampaign.kernels.samplers.smc.sampler import AnnealConfig, TDSConfig, pool_counts, pooled_draws, pooled_log_evidence, run_smc
from uqcampaign.kernels.samplers.smc.twist import gaussian_log_density

F64 = torch.float64


def _log_weights(runs: int, n: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    return spread * torch.randn(runs, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- resampling.py


def test_normalize_and_ess_match_their_definitions():
    log_w = _log_weights(3, 50, 0)
    log_norm, log_mean = normalize(log_w)
    w = log_w.exp()
    torch.testing.assert_close(log_norm.exp(), w / w.sum(1, keepdim=True))
    torch.testing.assert_close(log_mean, w.mean(1).log())
    torch.testing.assert_close(ess(log_w), w.sum(1) ** 2 / w.square().sum(1))
    assert float(ess(torch.zeros(1, 7))) == pytest.approx(7.0)


@pytest.mark.parametrize("num_samples", [None, 13, 200])
def test_systematic_gives_each_particle_floor_or_ceil_of_its_share(num_samples):
    log_w = _log_weights(4, 40, 1)
    ancestors = systematic(torch.Generator().manual_seed(2), log_w, num_samples)
    m = 40 if num_samples is None else num_samples
    assert ancestors.shape == (4, m) and ancestors.dtype == torch.long
    counts = torch.stack([torch.bincount(a, minlength=40) for a in ancestors]).to(F64)
    share = m * normalize(log_w)[0].exp()
    assert bool(((counts >= share.floor() - 1e-9) & (counts <= share.ceil() + 1e-9)).all())
    assert bool((counts.sum(1) == m).all())


def test_systematic_is_unbiased():
    """Mean offspring count over many draws = N W (each run draws its own uniform)."""
    log_w = _log_weights(1, 20, 3).expand(4000, 20)
    counts = torch.nn.functional.one_hot(systematic(torch.Generator().manual_seed(4), log_w), 20).sum(1).to(F64)
    share = 20 * normalize(log_w[:1])[0].exp()[0]
    assert (counts.mean(0) - share).abs().max() < 4 * 0.5 / 4000**0.5


# --------------------------------------------------------------------------- base.py


def test_resample_touches_only_runs_below_the_threshold():
    runs, n = 3, 64
    log_w = normalize(torch.stack([torch.zeros(n, dtype=F64), _log_weights(1, n, 5, 4.0)[0], torch.zeros(n, dtype=F64)]))[0]
    particles = torch.arange(runs * n, dtype=F64).reshape(runs * n, 1, 1, 1)
    state, ancestors, resampled = resample(torch.Generator().manual_seed(6), SMCState(particles, log_w), 0.5)
    assert resampled.tolist() == [False, True, False]
    assert torch.equal(state.particles[:n], particles[:n]) and torch.equal(state.log_weights[0], log_w[0])
    torch.testing.assert_close(state.log_weights[1], torch.full((n,), -math.log(n), dtype=F64))
    assert torch.equal(state.particles[n : 2 * n, 0, 0, 0], (n + ancestors[1]).to(F64))  # run 1 draws from its own particles
    assert torch.equal(gather(particles, ancestors), state.particles)


def test_reweight_increments_sum_to_the_log_mean_of_the_weight_products():
    """Without resampling, Σ_k log Σ_i W_i w_ik = log mean_i Π_k w_ik (the telescoping behind log p(y))."""
    runs, n = 2, 30
    state = SMCState(torch.zeros(runs * n, 1, 1, 1), torch.full((runs, n), -math.log(n), dtype=F64))
    increments = [_log_weights(runs, n, 10 + k) for k in range(4)]
    total = torch.zeros(runs, dtype=F64)
    for inc in increments:
        state, step_increment, _ = reweight(state, inc.reshape(-1))
        total += step_increment
    product = torch.stack(increments).sum(0)
    torch.testing.assert_close(total, torch.logsumexp(product, 1) - math.log(n))
    torch.testing.assert_close(state.log_weights, normalize(product)[0])


def test_reverse_schedule_variances():
    ab = random_problem("denoise", "gmm", seed=0).prior.alphas_cumprod
    small, large = reverse_schedule(ab, 50, "small"), reverse_schedule(ab, 50, "large")
    assert small.timesteps == large.timesteps and small.std[0] == 0 == large.std[0]
    beta = 1 - small.alpha_bar[1:] / small.alpha_bar[:-1]
    torch.testing.assert_close(large.std[1:] ** 2, beta)
    assert bool((small.std[1:] < large.std[1:]).all())  # β̃ = β (1 − ᾱ_prev)/(1 − ᾱ) < β


# --------------------------------------------------------------------------- twist


def test_gaussian_log_density_equals_dense():
    problem = random_problem("cs", "gmm", seed=1)
    mat = problem.operator.matrix()
    r = torch.randn(3, *problem.operator.obs_shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    log_p, solved = gaussian_log_density(r, problem.operator, 0.05, 0.7)
    cov = 0.05**2 * torch.eye(mat.shape[0], dtype=F64) + 0.7 * mat @ mat.T
    want = torch.distributions.MultivariateNormal(torch.zeros(mat.shape[0], dtype=F64), cov).log_prob(r.reshape(3, -1))
    torch.testing.assert_close(log_p, want)
    torch.testing.assert_close(solved.reshape(3, -1), torch.linalg.solve(cov, r.reshape(3, -1).T).T)


@pytest.mark.parametrize("operator_kind", ["inpaint", "blur", "cs"])
def test_tds_twist_gradient_is_the_gradient_of_the_twist(operator_kind):
    """∇_x log N(y; A x̂₀(x), Σ_t) by one vector-Jacobian product equals plain autograd of the density."""
    problem = random_problem(operator_kind, "gmm", seed=3)
    schedule = reverse_schedule(problem.prior.alphas_cumprod, 20)
    x = torch.randn(5, *problem.operator.img_shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    i = 6
    cache = tds.evaluate(x, i, problem.y, problem.operator, problem.prior, problem.sigma, schedule, batch=2)
    ab = float(schedule.alpha_bar[i])
    mat = problem.operator.matrix()
    cov = problem.sigma**2 * torch.eye(mat.shape[0], dtype=F64) + (1 - ab) / ab * mat @ mat.T
    dist = torch.distributions.MultivariateNormal(torch.zeros(mat.shape[0], dtype=F64), cov)
    x_req = x.clone().requires_grad_(True)
    residual = problem.y.reshape(1, -1) - problem.prior.denoise(x_req, schedule.timesteps[i]).reshape(5, -1) @ mat.T
    log_p = dist.log_prob(residual)
    (grad,) = torch.autograd.grad(log_p.sum(), x_req)
    torch.testing.assert_close(cache.log_twist, log_p.detach())
    torch.testing.assert_close(cache.grad, grad)


# --------------------------------------------------------------------------- log-evidence of the model chain


def chain_log_evidence(problem, schedule) -> float:
    """Exact ``log p(y)`` of the DDPM reverse chain (``schedule``) with the exact denoiser of a diagonal Gaussian prior.

    Per pixel the chain is linear-Gaussian: ``x̂₀ = m + k (x − √ᾱ m)``, ``k = √ᾱ v/(ᾱ v + 1 − ᾱ)``, so its mean
    and variance follow from ``x_T ~ N(0, 1)`` through the moves to the output ``x̂₀(x_{t_0})``.
    """
    m = problem.prior.means[0].reshape(-1).to(F64)
    v = problem.prior.variances[0].reshape(-1).to(F64)
    mean, var = torch.zeros_like(m), torch.ones_like(m)
    for i in range(len(schedule.timesteps) - 1, 0, -1):
        a = float(schedule.alpha_bar[i])
        k = a**0.5 * v / (a * v + 1 - a)
        c1, c2, std = float(schedule.c1[i]), float(schedule.c2[i]), float(schedule.std[i])
        mean = c1 * m * (1 - k * a**0.5) + (c1 * k + c2) * mean
        var = (c1 * k + c2) ** 2 * var + std**2
    a = float(schedule.alpha_bar[0])
    k = a**0.5 * v / (a * v + 1 - a)
    out_mean, out_var = m + k * (mean - a**0.5 * m), k**2 * var
    mat = problem.operator.matrix()
    cov = mat @ torch.diag(out_var) @ mat.T + problem.sigma**2 * torch.eye(mat.shape[0], dtype=F64)
    return float(torch.distributions.MultivariateNormal(mat @ out_mean, cov).log_prob(problem.y.reshape(-1).to(F64)))


@pytest.mark.parametrize(
    "kernel, config, img_shape",
    [
        (tds, TDSConfig(runs=12, particles=256, steps=150, variance="large"), (1, 4, 4)),
        # smc-anneal's weights are heavy-tailed beyond a few observed pixels (see anneal.py): 2 of 4 here
        (anneal, AnnealConfig(runs=12, particles=256, steps=40, variance="small"), (1, 2, 2)),
    ],
    ids=["tds", "smc-anneal"],
)
def test_log_evidence_is_that_of_the_model_chain(kernel, config, img_shape):
    """Both kernels estimate the evidence of the chain they run (not the exact one): the runs' pooled estimate
    (:func:`pooled_log_evidence`) within 3.5 standard errors of :func:`chain_log_evidence`, itself 0.1–1.5 nats
    away from the exact ``log p(y)`` (coarse chains)."""
    problem = random_problem("inpaint", "gmm", seed=0, img_shape=img_shape, components=1)
    result = run_smc(kernel, torch.Generator().manual_seed(0), problem.y, problem.operator, problem.prior, problem.sigma, config)
    target = chain_log_evidence(problem, reverse_schedule(problem.prior.alphas_cumprod, config.steps, config.variance))
    estimate, se = pooled_log_evidence(result.log_evidence)
    print(f"\n[{config.KIND}] log p(y): chain {target:.3f}, estimate {estimate:.3f} ± {se:.3f}, exact {problem.posterior.log_evidence:.3f}")
    assert abs(estimate - target) < 3.5 * se
    assert result.log_evidence.shape == result.resamples.shape == result.ess.shape == (config.runs,)
    assert bool((result.ess > 0).all() and (result.ess <= config.particles + 1e-9).all())


# --------------------------------------------------------------------------- pooled draws and the sampler


def test_pool_counts():
    g = torch.Generator().manual_seed(9)
    equal = pool_counts(g, torch.tensor([0.0, -50.0, 3.0, 1.0], dtype=F64), 10, "equal")
    assert sorted(equal.tolist()) == [2, 2, 3, 3]  # ⌊10/4⌋ or ⌈10/4⌉, whatever the evidences
    log_z = torch.log(torch.tensor([0.5, 0.25, 0.25, 1e-30], dtype=F64))
    evidence = pool_counts(g, log_z, 8, "evidence")
    assert evidence.tolist() == [4, 2, 2, 0]  # ∝ p(y) of each run


def test_pooled_draws_are_distinct_particles_where_the_weights_allow():
    runs, n = 3, 50
    particles = torch.arange(runs * n, dtype=F64).reshape(runs * n, 1, 1, 1)
    uniform = torch.full((runs, n), -math.log(n), dtype=F64)
    counts = torch.tensor([20, 0, 30])
    x = pooled_draws(torch.Generator().manual_seed(10), particles, uniform, counts)
    values = x.reshape(-1).long()
    assert x.shape == (50, 1, 1, 1) and values.unique().numel() == 50  # no particle twice
    assert int(((values >= 0) & (values < n)).sum()) == 20 and int((values >= 2 * n).sum()) == 30
    # one particle of weight 1/2 in run 0: half of that run's draws are it
    skewed = uniform.clone()
    skewed[0] = torch.log(torch.full((n,), 0.5 / (n - 1), dtype=F64))
    skewed[0, 7] = math.log(0.5)
    x = pooled_draws(torch.Generator().manual_seed(11), particles, skewed, torch.tensor([20, 0, 0])).reshape(-1)
    assert int((x == 7).sum()) == 10


@pytest.mark.parametrize("kind", ["tds", "smc-anneal"])
def test_last_draw_reports_each_run(kind):
    problem = random_problem("cs", "gmm", seed=1)
    sampler = build_sampler({"kind": kind, "runs": 3, "particles": 16, "steps": 10, "pool": "evidence"})
    draws = list(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, 5, 4, torch.Generator().manual_seed(0)))
    assert [d.info is None for d in draws] == [True, True, True, False]
    info = draws[-1].info
    assert set(info) == {"ess", "resamples", "log_evidence"}
    assert info["ess"].shape == info["resamples"].shape == info["log_evidence"].shape == (3,)
    assert info["log_evidence"].dtype == F64 and info["resamples"].dtype == torch.int64
    assert bool(((info["ess"] >= 1) & (info["ess"] <= 16 + 1e-9)).all()) and bool((info["resamples"] <= 10).all())
    assert all(d.x.shape == (5, *problem.operator.img_shape) for d in draws)


def test_unit_larger_than_the_pool_is_refused():
    problem = random_problem("cs", "gmm", seed=1)
    sampler = build_sampler({"kind": "tds", "runs": 2, "particles": 8})
    with pytest.raises(UQError, match=r"3 chains × 6 draws = 18 draws but its runs × particles = 2 × 8 = 16"):
        sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, 3, 6, torch.Generator())
    with pytest.raises(UQError, match="steps"):
        build_sampler({"kind": "tds", "steps": 5000}).run(problem.y, problem.operator, problem.prior, problem.sigma, 1, 1, torch.Generator())


def test_pooled_log_evidence_is_the_log_of_the_mean_evidence():
    log_z = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=F64)
    estimate, se = pooled_log_evidence(log_z)
    assert estimate == pytest.approx(math.log(log_z.exp().mean()))
    assert se == pytest.approx(float(log_z.exp().std() / (log_z.exp().mean() * 2)))
    # lognormal runs: the log of the mean is near log E Ẑ; the mean of the logs is Var/2 below
    runs = 0.0 - 0.5 + torch.randn(4000, generator=torch.Generator().manual_seed(12), dtype=F64)  # log Ẑ_r, E Ẑ_r = 1
    assert abs(pooled_log_evidence(runs)[0]) < 0.1 and float(runs.mean()) == pytest.approx(-0.5, abs=0.05)


@pytest.mark.parametrize("kernel, config_cls", [(tds, TDSConfig), (anneal, AnnealConfig)], ids=["tds", "smc-anneal"])
def test_batch_changes_memory_not_results(kernel, config_cls):
    """``batch`` splits the network calls only: the same particles, weights and evidence (to rounding)."""
    problem = random_problem("blur", "gmm", seed=4)
    results = [
        run_smc(kernel, torch.Generator().manual_seed(0), problem.y, problem.operator, problem.prior, problem.sigma, config_cls(runs=2, particles=8, steps=12, batch=batch))
        for batch in (None, 3)
    ]
    torch.testing.assert_close(results[0].particles, results[1].particles)
    torch.testing.assert_close(results[0].log_evidence, results[1].log_evidence)
