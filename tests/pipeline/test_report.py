"""report_rows / print_report on stores written in the DESIGN §4 layout."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from rich.console import Console

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import campaign_from_dict, load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.report import campaign_row, print_report, report_rows
from uqcampaign.pipeline.verdict import fidelity_band
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.store import StoreLayout, consolidate, create_store, mark_done, write_draw_block

M, CHAINS, DRAWS, H, W = 3, 4, 6, 5, 6


def _array(group: zarr.Group, name: str, data: np.ndarray, dims: tuple[str, ...]) -> None:
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, dimension_names=dims)
    array[...] = data


def write_layout_store(path: Path, *, channels: int = 1, truth: bool = True, summary: bool = True, draws: bool = True) -> Path:
    """A store written by pipeline.store (denoise), with a random but self-consistent ``summary/``."""
    rng = np.random.default_rng(channels + 10 * truth)
    img = (M, channels, H, W)
    campaign = campaign_from_dict(
        {"name": "toy", "store": path.name, "data": {"simulate": {"count": M}}, "operator": {"kind": "denoise"},
         "noise": {"sigma": 0.1}, "prior": {"kind": "gaussian"}, "sampler": {"kind": "exact"}, "chains": CHAINS,
         "draws": DRAWS, "chunks": {"chains": CHAINS, "draws": DRAWS}},
        path.parent,
    )
    x_true = rng.uniform(0, 1, img)
    layout = StoreLayout(y=x_true + 0.1 * rng.standard_normal(img), x_true=x_true if truth else None, img_shape=img[1:],
                         descriptions={"operator": {"kind": "denoise"}, "sampler": {"kind": "exact"}})
    create_store(campaign, layout)
    if draws:
        for m in range(M):
            write_draw_block(path, m, slice(0, CHAINS), slice(0, DRAWS), rng.standard_normal((CHAINS, DRAWS, *img[1:])))
            mark_done(path, m, slice(0, CHAINS), DRAWS)
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    if not summary:
        return path
    s = root.create_group("summary")
    dims = ("measurement", "channel", "y", "x")
    mean = x_true + 0.05 * rng.standard_normal(img)
    std = rng.uniform(0.02, 0.1, img)
    rhat = 1.0 + rng.uniform(-0.002, 0.008, img)
    rhat[1, 0, 2, 3] = 1.3  # measurement 1 has not converged
    rhat[2, 0, 0, 0] = np.nan  # a constant pixel: ignored by the max
    for name, value in {"mean": mean, "std": std, "ci_lower": mean - 1.645 * std, "ci_upper": mean + 1.645 * std,
                        "rhat": rhat, "ess_bulk": rng.uniform(10, 24, img), "ess_tail": rng.uniform(5, 24, img),
                        "mcse_mean": std / 20}.items():
        _array(s, name, value.astype(np.float32), dims)
    s["ci_lower"].attrs["level"] = 0.9
    s["ci_upper"].attrs["level"] = 0.9
    if truth:
        covered = (np.abs(mean - x_true) <= 1.645 * std)
        _array(s, "error", (mean - x_true).astype(np.float32), dims)
        _array(s, "covered", covered, dims)
        _array(s, "coverage", covered.mean(axis=(1, 2, 3)), ("measurement",))
    chi2_draws = rng.uniform(0.8, 1.2, (M, CHAINS, DRAWS))
    chi2_draws[2] += 4.0  # measurement 2 hallucinates
    _array(s, "chi2_draws", chi2_draws, ("measurement", "chain", "draw"))
    _array(s, "chi2", chi2_draws.mean(axis=(1, 2)), ("measurement",))
    _array(s, "draws_done", np.asarray(root["draws_done"][...]), ("measurement", "chain"))  # what it summarises
    s.attrs["complete"] = 1
    consolidate(root)
    return path


def set_draws_done(store: Path, m: int, chains: slice, value: int) -> None:
    """Change ``draws_done`` and the summary's record of it alike (the summary stays up to date)."""
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    for name in ("draws_done", "summary/draws_done"):
        root[name][m, chains] = value


