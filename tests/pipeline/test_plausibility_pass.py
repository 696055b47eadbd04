"""`uqc reduce`'s prior-plausibility pass (pipeline/plausibility_pass.py) and the report's `implausible` flag:
exact draws are flagged at about the rate of chance, draws spread 3× too wide are flagged nearly all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from uqcampaign.kernels.problems import random_problem
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.plausibility_pass import REFERENCE_DRAWS, SCORED_DRAWS, scored_indices
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.report import open_summary, report_table
from uqcampaign.pipeline.runner import run_campaign

MEASUREMENTS, CHAINS, DRAWS = 4, 8, 12


def _store(folder: Path, name: str, spread: float) -> Path:
    problem = random_problem("inpaint", "gmm", seed=4)
    np.savez(folder / "prior.npz", **problem.prior_arrays)
    spec = {"name": name, "store": f"{name}.zarr", "seed": 2, "data": {"simulate": {"count": MEASUREMENTS}}, "operator": problem.operator_spec,
            "noise": {"sigma": problem.sigma}, "prior": {"kind": "gmm", "file": "prior.npz"}, "sampler": {"kind": "exact", "spread": spread},
            "chains": CHAINS, "draws": DRAWS, "chunks": {"chains": CHAINS, "draws": DRAWS}, "cluster": {"address": "in-process"}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    campaign = load_campaign(folder / f"{name}.yaml")
    run_campaign(campaign, progress=False)
    reduce_store(campaign.store_location, progress=False)
    return folder / f"{name}.zarr"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plausibility")
    return {"exact": _store(folder, "exact", 1.0), "wide": _store(folder, "wide", 3.0)}


def test_scores_reference_and_prior_moments(stores: dict[str, Path]) -> None:
    view = open_summary(stores["exact"])
    s = view.summary
    assert s["plausibility"].shape == (MEASUREMENTS, CHAINS, SCORED_DRAWS) and s["plausibility_reference"].shape == (REFERENCE_DRAWS,)
    np.testing.assert_array_equal(s["plausibility_draw"][0], scored_indices(DRAWS))
    assert np.isfinite(s["plausibility"][...]).all()
    # the prior's per-pixel std from its 256 reference draws against the mixture's exact marginal std
    prior = np.load(stores["exact"].parent / "prior.npz")
    w = prior["weights"][:, None, None, None]
    mean = (w * prior["means"]).sum(0)
    exact_std = np.sqrt((w * (prior["variances"] + prior["means"] ** 2)).sum(0) - mean**2)
    np.testing.assert_allclose(s["prior_std"][...], exact_std, rtol=0.2)  # std error of a std from 256 draws: 4.4%
    lo, hi = json.loads(view.summary.attrs["prior_range"])
    assert lo < mean.min() and hi > mean.max()
    again = reduce_store(stores["exact"], progress=False)  # the reference generator makes the scores reproducible
    np.testing.assert_array_equal(again["plausibility"][...], s["plausibility"][...])


def test_exact_draws_pass_and_wide_draws_are_flagged(stores: dict[str, Path]) -> None:
    scored = MEASUREMENTS * CHAINS * SCORED_DRAWS
    counts = {name: report_table(path)[-1]["implausible"] for name, path in stores.items()}
    print(f"\n[plausibility] implausible of {scored} scored draws: exact {counts['exact']}, spread 3 {counts['wide']}")
    assert counts["exact"] <= 0.05 * scored  # p < 0.01 flags about 1% of exact draws
    assert counts["wide"] >= 0.5 * scored
