"""Uncertainty maps of a reduced store as PNG files (`uqc maps STORE --out DIR`).

Per measurement ``m`` one figure sheet ``measurement-{m:03d}.png`` — panels in rows of at most
:data:`SHEET_COLUMNS` — and the same panels as separate images ``measurement-{m:03d}/<key>.png``:

* ``truth`` (when known), ``y`` and ``mean``: the values, on **one scale set by the truth and the
  prior**, not by the data: the range of the truth joined with the prior's value range (the
  0.5–99.5% quantiles of the reference prior draws ``reduce`` keeps, attr ``prior_range``); without
  either, the posterior mean's. ``y`` is drawn as measured when it is an image of the same channels
  (denoise, inpaint, blur, superres on its own coarser grid); otherwise (``cs``, ``matrix``, ``mri``)
  its pseudo-inverse ``A⁺y``, clipped by the same scale (a blur's or a compressed-sensing ``A⁺y`` can
  reach ±16 and would turn every panel grey). Pixels an inpainting mask hides are red (magenta for RGB);
* ``std``: the posterior std (the credible-interval width is its near-copy, correlation 0.9998 on
  the demo, and is left out);
* ``z``: ``(mean − truth)/std`` (when the truth is known), diverging scale ±3: where the posterior
  mean is off by more than its own uncertainty;
* ``covered``: whether each pixel's truth lies inside its credible interval (when known);
* ``support``: the posterior std over the prior std at that pixel (``summary/prior_std``, from the
  reference prior draws): near 0 the data fix the pixel, near 1 only the prior speaks (what seed 000
  calls "supported by the data"; above 1 the posterior is wider than the prior);
* ``rhat``: R̂ over chain groups (``rhat_group``; the per-chain R̂ of an older summary), discrete
  bins with edges 1.01, 1.05 and 1.1.

Display conventions: image row 0 at the top (``origin="upper"``), nearest-neighbour pixels, no axis
ticks. Three channels: truth, ``y`` and mean in RGB, mapped from the common scale to [0, 1] (no colour
bar); the scalar maps are the per-channel mean (``z``: the channel of largest ``|z|``; R̂: the
worst channel). Spread maps start their colour scale at 0. NaN is grey.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas: no ``pyplot``
state, nothing left open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.diagnostics import MIN_DRAWS
from uqcampaign.pipeline.report import RHAT_BAD, RHAT_WARN, SummaryView, open_summary
from uqcampaign.pipeline.store import obs_array

__all__ = [
    "Panel",
    "MeasurementMaps",
    "iter_measurement_maps",
    "value_range",
    "sheet_panels",
    "sheet_grid",
    "build_sheet",
    "build_panel_figure",
    "write_maps",
    "PANEL_SIZE",
    "SINGLE_SIZE",
    "SHEET_COLUMNS",
    "Z_LIMIT",
    "DPI",
]

PANEL_SIZE = (2.5, 2.7)
"""Width and height in inches of one panel of a sheet (before scaling up for large images)."""
SINGLE_SIZE = (3.2, 2.8)
"""Width and height in inches of a separate panel image (before scaling up for large images)."""
SHEET_COLUMNS = 4
"""Panels per row of a sheet."""
Z_LIMIT = 3.0
"""The z-score scale runs over ±this (beyond: saturated)."""
DPI = 110
RHAT_EDGES = (RHAT_WARN, 1.05, RHAT_BAD)
RHAT_COLOURS = ("#deebf7", "#fed976", "#fd8d3c", "#bd0026")  # converged, then worse and worse
GRAY = colormaps["gray"].with_extremes(bad="#d62728")  # NaN (e.g. unobserved y pixels) in red
HIDDEN_RGB = (1.0, 0.0, 1.0)  # unobserved y pixels of RGB images: magenta
COVERED = ListedColormap(["#b2182b", "#f0f0f0"]).with_extremes(bad="#808080")  # outside the interval: red


@dataclass(frozen=True)
class Panel:
    """One image of a sheet.

    ``image`` is `(H, W)` (drawn with ``cmap``/``norm`` and a colour bar labelled
    ``label``) or `(H, W, 3)` RGB in [0, 1] (drawn as is, no colour bar).
    ``key`` is the file stem of the separate image, e.g. ``"mean"``.
    """

    key: str
    title: str
    image: np.ndarray
    cmap: str | Colormap | None = None
    norm: Normalize | None = None
    label: str | None = None
    ticks: tuple[float, ...] | None = None


@dataclass(frozen=True)
class MeasurementMaps:
    """The arrays behind the panels of one measurement, `(C, H, W)` float64 unless said.

    ``truth`` and ``error`` (= mean − truth) are None when the truth is unknown; ``y_image`` is ``y``
    itself when it is an image of the same channels (its own grid, `(C, H', W')`), else ``pinv(y)``
    (``y_is_pinv``); ``level`` is the credible level of the interval; ``hidden`` (bool `(C, H, W)`,
    inpainting only) marks the pixels the mask hides; ``covered`` (bool) whether the truth lies in
    the interval; ``prior_std`` the prior's per-pixel std (None when ``reduce`` could not draw from
    the prior); ``scale`` the ``(low, high)`` of the value panels (:func:`value_range`);
    ``rhat_group`` says whether ``rhat`` is over chain groups.
    """

    measurement: int
    truth: np.ndarray | None
    y_image: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    error: np.ndarray | None
    rhat: np.ndarray
    level: float
    hidden: np.ndarray | None = None
    y_is_pinv: bool = True
    covered: np.ndarray | None = None
    prior_std: np.ndarray | None = None
    scale: tuple[float, float] = (0.0, 1.0)
    rhat_group: bool = False


def _image_operator(view: SummaryView, img_shape: tuple[int, int, int]) -> tuple[Any, np.ndarray | None]:
    """The store's operator (float64) and, for inpainting, the pixels its mask hides `(C, H, W)` bool."""
    import torch

    from uqcampaign.kernels.operators import build_operator

    spec = view.describe("operator")
    if not spec:
        raise UQError(f"store {view.name} has no `operator` attr: it was not written by `uqc run`; recreate it")
    root = view.root.attrs.get("campaign_root")
    operator = build_operator(spec, img_shape, None if root is None else Path(root)).to(dtype=torch.float64)
    hidden = None
    if spec.get("kind") == "inpaint":  # Aᵀ A 1 = mask: exactly 0 where a pixel is not observed
        with torch.no_grad():
            hidden = operator.A_T(operator.A(torch.ones((1, *img_shape), dtype=torch.float64)))[0].numpy() == 0
    return operator, hidden


