"""Sampler API shared by every kind: registry, input checks, draw stream, nfe, determinism.

The statistical tests against the exact posterior live in test_ula.py, test_dps.py and
test_latino.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.problems import random_conditional_problem, random_problem
from uqcampaign.kernels.rng import unit_generator
from uqcampaign.kernels.samplers.base import Draw, Sampler
from uqcampaign.kernels.samplers.registry import POINT_ESTIMATE_KINDS, SAMPLER_KINDS, build_sampler

# posterior samplers: the point estimates (one draw per chain, their own API tests in test_map.py) are left out
POSTERIOR_KINDS = tuple(kind for kind in SAMPLER_KINDS if kind not in POINT_ESTIMATE_KINDS)

# Small, fast settings of every kind: enough to exercise the code paths.
FAST = {
    "exact": {"kind": "exact"},
    "ula": {"kind": "ula", "burn_in": 5, "thin": 2},
    "skrock": {"kind": "skrock", "burn_in": 2, "thin": 1, "stages": 3},
    "dps": {"kind": "dps", "steps": 20},
    "latino": {"kind": "latino", "steps": 3},
    "latino-pro": {"kind": "latino-pro", "iterations": 2, "steps": 2, "final_steps": 2, "radius": 2.0},
    "tds": {"kind": "tds", "runs": 2, "particles": 8, "steps": 5},
    "smc-anneal": {"kind": "smc-anneal", "runs": 2, "particles": 8, "steps": 5},
}
# latino-pro estimates the prior's condition: it runs on a conditional GMM problem of the same size
CONDITIONAL = {torch.float64: random_conditional_problem("blur", seed=5).problem,
               torch.float32: random_conditional_problem("inpaint", seed=1, dtype=torch.float32).problem}


def _for(kind, problem):
    """The problem a kind runs on: ``problem``, or a conditional one (same dtype) for latino-pro."""
    return CONDITIONAL[problem.y.dtype] if kind == "latino-pro" else problem


@pytest.fixture(scope="module")
def problem():
    return random_problem("blur", "gmm", seed=5)


def _run(spec, problem, n_chains=3, n_draws=2, seed=0, generator=None):
    sampler = build_sampler(spec)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    return list(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, n_chains, n_draws, generator))


def test_sampler_kinds_are_registered():
    assert SAMPLER_KINDS == ("exact", "ula", "skrock", "dps", "latino", "latino-pro", "tds", "smc-anneal", "map-hqs", "map-admm", "map-latent")
    for kind in SAMPLER_KINDS:
        sampler = build_sampler({"kind": kind})
        assert isinstance(sampler, Sampler)
        assert sampler.kind == kind
        assert sampler.describe()["kind"] == kind
        assert build_sampler(sampler.describe()).describe() == sampler.describe()  # describe() rebuilds it


@pytest.mark.parametrize("kind", POSTERIOR_KINDS)
def test_run_streams_draws_of_the_right_shape(kind, problem):
    problem = _for(kind, problem)
    draws = _run(FAST[kind], problem, n_chains=3, n_draws=2)
    assert [d.index for d in draws] == [0, 1]
    for draw in draws:
        assert isinstance(draw, Draw)
        assert draw.x.shape == (3, *problem.operator.img_shape)
        assert draw.x.dtype == problem.y.dtype and not draw.x.requires_grad
        assert bool(torch.isfinite(draw.x).all())


def test_dtype_follows_y():
    p32 = random_problem("inpaint", "gaussian", seed=1, dtype=torch.float32)
    for kind in POSTERIOR_KINDS:
        draws = _run(FAST[kind], _for(kind, p32), n_chains=2, n_draws=1)
        assert draws[0].x.dtype == torch.float32, kind


def test_nfe_is_counted(problem):
    ula = [d.nfe for d in _run({"kind": "ula", "burn_in": 7, "thin": 3}, problem, n_draws=3)]
    assert ula == [7 + 3, 3, 3]  # burn-in charged to draw 0
    assert build_sampler({"kind": "ula", "thin": 3}).nfe_per_draw() == 3
    skrock = [d.nfe for d in _run({"kind": "skrock", "burn_in": 7, "thin": 3, "stages": 4}, problem, n_draws=3)]
    assert skrock == [4 * (7 + 3), 4 * 3, 4 * 3]  # stages calls per iteration, burn-in charged to draw 0
    assert build_sampler({"kind": "skrock", "thin": 3}).nfe_per_draw() == 30
    assert [d.nfe for d in _run({"kind": "dps", "steps": 20}, problem)] == [20, 20]
    assert build_sampler({"kind": "dps", "steps": 20}).nfe_per_draw() == 20
    assert [d.nfe for d in _run({"kind": "latino", "steps": 4}, problem)] == [4, 4]
    assert build_sampler({"kind": "latino"}).nfe_per_draw() == 8
    assert [d.nfe for d in _run({"kind": "exact"}, problem)] == [0, 0]
    # SMC: runs × particles × steps calls per unit, charged to draw 0 per chain (3 chains here)
    assert [d.nfe for d in _run(FAST["tds"], problem)] == [round(2 * 8 * 5 / 3), 0]
    assert build_sampler(FAST["tds"]).nfe_per_draw() == 5


def test_denoiser_calls_match_nfe(problem):
    """The counted nfe equals the real number of denoiser calls (no hidden extra calls)."""
    calls = []

    class Counting:
        def __init__(self, prior):
            self._prior = prior

        def __getattr__(self, name):
            return getattr(self._prior, name)

        def denoise(self, x, t):
            calls.append(t)
            return self._prior.denoise(x, t)

        consistency = denoise

    counted = Counting(problem.prior)
    for spec in (FAST["ula"], FAST["skrock"], FAST["dps"], FAST["latino"]):
        calls.clear()
        sampler = build_sampler(spec)
        draws = list(sampler.run(problem.y, problem.operator, counted, problem.sigma, 2, 3, torch.Generator().manual_seed(0)))
        assert len(calls) == sum(d.nfe for d in draws), spec
    for spec in (FAST["tds"], FAST["smc-anneal"]):  # one batched call per step for all runs × particles
        calls.clear()
        draws = list(build_sampler(spec).run(problem.y, problem.operator, counted, problem.sigma, 2, 4, torch.Generator().manual_seed(0)))
        assert len(calls) == spec["steps"] and sum(d.nfe for d in draws) * 2 == spec["runs"] * spec["particles"] * spec["steps"]


@pytest.mark.parametrize("kind", POSTERIOR_KINDS)
def test_same_seed_same_draws(kind, problem):
    problem = _for(kind, problem)
    a = _run(FAST[kind], problem, seed=3)
    b = _run(FAST[kind], problem, seed=3)
    c = _run(FAST[kind], problem, seed=4)
    for da, db in zip(a, b):
        assert torch.equal(da.x, db.x)
    assert not torch.equal(a[-1].x, c[-1].x)


@pytest.mark.parametrize("kind", POSTERIOR_KINDS)
def test_recomputed_unit_gives_identical_draws(kind, problem):
    """A work unit redone from its (campaign seed, measurement, block) generator is bit-identical,
    and the global RNG plays no part."""
    problem = _for(kind, problem)
    first = _run(FAST[kind], problem, generator=unit_generator(11, measurement=2, block=1))
    torch.manual_seed(12345)
    torch.rand(10)  # disturb the global RNG: it must not matter
    again = _run(FAST[kind], problem, generator=unit_generator(11, measurement=2, block=1))
    other = _run(FAST[kind], problem, generator=unit_generator(11, measurement=2, block=2))
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, again))
    assert not torch.equal(first[-1].x, other[-1].x)


def test_dps_chains_are_independent(problem):
    """The DPS gradient of chain b is that of its own norm: a chain's step does not depend on the others."""
    from uqcampaign.kernels.samplers.dps import DPSState, respaced_schedule, step

    schedule = respaced_schedule(problem.prior.alphas_cumprod, 10)
    x = torch.randn(4, *problem.operator.img_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y4 = problem.y.unsqueeze(0).expand(4, *problem.y.shape)
    # last reverse step (i = 0): no noise, x_{-1} = x̂0 − ζ ∇||y − A x̂0||
    full, info = step(torch.Generator(), DPSState(x, 0), y4, problem.operator, problem.prior, schedule, 0.3)
    alone, _ = step(torch.Generator(), DPSState(x[2:3], 0), y4[2:3], problem.operator, problem.prior, schedule, 0.3)
    assert torch.allclose(full.x[2:3], alone.x, atol=1e-12)
    assert info.residual_norm.shape == (4,) and full.i == -1


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"kind": "mala"}, ["mala", "ula"]),
        ({"kind": "ula", "stepsize": 0.1}, ["stepsize", "burn_in"]),
        ({"kind": "ula", "step": "fast"}, ["step", "auto"]),
        ({"kind": "ula", "step": -1.0}, ["step"]),
        ({"kind": "ula", "thin": 0}, ["thin"]),
        ({"kind": "ula", "box": [1.0, 0.0]}, ["box"]),
        ({"kind": "ula", "box": "x"}, ["box", "lo < hi"]),
        ({"kind": "ula", "box_rule": "clip"}, ["box_rule", "penalty", "project"]),
        ({"kind": "ula", "init": "zero"}, ["init", "prior", "pinv"]),
        ({"kind": "skrock", "stages": 1}, ["stages", ">= 2"]),
        ({"kind": "skrock", "eta": 0.0}, ["eta"]),
        ({"kind": "skrock", "box": [0.0]}, ["skrock box"]),
        ({"kind": "dps", "zeta": -0.1}, ["zeta"]),
        ({"kind": "dps", "steps": 0}, ["steps"]),
        ({"kind": "latino", "delta": 0}, ["delta"]),
        ({"kind": "latino", "steps": 2.5}, ["steps"]),
        ({"kind": "tds", "runs": 0}, ["runs"]),
        ({"kind": "tds", "steps": 1}, ["steps"]),
        ({"kind": "tds", "pool": "best"}, ["pool", "equal", "evidence"]),
        ({"kind": "smc-anneal", "variance": "huge"}, ["variance", "small", "large"]),
        ({"kind": "smc-anneal", "ess_threshold": 2}, ["ess_threshold"]),
        ({"kind": "smc-anneal", "batch": 0}, ["batch"]),
        ("ula", ["mapping"]),
    ],
)
def test_bad_specs_are_named(spec, words):
    with pytest.raises(UQError) as err:
        build_sampler(spec)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("kind", ["ula", "skrock"])
