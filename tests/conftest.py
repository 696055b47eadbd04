"""Session-wide test settings: no network, no telemetry, everything under temporary directories."""

from __future__ import annotations

import os

# Set before any test module imports diffusers/transformers/ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
