"""Point-estimate baselines ``map-hqs``, ``map-admm``, ``map-latent``: API, objectives, and the exact MAP.

Exact GMM problems (``random_problem``, 1×4×4, K = 4): the posterior mode is found by scipy
(L-BFGS-B from every posterior and prior component mean and from ``pinv(y)``, the best kept).
Tolerances (max-abs pixel error, images with prior std ≈ 0.2 and posterior std ≈ 0.05):

* HQS's fixed point at the last noise level ``ε`` is the mode of the posterior with the prior
  smoothed by ``N(0, ε I)`` (see ``map_hqs``): equal to scipy's mode of that smoothed mixture to
  1e-6 (convergence), and to the unsmoothed mode to 2e-3 at ``sigma_min = 0.02`` (the O(ε) shift);
* ADMM's fixed point solves ``x = D_ε(x − δ ∇f(x))`` (residual ≤ 1e-8) and equals the unsmoothed
  mode to 2e-3 at ``sigma_min = 0.02``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.priors.gaussian_mixture import GaussianMixturePrior
from uqcampaign.kernels.problems import random_problem
from uqcampaign.kernels.samplers import map_admm, map_hqs
from uqcampaign.kernels.samplers.base import chains_measurement
from uqcampaign.kernels.samplers.map_latent import latent_objective
from uqcampaign.kernels.samplers.registry import POINT_ESTIMATE_KINDS, build_sampler
from uqcampaign.kernels.schedule import linear_alphas_cumprod

ROOT = Path(__file__).resolve().parents[2]
PIXEL_KINDS = ("map-hqs", "map-admm")
STEPS = {"map-hqs": map_hqs, "map-admm": map_admm}


@pytest.fixture(scope="module")
def problem():
    return random_problem("blur", "gmm", seed=1)


def _run(spec, problem, n_chains=3, generator=None, prior=None):
    sampler = build_sampler(spec)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return list(sampler.run(problem.y, problem.operator, prior or problem.prior, problem.sigma, n_chains, 1, generator))


def _objective(prior, problem):
    """``F(x) = ||y − A x||²/(2σ²) − log p(x)`` and its gradient on flat float64 vectors (for scipy)."""

    def f(flat: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(flat, dtype=torch.float64).reshape(1, *problem.operator.img_shape).requires_grad_(True)
        value = ((problem.operator.A(x) - problem.y) ** 2).sum() / (2 * problem.sigma**2) - prior.log_prob(x).sum()
        (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), grad.reshape(-1).numpy()

    return f


def scipy_mode(prior, problem) -> np.ndarray:
    """The global minimiser of ``F`` over L-BFGS-B runs from every component mean and ``pinv(y)``."""
    f = _objective(prior, problem)
    starts = [*problem.posterior.means, *prior.means.reshape(prior.means.shape[0], -1), problem.operator.pinv(problem.y[None]).reshape(-1)]
    runs = [optimize.minimize(f, np.asarray(s, dtype=np.float64), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 5000}) for s in starts]
    return min(runs, key=lambda r: r.fun).x


def smoothed(prior: GaussianMixturePrior, epsilon: float) -> GaussianMixturePrior:
    """``p * N(0, ε I)``: the prior whose MAP HQS's fixed point is."""
    return GaussianMixturePrior(prior.weights, prior.means, prior.variances + epsilon)


# --------------------------------------------------------------------------- API


def test_point_estimates_write_one_draw_per_chain(problem):
    assert POINT_ESTIMATE_KINDS == ("map-hqs", "map-admm", "map-latent")
    for kind in PIXEL_KINDS:
        draws = _run({"kind": kind, "iterations": 12}, problem)
        assert len(draws) == 1 and draws[0].index == 0 and draws[0].nfe == 12
        assert draws[0].x.shape == (3, *problem.operator.img_shape) and draws[0].x.dtype == problem.y.dtype
        assert torch.equal(draws[0].x[0], draws[0].x[2])  # start_noise 0: every chain the same estimate
        assert draws[0].info["residual"].shape == (12,)
        assert build_sampler({"kind": kind, "iterations": 12}).nfe_per_unit(1) == 12
        with pytest.raises(UQError, match=r"point estimate.*set draws: 1"):
            build_sampler({"kind": kind}).run(problem.y, problem.operator, problem.prior, problem.sigma, 2, 5, torch.Generator())


