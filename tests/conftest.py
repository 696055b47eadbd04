"""Session-wide test settings: no network, no telemetry, everything under temporary directories."""

from __future__ import annotations

import os
import uuid

# Set before any test module imports diffusers/transformers/ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One Ray token for the whole session: every Ray instance a test starts (and every `uqc` subprocess)
# uses it, so Ray never writes ~/.ray/auth_token and a driver never meets a GCS with another token.
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex)

import pytest

from uqcampaign.kernels.threads import torch_threads


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test problems are tiny: one intra-op thread is faster than two on 2 shared cores (~100× here)."""
    with torch_threads(1):
        yield
