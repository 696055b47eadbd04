"""Offline, safetensors-only loading of diffusers / transformers model folders, resolved as ``from_pretrained`` does.

A learned prior's ``path`` is one of (tried in this order):

* a pipeline folder written by ``save_pretrained`` (``model_index.json`` + one folder per
  component, e.g. ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``), the layout
  of ``google/ddpm-cifar10-32``, ``openai/diffusers-cd_imagenet64_l2``, ``SimianLuo/LCM_Dreamshaper_v7``,
  ``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-xl-base-1.0``;
* a bare model folder (``config.json`` + weights, no ``model_index.json``), e.g. a distilled UNet;
* a Hugging Face hub-cache repo folder ``models--org--name``: the snapshot that ``refs/main`` names
  (``snapshots/<rev>``), found by ``huggingface_hub.snapshot_download(local_files_only=True)`` as
  ``from_pretrained`` finds it (a single snapshot without ``refs/`` is taken too);
* a hub id ``org/name`` that is not a local folder: its snapshot in the local hub cache
  (``HF_HUB_CACHE``), never a download.

Only the components a prior loads are checked: each must hold safetensors weights for the
requested ``variant`` (``diffusion_pytorch_model[.fp16].safetensors``, ``model[.fp16].safetensors``
or a sharded ``*.safetensors.index[.fp16].json``); a pickle file (``.bin``, ``.ckpt``, ...) is never
opened (``use_safetensors=True``) and refused only when a loaded component has nothing else.
Every check reads JSON configs only, so a bad folder fails in one line before any weight is read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from uqcampaign.kernels.errors import UQError, require

__all__ = [
    "DTYPES",
    "PICKLE_SUFFIXES",
    "PIPELINE_KINDS",
    "ModelFolder",
    "check_component_class",
    "check_weights",
    "first_line",
    "image_shape",
    "load_component",
    "open_model_folder",
    "parse_dtype",
    "parse_variant",
    "quiet_loading",
    "read_json",
    "resolve_model_dir",
    "scheduler_config",
    "set_offline",
]

# Weight files that unpickle on load: never opened (arbitrary code execution).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Which prior kind takes each pipeline class (for the hint when a folder is given to another kind).
PIPELINE_KINDS = {
    "DDPMPipeline": "diffusion",
    "DDIMPipeline": "diffusion",
    "ConsistencyModelPipeline": "consistency",
    "LatentConsistencyModelPipeline": "latent-consistency",
    "StableDiffusionPipeline": "latent-consistency",
    "StableDiffusionXLPipeline": "latent-consistency",
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WEIGHT_STEMS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}


def set_offline() -> None:
    """Forbid hub access: a local path must never trigger a download or a 28 s retry loop."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """diffusers / transformers log only errors and draw no progress bars while a prior loads (their notices are not the user's)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    before = dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(before[0])
        tlog.set_verbosity(before[1])
        if before[2]:
            dlog.enable_progress_bar()
        if before[3]:
            tlog.enable_progress_bar()


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its class name when empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


# ----------------------------------------------------------------------------- where the folder is


def _cache_repo_id(folder: Path) -> str | None:
    """``org/name`` of a hub-cache repo folder ``models--org--name`` (holding ``snapshots/``), else None."""
    if folder.name.startswith("models--") and (folder / "snapshots").is_dir():
        return folder.name[len("models--"):].replace("--", "/")
    return None


def _snapshot(repo_id: str, cache_dir: Path | None) -> Path | None:
    """The local snapshot of ``repo_id`` as ``from_pretrained`` finds it (``refs/main``), or None."""
    from huggingface_hub import snapshot_download

    try:
        with quiet_loading():
            return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError), a bad repo id, a malformed cache: the caller explains
        return None


def _cache_snapshot(folder: Path, repo_id: str, kind: str, key: str) -> Path:
    """The snapshot of hub-cache repo folder ``folder``: ``refs/main``'s, else its only one."""
    found = _snapshot(repo_id, folder.parent)
    if found is not None:
        return found
    snapshots = sorted(p for p in (folder / "snapshots").iterdir() if p.is_dir())
    require(len(snapshots) == 1,
            f"prior {kind!r}: {key} {str(folder)!r} is a hub-cache folder with {len(snapshots)} snapshots and no refs/main; "
            f"set '{key}' to one of {', '.join(repr(str(p)) for p in snapshots) or 'its snapshots (none found)'}")
    return snapshots[0]


