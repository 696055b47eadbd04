"""write_maps / build_sheet on stores written in the DESIGN §4 layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import zarr
from matplotlib.colors import Normalize

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.operators import build_operator
from uqcampaign.pipeline import reduce as reduce_module
from uqcampaign.pipeline.config import campaign_from_dict
from uqcampaign.pipeline.maps import (
    DPI, PANEL_SIZE, SINGLE_SIZE, Panel, build_panel_figure, build_sheet, iter_measurement_maps, sheet_panels, write_maps,
)
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.report import open_summary
from uqcampaign.pipeline.store import StoreLayout, create_store, mark_done, write_draw_block

M, CHAINS, DRAWS, H, W = 2, 4, 6, 8, 10


def _array(group: zarr.Group, name: str, data: np.ndarray, dims: tuple[str, ...]) -> None:
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, dimension_names=dims)
    array[...] = data


def write_layout_store(path: Path, *, channels: int = 1, truth: bool = True, summary: bool = True, draws: bool = True, measurements: int = M) -> Path:
    """A store written by pipeline.store: a smooth truth, inpainting, Gaussian draws, wider where y is missing."""
    campaign = campaign_from_dict(
        {"name": "toy", "store": path.name, "data": {"simulate": {"count": measurements}}, "operator": {"kind": "inpaint", "fraction": 0.6},
         "noise": {"sigma": 0.05}, "prior": {"kind": "gaussian"}, "sampler": {"kind": "exact"}, "chains": CHAINS,
         "draws": DRAWS, "chunks": {"chains": CHAINS // 2, "draws": DRAWS}},
        path.parent,
    )
    operator = build_operator(campaign.operator, (channels, H, W))
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    x_true = np.stack([np.stack([np.clip(0.05 + xx + 0.5 * yy * (c + 1) / channels + 0.1 * m, 0, 1) for c in range(channels)]) for m in range(measurements)])
    y = operator.A(torch.as_tensor(x_true)).numpy()
    layout = StoreLayout(y=y, x_true=x_true if truth else None, img_shape=(channels, H, W),
                         descriptions={"operator": operator.describe(), "sampler": {"kind": "exact"}})
    create_store(campaign, layout)
    rng = np.random.default_rng(channels)
    spread = 0.02 + 0.1 * (y == 0)  # (M, C, H, W): unobserved pixels are more uncertain
    stuck = (np.arange(channels * H * W).reshape(channels, H, W) % 5 == 0) * 0.2  # chains disagree there: R̂ > 1.1
    for m in range(measurements):
        for block in range(campaign.n_blocks):
            chains = campaign.block_chains(block)
            if draws:
                noise = rng.standard_normal((chains.stop - chains.start, DRAWS, channels, H, W))
                offset = np.arange(chains.start, chains.stop)[:, None, None, None, None] * stuck
                write_draw_block(path, m, chains, slice(0, DRAWS), x_true[m] + spread[m] * noise + offset)
                mark_done(path, m, chains, DRAWS)
    if summary:
        reduce_store(path, progress=False)
    return path


@pytest.fixture(scope="module")
def reduced_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``reduced_store(channels, truth) -> Path``: a reduced store built once per module and only read."""
    built: dict[tuple[int, bool], Path] = {}

    def get(channels: int = 1, truth: bool = True) -> Path:
        if (channels, truth) not in built:
            built[channels, truth] = write_layout_store(tmp_path_factory.mktemp("maps") / "s.zarr", channels=channels, truth=truth)
        return built[channels, truth]

    return get


def _png_size(path: Path) -> tuple[int, int]:
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


@pytest.mark.parametrize("channels, truth", [(1, True), (3, False)])
def test_write_maps_files(reduced_store: Callable[..., Path], tmp_path: Path, channels: int, truth: bool) -> None:
    paths = write_maps(reduced_store(channels, truth), tmp_path / "maps")
    keys = (["truth"] if truth else []) + ["y", "mean", "std", "ci_width"] + (["abs_error"] if truth else []) + ["rhat"]
    expected = []
    for m in range(M):
        expected.append(tmp_path / "maps" / f"measurement-{m:03d}.png")
        expected += [tmp_path / "maps" / f"measurement-{m:03d}" / f"{k}.png" for k in keys]
    assert paths == expected
    for path in paths:
        assert path.is_file()
    sheet_px = (round(PANEL_SIZE[0] * len(keys) * DPI), round(PANEL_SIZE[1] * DPI))
    assert _png_size(paths[0]) == sheet_px
    assert _png_size(paths[1]) == (round(SINGLE_SIZE[0] * DPI), round(SINGLE_SIZE[1] * DPI))


