"""Hallucination scores: exact posterior draws score as typical on both axes, implausible images do not.

Data fidelity: over measurements simulated from the prior, the χ² of an exact posterior draw has
exactly the law χ²_m/m of the truth's own misfit (two-sample and one-sample KS tests); a
"sampler" that ignores the data (prior draws) is flagged. Prior plausibility: on the shipped
known mixture gmm8 (exact) the scores of exact posterior draws have the law of prior draws' scores;
uniform noise and shifted prior draws score atypical (p < 0.01); with the shipped latent
consistency model (training digits as the reference) held-out digits score typical, noise and
digits shifted by 5 pixels do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.operators import build_operator
from uqcampaign.kernels.plausibility import (
    data_fidelity,
    fidelity_pvalue,
    fidelity_quantiles,
    plausibility_pvalue,
    prior_plausibility,
    score_quantiles,
)
from uqcampaign.kernels.priors.registry import build_prior
from uqcampaign.kernels.problems import random_problem

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 300


def _measure(problem_prior, operator, sigma: float, n: int, generator: torch.Generator):
    truth = problem_prior.sample(n, generator)
    clean = operator.A(truth)
    return truth, clean + sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)


def _posterior_draws(prior, operator, ys: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return torch.cat([prior.posterior(operator, y, sigma).sample(1, generator) for y in ys])


def test_data_fidelity_is_the_chi2_formula() -> None:
    problem = random_problem("blur", "gmm", seed=4)
    x = torch.rand(3, *problem.operator.img_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = ((problem.operator.A(x) - problem.y) ** 2).sum(dim=(1, 2, 3)) / (problem.sigma**2 * problem.y.numel())
    assert torch.allclose(data_fidelity(x, problem.y, problem.operator, problem.sigma), expected, rtol=1e-12)
    assert np.allclose(fidelity_quantiles(16, [0.5]), stats.chi2.ppf(0.5, 16) / 16)


def test_exact_posterior_draws_fit_the_data_and_prior_draws_do_not() -> None:
    problem = random_problem("inpaint", "gmm", seed=4)
    g = torch.Generator().manual_seed(1)
    truth, ys = _measure(problem.prior, problem.operator, problem.sigma, TRIALS, g)
    draws = _posterior_draws(problem.prior, problem.operator, ys, problem.sigma, g)
    m = ys[0].numel()
    chi2_draws = data_fidelity(draws, ys, problem.operator, problem.sigma).numpy()
    chi2_truth = data_fidelity(truth, ys, problem.operator, problem.sigma).numpy()
    one_sample = stats.kstest(chi2_draws * m, stats.chi2(m).cdf).pvalue
    two_sample = stats.ks_2samp(chi2_draws, chi2_truth).pvalue
    flagged = (fidelity_pvalue(chi2_draws, m) < 0.01).mean()
    unrelated = problem.prior.sample(TRIALS, g)  # a hallucinating sampler: plausible images, blind to y
    flagged_unrelated = (fidelity_pvalue(data_fidelity(unrelated, ys, problem.operator, problem.sigma).numpy(), m) < 0.01).mean()
    print(f"\n[plausibility] χ² of exact draws vs χ²_m/m: KS p = {one_sample:.3f}, vs the truth's: p = {two_sample:.3f}; "
          f"flagged at 1%: exact {flagged:.3f}, prior draws {flagged_unrelated:.3f}")
    assert one_sample > 0.01 and two_sample > 0.01
    assert flagged <= stats.binom.ppf(0.999, TRIALS, 0.01) / TRIALS
    assert flagged_unrelated > 0.9


def _implausible(images: torch.Tensor, generator: torch.Generator, shift: int) -> dict[str, torch.Tensor]:
    return {
        "uniform noise": torch.rand(images.shape, generator=generator, dtype=images.dtype),
        f"shifted {shift} px": torch.roll(images, shifts=(shift, shift), dims=(2, 3)),
    }


def test_exact_posterior_draws_are_plausible_and_noise_is_not() -> None:
    """The known mixture gmm8 (1×8×8, K = 5), inpainting half the pixels: posterior draws over
    simulated measurements score as prior draws do; noise and shifted prior draws are flagged."""
    from uqcampaign.kernels.training.datasets import gmm8_prior

    prior = gmm8_prior()
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, prior.img_shape)
    sigma = 0.05
    g = torch.Generator().manual_seed(2)
    reference = prior_plausibility(prior.sample(2000, g), prior).numpy()
    truth, ys = _measure(prior, operator, sigma, TRIALS, g)
    draws = _posterior_draws(prior, operator, ys, sigma, g)
    scores = prior_plausibility(draws, prior).numpy()
    same_law = stats.ks_2samp(scores, reference).pvalue
    flagged = (plausibility_pvalue(scores, reference) < 0.01).mean()
    print(f"\n[plausibility] gmm8: thresholds (q50, q90, q99) = {np.round(score_quantiles(reference), 4)}; "
          f"exact draws vs prior draws KS p = {same_law:.3f}, flagged {flagged:.3f}", end="")
    assert same_law > 0.01
    assert flagged <= stats.binom.ppf(0.999, TRIALS, 0.01) / TRIALS
    for name, images in _implausible(truth[:20], g, 3).items():
        p = plausibility_pvalue(prior_plausibility(images, prior).numpy(), reference)
        print(f"; {name}: max p = {p.max():.4f}", end="")
        assert (p < 0.01).all()
    print()


@pytest.mark.slow  # loading the LCM (diffusers, transformers) takes ~20 s on the shared CPU
def test_latent_prior_denoising_loss_flags_noise_and_shifts() -> None:
    """The shipped digits LCM: training digits are the reference, held-out digits score typical, noise and shifts do not."""
    from uqcampaign.kernels.training.datasets import digits16

    prior = build_prior({"kind": "latent-consistency", "path": "priors/digits16-lcm"}, ROOT)
    train, _ = digits16("train")
    test, _ = digits16("test")
    reference = prior_plausibility(train[:400], prior, generator=torch.Generator().manual_seed(3), repeats=2).numpy()
    held_out = plausibility_pvalue(prior_plausibility(test[:100], prior, generator=torch.Generator().manual_seed(4), repeats=2).numpy(), reference)
    print(f"\n[plausibility] digits LCM: thresholds = {np.round(score_quantiles(reference), 3)}; held-out flagged {np.mean(held_out < 0.01):.2f}", end="")
    assert np.mean(held_out < 0.01) <= 0.05
    for name, images in _implausible(test[:20], torch.Generator().manual_seed(5), 5).items():
        p = plausibility_pvalue(prior_plausibility(images, prior, generator=torch.Generator().manual_seed(6), repeats=2).numpy(), reference)
        print(f"; {name}: max p = {p.max():.4f}", end="")
        assert (p < 0.01).all()
    print()
    with pytest.raises(UQError, match=r"pass a torch.Generator"):
        prior_plausibility(test[:2], prior)
