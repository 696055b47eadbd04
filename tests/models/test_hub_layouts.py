"""Hub layouts through ``uqc run`` (issue 11): every layout runs a one-unit campaign of every sampler it allows,
its truth simulated from the prior itself (``data.simulate`` → ``prior.sample``); every refusal is one line.

The folders come from ``conftest.build_layouts`` (tiny random weights in the exact hub layouts).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner

from uqcampaign.pipeline.cli import app

runner = CliRunner()

PIXEL_SAMPLERS = ("ula", "skrock", "dps", "latino")
# the Langevin samplers box the chains by the prior's support() (from data_range) and start them at prior.sample draws
SAMPLERS: dict[str, dict[str, Any]] = {
    "ula": {"kind": "ula", "burn_in": 2, "thin": 1, "box": "auto", "init": "prior"},
    "skrock": {"kind": "skrock", "stages": 2, "burn_in": 2, "thin": 1, "box": "auto", "init": "prior"},
    "dps": {"kind": "dps", "steps": 3},
    "latino": {"kind": "latino", "steps": 2},
    "tds": {"kind": "tds", "runs": 1, "particles": 4, "steps": 3},
    "smc-anneal": {"kind": "smc-anneal", "runs": 1, "particles": 4, "steps": 3},
    "map-hqs": {"kind": "map-hqs", "iterations": 2, "anneal": 2},
    "map-admm": {"kind": "map-admm", "iterations": 2, "anneal": 2},
    "latino-pro": {"kind": "latino-pro", "iterations": 1, "steps": 2, "final_steps": 2, "decay_after": 0},
    "map-latent": {"kind": "map-latent", "steps": 2},
}
POINT_ESTIMATES = ("map-hqs", "map-admm", "map-latent")  # one draw per chain
# layout -> (prior spec, samplers it allows, expected describe() entries, network calls per denoiser/consistency call)
CASES: dict[str, tuple[dict[str, Any], tuple[str, ...], dict[str, Any], int]] = {
    "ddpm": ({"kind": "diffusion", "path": "ddpm"}, PIXEL_SAMPLERS,
             {"data_range": [-1.0, 1.0], "data_range_from": "scheduler clip_sample_range", "clip_sample": 1.0}, 1),
    "ddim": ({"kind": "diffusion", "path": "ddim"}, PIXEL_SAMPLERS, {"scheduler": "DDIMScheduler", "pipeline": "DDIMPipeline"}, 1),
    "ddpm-v": ({"kind": "diffusion", "path": "ddpm-v"}, PIXEL_SAMPLERS, {"prediction_type": "v_prediction"}, 1),
    "ddpm-cosine": ({"kind": "diffusion", "path": "ddpm-cosine"}, PIXEL_SAMPLERS, {"data_range": [-1.0, 1.0]}, 1),
    "cm": ({"kind": "consistency", "path": "cm"}, PIXEL_SAMPLERS, {"data_range_from": "scheduler clip_denoised", "clip_denoised": 1.0}, 1),
    "cm-class": ({"kind": "consistency", "path": "cm-class", "class_label": 3}, PIXEL_SAMPLERS, {"class_label": 3}, 1),
    "lcm": ({"kind": "latent-consistency", "path": "lcm", "prompt": "a handwritten digit", "guidance_scale": 2.0}, ("latino",),
            {"guidance": "embedding", "pipeline": "LatentConsistencyModelPipeline"}, 1),
    "sd15": ({"kind": "latent-consistency", "path": "sd15", "prompt": "a digit"}, ("latino",),
             {"guidance": "none", "scheduler": "LCMScheduler", "pipeline": "StableDiffusionPipeline"}, 1),
    "sd15-lora": ({"kind": "latent-consistency", "path": "sd15", "lora": "sd15-lora", "guidance_scale": 1.5}, ("latino",),
                  {"guidance": "cfg", "lora": "sd15-lora"}, 2),
    "sdxl": ({"kind": "latent-consistency", "path": "sdxl", "guidance_scale": 2.0}, ("latino",),
             {"guidance": "cfg", "pipeline": "StableDiffusionXLPipeline", "scheduler": "LCMScheduler"}, 2),
    "sdxl-lcm-unet": ({"kind": "latent-consistency", "path": "sdxl", "unet": "sdxl-lcm-unet", "guidance_scale": 3.0}, ("latino",),
                      {"guidance": "embedding", "unet": "sdxl-lcm-unet"}, 1),
    "ddpm-fp16": ({"kind": "diffusion", "path": "ddpm-fp16", "variant": "fp16", "dtype": "bfloat16"}, PIXEL_SAMPLERS,
                  {"variant": "fp16", "network_dtype": "bfloat16"}, 1),
    "hub-cache": ({"kind": "diffusion", "path": "hub-cache/models--tiny--ddpm"}, PIXEL_SAMPLERS, {"data_range": [-1.0, 1.0]}, 1),
}
RUNS = [(name, sampler) for name, (_, samplers, _, _) in CASES.items() for sampler in samplers]
# the SMC, MAP and LATINO-PRO samplers: on one layout of each prior kind (they share the loaders exercised above)
RUNS += [("ddpm", "tds"), ("ddpm", "smc-anneal"), ("ddpm", "map-hqs"), ("ddpm", "map-admm"), ("cm-class", "tds"),
         ("cm-class", "map-hqs"), ("sd15-lora", "latino-pro"), ("sd15-lora", "map-latent"), ("lcm", "latino-pro")]


def _campaign(folder: Path, prior: dict[str, Any], sampler: str, name: str = "campaign") -> Path:
    """A one-unit campaign (1 simulated measurement, 2 chains × 2 draws, 1 for point estimates) in the layouts' folder."""
    draws = 1 if sampler in POINT_ESTIMATES else 2
    spec = {
        "name": name, "store": f"{name}.zarr", "seed": 1, "data": {"simulate": {"count": 1}},
        "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 0}, "noise": {"sigma": 0.1},
        "prior": {"sample_steps": 2, **prior}, "sampler": SAMPLERS[sampler], "chains": 2, "draws": draws,
        "chunks": {"chains": 2, "draws": draws}, "cluster": {"address": "in-process"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workdir(hub_layouts, tmp_path_factory) -> Path:
    """A folder beside which the layouts are reachable by name (symlinks; the layouts stay read-only)."""
    folder = tmp_path_factory.mktemp("campaigns")
    for name, path in hub_layouts.items():
        (folder / name).symlink_to(path, target_is_directory=True)
    return folder


@pytest.mark.parametrize("layout, sampler", RUNS, ids=[f"{a}-{b}" for a, b in RUNS])
def test_layout_runs_a_campaign(workdir: Path, hub_layouts, layout: str, sampler: str) -> None:
    prior, _, expected, calls = CASES[layout]
    path = _campaign(workdir, prior, sampler, f"{layout}-{sampler}")
    result = runner.invoke(app, ["run", str(path), "--in-process", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    group = zarr.open_group(str(workdir / f"{layout}-{sampler}.zarr"), mode="r")
    samples = np.asarray(group["samples"][...])
    draws = 1 if sampler in POINT_ESTIMATES else 2
    assert samples.shape[:3] == (1, 2, draws) and np.isfinite(samples).all()
    assert int(np.asarray(group["draws_done"][...]).min()) == draws
    truth = np.asarray(group["x_true"][...])  # drawn by prior.sample: campaign units, the [0, 1] images of the hub range
    assert np.isfinite(truth).all() and -0.5 < truth.mean() < 1.5
    described = json.loads(group.attrs["prior"]) if isinstance(group.attrs["prior"], str) else dict(group.attrs["prior"])
    for key, value in expected.items():
        assert described.get(key) == value, (key, described)
    assert described["network_calls"] == calls
    nfe = float(np.asarray(group["units"]["nfe_per_draw"][0, 0]))
    # ULA: thin 1 + burn_in 2 + the start (prior.sample, sample_steps 2) spread over 2 draws; SK-ROCK: the steps × 2 stages;
    # SMC: runs·particles·steps = 12 calls over 2 chains × 2 draws; MAP: iterations; LATINO-PRO: SAPG 1·2 + 2 final steps
    # per draw, over 2 draws; map-latent calls the decoder only (steps), never the guided UNet
    per_draw = {"ula": 1 + 2 / 2 + 2 / 2, "skrock": 2 * (1 + 2 / 2) + 2 / 2, "dps": 3, "latino": 2, "tds": 3, "smc-anneal": 3,
                "map-hqs": 2, "map-admm": 2, "latino-pro": (1 * 2 + 2 + 2) / 2}.get(sampler, 0) * calls
    if sampler == "map-latent":
        per_draw = 2
    assert nfe == pytest.approx(per_draw), (nfe, per_draw)
    assert not (Path(hub_layouts["sd15"]).parent / "unpickled.txt").exists()  # the stray .bin was never opened


# ----------------------------------------------------------------------------- refusals, one line each


def _fp16_without_variant(hub_layouts, tmp: Path) -> dict[str, Any]:
    return {"kind": "diffusion", "path": str(hub_layouts["ddpm-fp16"])}


def _bare_unet_without_scheduler(hub_layouts, tmp: Path) -> dict[str, Any]:
    shutil.copytree(hub_layouts["ddpm"] / "unet", tmp / "bare-unet")
    return {"kind": "diffusion", "path": str(tmp / "bare-unet")}


def _lora_pickle_only(hub_layouts, tmp: Path) -> dict[str, Any]:
    (tmp / "lora").mkdir()
    (tmp / "lora" / "pytorch_lora_weights.bin").write_bytes(b"not opened")
    return {"kind": "latent-consistency", "path": str(hub_layouts["sd15"]), "lora": str(tmp / "lora")}


REFUSALS: dict[str, tuple[Any, str, tuple[str, ...]]] = {
    # name: (prior spec or builder, sampler, fragments of the one line)
    "conditional cm without class_label": ({"kind": "consistency", "path": "cm-class"}, "latino",
                                           ("class-conditional (10 classes)", "add class_label")),
    "class_label out of range": ({"kind": "consistency", "path": "cm-class", "class_label": 10}, "latino", ("class_label = 10", "[0, 10)")),
    "class_label on an unconditional model": ({"kind": "consistency", "path": "cm", "class_label": 1}, "latino", ("unconditional",)),
    "fp16-only folder without variant": (_fp16_without_variant, "latino", ("diffusion_pytorch_model.fp16.safetensors", "set variant: fp16")),
    "variant absent": ({"kind": "diffusion", "path": "ddpm", "variant": "fp16"}, "latino", ("variant 'fp16'", "remove 'variant'")),
    "bare unet without scheduler": (_bare_unet_without_scheduler, "latino", ("bare UNet2DModel folder with no scheduler", "scheduler:")),
    "hub id not in the cache": ({"kind": "diffusion", "path": "google/ddpm-cifar10-32"}, "latino",
                                ("hub id", "hf download google/ddpm-cifar10-32", "give the folder")),
    "SD folder under kind diffusion": ({"kind": "diffusion", "path": "sd15"}, "latino", ("StableDiffusionPipeline", "set kind: latent-consistency")),
    "image size not a multiple": ({"kind": "diffusion", "path": "ddpm", "image_size": 31}, "latino",
                                  ("H = 31", "multiples of 2", "(30 or 32 here)")),
    "latent image size not a multiple": ({"kind": "latent-consistency", "path": "sd15", "image_size": 17}, "latino",
                                         ("VAE downsamples by 2", "(16 or 18 here)")),
    "SDXL unet in an SD folder": ({"kind": "latent-consistency", "path": "sd15", "unet": "sdxl-lcm-unet"}, "latino",
                                  ("attends to width 64", "give 32")),
    "lora with only a pickle": (_lora_pickle_only, "latino", ("pytorch_lora_weights.bin", "refused")),
    "bad data_range": ({"kind": "diffusion", "path": "ddpm", "data_range": [1, -1]}, "latino", ("data_range", "lo < hi")),
    "latent prior under ULA": ({"kind": "latent-consistency", "path": "sd15"}, "ula", ("needs a pixel-space prior",)),
    "latino-pro on SDXL": ({"kind": "latent-consistency", "path": "sdxl"}, "latino-pro", ("SDXL's pair", "use sampler latino")),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_is_one_line_and_writes_no_store(workdir: Path, hub_layouts, tmp_path: Path, case: str) -> None:
    prior, sampler, fragments = REFUSALS[case]
    spec = prior(hub_layouts, tmp_path) if callable(prior) else prior
    path = _campaign(workdir, spec, sampler, "refused-" + "".join(c if c.isalnum() else "-" for c in case))
    result = runner.invoke(app, ["run", str(path), "--in-process", "--no-progress"])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not path.with_suffix(".zarr").exists()


def test_hub_id_resolves_through_the_local_cache(hub_layouts, monkeypatch) -> None:
    """A hub id is looked up in the hub cache (refs/main → snapshots/<rev>), as from_pretrained looks it up."""
    from huggingface_hub import constants

    from uqcampaign.kernels.priors.registry import build_prior

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_layouts["hub-cache"]))
    prior = build_prior({"kind": "diffusion", "path": "tiny/ddpm"})
    direct = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddpm"])})
    assert prior.img_shape == (3, 32, 32) and "snapshots" in str(prior.unet.config._name_or_path)
    for a, b in zip(prior.unet.parameters(), direct.unet.parameters()):
        assert a.data_ptr() != b.data_ptr() and bool((a == b).all())


def test_sizes_are_checked_before_any_weight_is_read(hub_layouts, tmp_path: Path) -> None:
    """With unreadable weights, a bad image size or class label is still the error: only JSON was read."""
    from uqcampaign.kernels.errors import UQError
    from uqcampaign.kernels.priors.registry import build_prior

    folder = tmp_path / "cm-class"
    shutil.copytree(hub_layouts["cm-class"], folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    for spec, fragment in (({"image_size": 31, "class_label": 1}, "H = 31"), ({}, "add class_label"),
                           ({"class_label": 1}, "cannot load unet")):
        with pytest.raises(UQError) as info:
            build_prior({"kind": "consistency", "path": str(folder), **spec})
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_range_sources_and_support(hub_layouts) -> None:
    """Where data_range comes from (recorded in describe()) and the support box it gives in campaign units."""
    from uqcampaign.kernels.priors.registry import build_prior

    repo = Path(__file__).resolve().parents[2]
    hub = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddpm"])})
    assert hub.describe()["data_range_from"] == "scheduler clip_sample_range" and hub.support() == (-1.0, 2.0)
    shipped = build_prior({"kind": "diffusion", "path": "priors/gmm8-diffusion"}, repo)
    assert shipped.describe()["data_range_from"] == "training.json" and shipped.pixel_range.identity
    assert shipped.support() == (-1.0, 2.0)
    units255 = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddpm"]), "image_range": [0, 255]})
    assert units255.support() == (-255.0, 510.0) and units255.pixel_range.scale == pytest.approx(2 / 255)
    bare = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddpm"] / "unet"), "data_range": [0, 1],
                        "scheduler": str(hub_layouts["ddpm"] / "scheduler")})
    assert bare.describe()["data_range_from"] == "prior spec" and bare.pixel_range.identity
    assert bare.describe()["pipeline"] == "bare UNet2DModel"
    lcm = build_prior({"kind": "latent-consistency", "path": "priors/digits16-lcm"}, repo)
    assert lcm.describe()["data_range"] == [-1.0, 1.0] and lcm.support() == (-1.0, 2.0)


def test_clip_sample_is_honoured_in_network_units(hub_layouts) -> None:
    """clip_sample: true clamps x̂_0 to [-1, 1] in network units, i.e. [0, 1] in campaign units; false does not."""
    from uqcampaign.kernels.priors.registry import build_prior

    x_t = 50.0 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clipped = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddpm"])})
    unclipped = build_prior({"kind": "diffusion", "path": str(hub_layouts["ddpm"]), "scheduler": {"class": "DDPMScheduler", "clip_sample": False}})
    with torch.no_grad():
        a, b = clipped.denoise(x_t, 999), unclipped.denoise(x_t, 999)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and (a == 0).any() and (a == 1).any()
    assert float(b.abs().max()) > 10.0  # x̂_0 at t = 999 amplified by 1/sqrt(ᾱ) (the issue's ±790 on hub models)
    torch.testing.assert_close(a, b.clamp(0, 1))


@pytest.mark.parametrize("layout, spec", [("sdxl", {"guidance_scale": 2.0}), ("sd15", {"lora": "sd15-lora", "guidance_scale": 1.5}),
                                          ("lcm", {"guidance_scale": 2.0})])
def test_condition_argument_is_differentiable(hub_layouts, layout: str, spec: dict) -> None:
    """consistency(z_t, t, condition): the prior's own condition gives the same map; gradients reach the embedding
    (a tensor for SD/LCM, the pair (embeds, pooled) for SDXL), with classifier-free guidance too."""
    from uqcampaign.kernels.priors.registry import build_prior

    path = hub_layouts[layout]
    extra = {key: str(path.parent / value) if key == "lora" else value for key, value in spec.items()}
    prior = build_prior({"kind": "latent-consistency", "path": str(path), **extra})
    z = torch.randn(3, *prior.latent_shape, generator=torch.Generator().manual_seed(0))
    own = prior.consistency(z, 500)
    condition = tuple(c.clone().requires_grad_(True) for c in prior.condition) if isinstance(prior.condition, tuple) \
        else prior.condition.clone().requires_grad_(True)
    out = prior.consistency(z, 500, condition=condition)
    torch.testing.assert_close(out, own)
    grads = torch.autograd.grad(out.square().sum(), condition if isinstance(condition, tuple) else (condition,))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert (layout == "sdxl") == isinstance(prior.condition, tuple)


@pytest.mark.parametrize("kind, layout", [("diffusion", "ddpm"), ("consistency", "cm")])
def test_langevin_box_and_start_come_from_the_learned_prior(hub_layouts, kind: str, layout: str) -> None:
    """box: auto is the prior's support() (data_range [-1, 1] → [-1, 2] in campaign units, every pixel);
    init: prior starts each chain at its own prior.sample draw from the unit's generator (campaign units);
    project keeps every draw inside that box."""
    from uqcampaign.kernels.operators.registry import build_operator
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.samplers.base import chains_measurement
    from uqcampaign.kernels.samplers.langevin import langevin_parameters, start
    from uqcampaign.kernels.samplers.registry import build_sampler
    from uqcampaign.kernels.samplers.ula import ULAConfig

    prior = build_prior({"kind": kind, "path": str(hub_layouts[layout]), "sample_steps": 2})
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, prior.img_shape)
    y = operator.A(0.5 * torch.ones(1, *prior.img_shape, dtype=torch.float64))[0]
    params = langevin_parameters(ULAConfig(box="auto"), operator, prior, 0.1, 1.0, 1 / 3, "ula")
    lo, hi = params.box
    assert lo.shape == hi.shape == prior.img_shape and bool((lo == -1.0).all() & (hi == 2.0).all())
    x0 = start("prior", chains_measurement(y, 3), operator, prior, torch.Generator().manual_seed(5))
    torch.testing.assert_close(x0, prior.sample(3, torch.Generator().manual_seed(5)).to(torch.float64))
    assert float(x0.std()) > 0.05 and not torch.equal(x0[0], x0[1])  # independent draws, not one point
    sampler = build_sampler({"kind": "ula", "burn_in": 1, "thin": 1, "box": "auto", "box_rule": "project", "init": "prior"})
    draws = list(sampler.run(y, operator, prior, 0.1, 3, 2, torch.Generator().manual_seed(5)))
    x = torch.stack([d.x for d in draws])
    assert bool((x >= -1.0).all() & (x <= 2.0).all()) and torch.isfinite(x).all()
    # the start's sample_steps network calls are charged to draw 0 (burn-in 1 + thin 1 + 2); pinv costs none
    assert prior.sample_calls == 2 and [d.nfe for d in draws] == [4, 1]
    pinv = build_sampler({"kind": "ula", "burn_in": 1, "thin": 1, "init": "pinv"})
    assert [d.nfe for d in pinv.run(y, operator, prior, 0.1, 3, 2, torch.Generator().manual_seed(5))] == [2, 1]
    from uqcampaign.pipeline.preflight import start_calls  # the pre-flight's planned calls per unit count the start too

    assert start_calls(sampler, prior.describe()) == 2 and start_calls(pinv, prior.describe()) == 0
    default = build_prior({"kind": kind, "path": str(hub_layouts[layout])})
    assert default.sample_calls == {"diffusion": 1000, "consistency": 1}[kind]  # DDPM: all T steps by default