def value_range(truth: np.ndarray | None, prior_range: tuple[float, float] | None, mean: np.ndarray) -> tuple[float, float]:
    """The common scale of truth, ``y`` and mean: the truth's range joined with the prior's value range;
    without either, the 0.5–99.5 percentiles of the mean."""
    bounds: list[float] = []
    if prior_range is not None:
        bounds += [float(prior_range[0]), float(prior_range[1])]
    if truth is not None and np.isfinite(truth).any():
        bounds += [float(np.nanmin(truth)), float(np.nanmax(truth))]
    if not bounds:
        return _finite_range(mean, lo_q=0.5, hi_q=99.5)
    lo, hi = min(bounds), max(bounds)
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def iter_measurement_maps(view: SummaryView) -> Iterator[MeasurementMaps]:
    """The maps of each measurement of an opened store, read one measurement at a time.

    Memory holds one measurement's images, never the whole summary: `(C, H, W)` arrays.
    """
    import torch

    img_shape = tuple(int(n) for n in view.summary["mean"].shape[1:])
    operator, hidden = _image_operator(view, img_shape)  # type: ignore[arg-type]
    has_truth = "x_true" in view.root
    y_obs = obs_array(view.root)
    obs_shape = tuple(int(n) for n in y_obs.shape[1:])
    y_is_image = len(obs_shape) == 3 and obs_shape[0] == img_shape[0]
    prior_std = np.asarray(view.summary["prior_std"][...], dtype=np.float64) if "prior_std" in view.summary else None
    prior_range = json.loads(view.summary.attrs["prior_range"]) if "prior_range" in view.summary.attrs else None
    rhat_key = "rhat_group" if "rhat_group" in view.summary else "rhat"
    for m in range(view.n_measurements):
        mean, std, lower, upper, rhat = (np.asarray(view.summary[k][m], dtype=np.float64) for k in ("mean", "std", "ci_lower", "ci_upper", rhat_key))
        truth = np.asarray(view.root["x_true"][m], dtype=np.float64) if has_truth else None
        y = np.asarray(y_obs[m], dtype=np.float64)
        if not y_is_image:
            with torch.no_grad():
                y = operator.pinv(torch.as_tensor(y[None], dtype=torch.float64))[0].numpy()
        covered = np.asarray(view.summary["covered"][m], dtype=bool) if has_truth and "covered" in view.summary else None
        yield MeasurementMaps(
            measurement=m,
            truth=truth,
            y_image=y,
            mean=mean,
            std=std,
            ci_lower=lower,
            ci_upper=upper,
            error=None if truth is None else mean - truth,
            rhat=rhat,
            level=view.level,
            hidden=hidden,
            y_is_pinv=not y_is_image,
            covered=covered,
            prior_std=prior_std,
            scale=value_range(truth, prior_range, mean),
            rhat_group=rhat_key == "rhat_group",
        )


