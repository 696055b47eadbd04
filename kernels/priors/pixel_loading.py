"""Loading a pixel-space ``UNet2DModel`` + scheduler (the ``diffusion`` and ``consistency`` priors) and its pixel range.

Everything a folder says is read from JSON before any weight: the pipeline class, the UNet
config (channels, downsampling, class embedding), the scheduler config, the pixel range. The
range the network was trained on (``data_range``) comes from, in order:

1. the prior spec's ``data_range`` key;
2. the folder's ``training.json`` (written by ``uqc train-prior``) ``data_range``; a
   ``training.json`` without it is an older ``uqc train-prior`` folder, trained on the raw
   ``[0, 1]`` data: ``[0, 1]``;
3. the scheduler: ``clip_sample: true`` means ``[-clip_sample_range, clip_sample_range]``
   (DDPM/DDIM), ``clip_denoised: true`` means ``[-1, 1]`` (consistency models);
4. ``[-1, 1]``, the convention of every hub pixel model (model cards rescale by ``(x + 1) · 127.5``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.priors.hf_loading import (
    ModelFolder,
    check_component_class,
    image_shape,
    load_component,
    open_model_folder,
    parse_dtype,
    parse_variant,
    read_json,
    scheduler_config,
)
from uqcampaign.kernels.priors.network import check_class_label, unet_downsampling
from uqcampaign.kernels.priors.pixel_range import (
    SYMMETRIC_RANGE,
    UNIT_RANGE,
    PixelRange,
    parse_range,
)

__all__ = ["PixelModel", "clip_range_of", "load_pixel_model", "pixel_range_of"]


@dataclass
class PixelModel:
    """What a pixel prior is built from: networks, shapes, range and the record of where they came from."""

    unet: Any
    scheduler: Any
    img_shape: tuple[int, int, int]
    pixel_range: PixelRange
    class_label: int | None
    clip_range: float | None
    source: dict[str, Any]


def _training_record(folder: ModelFolder, kind: str) -> dict[str, Any] | None:
    path = folder.root / "training.json"
    return read_json(path, f"prior {kind!r} training record") if path.is_file() else None


def pixel_range_of(spec: dict[str, Any], folder: ModelFolder, sched: dict[str, Any], kind: str,
                   project_range: tuple[float, float] = UNIT_RANGE, default_origin: str = "hub pixel-model default") -> tuple[PixelRange, str]:
    """``(PixelRange, where data_range came from)`` by the rule of the module docstring.

    ``project_range``: what an older ``training.json`` without ``data_range`` means for this kind;
    ``default_origin`` names the ``[-1, 1]`` default in :meth:`describe` (latent priors: the VAE's convention).
    """
    image_range = parse_range(spec.get("image_range", UNIT_RANGE), f"prior {kind!r} image_range")
    record = _training_record(folder, kind)
    if "data_range" in spec:
        data_range, origin = parse_range(spec["data_range"], f"prior {kind!r} data_range"), "prior spec"
    elif record is not None:
        data_range = parse_range(record.get("data_range", project_range), f"prior {kind!r} training.json data_range")
        origin = "training.json"
    elif sched.get("clip_sample"):
        r = float(sched.get("clip_sample_range", 1.0))
        data_range, origin = (-r, r), "scheduler clip_sample_range"
    else:
        data_range, origin = SYMMETRIC_RANGE, ("scheduler clip_denoised" if sched.get("clip_denoised") else default_origin)
    return PixelRange(data_range, image_range), origin


def clip_range_of(sched: dict[str, Any]) -> float | None:
    """The bound ``r`` the scheduler clips x̂_0 to, in network units (``clip_sample``/``clip_denoised``), or None."""
    if sched.get("clip_sample"):
        return float(sched.get("clip_sample_range", 1.0))
    if sched.get("clip_denoised"):
        return 1.0  # diffusers' CMStochasticIterativeScheduler clamps to [-1, 1]
    return None


def load_pixel_model(spec: dict[str, Any], root: Path | str | None, kind: str, pipelines: tuple[str, ...],
                     schedulers: tuple[str, ...]) -> PixelModel:
    """Resolve, check (configs only) and load a ``UNet2DModel`` pipeline or bare UNet folder plus its scheduler."""
    import diffusers

    variant = parse_variant(spec.get("variant"), kind)
    dtype = parse_dtype(spec.get("dtype"), kind)
    folder = open_model_folder(spec, root, kind, pipelines, bare=("UNet2DModel",))
    sub = "unet" if folder.pipeline is not None else ""
    unet_cfg = check_component_class(folder.root, sub, "config.json", kind, ("UNet2DModel",))
    sched = scheduler_config(spec.get("scheduler"), folder, root, kind, schedulers)
    channels = int(unet_cfg.get("in_channels", 3))
    out_channels = int(unet_cfg.get("out_channels", channels))
    if out_channels != channels:
        raise UQError(f"prior {kind!r}: UNet maps {channels} to {out_channels} channels; a denoiser needs equal counts "
                      "(learned-variance models are not supported)")
    size = unet_cfg.get("sample_size") or 32
    default_hw = (size, size) if isinstance(size, int) else tuple(size)
    shape = image_shape(spec, channels, default_hw, unet_downsampling(unet_cfg), kind, "UNet")
    label = check_class_label(unet_cfg, spec.get("class_label"), kind)
    pixel_range, origin = pixel_range_of(spec, folder, sched, kind)
    scheduler = getattr(diffusers, sched["_class_name"]).from_config(sched)
    unet = load_component(diffusers.UNet2DModel, folder.root, sub, kind, variant=variant, dtype=dtype)
    source = {"pipeline": folder.pipeline or f"bare {folder.model_class}", "data_range_from": origin}
    if variant is not None:
        source["variant"] = variant
    if spec.get("scheduler") is not None:
        source["scheduler_from"] = "prior spec"
    return PixelModel(unet, scheduler, shape, pixel_range, label, clip_range_of(sched), source)
