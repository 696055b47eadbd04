"""Our ``skrock`` against deepinv 0.5.0's ``SKRockIterator`` on the same exact problems (issue 13, item 1).

A standalone comparison, not part of ``make bench`` or ``make test``: deepinv is NOT a dependency
of uqcampaign (its ``torchvision`` requirement has no build for torch 2.13). Install it beside the
venv, without touching torch::

    pip download deepinv==0.5.0 --no-deps -d /tmp/dinv_whl
    pip download torchmetrics lightning-utilities einops natsort --no-deps -d /tmp/dinv_whl
    pip install --no-deps --target /tmp/dinv_site /tmp/dinv_whl/*.whl

and run (about 1–2 minutes, one torch thread)::

    PYTHONPATH=/tmp/dinv_site .venv/bin/python benchmarks/compare_deepinv_skrock.py

``import deepinv`` imports ``torchvision`` first thing; when no torchvision is installed this script
serves an empty stand-in module for it (the SK-ROCK code path, ``L2``, ``ScorePrior`` and
``LinearPhysics`` use none of torchvision).

The same PnP target on both sides (Laumont et al. 2022; Pereyra, Vargas-Mieles & Zygalakis 2020,
SIAM J. Imaging Sci. 13(2)): deepinv's ``∇f + α∇g`` is ``L2(σ).grad`` (``(AᵀAx − Aᵀy)/σ²`` with
a ``LinearPhysics`` wrapping our operator's ``A``/``A_T``) plus ``α ScorePrior.grad(x, √ε)`` =
``α(x − D(x))/ε`` with ``D`` our prior's exact denoiser ``D_ε(x) = prior.denoise(√ᾱ_t x, t)``,
i.e. minus our :func:`uqcampaign.kernels.samplers.langevin.score` (``box: null``). Same ``δ``
(ours' ``step: auto`` = ``ℓ_s/(3L)``), ``s = 10``, ``η = 0.05``.

1. Exactness: one iteration from the same ``x (16, C, H, W)`` with the same ``ξ`` (deepinv draws
   ``torch.randn_like`` from the global generator, ours ``torch.randn`` from the unit's generator:
   the global state is set to the unit generator's, so both draw the same ``ξ``), then 100
   iterations on the same noise stream; ``box: null`` / ``clip=None`` and ``box_rule: project``
   with ``[lo, hi]`` / ``clip=(lo, hi)``. The residual (a few 1e-15) is rounding: deepinv's gradient
   is ``(AᵀAx − Aᵀy)/σ² + α(x − D)/σ_d²``, ours ``Aᵀ(y − Ax)/σ² + (α/ε)(D − x)``, and the two codes
   round the Chebyshev coefficients differently; our :func:`skrock_stages` fed deepinv's gradient and
   deepinv's coefficient arithmetic reproduces deepinv's iteration bit for bit (last column).
2. Accuracy and speed: 16 chains, 10,000 network calls per chain (1,000 iterations, the first 500
   burn-in, every 10th kept: 50 draws per chain, 800 in all), the same dispersed starts (our
   ``init: prior`` draws), independent noise; all 800 draws scored by
   :func:`uqcampaign.kernels.problems.score_samples`; R̂ and bulk ESS of the project's diagnostics;
   CPU seconds (``time.process_time``, best of ``REPEATS``) per 1000 iterations of the whole run
   (deepinv: ``BaseSampling.sample``, its Welford statistics and kept history included).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import math
import sys
import time
import types

import numpy as np
import torch
from uqcampaign.kernels.problems import Problem, random_problem, score_samples
from uqcampaign.kernels.samplers.base import chains_measurement
from uqcampaign.kernels.samplers.langevin import ChainState, start
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.skrock import SKRockCoefficients, skrock_stages
from uqcampaign.pipeline.diagnostics import ess_bulk, rhat

__all__ = ["main"]

SEED = 2  # the held-out seed of tests/kernels/test_skrock.py
CHAINS = 16
STAGES, ETA = 10, 0.05
BUDGET = 10_000  # network calls per chain, burn-in included
ITERATIONS = BUDGET // STAGES
BURN_IN, THIN = ITERATIONS // 2, 10
TRAJECTORY = 100  # iterations of the trajectory check
REPEATS = 2  # timing: best of


def _stub_torchvision() -> None:
    """An empty ``torchvision`` (any attribute is a do-nothing class) when none is installed."""
    if importlib.util.find_spec("torchvision") is not None:
        return

    class _Anything(type):
        def __getattr__(cls, name):
            return cls

        def __call__(cls, *args, **kwargs):
            return cls

        def __getitem__(cls, item):
            return cls

        def __or__(cls, other):
            return cls

    class _Dummy(metaclass=_Anything):
        pass

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Dummy

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _Module(spec.name)
            module.__path__ = []
            module.__version__ = "0+stub"
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Finder())


def _deepinv():
    _stub_torchvision()
    try:
        import deepinv
    except ImportError as error:  # pragma: no cover - a message, not a test
        sys.exit(f"error: deepinv is not importable ({error}); install it as this script's docstring says")
    return deepinv


class _Setup:
    """Both samplers' pieces for one problem: our sampler and parameters, deepinv's physics, data
    fidelity, prior and iterator, all at the same ``δ``, ``ε``, ``α``, ``s``, ``η``."""

    def __init__(self, dinv, problem: Problem, box: tuple[float, float] | None = None) -> None:
        self.problem = problem
        spec = {"kind": "skrock", "stages": STAGES, "eta": ETA, "box": list(box) if box else None, "box_rule": "project", "init": "prior"}
        self.spec = spec
        self.sampler = build_sampler(spec)
        op, prior = problem.operator, problem.prior
        self.params = params = self.sampler.parameters(op, prior, problem.sigma)
        self.y_chains = chains_measurement(problem.y, CHAINS).contiguous()
        self.physics = dinv.physics.LinearPhysics(A=lambda x, **kw: op.A(x), A_adjoint=lambda y, **kw: op.A_T(y))
        self.fidelity = dinv.optim.data_fidelity.L2(sigma=problem.sigma)
        sigma_d = math.sqrt(params.epsilon)  # deepinv's denoiser noise std, ε = σ_d²

        def denoiser(x, sigma):  # D_ε of our prior, the same call as langevin.score makes
            assert sigma == sigma_d
            return prior.denoise(params.sqrt_alpha_bar * x, params.t)

        self.prior = dinv.optim.ScorePrior(denoiser)
        algo = {"step_size": params.delta, "alpha": params.alpha, "inner_iter": STAGES, "eta": ETA, "sigma": sigma_d}
        self.iterator = dinv.sampling.SKRockIterator(algo, clip=box)
        self.algo = algo

    def ours(self, generator: torch.Generator):
        return self.sampler.step_function(generator, self.y_chains, self.problem.operator, self.problem.prior, self.problem.sigma, self.params)

    def theirs(self, x: torch.Tensor, it: int) -> torch.Tensor:
        return self.iterator({"x": x}, self.y_chains, self.physics, self.fidelity, self.prior, it)["x"]


def _deepinv_coefficients(stages: int, eta: float) -> SKRockCoefficients:
    """Our coefficient tuple with deepinv's arithmetic (its ``T_s``, ``T_prime_s``, its operation
    order) and its sign convention folded into ``μ``: with ``grad = ∇(−log π)`` (deepinv's
    ``posterior``), :func:`skrock_stages` then performs deepinv's float operations one for one."""
    from deepinv.sampling.sampling_iterators.SKRock import T_prime_s, T_s

    s = stages
    w0 = 1 + eta / (s**2)
    w1 = T_s(s, w0) / T_prime_s(s, w0)
    mu, nu, kappa = [-(w1 / w0)], [0.0], [s * (w1 / w0)]
    for j in range(2, s + 1):
        n = 2 * w0 * T_s(j - 1, w0) / T_s(j, w0)
        mu.append(-(2 * w1 * T_s(j - 1, w0) / T_s(j, w0)))
        nu.append(n)
        kappa.append(1 - n)
    return SKRockCoefficients(tuple(mu), tuple(nu), tuple(kappa), s * w1 / 2)


