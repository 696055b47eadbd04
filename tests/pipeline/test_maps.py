"""write_maps / build_sheet on stores written in the DESIGN §4 layout."""

from __future__ import annotations

import json
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
    DPI, PANEL_SIZE, SINGLE_SIZE, Z_LIMIT, Panel, build_panel_figure, build_sheet, iter_measurement_maps, sheet_grid, sheet_panels, write_maps,
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
         "noise": {"sigma": 0.05}, "prior": {"kind": "gaussian", "shape": [channels, H, W], "mean": 0.5, "variance": 0.04},
         "sampler": {"kind": "exact"}, "chains": CHAINS,
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
    keys = (["truth"] if truth else []) + ["y", "mean", "std"] + (["z", "covered"] if truth else []) + ["support", "rhat"]
    expected = []
    for m in range(M):
        expected.append(tmp_path / "maps" / f"measurement-{m:03d}.png")
        expected += [tmp_path / "maps" / f"measurement-{m:03d}" / f"{k}.png" for k in keys]
    assert paths == expected
    for path in paths:
        assert path.is_file()
    rows, cols = sheet_grid(len(keys))
    assert (rows, cols) == ((2, 4) if truth else (2, 3))
    sheet_px = (round(PANEL_SIZE[0] * cols * DPI), round(PANEL_SIZE[1] * rows * DPI))
    assert _png_size(paths[0]) == sheet_px
    assert _png_size(paths[1]) == (round(SINGLE_SIZE[0] * DPI), round(SINGLE_SIZE[1] * DPI))


@pytest.mark.parametrize("channels, truth, n_axes", [(1, True, 16), (1, False, 10), (3, True, 13), (3, False, 8)])
def test_sheet_axes_titles_and_colourbars(reduced_store: Callable[..., Path], channels: int, truth: bool, n_axes: int) -> None:
    view = open_summary(reduced_store(channels, truth))
    maps = list(iter_measurement_maps(view))[1]
    fig = build_sheet(sheet_panels(maps), "title")
    # one axes per panel, plus one colour bar per scalar panel (RGB images have none)
    assert len(fig.axes) == n_axes
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "CI width" not in " ".join(titles)  # a near-copy of the std: left out
    assert ("truth" in titles) == truth and any(t.startswith("z = (mean − truth)/std") for t in titles) == truth
    assert any(t.startswith("truth in the 90% interval") for t in titles) == truth
    assert any(t.startswith("posterior std / prior std") for t in titles)
    rhat_max = float(np.nanmax(view.array("rhat_group")[1]))
    assert rhat_max > 1.1 and any(t.startswith("R̂ over chain groups") and t.endswith(f"max {rhat_max:.3f}") for t in titles)
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
    np.testing.assert_allclose(images["support"], (maps.std / maps.prior_std).mean(axis=0), rtol=1e-6)
    assert norms["std"][0] == norms["support"][0] == 0.0  # spread scales start at 0
    if truth:
        assert norms["z"] == (-Z_LIMIT, Z_LIMIT)
        z = maps.error / maps.std
        np.testing.assert_allclose(images["z"], z[0] if channels == 1 else np.take_along_axis(z, np.abs(z).argmax(0)[None], 0)[0], rtol=1e-6)
        np.testing.assert_array_equal(images["covered"], maps.covered.mean(axis=0))


def test_y_is_drawn_as_measured(reduced_store: Callable[..., Path]) -> None:
    view = open_summary(reduced_store())
    maps = next(iter_measurement_maps(view))
    y = np.asarray(view.root["y_obs"][0])
    np.testing.assert_allclose(maps.y_image, y, atol=1e-6)  # an image of the same channels: y itself
    assert not maps.y_is_pinv
    assert maps.hidden.sum() == round(0.4 * H * W) and (maps.y_image[maps.hidden] == 0).all()
    panel = next(p for p in sheet_panels(maps) if p.key == "y")
    # hidden pixels are NaN (drawn in the colour map's "bad" red), not a black 0 like a dark observed pixel
    assert np.isnan(panel.image[maps.hidden[0]]).all() and np.isfinite(panel.image[~maps.hidden[0]]).all()
    assert "red = unobserved" in panel.title and panel.cmap.get_bad()[0] > 0.8


def test_blur_sheet_shares_the_truth_and_prior_scale() -> None:
    """A blur campaign (digits GMM, 16×16, blur σ 2 size 9, exact draws): truth, y and mean share one grey
    scale, the truth's range joined with the prior's (from the reference prior draws), never A⁺y's, whose
    range is many times wider; the mean fills the scale instead of a flat grey; y is drawn as measured."""
    import tempfile

    import yaml

    from uqcampaign.pipeline.config import load_campaign
    from uqcampaign.pipeline.runner import run_campaign

    with tempfile.TemporaryDirectory() as folder:
        spec = {"name": "blur", "store": "blur.zarr", "seed": 0, "data": {"simulate": {"count": 1}}, "operator": {"kind": "blur", "sigma": 2.0, "size": 9},
                "noise": {"sigma": 0.05}, "prior": {"kind": "gmm", "file": str(Path(__file__).resolve().parents[2] / "priors" / "digits16.npz")},
                "sampler": {"kind": "exact"}, "chains": 4, "draws": 25, "chunks": {"chains": 4, "draws": 25}, "cluster": {"address": "in-process"}}
        (Path(folder) / "c.yaml").write_text(yaml.safe_dump(spec))
        campaign = load_campaign(Path(folder) / "c.yaml")
        run_campaign(campaign, progress=False)
        reduce_store(campaign.store_location, progress=False)
        view = open_summary(campaign.store_location)
        maps = next(iter_measurement_maps(view))
        panels = {p.key: p for p in sheet_panels(maps)}
        prior_range = json.loads(view.summary.attrs["prior_range"])
        expected = (min(prior_range[0], maps.truth.min()), max(prior_range[1], maps.truth.max()))
        for key in ("truth", "y", "mean"):
            assert (panels[key].norm.vmin, panels[key].norm.vmax) == pytest.approx(expected)
        assert "as measured" in panels["y"].title and not maps.y_is_pinv
        operator = build_operator(spec["operator"], (1, 16, 16))
        pinv = operator.pinv(torch.as_tensor(np.asarray(view.root["y_obs"][0:1]), dtype=torch.float32))[0].numpy()
        span = expected[1] - expected[0]
        print(f"\n[maps] blur: scale [{expected[0]:.2f}, {expected[1]:.2f}], A⁺y spans [{pinv.min():.1f}, {pinv.max():.1f}], mean spans {np.ptp(maps.mean):.2f}")
        assert np.ptp(pinv) > 5 * span  # the scale A⁺y would have set: truth and mean flat grey in it
        assert np.ptp(maps.mean) > 0.4 * span  # measured 0.50 of the scale (under A⁺y's scale: < 0.1)
        assert np.ptp(maps.mean) < 0.1 * np.ptp(pinv)


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
    assert len(calls) == 1 and len(paths) == 9
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
