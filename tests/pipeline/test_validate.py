"""`uqc validate`: every check of `uqc run`, plus units, size, memory, NFE and time; nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.units import load_components
from uqcampaign.pipeline.validate import probe_unit

runner = CliRunner()


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_validate_prints_the_figures_and_writes_nothing(write_campaign, tmp_path: Path) -> None:
    path = write_campaign(sampler={"kind": "ula", "burn_in": 20, "thin": 2})
    before = _tree(tmp_path)
    result = runner.invoke(app, ["validate", str(path), "--probe-seconds", "1"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path) == before and not (tmp_path / "store.zarr").exists()
    out = result.stdout
    assert "valid" in out and "nothing written" in out
    assert "units:     4 (2 measurements x 2 chain blocks of up to 4 chains)" in out
    assert "store:     " in out and "absent: `uqc run` creates it" in out
    assert "memory:    " in out and "per worker (chunk buffer (4, 3, 1, 8, 8) float32" in out
    # ULA: thin = 2 calls per draw; burn_in + draws x thin = 20 + 14 = 34 per chain per unit; x 12 chains = 408
    assert "NFE:       2 network calls per draw per chain, 34 per chain per unit" in out and "408 in total over 12 chains" in out
    assert "time:      ≈ " in out and "probe: " in out and "unit (0, 0)" in out


def test_validate_refuses_what_run_refuses(write_campaign, tmp_path: Path) -> None:
    bad = write_campaign(sampler={"kind": "ula", "step": 10})
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "stability bound" in result.stderr and result.stderr.count("\n") == 1
    np.save(tmp_path / "y.npy", np.zeros((2, 1, 8, 7), np.float32))
    result = runner.invoke(app, ["validate", str(write_campaign("d.yaml", data={"y": "y.npy"}))])
    assert result.exit_code == 2 and "data.y has shape (2, 1, 8, 7)" in result.stderr
    huge = write_campaign("h.yaml", chains=1, draws=25_600_000, chunks={"chains": 1, "draws": 25_600_000},
                          prior={"kind": "gaussian", "shape": [1, 100, 100], "mean": 0.5, "variance": 0.04}, sampler={"kind": "ula"})
    result = runner.invoke(app, ["validate", str(huge)])
    assert result.exit_code == 2 and "1.02 TB" in result.stderr
    assert not (tmp_path / "store.zarr").exists()


def test_probe_by_draws_and_by_network_calls(write_campaign) -> None:
    """A fast unit is timed by its draws; a slow one (here: a long burn-in, no time allowed) by its network calls."""
    fast = load_campaign(write_campaign(sampler={"kind": "ula", "burn_in": 5, "thin": 1}))
    prior, operator, sampler = load_components(fast)
    y = np.full(operator.obs_shape, 0.5, np.float32)
    probe = probe_unit(fast, prior, operator, sampler, y, seconds=30.0)
    assert probe.how.startswith("3 draws of unit (0, 0)") and math.isfinite(probe.unit_seconds) and probe.unit_seconds > 0
    slow = load_campaign(write_campaign("s.yaml", sampler={"kind": "ula", "burn_in": 100_000, "thin": 1}))
    prior, operator, sampler = load_components(slow)
    probe = probe_unit(slow, prior, operator, sampler, y, seconds=0.0)
    assert "network calls of unit (0, 0)" in probe.how and f"x {100_000 + 7} calls per unit" in probe.how
    assert math.isfinite(probe.unit_seconds) and probe.unit_seconds > 0