def _finite_range(*images: np.ndarray, lo_q: float = 0.0, hi_q: float = 100.0) -> tuple[float, float]:
    """Percentile range of the finite values of ``images`` (a small span when they are constant)."""
    values = np.concatenate([np.ravel(a) for a in images])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [lo_q, hi_q]))
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _to_display(image: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
    """`(C, H, W)` → `(H, W)` for one channel, `(H, W, 3)` in [0, 1] for three (mapped from ``scale``), channel mean otherwise."""
    if image.shape[0] == 3:
        lo, hi = scale if scale is not None else (0.0, 1.0)
        return np.clip((np.moveaxis(image, 0, -1) - lo) / (hi - lo), 0.0, 1.0)
    return image[0] if image.shape[0] == 1 else image.mean(axis=0)


def _scalar_map(image: np.ndarray, worst: bool = False) -> np.ndarray:
    """`(C, H, W)` → `(H, W)`: the channel itself, else the per-channel mean (``worst``: the NaN-skipping max)."""
    if image.shape[0] == 1:
        return image[0]
    if not worst:
        return image.mean(axis=0)
    finite = np.isfinite(image).any(axis=0)
    return np.where(finite, np.nanmax(np.where(np.isfinite(image), image, -np.inf), axis=0), np.nan)


def _rhat_norm(rhat: np.ndarray) -> tuple[ListedColormap, BoundaryNorm, tuple[float, ...]]:
    """Discrete R̂ scale: bins [low, 1.01), [1.01, 1.05), [1.05, 1.1), [1.1, high]."""
    low, high = _finite_range(rhat)
    edges = (min(1.0, low), *RHAT_EDGES, max(1.2, high))
    cmap = ListedColormap(list(RHAT_COLOURS)).with_extremes(bad="#808080")
    return cmap, BoundaryNorm(edges, cmap.N), edges


def _value_panels(maps: MeasurementMaps) -> list[Panel]:
    """Truth (when known), ``y`` and posterior mean on the common scale (:func:`value_range`): grey, or RGB."""
    rgb = maps.mean.shape[0] == 3
    style: dict[str, Any] = {"cmap": None, "norm": None, "label": None}
    if not rgb:
        style = {"cmap": GRAY, "norm": Normalize(*maps.scale), "label": "value"}
    y_image = _to_display(maps.y_image, maps.scale)
    y_title = "pinv(y) (clipped to the scale)" if maps.y_is_pinv else "y as measured"
    if maps.hidden is not None and not maps.y_is_pinv and maps.hidden.all(axis=0).any():
        # y is 0 where the mask hides a pixel, which would read as a dark observed pixel.
        y_image = y_image.copy()
        y_image[maps.hidden.all(axis=0)] = HIDDEN_RGB if rgb else np.nan
        y_title = f"y, {'magenta' if rgb else 'red'} = unobserved"
    panels = [] if maps.truth is None else [Panel("truth", "truth", _to_display(maps.truth, maps.scale), **style)]
    return panels + [Panel("y", y_title, y_image, **style), Panel("mean", "posterior mean", _to_display(maps.mean, maps.scale), **style)]


def _signed_worst(image: np.ndarray) -> np.ndarray:
    """`(C, H, W)` → `(H, W)`: the value of the channel with the largest magnitude."""
    if image.shape[0] == 1:
        return image[0]
    index = np.nanargmax(np.where(np.isfinite(image), np.abs(image), -1.0), axis=0)
    return np.take_along_axis(image, index[None], axis=0)[0]


def sheet_panels(maps: MeasurementMaps) -> list[Panel]:
    """The panels of one measurement in sheet order: truth, y, mean, std, z, covered, support, R̂
    (z and covered when the truth is known, support when the prior's std is)."""
    channels = maps.mean.shape[0]
    mean_of = "" if channels == 1 else f", mean of {channels} ch."
    worst = "" if channels == 1 else f", worst of {channels} ch."
    std = _scalar_map(maps.std)
    panels = _value_panels(maps) + [Panel("std", "posterior std" + mean_of, std, "viridis", Normalize(0.0, _finite_range(std)[1]), "std")]
    if maps.error is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = _signed_worst(maps.error / maps.std)
        outside = int((np.abs(z) > Z_LIMIT).sum())
        panels.append(Panel("z", f"z = (mean − truth)/std\n|z| > {Z_LIMIT:g}: {outside} px{worst}", z, colormaps["RdBu_r"].with_extremes(bad="#808080"),
                            Normalize(-Z_LIMIT, Z_LIMIT), "z"))
    if maps.covered is not None:
        share = _scalar_map(maps.covered.astype(np.float64))
        norm = BoundaryNorm((0.0, 0.5, 1.0), 2) if channels == 1 else Normalize(0.0, 1.0)
        title = f"truth in the {maps.level * 100:g}% interval\n{float(maps.covered.mean()):.0%} of pixels (red: outside)"
        panels.append(Panel("covered", title, share, COVERED if channels == 1 else colormaps["Reds_r"], norm, "covered" if channels == 1 else "share of ch.",
                            (0.0, 1.0) if channels == 1 else None))
    if maps.prior_std is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = _scalar_map(np.where(maps.prior_std > 0, maps.std / maps.prior_std, np.nan))
        top = max(1.0, _finite_range(ratio)[1])
        panels.append(Panel("support", f"posterior std / prior std{mean_of}\n0: set by y · 1: by the prior", ratio, colormaps["magma"].with_extremes(bad="#808080"),
                            Normalize(0.0, top), "std ratio"))
    rhat = _scalar_map(maps.rhat, worst=True)  # a mean over channels would hide a channel that did not converge
    rhat_max = float(np.nanmax(rhat)) if np.isfinite(rhat).any() else float("nan")
    cmap, norm, edges = _rhat_norm(rhat)
    name = "R̂ over chain groups" if maps.rhat_group else "R̂"
    panels.append(Panel("rhat", f"{name}{worst}\nmax {rhat_max:.3f}", rhat, cmap, norm, "R̂", edges))
    return panels


def _draw(fig: Figure, ax: Any, panel: Panel) -> None:
    """Draw ``panel`` on ``ax``: image, title, colour bar, no ticks."""
    artist = ax.imshow(panel.image, cmap=panel.cmap, norm=panel.norm, origin="upper", interpolation="nearest")
    ax.set_title(panel.title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if panel.label is None:
        return
    bar = fig.colorbar(artist, ax=ax, shrink=0.85, pad=0.03, spacing="uniform")
    bar.ax.tick_params(labelsize=7)
    if panel.ticks is not None:
        bar.set_ticks(list(panel.ticks), labels=[f"{t:.3g}" for t in panel.ticks])
    else:
        bar.locator = MaxNLocator(5)
        bar.update_ticks()
    bar.set_label(panel.label, fontsize=7)


def _scale(panels: list[Panel], width_in: float) -> float:
    """Figure scale ≥ 1 that gives every image pixel at least one PNG pixel (an image fills ~70% of a panel's width)."""
    pixels = max(max(p.image.shape[:2]) for p in panels)
    return max(1.0, pixels / (0.7 * width_in * DPI))


def sheet_grid(count: int) -> tuple[int, int]:
    """``(rows, columns)`` of a sheet of ``count`` panels: rows of at most :data:`SHEET_COLUMNS`, balanced."""
    rows = -(-count // SHEET_COLUMNS)
    return rows, -(-count // rows)


def build_sheet(panels: list[Panel], title: str) -> Figure:
    """``panels`` in rows of at most :data:`SHEET_COLUMNS` (:func:`sheet_grid`), with colour bars and a ``title`` on top.

    Size ``columns × rows × PANEL_SIZE`` inches at ``DPI``, scaled up for images larger than ~190 pixels;
    the unused cells of the last row stay empty.
    """
    scale = _scale(panels, PANEL_SIZE[0])
    rows, cols = sheet_grid(len(panels))
    fig = Figure(figsize=(PANEL_SIZE[0] * cols * scale, PANEL_SIZE[1] * rows * scale), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(rows, cols)
    axes = [fig.add_subplot(grid[k // cols, k % cols]) for k in range(len(panels))]  # panel axes first, colour bars after
    for ax, panel in zip(axes, panels):
        _draw(fig, ax, panel)
    fig.suptitle(title, fontsize=10)
    return fig


def build_panel_figure(panel: Panel, title: str) -> Figure:
    """A single panel as its own figure, ``title`` (e.g. "measurement 0") above the panel's own title.

    Size ``SINGLE_SIZE`` inches at ``DPI``, scaled up for images larger than ~245 pixels.
    """
    scale = _scale([panel], SINGLE_SIZE[0])
    fig = Figure(figsize=(SINGLE_SIZE[0] * scale, SINGLE_SIZE[1] * scale), dpi=DPI, layout="constrained")
    _draw(fig, fig.subplots(), panel)
    fig.suptitle(title, fontsize=9)
    return fig


def _sheet_title(view: SummaryView, m: int, used: int, chains: int) -> str:
    """E.g. "inpaint-gmm · measurement 3 · 6400 draws over 32 chains · sampler ula · 90% coverage 0.912"."""
    name = view.campaign.get("name", Path(view.name).stem)
    sampler = view.describe("sampler").get("kind")
    parts = [str(name), f"measurement {m}", f"{used * chains} draws over {chains} chains"]
    if sampler:
        parts.append(f"sampler {sampler}")
    if view.has_truth:
        parts.append(f"{view.level * 100:g}% coverage {float(view.summary['coverage'][m]):.3f}")
    return " · ".join(parts)


def write_maps(store: Any, out_dir: str | Path, *, reduce: bool = False, say: Any = None) -> list[Path]:
    """Write the sheet and the separate panels of every measurement of ``store`` under ``out_dir``.

    The store's summary must be up to date: a missing or stale one is a :class:`UQError` saying
    to run ``uqc reduce STORE``, unless ``reduce`` (it is then recomputed, after telling
    ``say``): maps never write ``summary/`` unasked. A measurement with fewer than 4 draws in
    every chain has no summary and gets no map (``say`` is told). Returns the paths written,
    sheet first then its panels, per measurement.
    """
    view = open_summary(store, reduce=reduce, say=say)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UQError(f"cannot create the maps folder {out}: {exc.strerror}; give a writable --out") from exc
    chains = int(view.summary["chi2_draws"].shape[1]) if "chi2_draws" in view.summary else int(view.root["draws_done"].shape[1])
    used = view.draws_used
    if used is None:
        used = np.asarray(view.root["draws_done"][...]).min(axis=1)
    written: list[Path] = []
    name = view.campaign.get("name", Path(view.name).stem)
    for maps in iter_measurement_maps(view):
        m = maps.measurement
        if int(used[m]) < MIN_DRAWS:
            if say is not None:
                say(f"measurement {m}: {int(used[m])} draws complete in every chain (< {MIN_DRAWS}), not reduced: no map")
            continue
        panels = sheet_panels(maps)
        sheet = out / f"measurement-{m:03d}.png"
        build_sheet(panels, _sheet_title(view, m, int(used[m]), chains)).savefig(sheet)
        written.append(sheet)
        folder = out / f"measurement-{m:03d}"
        folder.mkdir(exist_ok=True)
        for panel in panels:
            path = folder / f"{panel.key}.png"
            build_panel_figure(panel, f"{name} · measurement {m}").savefig(path)
            written.append(path)
    return written
