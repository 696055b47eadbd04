"""``latino-pro``: SAPG estimation of the prior's condition inside LATINO, checked against exact marginal likelihoods.

The exact check (issue 15): on conditional-GMM problems (``random_conditional_problem``) the
maximiser c* of the closed-form log p(y | c) over the projection set C is found with scipy (several
starts); latino-pro with the exact gradient and its default schedule must land within
``DIST_TOL`` of c* and ``GAP_TOL`` nats of log p(y | c*) from three starting points (the centre of
C and two points at a quarter of its radius), and its final draws must score against the exact
posterior at c* no worse than ``latino`` given c*. Run with ``-s`` to see the figures.

What the figures are not: a guarantee on every problem. The three CASES are a regression check; the
sweep over 24 problems × 5 starts (``benchmarks/bench_latino_pro.py``, BENCHMARKS.md) has latino-pro
reach c* in 79% of runs from the centre of C and 67–69% from other starts, against 85–88% for the
same SAPG fed exact posterior draws (:func:`~uqcampaign.kernels.samplers.latino_pro.sapg_reference`).
The gap is LATINO's: its draws over-weight the mixture component the current condition already
favours, so its Fisher-identity gradient is biased toward the current c and latino-pro has spurious
fixed points (:func:`test_sapg_with_exact_posterior_draws_reaches_c_star` shows one: exact draws
reach c* from where latino-pro stops).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import (
    random_conditional_problem,
    random_problem,
    score_samples,
)
from uqcampaign.kernels.samplers.latino_pro import LatinoProConfig, sapg_reference
from uqcampaign.kernels.samplers.registry import build_sampler

F64 = torch.float64
REPO = Path(__file__).resolve().parents[2]
DIST_TOL = 0.25  # an eighth of the radius of C (2)
GAP_TOL = 0.01  # nats of log p(y | c)
CHAINS = 256
# (operator, seed, image shape, K, k): the corners of the range, 16 / 32 / 64 pixels
CASES = [("inpaint", 0, (1, 4, 4), 3, 2), ("denoise", 4, (1, 4, 8), 4, 3), ("cs", 8, (1, 8, 8), 5, 4)]


def starting_points(problem, seed: int) -> list[torch.Tensor]:
    """The centre of C and two points at a quarter of its radius in random directions."""
    k = problem.logit_weights.shape[1]
    rng = np.random.default_rng(100 + seed)
    points = [torch.zeros(k, dtype=F64)]
    for _ in range(2):
        d = rng.normal(size=k)
        points.append(torch.tensor(d / np.linalg.norm(d) * problem.radius / 4))
    return points


def run(problem, spec: dict, start: torch.Tensor | None, n_draws: int = 1, seed: int = 0, n_chains: int = CHAINS):
    base = problem.problem
    sampler = build_sampler({"kind": "latino-pro", **spec})
    generator = torch.Generator().manual_seed(seed)
    return list(sampler.run(base.y, base.operator, base.prior, base.sigma, n_chains, n_draws, generator, condition=start))


@pytest.mark.slow
@pytest.mark.parametrize(("operator", "seed", "shape", "components", "dim"), CASES)
def test_exact_gradient_converges_to_the_marginal_likelihood_maximiser(operator, seed, shape, components, dim) -> None:
    problem = random_conditional_problem(operator, seed, shape, components, dim)
    best, best_value = problem.maximise()
    start_gap = best_value - float(problem.log_evidence(torch.zeros(dim, dtype=F64)))
    for i, start in enumerate(starting_points(problem, seed)):
        draws = run(problem, {"radius": problem.radius}, start, n_draws=4 if i == 0 else 1, seed=i)
        c = draws[-1].info["condition"]
        distance, gap = float((c - best).norm()), best_value - float(problem.log_evidence(c))
        print(f"\n{operator} seed {seed} d={shape} K={components} k={dim} start {i}: |ĉ − c*| = {distance:.3f}, "
              f"log p(y|c*) − log p(y|ĉ) = {gap:.5f} nats (from c₀: {start_gap:.3f})")
        assert distance <= DIST_TOL and gap <= GAP_TOL, (distance, gap)
        if i == 0:
            at_best = problem.at(best)
            pro = score_samples(at_best, torch.cat([d.x for d in draws]))
            latino = build_sampler({"kind": "latino"})
            base = problem.problem
            given = torch.cat([d.x for d in latino.run(base.y, base.operator, at_best.prior, base.sigma, CHAINS, 4, torch.Generator().manual_seed(9))])
            ref = score_samples(at_best, given)
            print(f"   draws at ĉ vs exact posterior at c*: SW ratio {pro.ratio:.2f} (latino given c*: {ref.ratio:.2f}), "
                  f"90% interval mass {pro.mass:.3f} ({ref.mass:.3f})")
            assert pro.ratio <= 1.1 * ref.ratio and pro.mass >= ref.mass - 0.03


@pytest.mark.slow
def test_box_projection_finds_the_box_constrained_maximiser() -> None:
    problem = random_conditional_problem("inpaint", 0, (1, 4, 4), 3, 2)
    box = (-1.0, 1.0)
    best, best_value = problem.maximise(box=box)
    draws = run(problem, {"radius": None, "box": list(box)}, None)
    c = draws[-1].info["condition"]
    trace = draws[-1].info["condition_trace"]
    assert bool(((trace >= box[0]) & (trace <= box[1])).all())
    distance, gap = float((c - best).norm()), best_value - float(problem.log_evidence(c))
    print(f"\nbox {box}: c* = {best.numpy().round(3)}, |ĉ − c*| = {distance:.3f}, gap {gap:.5f} nats")
    assert distance <= DIST_TOL / 2 and gap <= GAP_TOL


@pytest.mark.slow
def test_surrogate_gradient_improves_on_the_start_and_its_distance_is_reported() -> None:
    """The authors' surrogate (normalised, accumulated latent-transition gradient) on the same problems:
    its end point is not c* (it ascends another objective); the test checks it climbs log p(y | c)
    and prints how far it lands."""
    for operator, seed, shape, components, dim in CASES:
        problem = random_conditional_problem(operator, seed, shape, components, dim)
        best, best_value = problem.maximise()
        start = starting_points(problem, seed)[1]
        draws = run(problem, {"radius": problem.radius, "gradient": "surrogate"}, start)
        c = draws[-1].info["condition"]
        start_gap = best_value - float(problem.log_evidence(start))
        gap = best_value - float(problem.log_evidence(c))
        print(f"\nsurrogate {operator} seed {seed}: |ĉ − c*| = {float((c - best).norm()):.3f}, gap {gap:.4f} nats (start: {start_gap:.4f})")
        assert gap < start_gap


def test_sapg_with_exact_posterior_draws_reaches_c_star() -> None:
    """The SAPG update (feasible normalised step, schedule, ball projection) fed i.i.d. draws of the
    exact p(x | y, c) reaches c*, also from a far start where latino-pro stops at a spurious fixed
    point (printed). A longer schedule (40 iterations, decay after 30) than the default, whose last
    steps (γ₁₄ = 0.3 · 0.9⁴ ≈ 0.2) leave a jitter of that size: 0.16–0.18 from c* here with 15."""
    problem = random_conditional_problem("blur", 1, (1, 4, 8), 4, 2)
    best, best_value = problem.maximise()
    config = LatinoProConfig(radius=problem.radius, iterations=40, decay_after=30)
    base = problem.problem
    for start in (torch.tensor([1.2, -1.4], dtype=F64), torch.tensor([-0.3, 0.2], dtype=F64)):
        c = sapg_reference(base.prior, base.operator, base.y, base.sigma, config, start, 128, torch.Generator().manual_seed(0))[-1]
        assert float((c - best).norm()) <= 0.05 and best_value - float(problem.log_evidence(c)) <= 1e-3
    spec = {"radius": problem.radius, "iterations": 40, "decay_after": 30}
    c = run(problem, spec, torch.tensor([1.2, -1.4], dtype=F64), n_chains=64)[-1].info["condition"]
    print(f"\nlatino-pro from the far start: |ĉ − c*| = {float((c - best).norm()):.2f}, gap {best_value - float(problem.log_evidence(c)):.3f} nats")


def test_info_on_the_last_draw_and_nfe_per_draw() -> None:
    problem = random_conditional_problem("inpaint", 0, (1, 4, 4), 3, 2)
    draws = run(problem, {"radius": problem.radius, "iterations": 3}, None, n_draws=3, n_chains=4)
    assert [d.info is None for d in draws] == [True, True, False]
    info = draws[-1].info
    assert set(info) == {"condition", "condition_start", "condition_trace", "objective_trace"}
    assert info["condition"].shape == (2,) and info["condition_trace"].shape == (3, 2) and info["objective_trace"].shape == (3,)
    assert torch.equal(info["condition"], info["condition_trace"][-1]) and torch.equal(info["condition_start"], torch.zeros(2, dtype=F64))
    assert [d.nfe for d in draws] == [3 * 4 + 8, 8, 8]
    sampler = build_sampler({"kind": "latino-pro"})
    assert sampler.nfe_per_draw() == 15 * 4 + 8 == 68  # the authors' 68 calls
    assert build_sampler(sampler.describe()).describe() == sampler.describe()
    again = run(problem, {"radius": problem.radius, "iterations": 3}, None, n_draws=3, n_chains=4)
    assert all(torch.equal(a.x, b.x) for a, b in zip(draws, again)) and torch.equal(again[-1].info["condition"], info["condition"])


def test_network_calls_match_nfe() -> None:
    """Every consistency call is counted: the SAPG phase on draw 0, the final runs on each draw."""
    problem = random_conditional_problem("inpaint", 0, (1, 4, 4), 3, 2)
    calls = []

    class Counting:
        def __init__(self, prior):
            self._prior = prior

        def __getattr__(self, name):
            return getattr(self._prior, name)

        def consistency(self, x, t, condition=None):
            calls.append(t)
            return self._prior.consistency(x, t, condition=condition)

    base = problem.problem
    for gradient in ("exact", "surrogate"):
        calls.clear()
        sampler = build_sampler({"kind": "latino-pro", "radius": 2.0, "iterations": 2, "gradient": gradient})
        draws = list(sampler.run(base.y, base.operator, Counting(base.prior), base.sigma, 3, 2, torch.Generator().manual_seed(0)))
        assert len(calls) == sum(d.nfe for d in draws) == 2 * 4 + 2 * 8


def test_editing_keeps_the_condition_near_the_prompt() -> None:
    """edit_weight λ: the proximal pull toward the prompt balances a unit step at ||c − c_p|| = 1/λ."""
    problem = random_conditional_problem("inpaint", 0, (1, 4, 4), 3, 2)
    free = run(problem, {"radius": problem.radius}, None, n_chains=64)[-1].info["condition"]
    edited = run(problem, {"radius": problem.radius, "edit_weight": 2.0}, None, n_chains=64)[-1].info["condition"]
    assert float(free.norm()) > 1.5  # unconstrained, it goes to the sphere of radius 2
    assert float(edited.norm()) <= 0.5 + 0.05  # 1/λ, and the same direction
    assert float(torch.nn.functional.cosine_similarity(edited, free, dim=0)) > 0.95


# --------------------------------------------------------------------------- the latent prior


@pytest.fixture(scope="module")
def digits():
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.training.datasets import held_out_measurements

    prior = build_prior({"kind": "latent-consistency", "path": "priors/digits16-lcm", "prompt": "a handwritten digit seven"}, REPO)
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, prior.img_shape)
    _, y, _ = held_out_measurements(operator, 0.05, 1, seed=0)
    return prior, operator, y[0]


def test_surrogate_gradient_flows_through_the_latent_network(digits) -> None:
    prior, operator, y = digits
    sampler = build_sampler({"kind": "latino-pro", "iterations": 2, "freeze_tokens": 4, "t_max": None, "t_min": None})
    assert sampler.gradient_for(prior) == "surrogate"
    draws = list(sampler.run(y, operator, prior, 0.05, 2, 1, torch.Generator().manual_seed(0)))
    info = draws[0].info
    assert info["condition_trace"].shape == (2, *prior.condition.shape) == (2, 1, 16, 32)
    moved = (info["condition"] - prior.condition).norm(dim=-1)[0]  # per token
    assert bool((moved[:4] == 0).all())  # BOS + "a handwritten digit" frozen
    # each iteration adds steps − 1 = 3 unit directions per token to the accumulated gradient:
    # after 2 iterations ||c − c₀|| <= 0.08 (3 + 6) per token, and the free tokens did move
    assert bool((moved[4:] > 0.1).all()) and bool((moved <= 0.08 * 9 + 1e-5).all())
    assert draws[0].nfe == 2 * 4 + 8


def test_store_facts_of_a_prompt_embedding_have_named_dims(digits) -> None:
    """The latent prior describes its condition's shape (kept in the store's attrs); latino-pro declares its facts
    from it with dims (prompt, token, embedding), the shapes its info has."""
    prior, _, _ = digits
    description = json.loads(json.dumps(prior.describe()))  # as the store keeps it
    assert description["condition_shape"] == [1, 16, 32]
    arrays = {a.name: a for a in build_sampler({"kind": "latino-pro", "iterations": 2}).unit_arrays(2, description)}
    assert arrays["condition"].dims == arrays["condition_start"].dims == ("prompt", "token", "embedding")
    assert arrays["condition"].shape == (1, 16, 32) and arrays["condition"].block_dim is None
    assert arrays["condition_trace"].dims == ("iteration", "prompt", "token", "embedding") and arrays["condition_trace"].shape == (2, 1, 16, 32)
    assert arrays["objective_trace"].dims == ("iteration",) and arrays["objective_trace"].shape == (2,)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"radius": 0.0}, "no interior"),
        ({"radius": -1.0}, "no interior"),
        ({"radius": None, "box": [1.0, 1.0]}, "no interior"),
        ({"radius": None, "box": [2.0, 1.0]}, "no interior"),
        ({"radius": None}, "exactly one projection set"),
        ({"box": [0.0, 1.0]}, "exactly one projection set"),
        ({"gradient": "adam"}, "gradient"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma_decay": 1.5}, "gamma_decay"),
        ({"steps": 1, "gradient": "surrogate"}, "steps"),
        ({"edit_weight": -1.0}, "edit_weight"),
    ],
)
def test_bad_configs_are_named(spec: dict, words: str) -> None:
    with pytest.raises(UQError, match=words):
        build_sampler({"kind": "latino-pro", **spec})


def test_a_prior_with_no_condition_is_refused() -> None:
    plain = random_problem("inpaint", "gmm", seed=0)
    with pytest.raises(UQError, match="has none; use sampler latino"):
        build_sampler({"kind": "latino-pro"}).run(plain.y, plain.operator, plain.prior, plain.sigma, 2, 1, torch.Generator())


def test_bad_run_inputs_are_refused_before_any_work(digits) -> None:
    problem = random_conditional_problem("inpaint", 0, (1, 4, 4), 3, 2)
    base = problem.problem
    sampler = build_sampler({"kind": "latino-pro", "radius": 2.0})
    args = (base.y, base.operator, base.prior, base.sigma, 2, 1, torch.Generator())
    with pytest.raises(UQError, match="outside the projection set"):
        sampler.run(*args, condition=torch.tensor([3.0, 0.0], dtype=F64))
    with pytest.raises(UQError, match="shape"):
        sampler.run(*args, condition=torch.zeros(3, dtype=F64))
    with pytest.raises(UQError, match="freeze_tokens"):
        build_sampler({"kind": "latino-pro", "freeze_tokens": 1}).run(*args)
    prior, operator, y = digits
    with pytest.raises(UQError, match="closed-form"):
        build_sampler({"kind": "latino-pro", "gradient": "exact"}).run(y, operator, prior, 0.05, 2, 1, torch.Generator())


def test_an_empty_prompt_is_refused(digits) -> None:
    from uqcampaign.kernels.priors.registry import build_prior

    _, operator, y = digits
    empty = build_prior({"kind": "latent-consistency", "path": "priors/digits16-lcm", "prompt": ""}, REPO)
    with pytest.raises(UQError, match="prompt, which is empty"):
        build_sampler({"kind": "latino-pro"}).run(y, operator, empty, 0.05, 2, 1, torch.Generator())


def test_a_diverging_step_is_detected_and_yields_no_draw(digits) -> None:
    """γ = 1e30 throws the prompt embedding to ~1e30: the UNet's attention overflows to NaN in the
    next iteration; the run stops with one line naming the iteration, and no draw comes out."""
    prior, operator, y = digits
    sampler = build_sampler({"kind": "latino-pro", "gamma": 1e30, "radius": 1e30, "iterations": 3})
    draws = sampler.run(y, operator, prior, 0.05, 2, 2, torch.Generator().manual_seed(0))
    got = []
    with pytest.raises(UQError, match=r"diverged at SAPG iteration \d/3"):
        for draw in draws:
            got.append(draw)
    assert got == []
