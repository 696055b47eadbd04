"""Shared fixtures of the pipeline tests: tiny campaign files written under ``tmp_path``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# A campaign small enough to run in well under a second: 2 measurements of 8x8 images,
# 6 chains in blocks of 4 (the last block holds 2), 7 draws in chunks of 3 (the last holds 1).
TINY_CAMPAIGN: dict[str, Any] = {
    "name": "tiny",
    "store": "store.zarr",
    "seed": 3,
    "data": {"simulate": {"count": 2}},
    "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 0},
    "noise": {"sigma": 0.1},
    "prior": {"kind": "gaussian", "shape": [1, 8, 8], "mean": 0.5, "variance": 0.04},
    "sampler": {"kind": "exact"},
    "chains": 6,
    "draws": 7,
    "chunks": {"chains": 4, "draws": 3},
    "cluster": {"address": "in-process"},
    "reduce": {"level": 0.9},
}


def tiny_campaign(**overrides: Any) -> dict[str, Any]:
    """A copy of :data:`TINY_CAMPAIGN` with top-level keys replaced (``None`` removes a key)."""
    spec = copy.deepcopy(TINY_CAMPAIGN)
    for key, value in overrides.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


@pytest.fixture
def write_campaign(tmp_path: Path) -> Callable[..., Path]:
    """``write_campaign(name="c.yaml", **overrides) -> Path`` of a tiny campaign YAML in ``tmp_path``.

    The store (``store.zarr`` unless overridden) lands beside the file.
    """

    def write(filename: str = "campaign.yaml", **overrides: Any) -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(tiny_campaign(**overrides), sort_keys=False))
        return path

    return write
