"""Offline, safetensors-only loading of diffusers / transformers model folders.

A learned prior is a folder written by a diffusers pipeline's ``save_pretrained``::

    model_index.json            {"_class_name": "DDPMPipeline", "unet": [...], ...}
    unet/config.json            {"_class_name": "UNet2DModel", ...}
    unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json

so a local copy of a full-size hub model (``google/ddpm-cifar10-32``,
``openai/diffusers-cd_imagenet64_l2``, ``SimianLuo/LCM_Dreamshaper_v7``) loads with the
same code. Every check here turns a bad folder into one-line :class:`UQError` *before*
diffusers sees it: a missing folder, a folder of another kind, a pickle weight file, an
image size the model does not fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from uqcampaign.kernels.errors import UQError, require

__all__ = [
    "PICKLE_SUFFIXES",
    "set_offline",
    "resolve_model_dir",
    "read_json",
    "check_pipeline_class",
    "check_component_class",
    "check_no_pickle",
    "check_image_shape",
    "open_model_folder",
]

# Weight files that unpickle on load: never opened (arbitrary code execution).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The training checkpoint written beside the model (safetensors + JSON); ignored by loaders.
_IGNORED_DIRS = ("checkpoint",)


def set_offline() -> None:
    """Forbid hub access: a local path must never trigger a download or a 28 s retry loop."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_model_dir(spec: dict[str, Any], root: Path | str | None) -> Path:
    """The model folder named by ``spec["path"]``, relative to ``root`` (the campaign file's folder)."""
    kind = spec.get("kind", "?")
    path = spec.get("path")
    require(isinstance(path, (str, os.PathLike)) and str(path) != "",
            f"prior {kind!r} needs 'path': a model folder written by save_pretrained (got {path!r})")
    folder = Path(path).expanduser()
    if not folder.is_absolute() and root is not None:
        folder = Path(root) / folder
    require(not folder.is_file(), f"prior {kind!r}: {str(folder)!r} is a file, not a model folder; "
                                  f"set 'path' to the folder written by save_pretrained")
    require(folder.is_dir(), f"prior {kind!r}: model folder {str(folder)!r} does not exist; "
                             f"train one with `uqc train-prior {kind} --out {path}` or fix 'path'")
    return folder


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; UQError naming ``what`` when absent or malformed."""
    require(path.is_file(), f"{what}: {str(path)!r} is missing; the folder was not written by save_pretrained")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UQError(f"{what}: {str(path)!r} is not valid JSON ({err.__class__.__name__}); rewrite it with save_pretrained") from None
    require(isinstance(data, dict), f"{what}: {str(path)!r} is not a JSON object")
    return data


def check_pipeline_class(folder: Path, kind: str, accepted: tuple[str, ...]) -> dict[str, Any]:
    """``model_index.json`` of ``folder``, refusing a pipeline class outside ``accepted``."""
    index = read_json(folder / "model_index.json", f"prior {kind!r}")
    name = index.get("_class_name")
    require(name in accepted, f"prior {kind!r}: {str(folder)!r} holds a {name!r} folder, not one of "
                              f"{', '.join(accepted)}; point 'path' at a {kind} model or set kind to match the folder")
    return index


def check_component_class(folder: Path, sub: str, config_name: str, kind: str, accepted: tuple[str, ...]) -> dict[str, Any]:
    """``folder/sub/config_name`` of a pipeline component, refusing a class outside ``accepted``."""
    config = read_json(folder / sub / config_name, f"prior {kind!r} component {sub!r}")
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    require(name in accepted, f"prior {kind!r}: component {sub!r} of {str(folder)!r} is a {name!r}, "
                              f"expected {' or '.join(accepted)}; this folder is of another kind")
    return config


def check_no_pickle(folder: Path, kind: str) -> None:
    """Refuse any pickle-based weight file in ``folder`` (safetensors only, DESIGN §2)."""
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
            raise UQError(f"prior {kind!r}: {str(path)!r} is a pickle weight file, refused (it can run code on load); "
                          f"convert it to .safetensors and delete it")


def check_image_shape(spec: dict[str, Any], img_shape: tuple[int, int, int], kind: str) -> None:
    """Refuse a campaign image shape (``spec["img_shape"]`` or ``spec["image_size"]``) the model does not take."""
    want = spec.get("img_shape")
    if want is None and spec.get("image_size") is not None:
        size = spec["image_size"]
        want = (img_shape[0], size, size) if isinstance(size, int) else (img_shape[0], *size)
    if want is None:
        return
    require(tuple(int(s) for s in want) == tuple(img_shape),
            f"prior {kind!r}: images of shape {tuple(want)} do not fit the model, which takes {tuple(img_shape)} "
            f"(C, H, W); resize the data or train a prior at that size")


def open_model_folder(spec: dict[str, Any], root: Path | str | None, kind: str, accepted: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    """Resolve, vet and go offline for a model folder: ``(folder, model_index)``."""
    folder = resolve_model_dir(spec, root)
    index = check_pipeline_class(folder, kind, accepted)
    check_no_pickle(folder, kind)
    set_offline()
    return folder, index