def test_start_noise_seeds_the_chains(problem):
    spec = {"kind": "map-hqs", "iterations": 3, "start_noise": 0.1}
    a = _run(spec, problem, generator=torch.Generator().manual_seed(1))[0].x
    b = _run(spec, problem, generator=torch.Generator().manual_seed(1))[0].x
    c = _run(spec, problem, generator=torch.Generator().manual_seed(2))[0].x
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a[0], a[1])


def test_denoiser_calls_match_nfe(problem):
    calls = []

    class Counting:
        def __init__(self, prior):
            self._prior = prior

        def __getattr__(self, name):
            return getattr(self._prior, name)

        def denoise(self, x, t):
            calls.append(t)
            return self._prior.denoise(x, t)

    for kind in PIXEL_KINDS:
        calls.clear()
        draws = _run({"kind": kind, "iterations": 9}, problem, prior=Counting(problem.prior))
        assert len(calls) == draws[0].nfe == 9


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"kind": "map-hqs", "iterations": 0}, ["iterations"]),
        ({"kind": "map-hqs", "anneal": 0}, ["anneal"]),
        ({"kind": "map-admm", "sigma_min": "low"}, ["sigma_min", "noise"]),
        ({"kind": "map-admm", "sigma_min": 0.5}, ["sigma_min", "sigma_max"]),
        ({"kind": "map-hqs", "lam": 0}, ["lam"]),
        ({"kind": "map-hqs", "start_noise": -1}, ["start_noise"]),
        ({"kind": "map-latent", "start": "random"}, ["start", "zero"]),
        ({"kind": "map-latent", "lr": 0}, ["lr"]),
        ({"kind": "map-hqs", "step": 1}, ["step", "iterations"]),
    ],
)
def test_bad_specs_are_named(spec, words):
    with pytest.raises(UQError) as err:
        build_sampler(spec)
    for word in words:
        assert word in str(err.value)


def test_prior_kinds_are_checked(problem):
    latent = LinearLatentPrior.random(problem.operator.img_shape, seed=0)
    for kind in PIXEL_KINDS:
        with pytest.raises(UQError, match="latent"):
            build_sampler({"kind": kind}).run(problem.y, problem.operator, latent, problem.sigma, 2, 1, torch.Generator())
    with pytest.raises(UQError, match="needs a latent prior"):
        build_sampler({"kind": "map-latent"}).run(problem.y, problem.operator, problem.prior, problem.sigma, 2, 1, torch.Generator())


# --------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("operator_kind, seed", [("blur", 1), ("inpaint", 0), ("cs", 0)])
def test_hqs_decreases_the_smoothed_objective(operator_kind, seed):
    """At a constant level ε, HQS is proximal-gradient descent on F_ε = ||y − Ax||²/(2σ²) − log p_ε(x):
    F_ε (exact, the smoothed mixture's log_prob) never increases, from the first iteration at ε_min on."""
    p = random_problem(operator_kind, "gmm", seed=seed)
    sampler = build_sampler({"kind": "map-hqs", "iterations": 150})
    levels = sampler.levels(p.prior, p.sigma)
    target = smoothed(p.prior, levels.epsilon[-1])
    y = chains_measurement(p.y, 1)
    state = map_hqs.init(y, p.operator, 0.0, torch.Generator())
    values = []
    for k in range(150):
        state, _ = map_hqs.step(state, y, p.operator, p.prior, p.sigma, levels)
        if k >= sampler.config.anneal - 1:
            values.append(float(((p.operator.A(state.x) - y) ** 2).sum() / (2 * p.sigma**2) - target.log_prob(state.x).sum()))
    increases = np.diff(values)
    assert increases.max() <= 1e-12 * abs(values[0]) + 1e-12, increases.max()
    assert values[-1] < values[0]