def test_step_above_stability_bound_is_refused(kind, problem):
    sampler = build_sampler({"kind": kind})
    bound = sampler.parameters(problem.operator, problem.prior, problem.sigma).bound
    auto = sampler.parameters(problem.operator, problem.prior, problem.sigma).delta
    assert math.isclose(auto, bound / 3)
    too_big = build_sampler({"kind": kind, "step": 1.5 * bound})
    with pytest.raises(UQError, match="stability bound"):
        too_big.run(problem.y, problem.operator, problem.prior, problem.sigma, 2, 1, torch.Generator())
    ok = build_sampler({"kind": kind, "step": 0.9 * bound, "burn_in": 1, "thin": 1})
    assert len(list(ok.run(problem.y, problem.operator, problem.prior, problem.sigma, 2, 1, torch.Generator()))) == 1


@pytest.mark.parametrize("kind", POSTERIOR_KINDS)
def test_bad_run_inputs_raise_before_any_work(kind, problem):
    problem = _for(kind, problem)
    sampler = build_sampler(FAST[kind])
    g = torch.Generator()
    args = (problem.operator, problem.prior)
    with pytest.raises(UQError, match="sigma"):
        sampler.run(problem.y, *args, 0.0, 2, 1, g)
    with pytest.raises(UQError, match="sigma"):
        sampler.run(problem.y, *args, float("nan"), 2, 1, g)
    with pytest.raises(UQError, match="n_chains"):
        sampler.run(problem.y, *args, problem.sigma, 0, 1, g)
    with pytest.raises(UQError, match="n_draws"):
        sampler.run(problem.y, *args, problem.sigma, 2, 0, g)
    with pytest.raises(UQError, match="shape"):
        sampler.run(problem.y[..., :2], *args, problem.sigma, 2, 1, g)
    bad = problem.y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(UQError, match="NaN"):
        sampler.run(bad, *args, problem.sigma, 2, 1, g)


