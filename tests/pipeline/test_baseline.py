"""`uqc report STORE --baseline MAP_STORE`: the posterior mean against a MAP run on the same measurements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from uqcampaign.kernels.metrics import psnr
from uqcampaign.pipeline.baseline import ssim_skimage
from uqcampaign.pipeline.cli import app

SHAPE = [1, 12, 12]


def _campaign(folder: Path, name: str, sampler: dict, draws: int, seed: int = 3) -> Path:
    spec = {"name": name, "store": f"{name}.zarr", "seed": seed, "data": {"simulate": {"count": 2}}, "operator": {"kind": "inpaint", "fraction": 0.5},
            "noise": {"sigma": 0.1}, "prior": {"kind": "gaussian", "shape": SHAPE, "mean": 0.5, "variance": 0.04},
            "sampler": sampler, "chains": 4, "draws": draws, "chunks": {"chains": 4, "draws": draws}, "cluster": {"address": "in-process"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("baseline")
    runner = CliRunner()
    paths = {
        "posterior": _campaign(folder, "posterior", {"kind": "exact"}, 100),
        "map": _campaign(folder, "map", {"kind": "map-admm", "iterations": 200}, 1),
        "other": _campaign(folder, "other", {"kind": "map-admm", "iterations": 20}, 1, seed=4),
    }
    for key, path in paths.items():
        commands = [["run", str(path), "--no-progress"]] + ([["reduce", str(folder / f"{path.stem}.zarr")]] if key == "posterior" else [])
        for command in commands:
            result = runner.invoke(app, command)
            assert result.exit_code == 0, result.output
    return {key: folder / f"{key}.zarr" for key in paths}


def test_map_baseline_against_the_posterior_mean(stores: dict[str, Path]) -> None:
    """Gaussian prior, linear operator: the MAP *is* the posterior mean, so the MAP row and the posterior-mean row
    agree (the posterior mean of 400 exact draws differs by its Monte Carlo error), and each figure equals its
    reference: PSNR of kernels.metrics, SSIM of scikit-image, chi2 of the estimate."""
    result = CliRunner().invoke(app, ["report", str(stores["posterior"]), "--baseline", str(stores["map"]), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["measurement"], r["estimate"]) for r in rows] == [(0, "posterior mean"), (0, "map-admm"), (1, "posterior mean"), (1, "map-admm")]
    import zarr

    post, base = zarr.open_group(stores["posterior"], mode="r"), zarr.open_group(stores["map"], mode="r")
    truth = np.asarray(post["x_true"][...], dtype=np.float64)
    data_range = float(np.ptp(truth))
    for m in range(2):
        mean = np.asarray(post["summary/mean"][m], dtype=np.float64)
        estimate = np.asarray(base["samples"][m, :, 0], dtype=np.float64).mean(axis=0)
        pair = {r["estimate"]: r for r in rows if r["measurement"] == m}
        expected = float(psnr(torch.from_numpy(estimate), torch.from_numpy(truth[m]), data_range=data_range))
        assert pair["map-admm"]["psnr"] == pytest.approx(expected, rel=1e-9)
        reference = structural_similarity(estimate[0], truth[m, 0], data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert pair["map-admm"]["ssim"] == pytest.approx(reference, rel=1e-9)
        print(f"\n[baseline] m={m}: PSNR mean {pair['posterior mean']['psnr']:.2f} dB, MAP {pair['map-admm']['psnr']:.2f} dB; "
              f"chi2 mean {pair['posterior mean']['chi2']:.3f}, MAP {pair['map-admm']['chi2']:.3f}; max |MAP - mean| {np.abs(estimate - mean).max():.4f}")
        assert abs(pair["map-admm"]["psnr"] - pair["posterior mean"]["psnr"]) < 0.3
        assert pair["map-admm"]["chi2"] == pytest.approx(pair["posterior mean"]["chi2"], rel=0.1)
    table = CliRunner().invoke(app, ["report", str(stores["posterior"]), "--baseline", str(stores["map"])])
    assert table.exit_code == 0 and "map-admm" in table.stdout and "posterior mean" in table.stdout


def test_baseline_on_other_measurements_is_refused(stores: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["report", str(stores["posterior"]), "--baseline", str(stores["other"])])
    assert result.exit_code == 2 and "not on the measurements" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ssim_of_small_images_is_scikit_image() -> None:
    """Images smaller than scikit-image's default Gaussian window (11) get a narrower one, not an error."""
    rng = np.random.default_rng(0)
    x, ref = rng.random((1, 8, 8)), rng.random((1, 8, 8))
    value = ssim_skimage(x, ref, 1.0)
    assert value == pytest.approx(structural_similarity(x[0], ref[0], data_range=1.0, gaussian_weights=True, sigma=2.5 / 3.5, use_sample_covariance=False))
    assert ssim_skimage(ref, ref, 1.0) == pytest.approx(1.0)
