"""DPS against the exact posterior (issue 3).

Held-out problems (seed 2), 1024 samples, 1000 reverse steps, float64, 16 pixels, σ = 0.05.
ζ per task inside the issue's 0.3–1.0 range (0.45 for inpainting, the reference 0.3 else).
Issue 3's reference figures: 2.5–5 × floor and mass 0.85–0.89 on a Gaussian prior, 3.5–10 ×
and 0.80–0.90 on GMM priors; bands: ≤ 6 × and ≥ 0.80 (Gaussian), ≤ 10 × and ≥ 0.80 (GMM).
Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest
import torch

from uqcampaign.kernels.problems import random_problem, score_samples
from uqcampaign.kernels.samplers.dps import DPSConfig, DPSSampler, respaced_schedule
from uqcampaign.kernels.samplers.registry import build_sampler

SEED = 2
N_SAMPLES = 1024
ZETA = {"inpaint": 0.45, "blur": 0.3, "cs": 0.3}
BANDS = {"gaussian": (6.0, 0.80), "gmm": (10.0, 0.80)}



def test_full_schedule_is_ddpm_posterior():
    from uqcampaign.kernels.schedule import linear_alphas_cumprod

    ab = linear_alphas_cumprod()
    s = respaced_schedule(ab, None)
    assert s.timesteps == tuple(range(1000))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    t = 500
    assert float(s.c1[t]) == pytest.approx(float(betas[t] * ab[t - 1].sqrt() / (1 - ab[t])))
    assert float(s.c2[t]) == pytest.approx(float((1 - betas[t]).sqrt() * (1 - ab[t - 1]) / (1 - ab[t])))
    assert float(s.std[t]) ** 2 == pytest.approx(float(betas[t] * (1 - ab[t - 1]) / (1 - ab[t])))
    assert float(s.c1[0]) == pytest.approx(1.0) and float(s.c2[0]) == 0.0  # last step returns x̂0
    short = respaced_schedule(ab, 50)
    assert len(short.timesteps) == 50 and short.timesteps[0] == 0 and short.timesteps[-1] == 999


@pytest.mark.slow
@pytest.mark.parametrize("prior_kind", ["gaussian", "gmm"])
@pytest.mark.parametrize(
    "operator_kind",
    [
        "inpaint",
        pytest.param(
            "blur",
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="DPS ignores σ (ζ replaces 1/σ²) and fits y exactly in the blur's mid-gain Fourier "
                "directions (gain 0.2–0.45, where the exact posterior is still prior-dominated): std 0.06–0.2 × "
                "exact there, ~1 std of bias; outside the band for every ζ in 0.2–1.0 (7–9 ×, mass 0.60–0.65 on seed 0; "
                "12.9 × / 0.57 Gaussian and 11.1 × / 0.61 GMM on seed 2 at ζ = 0.3)",
            ),
        ),
        "cs",
    ],
)
def test_dps_against_exact_posterior(operator_kind, prior_kind):
    problem = random_problem(operator_kind, prior_kind, seed=SEED)
    sampler = build_sampler({"kind": "dps", "zeta": ZETA[operator_kind]})
    draw = next(iter(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, N_SAMPLES, 1, torch.Generator().manual_seed(0))))
    score = score_samples(problem, draw.x)
    print(
        f"\n[dps] {prior_kind:8s} {operator_kind:8s} zeta = {ZETA[operator_kind]}  SW/floor = {score.ratio:.2f}  "
        f"mass90 = {score.mass:.3f}  std ratio = {score.std_ratio:.2f}"
    )
    max_ratio, min_mass = BANDS[prior_kind]
    assert score.ratio <= max_ratio
    assert score.mass >= min_mass


def test_no_guidance_samples_the_prior():
    """ζ = 0 is plain ancestral DDPM with the exact denoiser: draws follow the prior."""
    problem = random_problem("inpaint", "gaussian", seed=SEED)
    sampler = DPSSampler(DPSConfig(zeta=0.0, steps=200))
    draws = sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, 2048, 1, torch.Generator().manual_seed(0))
    x = next(iter(draws)).x
    prior_std = problem.prior.covariance.diagonal().sqrt().reshape(x.shape[1:])
    assert torch.allclose(x.mean(0), problem.prior.means[0], atol=4 * float(prior_std.max()) / 2048**0.5)
    assert torch.allclose(x.std(0), prior_std, rtol=0.1)