class _LatentStub:
    """The interface of a latent prior (identity codec), enough for the prior-kind checks."""

    kind = "latent-consistency"
    is_latent = True

    def __init__(self, prior):
        self._prior = prior
        self.alphas_cumprod = prior.alphas_cumprod
        self.img_shape = prior.img_shape
        self.latent_shape = prior.img_shape

    def encode(self, x):
        return 2.0 * x

    def decode(self, z):
        return 0.5 * z

    def consistency(self, z_t, t):
        return 2.0 * self._prior.denoise(0.5 * z_t, t)

    def denoise(self, x_t, t):
        return self._prior.denoise(x_t, t)


@pytest.mark.parametrize("kind", ["ula", "skrock", "dps", "tds", "smc-anneal"])
def test_latent_prior_refused_by_pixel_samplers(kind, problem):
    with pytest.raises(UQError, match="latent"):
        build_sampler(FAST[kind]).run(problem.y, problem.operator, _LatentStub(problem.prior), problem.sigma, 2, 1, torch.Generator())


def test_exact_sampler_needs_an_exact_prior(problem):
    with pytest.raises(UQError, match="closed-form"):
        build_sampler({"kind": "exact"}).run(problem.y, problem.operator, _LatentStub(problem.prior), problem.sigma, 2, 1, torch.Generator())


