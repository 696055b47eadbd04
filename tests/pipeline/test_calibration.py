"""Coverage of a real campaign: `uqc run` with the `exact` sampler, then `reduce`, over many measurements.

With exact posterior draws, the truth of each pixel falls inside its 90% equal-tailed interval with
probability 0.90 over measurements simulated from the prior: any bias in simulation, storage,
draw bookkeeping or the interval reduction shows as a coverage outside the binomial band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from uqcampaign.kernels.problems import random_problem
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.runner import run_campaign

MEASUREMENTS = 150


def test_exact_sampler_campaign_covers_90_percent(tmp_path: Path) -> None:
    problem = random_problem("blur", "gmm", seed=3)  # a 1×4×4 GMM prior, K = 4: multimodal posteriors
    np.savez(tmp_path / "prior.npz", **problem.prior_arrays)
    spec = {
        "name": "coverage",
        "store": "coverage.zarr",
        "seed": 11,
        "data": {"simulate": {"count": MEASUREMENTS}},
        "operator": problem.operator_spec,
        "noise": {"sigma": problem.sigma},
        "prior": {"kind": "gmm", "file": "prior.npz"},
        "sampler": {"kind": "exact"},
        "chains": 4,
        "draws": 50,
        "chunks": {"chains": 4, "draws": 50},
        "cluster": {"address": "in-process"},
        "reduce": {"level": 0.9},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    campaign = load_campaign(path)
    run_campaign(campaign, progress=False)
    summary = reduce_store(campaign.store_location, progress=False)

    covered = np.asarray(summary["covered"][...]).reshape(MEASUREMENTS, -1)
    pooled_se = np.sqrt(0.9 * 0.1 / covered.size)
    assert abs(covered.mean() - 0.9) < 3 * pooled_se, (covered.mean(), pooled_se)
    per_pixel = covered.mean(axis=0)
    pixel_se = np.sqrt(0.9 * 0.1 / MEASUREMENTS)
    assert np.all(np.abs(per_pixel - 0.9) < 4 * pixel_se), per_pixel  # 4 SE: 16 pixels tested at once
    # i.i.d. draws: R̂ is 1 up to its sampling noise (8 split chains of 25 draws; the max over 2,400
    # pixels reaches ~1.1 by chance alone, so the median is what is asserted)
    assert abs(float(np.nanmedian(summary["rhat"][...])) - 1.0) < 0.01