def exactness(dinv, problem: Problem, box: tuple[float, float] | None) -> dict[str, float]:
    """Max abs differences after 1 and ``TRAJECTORY`` iterations on the same ``x`` and noise stream;
    ``attributed``: our :func:`skrock_stages` fed deepinv's gradient and coefficient rounding, against
    deepinv's iteration (0 when the whole difference is the gradient's and coefficients' rounding)."""
    setup = _Setup(dinv, problem, box)
    x = problem.posterior.sample(CHAINS, torch.Generator().manual_seed(5)).to(problem.y.dtype)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    # the two noise draws: global randn_like (deepinv) vs the unit generator's randn (ours)
    torch.random.set_rng_state(state)
    xi_theirs = torch.randn_like(x)
    xi_ours = torch.randn(x.shape, generator=torch.Generator().set_state(state), dtype=x.dtype)
    same_noise = bool(torch.equal(xi_theirs, xi_ours))
    advance = setup.ours(generator)
    torch.random.set_rng_state(state)
    ours, theirs, diffs = ChainState(x, 0), x, []
    for it in range(TRAJECTORY):
        ours, _ = advance(ours)
        theirs = setup.theirs(theirs, it)
        diffs.append(float((ours.x - theirs).abs().max()))
    moved = float((setup.ours(torch.Generator().set_state(state))(ChainState(x, 0))[0].x - x).abs().max())
    params, algo = setup.params, setup.algo
    q = torch.randn(x.shape, generator=torch.Generator().set_state(state), dtype=x.dtype) * float(np.sqrt(2 * params.delta))
    minus_score = lambda u: setup.fidelity.grad(u, setup.y_chains, setup.physics) + algo["alpha"] * setup.prior.grad(u, algo["sigma"])
    replayed = skrock_stages(x, q, minus_score, params.delta, _deepinv_coefficients(STAGES, ETA))
    if box is not None:
        replayed = torch.clamp(replayed, box[0], box[1])
    torch.random.set_rng_state(state)
    attributed = float((replayed - setup.theirs(x, 0)).abs().max())
    clipped = float(((theirs == box[0]) | (theirs == box[1])).to(torch.float64).mean()) if box else 0.0
    return {"same_noise": same_noise, "one": diffs[0], "many": max(diffs), "moved": moved, "clipped": clipped, "attributed": attributed, "delta": setup.params.delta}