def resolve_model_dir(value: Any, root: Path | str | None, kind: str, key: str = "path", *, allow_file: bool = False) -> Path:
    """The folder (or, with ``allow_file``, file) named by ``spec[key]``: see the module docstring for the order."""
    require(isinstance(value, (str, os.PathLike)) and str(value) != "",
            f"prior {kind!r} needs '{key}': a model folder written by save_pretrained (got {value!r})")
    location = Path(value).expanduser()
    if not location.is_absolute() and root is not None:
        location = Path(root) / location
    if location.is_file():
        require(allow_file, f"prior {kind!r}: {str(location)!r} is a file, not a model folder; set '{key}' to the folder written by save_pretrained")
        return location
    if location.is_dir():
        repo_id = _cache_repo_id(location)
        return location if repo_id is None else _cache_snapshot(location, repo_id, kind, key)
    text = str(value)
    if _HUB_ID.match(text) and not text.startswith("."):
        cached = _snapshot(text, None)
        if cached is not None:
            return cached
        from huggingface_hub import constants

        raise UQError(f"prior {kind!r}: {key} {text!r} is no folder here and looks like a hub id, which is not in the local hub cache "
                      f"({constants.HF_HUB_CACHE}); nothing is downloaded at run time: download it with `hf download {text}` "
                      f"(`huggingface-cli download {text}` with older huggingface_hub) on a machine with internet and give the folder")
    hint = f"; fix '{key}' (relative paths start at the campaign file's folder)"
    if key == "path":
        hint += f" or train one with `uqc train-prior {kind} --out {value}`"
    raise UQError(f"prior {kind!r}: model folder {str(location)!r} does not exist{hint}")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; UQError naming ``what`` when absent or malformed."""
    require(path.is_file(), f"{what}: {str(path)!r} is missing; the folder was not written by save_pretrained")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UQError(f"{what}: {str(path)!r} is not valid JSON ({err.__class__.__name__}); rewrite it with save_pretrained") from None
    require(isinstance(data, dict), f"{what}: {str(path)!r} is not a JSON object")
    return data


@dataclass(frozen=True)
class ModelFolder:
    """A resolved model folder: a pipeline (``model_index.json``) or a bare model (``config.json``).

    ``root``: the folder; ``pipeline``: the pipeline class (None for a bare model); ``index``:
    ``model_index.json`` (``{}`` for a bare model); ``model_class``: a bare model's class.
    """

    root: Path
    pipeline: str | None
    index: dict[str, Any] = field(default_factory=dict)
    model_class: str | None = None

    def component(self, sub: str) -> str | None:
        """The class ``model_index.json`` names for component ``sub`` (None when absent or null)."""
        entry = self.index.get(sub)
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None:
            return str(entry[1])
        return None

    def has(self, sub: str) -> bool:
        return self.component(sub) is not None and (self.root / sub).is_dir()


def open_model_folder(spec: Mapping[str, Any], root: Path | str | None, kind: str, accepted: tuple[str, ...],
                      bare: tuple[str, ...] = ()) -> ModelFolder:
    """Resolve ``spec["path"]``, read its ``model_index.json`` (pipeline in ``accepted``) or ``config.json``
    (a bare model of a class in ``bare``), and go offline. Reads JSON only."""
    folder = resolve_model_dir(spec.get("path"), root, kind)
    set_offline()
    if (folder / "model_index.json").is_file():
        index = read_json(folder / "model_index.json", f"prior {kind!r}")
        name = index.get("_class_name")
        if name not in accepted:
            other = PIPELINE_KINDS.get(str(name))
            fix = (f"set kind: {other}" if other is not None and other != kind
                   else f"point 'path' at one of {', '.join(accepted)} (prior kinds take {', '.join(sorted(PIPELINE_KINDS))})")
            raise UQError(f"prior {kind!r}: {str(folder)!r} holds a {name!r} folder, not one of {', '.join(accepted)}; {fix}")
        return ModelFolder(folder, str(name), index)
    if (folder / "config.json").is_file():
        config = read_json(folder / "config.json", f"prior {kind!r}")
        name = config.get("_class_name") or (config.get("architectures") or [None])[0]
        if name not in bare:
            if bare:
                fix = f"kind {kind} takes a bare {' or '.join(bare)} folder with a 'scheduler' key, or a pipeline folder"
            else:
                fix = f"give the pipeline folder ({', '.join(accepted)}) as 'path'"
                if name == "UNet2DConditionModel":
                    fix += " and this folder as 'unet'"
            raise UQError(f"prior {kind!r}: {str(folder)!r} is a bare {name!r} model folder (no model_index.json); {fix}")
        return ModelFolder(folder, None, {}, str(name))
    repos = sorted(p.name for p in folder.glob("models--*") if p.is_dir())
    if repos:
        raise UQError(f"prior {kind!r}: {str(folder)!r} is a hub cache; set 'path' to one of its repo folders "
                      f"({', '.join(repos[:5])}) or give the hub id ORG/NAME")
    if (folder / "snapshots").is_dir():
        raise UQError(f"prior {kind!r}: {str(folder)!r} looks like a hub-cache folder but is not named models--ORG--NAME; "
                      f"set 'path' to one of its snapshots/<rev> folders")
    raise UQError(f"prior {kind!r}: {str(folder)!r} has neither model_index.json (a pipeline folder) nor config.json (a model folder); "
                  f"give the folder save_pretrained wrote (for a hub download: the snapshot folder)")


def check_component_class(folder: Path, sub: str, config_name: str, kind: str, accepted: tuple[str, ...]) -> dict[str, Any]:
    """``folder/sub/config_name`` of a component (``sub = ""``: the folder itself), refusing a class outside ``accepted``."""
    where = folder / sub if sub else folder
    label = f"component {sub!r}" if sub else "model"
    config = read_json(where / config_name, f"prior {kind!r} {label}")
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    require(name in accepted, f"prior {kind!r}: {label} of {str(folder)!r} is a {name!r}, "
                              f"expected {' or '.join(accepted)}; this folder is of another kind")
    return config


def _variant_of(name: str, stem: str) -> str | None:
    """``fp16`` of ``diffusion_pytorch_model.fp16.safetensors`` or ``….safetensors.index.fp16.json`` (None: no variant)."""
    rest = name[len(stem) + 1:]
    if rest == "safetensors" or rest.startswith("safetensors.index"):
        parts = rest.split(".")
        return parts[2] if len(parts) == 4 else None
    return rest.split(".")[0] or None


def check_weights(component_dir: Path, library: str, kind: str, variant: str | None) -> None:
    """UQError unless ``component_dir`` holds safetensors weights of ``variant``; pickle files are refused
    only when nothing else is there (they are never opened: loads pass ``use_safetensors=True``)."""
    stem = _WEIGHT_STEMS[library]
    wanted = ([f"{stem}.safetensors", f"{stem}.safetensors.index.json"] if variant is None
              else [f"{stem}.{variant}.safetensors", f"{stem}.safetensors.index.{variant}.json"])
    if any((component_dir / name).is_file() for name in wanted):
        return
    files = sorted(p.name for p in component_dir.iterdir() if p.is_file()) if component_dir.is_dir() else []
    # single files and shard indexes (shards themselves, *-00001-of-00002.safetensors, name no variant of their own)
    safe = [name for name in files if name.startswith(stem) and "-of-" not in name
            and (name.endswith(".safetensors") or name.endswith(".json") and ".safetensors.index" in name)]
    if safe:
        found = sorted({str(_variant_of(name, stem)) for name in safe})
        fix = ("remove 'variant'" if "None" in found else f"set variant: {found[0]}") if variant is not None else f"set variant: {found[0]}"
        raise UQError(f"prior {kind!r}: {str(component_dir)!r} has no {wanted[0]} (variant {variant!r}) but has {', '.join(safe)}; {fix}")
    pickles = [name for name in files if Path(name).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise UQError(f"prior {kind!r}: {str(component_dir / pickles[0])!r} is a pickle weight file, refused (it can run code on load) "
                      f"and {str(component_dir)!r} has no .safetensors; convert it (load it once where you trust it and "
                      f"save_pretrained(safe_serialization=True)) and delete it")
    raise UQError(f"prior {kind!r}: {str(component_dir)!r} has no weights ({wanted[0]}); save the model with save_pretrained(safe_serialization=True)")


def load_component(cls: Any, folder: Path, sub: str, kind: str, *, variant: str | None = None,
                   dtype: torch.dtype | None = None, library: str = "diffusers") -> Any:
    """``cls.from_pretrained(folder, subfolder=sub)`` offline, safetensors only, weights checked first; one-line errors."""
    check_weights(folder / sub if sub else folder, library, kind, variant)
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True}
    if sub:
        kwargs["subfolder"] = sub
    if variant is not None:
        kwargs["variant"] = variant
    if dtype is not None:
        kwargs["torch_dtype" if library == "diffusers" else "dtype"] = dtype
    try:
        with quiet_loading():
            return cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise UQError(f"prior {kind!r}: cannot load {sub or 'the model'} of {str(folder)!r}: {first_line(err)}") from None


def scheduler_config(value: Any, folder: ModelFolder, root: Path | str | None, kind: str, accepted: tuple[str, ...]) -> dict[str, Any]:
    """The scheduler config (with ``_class_name`` in ``accepted``) a prior uses.

    ``value`` is the spec's ``scheduler`` key: None (the pipeline's ``scheduler/``), a folder or a
    ``scheduler_config.json`` file, or a mapping ``{class: DDPMScheduler, <config keys>}``.
    """
    if value is None:
        require(folder.pipeline is not None,
                f"prior {kind!r}: {str(folder.root)!r} is a bare {folder.model_class} folder with no scheduler; add "
                f"`scheduler: <folder holding scheduler_config.json>` or `scheduler: {{class: {accepted[0]}, ...}}` to the prior")
        config = read_json(folder.root / "scheduler" / "scheduler_config.json", f"prior {kind!r} component 'scheduler'")
    elif isinstance(value, Mapping):
        config = {key: item for key, item in value.items() if key not in ("class", "_class_name")}
        config["_class_name"] = value.get("class", value.get("_class_name"))
    else:
        location = resolve_model_dir(value, root, kind, "scheduler", allow_file=True)
        for candidate in (location, location / "scheduler_config.json", location / "scheduler" / "scheduler_config.json"):
            if candidate.is_file():
                config = read_json(candidate, f"prior {kind!r} scheduler")
                break
        else:
            raise UQError(f"prior {kind!r}: scheduler folder {str(location)!r} holds no scheduler_config.json; give the scheduler/ folder of a pipeline")
    name = config.get("_class_name")
    require(name in accepted, f"prior {kind!r}: scheduler class {name!r} is not one of {', '.join(accepted)}; "
                              f"use one of those (e.g. scheduler: {{class: {accepted[0]}}})")
    return config


# ----------------------------------------------------------------------------- keys


def parse_dtype(value: Any, kind: str) -> torch.dtype | None:
    """``dtype`` key → torch dtype (None: the weights' own dtype is kept, float32 in campaigns)."""
    if value is None:
        return None
    require(isinstance(value, str) and value in DTYPES,
            f"prior {kind!r}: dtype = {value!r} is not one of {', '.join(DTYPES)}; networks compute in it (formulas stay in the chains' dtype)")
    return DTYPES[value]


def parse_variant(value: Any, kind: str) -> str | None:
    """``variant`` key (e.g. ``fp16``): the weight-file infix ``diffusion_pytorch_model.<variant>.safetensors``."""
    require(value is None or (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_]+", value) is not None),
            f"prior {kind!r}: variant = {value!r} must be a weight-file variant such as fp16 or bf16")
    return value


def image_shape(spec: Mapping[str, Any], channels: int, default_hw: tuple[int, int], factor: int, kind: str,
                what: str) -> tuple[int, int, int]:
    """The campaign image shape ``(C, H, W)``: ``spec["img_shape"]`` or ``spec["image_size"]`` (an int or
    ``[H, W]``) or the model's default; ``H`` and ``W`` must be multiples of ``factor`` (``what`` names the
    network that downsamples). Checked from configs, before any weight is read."""
    want = spec.get("img_shape")
    size = spec.get("image_size")
    if want is None and size is not None:
        ok = isinstance(size, int) and not isinstance(size, bool) or (isinstance(size, (list, tuple)) and len(size) == 2)
        require(ok, f"prior {kind!r}: image_size = {size!r} must be an integer or [H, W]")
        want = (channels, size, size) if isinstance(size, int) else (channels, *size)
    if want is None:
        want = (channels, *default_hw)
    ok = isinstance(want, (list, tuple)) and len(want) == 3 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in want)
    require(ok, f"prior {kind!r}: img_shape = {want!r} must be [C, H, W] with positive integers")
    c, h, w = (int(s) for s in want)
    require(c == channels, f"prior {kind!r}: images with {c} channels do not fit the model, which takes {channels} "
                           f"(img_shape {tuple(want)}); use {channels}-channel images")
    for side, name in ((h, "H"), (w, "W")):
        if side % factor:
            below, above = factor * max(1, side // factor), factor * math.ceil(side / factor)
            raise UQError(f"prior {kind!r}: image {name} = {side} does not fit the model: the {what} downsamples by {factor}, "
                          f"so H and W must be multiples of {factor} ({below} or {above} here); resize the data")
    return c, h, w
