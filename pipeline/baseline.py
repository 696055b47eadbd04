"""`uqc report STORE --baseline MAP_STORE`: the posterior mean against point-estimate baselines.

Seed 000 compares posterior sampling with MAP / plug-and-play point estimates; the baselines are the
sampler kinds ``map-hqs``, ``map-admm`` and ``map-latent``, run as campaigns of their own on the same
measurements (same ``y_obs``). Per measurement and estimate one row:

* ``estimate``: ``posterior mean`` (of ``STORE``), or the baseline's sampler kind and store name;
  a baseline's estimate is the mean over its chains of its draw 0 (one draw per chain: read from
  ``samples``, no summary needed — ``reduce`` wants at least 4 draws);
* ``psnr`` (dB) and ``ssim`` against the truth (None when the truth is unknown), with the data
  range ``max − min`` of the truths of the store; SSIM by scikit-image
  (``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, the
  window shrunk to the image for small images), the reference implementation;
* ``chi2``: the data misfit ``||y − A x̂||² / (σ² dim y)`` of the estimate itself
  (:func:`~uqcampaign.kernels.plausibility.data_fidelity`); a MAP fits the data more closely than
  the posterior mean, both usually below 1 (the draws' χ² is near 1 + (posterior spread)).

The posterior store must hold a summary (``uqc reduce``), a baseline its draw 0 in every chain; a
baseline on other measurements (another ``y_obs`` or image shape) is refused with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.report import SummaryView, open_summary
from uqcampaign.pipeline.store import json_attr, obs_array, open_store, store_location

__all__ = ["baseline_rows", "print_baseline", "ssim_skimage"]


def ssim_skimage(x: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """SSIM of ``x`` against ``ref`` `(C, H, W)` by scikit-image (Wang et al. 2004), Gaussian weights σ = 1.5
    (window 11), or a smaller σ for images smaller than 11 pixels (window ``2⌊3.5σ + 0.5⌋ + 1``)."""
    from skimage.metrics import structural_similarity

    side = min(x.shape[-2:])
    sigma = 1.5 if side >= 11 else max(0.3, ((side - 1) // 2 - 0.5) / 3.5)
    return float(structural_similarity(x, ref, data_range=data_range, gaussian_weights=True, sigma=sigma, use_sample_covariance=False, channel_axis=0))


@dataclass(frozen=True)
class _Baseline:
    """A point-estimate store: its name, sampler kind, ``y_obs`` `(M, *obs)` and estimate `(M, C, H, W)`."""

    name: str
    kind: str
    y: np.ndarray
    estimate: np.ndarray


def _open_baseline(store: str) -> _Baseline:
    """The mean over chains of draw 0 of every measurement of ``store`` (refused when a chain lacks it)."""
    root = open_store(store)
    name = store_location(root)
    done = np.asarray(root["draws_done"][...]) if "draws_done" in root else np.zeros((1, 1))
    if (done < 1).any():
        raise UQError(f"baseline {name} lacks draw 0 in {int((done < 1).sum())} (measurement, chain) pairs: finish it first (`uqc run MAP.yaml --resume`)")
    spec = json_attr(root, "sampler", {})
    kind = str((json.loads(spec) if isinstance(spec, str) else dict(spec)).get("kind", "baseline"))
    estimate = np.asarray(root["samples"].get_orthogonal_selection((slice(None), slice(None), 0)), dtype=np.float64).mean(axis=1)
    return _Baseline(name, kind, np.asarray(obs_array(root)[...], dtype=np.float64), estimate)


def _operator(view: SummaryView) -> Any:
    import torch

    from uqcampaign.kernels.operators import build_operator

    spec = view.describe("operator")
    if not spec:
        raise UQError(f"store {view.name} has no `operator` attr: it was not written by `uqc run`; recreate it")
    img_shape = tuple(int(n) for n in view.summary["mean"].shape[1:])
    root = view.root.attrs.get("campaign_root")
    return build_operator(spec, img_shape, None if root is None else Path(root)).to(dtype=torch.float64)


def _same_measurements(view: SummaryView, other: _Baseline, y: np.ndarray) -> None:
    shape, other_shape = view.summary["mean"].shape, other.estimate.shape
    if shape != other_shape or other.y.shape != y.shape or not np.allclose(other.y, y, rtol=1e-6, atol=1e-9):
        raise UQError(
            f"baseline {other.name} is not on the measurements of {view.name} (summary {tuple(other_shape)} vs {tuple(shape)}, y_obs differ): "
            "run the MAP sampler with the same data, operator, noise and seed"
        )


def baseline_rows(store: str, baselines: list[str]) -> list[dict[str, Any]]:
    """Rows ``measurement, estimate, store, psnr, ssim, chi2`` (module docstring): the posterior mean of ``store``,
    then each baseline, per measurement."""
    import torch

    from uqcampaign.kernels.metrics import psnr
    from uqcampaign.kernels.plausibility import data_fidelity

    view = open_summary(store)
    y = np.asarray(obs_array(view.root)[...], dtype=np.float64)
    others = [_open_baseline(b) for b in baselines]
    for other in others:
        _same_measurements(view, other, y)
    truth = np.asarray(view.root["x_true"][...], dtype=np.float64) if "x_true" in view.root else None
    data_range = float(np.ptp(truth)) if truth is not None and np.ptp(truth) > 0 else 1.0
    operator = _operator(view)
    sigma = float(view.campaign["noise"]["sigma"])
    named = [("posterior mean", view.name, np.asarray(view.summary["mean"][...], dtype=np.float64))] + [(o.kind, o.name, o.estimate) for o in others]
    rows: list[dict[str, Any]] = []
    for name, source, estimate in named:
        with torch.no_grad():
            chi2 = data_fidelity(torch.from_numpy(estimate), torch.from_numpy(y).reshape(len(y), *operator.obs_shape), operator, sigma).numpy()
            quality = None if truth is None else psnr(torch.from_numpy(estimate), torch.from_numpy(truth), data_range=data_range).numpy()
        for m in range(len(estimate)):
            rows.append({
                "measurement": m,
                "estimate": name,
                "store": source,
                "psnr": None if quality is None else float(quality[m]),
                "ssim": None if truth is None else ssim_skimage(estimate[m], truth[m], data_range),
                "chi2": float(chi2[m]),
            })
    rows.sort(key=lambda row: row["measurement"])  # stable: posterior mean first within a measurement
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    return None if rows[0][key] is None else float(np.mean([row[key] for row in rows]))


def print_baseline(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """The rows of :func:`baseline_rows` as a table, then each estimate's mean over measurements."""
    console = console or Console()
    table = Table(title="posterior mean against point-estimate baselines (PSNR/SSIM against the truth; chi2 of the estimate)")
    for column in ("measurement", "estimate", "PSNR dB", "SSIM", "chi2"):
        table.add_column(column, justify="right" if column != "estimate" else "left")
    for row in rows:
        table.add_row(str(row["measurement"]), row["estimate"], _fmt(row["psnr"], ".2f"), _fmt(row["ssim"], ".3f"), _fmt(row["chi2"], ".3f"))
    for name in dict.fromkeys(row["estimate"] for row in rows):
        mine = [row for row in rows if row["estimate"] == name]
        table.add_row("mean", name, *(_fmt(_mean(mine, key), spec) for key, spec in (("psnr", ".2f"), ("ssim", ".3f"), ("chi2", ".3f"))), style="bold")
    console.print(table)