def _score(problem: Problem, xs: torch.Tensor) -> dict[str, float]:
    """``xs (chains, draws, C, H, W)`` → SW/floor, mass, std ratio, R̂ max, bulk ESS min."""
    score = score_samples(problem, xs.reshape(-1, *xs.shape[2:]))
    per_pixel = xs.reshape(*xs.shape[:2], -1).permute(2, 0, 1).contiguous().to(torch.float64).numpy()
    return {"ratio": score.ratio, "mass": score.mass, "std": score.std_ratio, "rhat": float(rhat(per_pixel).max()), "ess": float(ess_bulk(per_pixel).min())}


def accuracy_and_speed(dinv, problem: Problem) -> dict[str, dict[str, float]]:
    """Both samplers, ``BUDGET`` calls per chain from the same starts: scores and CPU s / 1000 iterations."""
    setup = _Setup(dinv, problem)
    op, prior, y, sigma = problem.operator, problem.prior, problem.y, problem.sigma
    n_draws = (ITERATIONS - BURN_IN) // THIN
    ours_sampler = build_sampler({**setup.spec, "burn_in": BURN_IN, "thin": THIN})
    results: dict[str, dict[str, float]] = {}

    def run_ours():
        draws = list(ours_sampler.run(y, op, prior, sigma, CHAINS, n_draws, torch.Generator().manual_seed(1)))
        assert sum(d.nfe for d in draws) == BUDGET
        return torch.stack([d.x for d in draws], 1)

    # deepinv: the same starts as ours (our init: prior from the same generator seed), its own noise
    x0 = start("prior", setup.y_chains, op, prior, torch.Generator().manual_seed(1))
    base = dinv.sampling.BaseSampling(
        setup.iterator, setup.fidelity, setup.prior, max_iter=ITERATIONS, burnin_ratio=BURN_IN / ITERATIONS, thinning=THIN, history_size=True
    )

    def run_theirs():
        base.sample(setup.y_chains, setup.physics, x_init=x0, seed=11)
        kept = [X["x"] for X in base.get_chain()[1:]]  # [0] is the start
        assert len(kept) == n_draws
        return torch.stack(kept, 1)

    for name, run in (("uqcampaign skrock", run_ours), ("deepinv SKRockIterator", run_theirs)):
        seconds = []
        for _ in range(REPEATS):
            t0 = time.process_time()
            xs = run()
            seconds.append(time.process_time() - t0)
        results[name] = {**_score(problem, xs), "seconds": min(seconds) * 1000 / ITERATIONS, "delta": setup.params.delta}
    return results


def main() -> None:
    torch.set_num_threads(1)
    dinv = _deepinv()
    print(f"deepinv {dinv.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread; s = {STAGES}, η = {ETA}, float64\n")

    print("## 1. One SK-ROCK iteration, same x and ξ (16 chains), then 100 iterations on the same noise\n")
    print(
        "| problem | box (ours / deepinv) | same ξ | δ | max abs x₁ − x₀ | max abs diff, 1 it. | max abs diff, 100 it. "
        "| pixels clipped | 1 it., our stages with deepinv's ∇ and coefficient rounding |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for prior_kind in ("gaussian", "gmm"):
        problem = random_problem("cs", prior_kind, seed=SEED)
        for box in (None, (0.3, 0.7)):
            r = exactness(dinv, problem, box)
            label = "none / clip=None" if box is None else f"project {list(box)} / clip={box}"
            print(
                f"| {prior_kind} cs 16 px | {label} | {r['same_noise']} | {r['delta']:.3g} | {r['moved']:.3g} | "
                f"{r['one']:.2e} | {r['many']:.2e} | {r['clipped']:.0%} | {r['attributed']:.1e} |"
            )

    print(f"\n## 2. {CHAINS} chains × {BUDGET:,} network calls (burn-in {BURN_IN} it., thin {THIN}: {CHAINS * (ITERATIONS - BURN_IN) // THIN} draws), box none\n")
    print("| problem | sampler | δ | SW / floor | mass90 | std ratio | R̂ max | bulk ESS min | CPU s / 1000 it. |")
    print("|---|---|---|---|---|---|---|---|---|")
    for img_shape in ((1, 4, 4), (1, 16, 16)):
        problem = random_problem("cs", "gaussian", seed=SEED, img_shape=img_shape)
        pixels = math.prod(img_shape)
        for name, r in accuracy_and_speed(dinv, problem).items():
            print(
                f"| gaussian cs {pixels} px | {name} | {r['delta']:.3g} | {r['ratio']:.2f} | {r['mass']:.3f} | {r['std']:.2f} | "
                f"{r['rhat']:.3f} | {r['ess']:.0f} | {r['seconds']:.2f} |"
            )


if __name__ == "__main__":
    main()