def test_rows_equal_summary_values(tmp_path: Path) -> None:
    store = write_layout_store(tmp_path / "s.zarr")
    s = zarr.open_group(store / "summary", mode="r")
    rows = report_rows(store)
    assert [r["measurement"] for r in rows] == list(range(M))
    for m, row in enumerate(rows):
        assert row["draws_done"] == row["draws_planned"] == CHAINS * DRAWS
        assert row["coverage"] == pytest.approx(float(s["coverage"][m]))
        assert row["rhat_max"] == pytest.approx(float(np.nanmax(s["rhat"][m])))
        assert row["ess_bulk_min"] == pytest.approx(float(np.min(s["ess_bulk"][m])))
        assert row["ess_tail_min"] == pytest.approx(float(np.min(s["ess_tail"][m])))
        assert row["chi2_mean"] == pytest.approx(float(s["chi2"][m]))
    assert rows[0]["verdict"] == "ok" and rows[0]["reasons"] == ""
    assert rows[1]["rhat_max"] > 1.01 and rows[1]["verdict"] == "ok"  # exact draws are independent: R̂ is not a convergence check
    assert rows[1]["rhat_group_max"] is None  # a summary without rhat_group (written before it existed)
    assert rows[2]["chi2_mean"] > fidelity_band(H * W, H * W)[1] and rows[2]["verdict"] == "data misfit" and "mean χ²" in rows[2]["reasons"]
    assert rows[2]["chi2_outliers"] == CHAINS * DRAWS  # every draw is out of its χ² law
    assert np.isfinite(rows[2]["rhat_max"])  # the NaN pixel is skipped, not propagated
    total = campaign_row(rows)
    assert total["measurement"] == "campaign" and total["verdict"] == "data misfit" and total["reasons"] == "1 of 3 measurements data misfit"
    assert total["draws_done"] == M * CHAINS * DRAWS and total["rhat_max"] == max(r["rhat_max"] for r in rows)


def test_rows_of_a_real_run_equal_its_summary(write_campaign: Callable[..., Path]) -> None:
    """End to end: `uqc run` (exact sampler, tiny campaign) then reduce_store; the rows read its summary."""
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False, console=Console(file=io.StringIO()))
    reduce_store(campaign.store_location, progress=False)
    s = zarr.open_group(campaign.store_location, mode="r")["summary"]
    rows = report_rows(campaign.store_location)
    assert len(rows) == s["mean"].shape[0] == 2
    for m, row in enumerate(rows):
        assert row["draws_done"] == row["draws_planned"] == campaign.chains * campaign.draws
        assert row["coverage"] == float(s["coverage"][m])
        assert row["rhat_max"] == float(np.nanmax(s["rhat"][m]))
        assert row["ess_bulk_min"] == float(np.nanmin(s["ess_bulk"][m]))
        assert row["ess_tail_min"] == float(np.nanmin(s["ess_tail"][m]))
        assert row["chi2_mean"] == pytest.approx(float(np.mean(s["chi2_draws"][m])))
        assert 0.5 < row["chi2_mean"] < 2.0  # exact posterior draws fit the data


def test_rows_without_truth_and_partial_draws(tmp_path: Path) -> None:
    store = write_layout_store(tmp_path / "s.zarr", truth=False)
    set_draws_done(store, 1, slice(0, 2), DRAWS // 2)  # two chains of measurement 1 are half done
    rows = report_rows(store)
    assert all(r["coverage"] is None for r in rows)
    assert rows[1]["draws_done"] == CHAINS * DRAWS - DRAWS and rows[1]["draws_planned"] == CHAINS * DRAWS


def test_chi2_from_draws_when_no_per_measurement_array(tmp_path: Path) -> None:
    store = write_layout_store(tmp_path / "s.zarr")
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    per_draw = np.asarray(root["summary/chi2_draws"][...])
    per_draw[0, 0, :2] = np.nan  # draws past the complete rectangle are NaN: skipped
    root["summary/chi2_draws"][...] = per_draw
    del root["summary/chi2"]
    consolidate(root)
    rows = report_rows(store)
    assert [r["chi2_mean"] for r in rows] == pytest.approx([float(np.nanmean(per_draw[m])) for m in range(M)])


def test_print_report_table(tmp_path: Path) -> None:
    store = write_layout_store(tmp_path / "s.zarr")
    out = io.StringIO()
    print_report(store, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "toy · sampler exact · 90% credible intervals" in text
    for header in ("coverage", "R̂ max", "ESS bulk min", "ESS tail min", "χ² mean", "verdict"):
        assert header in text
    rows = report_rows(store)
    assert f"{rows[1]['rhat_max']:.3f}" in text and f"{rows[0]['coverage']:.3f}" in text
    assert "2: data misfit: mean χ²" in text and "campaign: data misfit" in text  # reasons under the table
    assert "99% band of χ²_k/m" in " ".join(text.split())  # the footer explains the words
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    root["summary/ci_lower"].attrs["level"] = 0.975
    consolidate(root)
    out = io.StringIO()
    print_report(store, Console(file=out, width=200, color_system=None))
    assert "97.5% credible intervals" in out.getvalue()


def test_missing_summary_says_run_reduce(tmp_path: Path) -> None:
    store = write_layout_store(tmp_path / "s.zarr", summary=False)
    with pytest.raises(UQError, match="uqc reduce"):
        report_rows(store)
    with pytest.raises(UQError, match="uqc reduce"):
        print_report(store, Console(file=io.StringIO()))


def test_no_draws_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(UQError, match="no draws"):
        report_rows(write_layout_store(tmp_path / "s.zarr", draws=False))
    with pytest.raises(UQError, match="no store there"):
        report_rows(tmp_path / "nowhere.zarr")