@pytest.mark.parametrize("channels, truth, n_axes", [(1, True, 14), (1, False, 10), (3, True, 11), (3, False, 8)])
def test_sheet_axes_titles_and_colourbars(reduced_store: Callable[..., Path], channels: int, truth: bool, n_axes: int) -> None:
    view = open_summary(reduced_store(channels, truth))
    maps = list(iter_measurement_maps(view))[1]
    fig = build_sheet(sheet_panels(maps), "title")
    # one axes per panel, plus one colour bar per scalar panel (RGB images have none)
    assert len(fig.axes) == n_axes
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "90% CI width" in " ".join(titles)
    assert ("truth" in titles) == truth and any(t.startswith("|mean − truth|") for t in titles) == truth
    rhat_max = float(np.nanmax(view.array("rhat")[1]))
    assert rhat_max > 1.1 and any(t.startswith("R̂") and t.endswith(f"(max {rhat_max:.3f})") for t in titles)
    panels = sheet_panels(maps)
    images = {p.key: ax.images[0].get_array() for p, ax in zip(panels, fig.axes)}  # panel axes come first
    norms = {p.key: (ax.images[0].norm.vmin, ax.images[0].norm.vmax) for p, ax in zip(panels, fig.axes)}
    assert images["mean"].shape == ((H, W) if channels == 1 else (H, W, 3))
    if channels == 1:  # truth / y / mean on one grey scale
        assert len({norms[k] for k in ("y", "mean", *(["truth"] if truth else []))}) == 1
    else:
        assert images["mean"].min() >= 0 and images["mean"].max() <= 1
    # std of RGB is the per-channel mean, R̂ the worst channel
    np.testing.assert_allclose(images["std"], maps.std.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(images["rhat"], maps.rhat.max(axis=0), rtol=1e-6)
    assert norms["std"][0] == norms["ci_width"][0] == 0.0  # spread scales start at 0


def test_y_is_pinv_in_image_space(reduced_store: Callable[..., Path]) -> None:
    view = open_summary(reduced_store())
    maps = next(iter_measurement_maps(view))
    y = np.asarray(view.root["y_obs"][0])
    np.testing.assert_allclose(maps.y_image, y, atol=1e-6)  # inpaint: pinv(y) = mask ⊙ y = y
    assert maps.hidden.sum() == round(0.4 * H * W) and (maps.y_image[maps.hidden] == 0).all()
    panel = next(p for p in sheet_panels(maps) if p.key == "y")
    # hidden pixels are NaN (drawn in the colour map's "bad" red), not a black 0 like a dark observed pixel
    assert np.isnan(panel.image[maps.hidden[0]]).all() and np.isfinite(panel.image[~maps.hidden[0]]).all()
    assert "red = unobserved" in panel.title and panel.cmap.get_bad()[0] > 0.8


def test_rhat_scale_marks_thresholds(reduced_store: Callable[..., Path]) -> None:
    view = open_summary(reduced_store())
    rhat = sheet_panels(next(iter_measurement_maps(view)))[-1]
    assert rhat.key == "rhat" and 1.01 in rhat.ticks and 1.1 in rhat.ticks
    colours = rhat.cmap(rhat.norm(np.array([1.0, 1.02, 1.07, 1.15])))
    assert len({tuple(c) for c in colours}) == 4  # converged, > 1.01, > 1.05, > 1.1 all differ


def test_missing_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = write_layout_store(tmp_path / "s.zarr", summary=False, measurements=1)
    with pytest.raises(UQError, match=r"has no summary: run `uqc reduce .*s\.zarr` \(or pass --reduce\)"):
        write_maps(store, tmp_path / "maps")
    assert not (store / "summary").exists() and not list((tmp_path / "maps").glob("*.png"))  # maps never reduce unasked
    calls, said = [], []

    def counting_reduce(target, **kwargs):
        calls.append(target)
        return reduce_store(target, **kwargs)

    monkeypatch.setattr(reduce_module, "reduce_store", counting_reduce)
    paths = write_maps(store, tmp_path / "maps", reduce=True, say=said.append)
    assert len(calls) == 1 and len(paths) == 8
    assert said == [f"store {store} has no summary: reducing it first (--reduce)"]
    assert "summary" in zarr.open_group(store, mode="r")  # reduced and consolidated


def test_no_draws(tmp_path: Path) -> None:
    store = write_layout_store(tmp_path / "s.zarr", draws=False, summary=False)
    with pytest.raises(UQError, match="no draws"):
        write_maps(store, tmp_path / "maps")


def test_large_images_keep_one_png_pixel_per_image_pixel() -> None:
    small = Panel("std", "std", np.zeros((16, 16)), "viridis", Normalize(0, 1), "std")
    large = Panel("std", "std", np.zeros((600, 400)), "viridis", Normalize(0, 1), "std")
    assert tuple(build_sheet([small, small], "t").get_size_inches()) == (2 * PANEL_SIZE[0], PANEL_SIZE[1])
    for fig, width in ((build_sheet([large], "t"), PANEL_SIZE[0]), (build_panel_figure(large, "t"), SINGLE_SIZE[0])):
        # the image gets ~70% of the panel width: at least 600 PNG pixels for 600 image rows
        assert 0.7 * fig.get_size_inches()[0] * DPI >= 600 * 0.999 and fig.get_size_inches()[0] > width
