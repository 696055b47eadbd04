"""Build a prior from its campaign spec: ``build_prior({"kind": "gmm", "file": "priors/digits16.npz"})``.

Each kind maps to a ``"module:function"`` loader imported only when that kind is built, so
loading a ``gmm`` never imports diffusers. A loader takes ``(spec, root)``: the spec without
``None`` values, and the folder that relative paths start from (the campaign file's folder).

=====================  ==============================================================
kind                   spec
=====================  ==============================================================
``gaussian``           ``{file: g.npz}`` (keys ``mean (C,H,W)`` and ``variance (C,H,W)``
                       or ``covariance (d,d)``) or ``{shape: [1,8,8], mean: 0.5, variance: 0.04}``
``gmm``                ``{file: x.npz}`` (keys ``weights (K,)``, ``means``, ``variances (K,C,H,W)``;
                       a conditional mixture: ``logit_weights (K,k)`` and ``condition (k,)``,
                       the spec's ``condition: [...]`` replacing the file's)
``diffusion``          ``{path: folder}`` (a diffusers ``save_pretrained`` folder, a hub-cache folder or a
                       cached hub id) plus ``data_range``, ``variant``, ``dtype``, ``scheduler``, ``class_label``, ...
``consistency``        ``{path: folder}`` plus the same keys
``latent-consistency`` ``{path: folder, prompt}`` plus ``guidance_scale``, ``lora``, ``unet``, ``variant``, ``dtype``, ...
=====================  ==============================================================

:data:`PRIOR_KEYS` lists the keys each kind takes (the loaders check them with it), so
:func:`check_prior_spec` can refuse a bad kind or key without importing a loader or reading a file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.priors.base import Prior

__all__ = ["PRIOR_KINDS", "PRIOR_KEYS", "build_prior", "prior_loader", "check_prior_spec", "resolve_path", "check_keys"]

_LOADERS: dict[str, str] = {
    "gaussian": "uqcampaign.kernels.priors.gaussian_mixture:load_gaussian_prior",
    "gmm": "uqcampaign.kernels.priors.gaussian_mixture:load_gmm_prior",
    "diffusion": "uqcampaign.kernels.priors.diffusion:load_diffusion_prior",
    "consistency": "uqcampaign.kernels.priors.consistency:load_consistency_prior",
    "latent-consistency": "uqcampaign.kernels.priors.latent_loading:load_latent_consistency_prior",
}
PRIOR_KINDS: tuple[str, ...] = tuple(_LOADERS)
# Keys each kind takes besides ``kind`` (img_shape, components, covariance repeat describe()); the
# loaders' docstrings (``Keys:`` sections, printed by ``uqc kinds``) say what each means.
_PIXEL_NETWORK_KEYS = ("path", "img_shape", "image_size", "data_range", "image_range", "variant", "dtype", "scheduler",
                       "class_label", "sample_steps")
PRIOR_KEYS: dict[str, tuple[str, ...]] = {
    "gaussian": ("file", "shape", "mean", "variance", "img_shape", "components", "covariance"),
    "gmm": ("file", "condition", "img_shape", "components", "covariance", "condition_dim"),
    "diffusion": _PIXEL_NETWORK_KEYS,
    "consistency": _PIXEL_NETWORK_KEYS,
    "latent-consistency": ("path", "prompt", "guidance_scale", "img_shape", "image_size", "data_range", "image_range",
                           "variant", "dtype", "lora", "unet", "sample_steps"),
}


def build_prior(spec: Mapping[str, Any], root: Path | str | None = None) -> Prior:
    """The prior described by ``spec``; relative paths in it start at ``root``.

    Keys whose value is ``None`` are dropped first (a config model dumps unset fields as ``None``).
    """
    kind = check_prior_spec(spec)
    cleaned = {key: value for key, value in spec.items() if value is not None}
    return prior_loader(kind)(cleaned, None if root is None else Path(root))


def prior_loader(kind: str) -> Callable[[dict[str, Any], Path | None], Prior]:
    """The loader function of ``kind`` (imported now); its docstring documents the kind's keys (`uqc kinds`)."""
    require(kind in _LOADERS, f"unknown prior kind {kind!r}; choose one of {', '.join(PRIOR_KINDS)}")
    module_name, function_name = _LOADERS[kind].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def check_prior_spec(spec: Any) -> str:
    """The kind of ``spec``; UQError for a non-mapping, an unknown kind or a key the kind does not take.

    Cheap: imports no loader and reads no file. Keys whose value is ``None`` are ignored, as in :func:`build_prior`.
    """
    require(isinstance(spec, Mapping), f"prior spec must be a mapping like {{kind: gmm, file: prior.npz}}, got {spec!r}")
    kind = spec.get("kind")
    require(isinstance(kind, str) and kind in _LOADERS, f"unknown prior kind {kind!r}; choose one of {', '.join(PRIOR_KINDS)}")
    check_keys({key: value for key, value in spec.items() if value is not None}, PRIOR_KEYS[kind])
    return kind


def check_keys(spec: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """UQError naming the first key of ``spec`` outside ``allowed`` (``kind`` is always allowed)."""
    allowed = ("kind", *allowed)
    for key in spec:
        require(key in allowed, f"unknown key {key!r} in the {spec.get('kind')} prior spec; allowed keys: {', '.join(allowed)}")


def resolve_path(path: Any, root: Path | None, what: str, *, folder: bool = False) -> Path:
    """``path`` made absolute against ``root`` (the campaign file's folder); UQError if it does not exist.

    ``what`` names the value in the message (e.g. ``"gmm prior file"``); ``folder=True`` wants a directory.
    """
    require(isinstance(path, (str, Path)) and str(path) != "", f"{what} must be a path string, got {path!r}")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and root is not None:
        resolved = Path(root) / resolved
    exists = resolved.is_dir() if folder else resolved.is_file()
    require(exists, f"{what} not found: {resolved}; check the path (relative paths start at the campaign file's folder)")
    return resolved
