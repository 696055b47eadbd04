"""Sampler registry: ``build_sampler({kind: ula, step: auto, burn_in: 500, thin: 10})``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.base import Sampler
from uqcampaign.kernels.samplers.dps import DPSConfig, DPSSampler
from uqcampaign.kernels.samplers.exact import ExactConfig, ExactSampler
from uqcampaign.kernels.samplers.latino import LatinoConfig, LatinoSampler
from uqcampaign.kernels.samplers.skrock import SKRockConfig, SKRockSampler
from uqcampaign.kernels.samplers.latino_pro import LatinoProConfig, LatinoProSampler
from uqcampaign.kernels.samplers.smc.sampler import AnnealConfig, AnnealSampler, TDSConfig, TDSSampler
from uqcampaign.kernels.samplers.map_admm import ADMMConfig, ADMMSampler
from uqcampaign.kernels.samplers.map_hqs import HQSConfig, HQSSampler
from uqcampaign.kernels.samplers.map_latent import LatentMAPConfig, LatentMAPSampler
from uqcampaign.kernels.samplers.ula import ULAConfig, ULASampler

__all__ = ["SAMPLER_KINDS", "SAMPLER_CONFIGS", "POINT_ESTIMATE_KINDS", "MARKOV_CHAIN_KINDS", "build_sampler"]

_REGISTRY: dict[str, tuple[type, type]] = {
    "exact": (ExactSampler, ExactConfig),
    "ula": (ULASampler, ULAConfig),
    "skrock": (SKRockSampler, SKRockConfig),
    "dps": (DPSSampler, DPSConfig),
    "latino": (LatinoSampler, LatinoConfig),
    "latino-pro": (LatinoProSampler, LatinoProConfig),
    "tds": (TDSSampler, TDSConfig),
    "smc-anneal": (AnnealSampler, AnnealConfig),
    "map-hqs": (HQSSampler, HQSConfig),
    "map-admm": (ADMMSampler, ADMMConfig),
    "map-latent": (LatentMAPSampler, LatentMAPConfig),
}
SAMPLER_KINDS: tuple[str, ...] = tuple(_REGISTRY)
# kind -> config dataclass: its fields are the kind's keys, its docstring their documentation (`uqc kinds`)
SAMPLER_CONFIGS: dict[str, type] = {kind: config for kind, (_, config) in _REGISTRY.items()}
# kinds that return one point estimate per chain (one draw, no posterior): never calibrated, compared with the posterior mean
POINT_ESTIMATE_KINDS: tuple[str, ...] = ("map-hqs", "map-admm", "map-latent")
# kinds whose successive draws of a chain are states of one Markov chain (correlated; they converge from their start);
# every other kind's draws are independent runs (or particles of independent SMC runs)
MARKOV_CHAIN_KINDS: tuple[str, ...] = ("ula", "skrock")


def build_sampler(spec: Mapping[str, Any]) -> Sampler:
    """A sampler from its spec; every key but ``kind`` is a field of the kind's frozen config.

    Unknown kinds and unknown keys raise :class:`UQError` naming them and the allowed ones.
    """
    require(isinstance(spec, Mapping), f"sampler spec must be a mapping like {{kind: ula, step: auto}}, got {spec!r}")
    kind = spec.get("kind")
    require(kind in _REGISTRY, f"unknown sampler kind {kind!r}; choose one of {', '.join(SAMPLER_KINDS)}")
    sampler_cls, config_cls = _REGISTRY[kind]
    allowed = [field.name for field in dataclasses.fields(config_cls)]
    params = {key: value for key, value in spec.items() if key != "kind"}
    for key in params:
        require(key in allowed, f"unknown key {key!r} in the {kind} sampler spec; allowed keys: {', '.join(allowed) or 'none'}")
    try:
        config = config_cls(**params)
    except TypeError as err:  # a value of the wrong type that __post_init__ could not compare
        raise UQError(f"bad value in the {kind} sampler spec {dict(params)!r}: {err}") from None
    return sampler_cls(config)