def test_admm_lyapunov_function_decreases_on_a_gaussian_prior():
    """Gaussian prior: the denoiser is exactly the prox of −log p, so PnP-ADMM is convex ADMM on F and
    V_k = ||v_k − x*||² + ||u_k − u*||² decreases (Boyd et al. 2011, Appendix A) to 0; x* is the exact MAP
    (the posterior mean) and u* = −δ ∇f(x*)."""
    p = random_problem("blur", "gaussian", seed=0)
    sampler = build_sampler({"kind": "map-admm", "iterations": 600, "anneal": 1, "sigma_max": 0.05, "sigma_min": 0.05})
    levels = sampler.levels(p.prior, p.sigma)
    y = chains_measurement(p.y, 1)
    x_star = p.posterior.mean()[None]
    u_star = -levels.delta[0] * p.operator.A_T(p.operator.A(x_star) - y) / p.sigma**2
    state = map_admm.init(y, p.operator, 0.0, torch.Generator())
    lyapunov = []
    for _ in range(600):
        state, _ = map_admm.step(state, y, p.operator, p.prior, p.sigma, levels)
        lyapunov.append(float(((state.v - x_star) ** 2).sum() + ((state.u - u_star) ** 2).sum()))
    lyapunov = np.array(lyapunov)
    assert np.all(lyapunov[1:] <= lyapunov[:-1] * (1 + 1e-9) + 1e-27)  # float64 rounding at the floor only
    assert lyapunov[-1] < 1e-26 < 1 < lyapunov[0]
    assert float((state.x - x_star).abs().max()) < 1e-12


MAP_PROBLEMS = [("blur", 1, {}), ("inpaint", 0, {}), ("blur", 0, {"sigma_max": 0.5})]


@pytest.mark.slow
@pytest.mark.parametrize("operator_kind, seed, extra", MAP_PROBLEMS)
def test_map_equals_the_exact_posterior_mode(operator_kind, seed, extra):
    """HQS and ADMM at sigma_min = 0.02 against scipy's mode (module docstring for the tolerances).
    ``blur`` seed 0 needs sigma_max 0.5: from DPIR's 49/255 both land in a local mode (F higher by 2.0)."""
    p = random_problem(operator_kind, "gmm", seed=seed)
    mode = scipy_mode(p.prior, p)
    for kind in PIXEL_KINDS:
        sampler = build_sampler({"kind": kind, "iterations": 2000, "sigma_min": 0.02, **extra})
        levels = sampler.levels(p.prior, p.sigma)
        x = next(iter(sampler.run(p.y, p.operator, p.prior, p.sigma, 1, 1, torch.Generator()))).x
        error = float(np.abs(x.reshape(-1).numpy() - mode).max())
        if kind == "map-hqs":
            exact = float(np.abs(x.reshape(-1).numpy() - scipy_mode(smoothed(p.prior, levels.epsilon[-1]), p)).max())
            print(f"\n[map] {operator_kind} {seed} {kind}: |x − smoothed mode| = {exact:.1e}, |x − mode| = {error:.1e}", end="")
            assert exact < 1e-6
        else:
            grad = p.operator.A_T(p.operator.A(x) - p.y) / p.sigma**2
            fixed = p.prior.denoise(levels.sqrt_alpha_bar[-1] * (x - levels.delta[-1] * grad), levels.t[-1])
            residual = float((fixed - x).abs().max())
            print(f"\n[map] {operator_kind} {seed} {kind}: fixed-point residual = {residual:.1e}, |x − mode| = {error:.1e}", end="")
            assert residual < 1e-8
        assert error < 2e-3


# --------------------------------------------------------------------------- latent MAP