def test_latino_uses_encoder_and_decoder_of_latent_priors(problem):
    """With E = 2x, D = z/2 and G(z) = 2·denoise(z/2) the latent run equals the pixel run...
    up to the noise scaling: E(x) is noised in latent space, so compare against a hand-made pixel step."""
    from uqcampaign.kernels.samplers.latino import LatinoState, step

    latent = _LatentStub(problem.prior)
    x = problem.operator.pinv(problem.y.unsqueeze(0).expand(2, *problem.y.shape)).clone()
    y2 = problem.y.unsqueeze(0).expand(2, *problem.y.shape)
    out, info = step(torch.Generator().manual_seed(0), LatinoState(x, 0), y2, problem.operator, latent, problem.sigma, (500,), 0.3)
    ab = float(problem.prior.alphas_cumprod[500])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    z = math.sqrt(ab) * 2.0 * x + math.sqrt(1 - ab) * noise
    u = 0.5 * (2.0 * problem.prior.denoise(0.5 * z, 500))
    expected = problem.operator.prox_data(u, y2, problem.sigma, 0.3 * (1 - ab))
    assert torch.allclose(out.x, expected, atol=1e-12)
    assert info.t == 500 and out.k == 1


def test_numpy_scalars_are_accepted(problem):
    import numpy as np

    draws = _run(FAST["latino"], problem, n_chains=np.int64(2), n_draws=np.int64(1))
    assert draws[0].x.shape[0] == 2
    sampler = build_sampler(FAST["ula"])
    x = next(iter(sampler.run(problem.y, problem.operator, problem.prior, np.float32(0.05), 2, 1, torch.Generator()))).x
    assert x.shape[0] == 2


@pytest.mark.parametrize("kind", POSTERIOR_KINDS)
def test_reported_facts_are_declared(kind, problem):
    """What ``run`` reports in ``Draw.info`` is what ``unit_arrays`` declares (the store keeps exactly those):
    per-draw scalars on every draw, per-unit arrays of the declared shape on the last draw, nothing else."""
    problem = _for(kind, problem)
    sampler = build_sampler(FAST[kind])
    declared = {a.name: a for a in sampler.unit_arrays(3, problem.prior.describe())}
    draws = _run(FAST[kind], problem, n_chains=3, n_draws=2)
    per_draw = {name for name, a in declared.items() if a.per_draw}
    for draw in draws:
        info = draw.info or {}
        assert per_draw <= set(info), f"draw {draw.index} lacks {per_draw - set(info)}"
        for name in per_draw:
            assert torch.as_tensor(info[name]).dim() == 0
    last = draws[-1].info or {}
    assert set(last) == set(declared), f"{kind} reports {sorted(last)} but declares {sorted(declared)}"
    for name, array in declared.items():
        if not array.per_draw:
            assert tuple(torch.as_tensor(last[name]).shape) == array.shape, name
        assert len(array.dims) == len(array.shape)
        assert array.block_dim is None or array.block_dim == "block" or array.block_dim in array.dims
        assert (array.block_dim is None) == sampler.INTERACTING_CHAINS  # one value per measurement needs whole-measurement units
    for draw in draws[:-1]:
        assert set(draw.info or {}) == per_draw  # per-unit arrays come once, on the last draw


def test_campaign_notes_name_the_key_and_the_fix():
    """Layout rules checked when a campaign is loaded: point estimates take draws: 1, latino-pro whole-measurement
    units, an SMC unit at most its pool (a warning above 1/8 of it)."""
    for kind in POINT_ESTIMATE_KINDS:
        sampler = build_sampler({"kind": kind})
        assert sampler.MAX_DRAWS == 1
        assert sampler.campaign_notes(4, 2, 1) == []
        (note,) = sampler.campaign_notes(4, 2, 5)
        assert note.error and note.key == "draws" and "set draws: 1" in note.message and "draws: 5" in note.message
    latino_pro = build_sampler({"kind": "latino-pro"})
    assert latino_pro.campaign_notes(8, 8, 3) == []
    (note,) = latino_pro.campaign_notes(8, 4, 3)
    assert note.error and note.key == "chunks.chains" and "chunks.chains: 8" in note.message
    smc = build_sampler({"kind": "tds", "runs": 2, "particles": 64})  # a pool of 128
    assert smc.campaign_notes(32, 16, 1) == []  # 16 = 1/8 of the pool
    (note,) = smc.campaign_notes(32, 16, 2)  # 32: a warning
    assert not note.error and "25%" in note.message and "1/8" in note.message
    (note,) = smc.campaign_notes(32, 16, 9)  # 144 > 128: refused
    assert note.error and "16 × 9 = 144" in note.message and "2 × 64 = 128" in note.message
    for kind in ("exact", "ula", "skrock", "dps", "latino"):
        assert build_sampler({"kind": kind}).campaign_notes(8, 3, 1000) == []
