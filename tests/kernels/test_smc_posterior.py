"""``tds`` with its default settings against the exact posterior (issue 14), in float32 as campaigns run.

Done when (issue 14): on random GMM problems (16–64 pixels, K = 3–5, multimodal posteriors included)
``tds`` ≤ 2 × the sliced-Wasserstein floor, 90% interval mass 0.90 ± 0.03, and the log-evidence
within 3 standard errors over runs of the exact ``log p(y)``. The full bound runs here on two problems
(the two-mode 16-pixel ``multimodal_problem`` and a 64-pixel K = 5 inpainting problem): 1024 draws from
the 8 × 1024 particles of one unit (1/8 of its pool), the runs' pooled log-evidence (``pooled_log_evidence``).
``benchmarks/bench_smc.py`` measures the other problems and ``smc-anneal``. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest
import torch

from uqcampaign.kernels.problems import multimodal_problem, random_problem, score_samples
from uqcampaign.kernels.samplers.registry import build_sampler
from uqcampaign.kernels.samplers.smc.sampler import pooled_log_evidence

CASES = {
    "multimodal-16px": lambda: multimodal_problem(dtype=torch.float32),
    "inpaint-64px-K5": lambda: random_problem("inpaint", "gmm", 5, (1, 8, 8), 5, dtype=torch.float32),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_tds_defaults_against_exact_posterior(case):
    problem = CASES[case]()
    sampler = build_sampler({"kind": "tds"})
    draws = list(sampler.run(problem.y, problem.operator, problem.prior, problem.sigma, 1024, 1, torch.Generator().manual_seed(0)))
    score = score_samples(problem, draws[0].x.double())
    estimate, se = pooled_log_evidence(draws[-1].info["log_evidence"])
    exact = problem.posterior.log_evidence
    print(
        f"\n[tds] {case}: SW/floor {score.ratio:.2f}, 90% mass {score.mass:.3f}, std ratio {score.std_ratio:.2f}; "
        f"log p(y) {estimate:.3f} ± {se:.3f} (exact {exact:.3f}); network calls per draw {draws[0].nfe}"
    )
    assert score.ratio <= 2.0
    assert abs(score.mass - 0.90) <= 0.03
    assert abs(estimate - exact) <= 3 * se