class LinearLatentPrior:
    """A latent prior with a linear decoder ``D(z) = W z + b`` (``W (d, k)``): F(z) is quadratic, its
    minimiser ``(WᵀAᵀAW/σ² + I)⁻¹ WᵀAᵀ(y − A b)/σ²`` is known in closed form."""

    kind = "linear-latent"
    is_latent = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, img_shape, latent_shape) -> None:
        self.weight, self.bias = weight, bias
        self.img_shape, self.latent_shape = tuple(img_shape), tuple(latent_shape)
        self.alphas_cumprod = linear_alphas_cumprod()

    @classmethod
    def random(cls, img_shape, seed: int, latent_shape=(2, 2, 2)) -> LinearLatentPrior:
        g = torch.Generator().manual_seed(seed)
        d, k = math.prod(img_shape), math.prod(latent_shape)
        return cls(0.1 * torch.randn(d, k, generator=g, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64), img_shape, latent_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], -1) @ self.weight.T.to(z.dtype) + self.bias.to(z.dtype)
        return flat.reshape(z.shape[0], *self.img_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.linalg.lstsq(self.weight.to(x.dtype), (x.reshape(x.shape[0], -1) - self.bias.to(x.dtype)).T).solution.T
        return flat.reshape(x.shape[0], *self.latent_shape)

    def minimiser(self, operator, y: torch.Tensor, sigma: float) -> torch.Tensor:
        aw = operator.matrix() @ self.weight
        hessian = aw.T @ aw / sigma**2 + torch.eye(aw.shape[1], dtype=torch.float64)
        z = torch.linalg.solve(hessian, aw.T @ (y.reshape(-1) - operator.matrix() @ self.bias) / sigma**2)
        return z.reshape(1, *self.latent_shape)


def test_latent_map_reaches_the_closed_form_minimiser():
    """Linear decoder: Adam ends at the exact argmin of F (to 1e-9) and F falls between every tenth of the run."""
    p = random_problem("blur", "gaussian", seed=0)
    prior = LinearLatentPrior.random(p.operator.img_shape, seed=0)
    draw = next(iter(build_sampler({"kind": "map-latent", "steps": 800}).run(p.y, p.operator, prior, p.sigma, 2, 1, torch.Generator())))
    z_star = prior.minimiser(p.operator, p.y, p.sigma)
    f_star = float(latent_objective(z_star, p.y[None], p.operator, prior, p.sigma)[0])
    trace = draw.info["objective"][:, 0].numpy()
    assert draw.info["objective"].shape == (801, 2) and draw.nfe == 800
    assert float((draw.x - prior.decode(z_star)).abs().max()) < 1e-9
    assert trace[-1] - f_star < 1e-9 * abs(f_star)
    assert np.all(np.diff(trace[::80]) <= 1e-12 * abs(f_star))  # Adam is not a descent method step by step; over tenths of the run it is here


@pytest.mark.slow  # loading the LCM (diffusers, transformers) takes ~20 s on the shared CPU
def test_latent_map_on_the_shipped_lcm():
    """Digits LCM, inpainting half the pixels of a held-out digit: F falls at every step from z = 0 and the
    estimate fits the data (χ² near 1) with a PSNR far above the least-norm image's."""
    from uqcampaign.kernels.metrics import psnr
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.plausibility import data_fidelity
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.training.datasets import held_out_measurements

    prior = build_prior({"kind": "latent-consistency", "path": "priors/digits16-lcm"}, ROOT)
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, prior.img_shape)
    x, y, _ = held_out_measurements(operator, 0.05, 1)
    draw = next(iter(build_sampler({"kind": "map-latent", "steps": 150}).run(y[0], operator, prior, 0.05, 2, 1, torch.Generator())))
    trace = draw.info["objective"][:, 0].numpy()
    chi2 = float(data_fidelity(draw.x[:1], y[0], operator, 0.05)[0])
    gain = float(psnr(draw.x[0], x[0]) - psnr(operator.pinv(y)[0], x[0]))
    print(f"\n[map] latent MAP on digits16-lcm: F {trace[0]:.0f} → {trace[-1]:.0f}, χ² = {chi2:.2f}, PSNR gain over pinv(y) = {gain:.1f} dB")
    assert np.all(np.diff(trace) < 0)
    assert chi2 < 2.0 and gain > 3.0


def test_map_facts_are_declared(problem):
    """``residual`` (map-hqs, map-admm) and ``objective`` (map-latent) come on the one draw with the shapes
    ``unit_arrays`` declares (the store keeps them in ``map/``)."""
    latent = LinearLatentPrior.random(problem.operator.img_shape, seed=0)
    for kind, prior in (("map-hqs", problem.prior), ("map-admm", problem.prior), ("map-latent", latent)):
        sampler = build_sampler({"kind": kind, "iterations": 7} if kind != "map-latent" else {"kind": kind, "steps": 7})
        (draw,) = sampler.run(problem.y, problem.operator, prior, problem.sigma, 3, 1, torch.Generator())
        declared = {a.name: a for a in sampler.unit_arrays(3, {})}
        assert set(draw.info) == set(declared)
        for name, array in declared.items():
            assert tuple(draw.info[name].shape) == array.shape and array.group == "map"
