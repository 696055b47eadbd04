"""summary/ is never lost and never stale unnoticed: written beside the old one and swapped in whole;
failed, killed and half-swapped reductions keep a readable summary; report/maps/inspect name a stale one."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline import reduce as reduce_module
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.report import report_rows
from uqcampaign.pipeline.runner import prepare_store, run_campaign
from uqcampaign.pipeline.store import mark_done, open_store, write_draw_block

runner = CliRunner()
SUMMARY_NEW, SUMMARY_OLD = "summary.new", "summary.old"


def _summary():  # imported in the tests that need it: the others also run against uqcampaign 0.1
    from uqcampaign.pipeline import summary

    return summary


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def reduced(write_campaign) -> Path:
    """A finished tiny campaign, reduced: the store path."""
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    reduce_store(campaign.store_location, progress=False)
    return Path(campaign.store_location)


def test_failed_reduce_keeps_the_old_summary_byte_identical(reduced: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _files(reduced / "summary")
    calls = []

    def failing(*args, block_info=None):  # the third tile task fails, after others wrote their blocks
        calls.append(1)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return tile_stats(*args, block_info=block_info)

    tile_stats = reduce_module._read_tile_stats
    monkeypatch.setattr(reduce_module, "_read_tile_stats", failing)
    with pytest.raises(UQError, match="cannot write the summary: Input/output error"):
        reduce_store(str(reduced), level=0.5, tile=(2, 2), progress=False)
    assert len(calls) >= 3
    assert _files(reduced / "summary") == before  # byte for byte
    assert not (reduced / SUMMARY_NEW).exists() and not (reduced / ".uqc-lease").exists()
    rows = report_rows(reduced)  # still readable and up to date
    assert all(np.isfinite(r["rhat_max"]) for r in rows)


def test_unreachable_cluster_keeps_the_old_summary(reduced: Path) -> None:
    before = _files(reduced / "summary")
    line = _one_line_error(["reduce", str(reduced), "--address", "tcp://127.0.0.1:1"])
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in line
    assert _files(reduced / "summary") == before and not (reduced / SUMMARY_NEW).exists()
    assert runner.invoke(app, ["report", str(reduced)]).exit_code == 0


REDUCE_SLOWLY = "import sys; from uqcampaign.pipeline.reduce import reduce_store; reduce_store(sys.argv[1], level=0.5, progress=False, memory_budget=2**14)"


def test_sigkill_mid_reduce_keeps_the_old_summary(write_campaign, tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(chains=8, draws=200, chunks={"chains": 8, "draws": 100}, prior={"kind": "gaussian", "shape": [1, 16, 16], "mean": 0.5, "variance": 0.04}))
    group, _, _ = prepare_store(campaign)
    rng = np.random.default_rng(0)
    for m in range(2):  # AR(1) draws written straight into the store (sampling them would take longer than reducing)
        draws = np.cumsum(rng.standard_normal((8, 200, 1, 16, 16), dtype=np.float32), axis=1) * 0.05
        for k in range(2):
            write_draw_block(group, m, slice(0, 8), slice(100 * k, 100 * k + 100), draws[:, 100 * k : 100 * k + 100])
            mark_done(group, m, slice(0, 8), 100 * k + 100)
    store = Path(campaign.store_location)
    reduce_store(str(store), progress=False)
    before = _files(store / "summary")
    proc = subprocess.Popen([sys.executable, "-c", REDUCE_SLOWLY, str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list((store / SUMMARY_NEW).glob("mean/c/*")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert (store / SUMMARY_NEW).exists(), "the reduce was not caught in the middle"
    assert _files(store / "summary") == before  # byte for byte
    assert _summary().readable_summary(open_store(store)) == "summary"  # the unfinished summary.new is never read
    assert report_rows(store)[0]["rhat_max"] > 0
    # the next reduce takes the killed one's lease over, removes its summary.new and swaps a new summary in
    summary = reduce_store(str(store), level=0.5, progress=False)
    assert summary["ci_lower"].attrs["level"] == 0.5 and not (store / SUMMARY_NEW).exists()


def test_a_half_done_swap_is_read_and_finished(reduced: Path) -> None:
    """The states a swap killed half-way leaves: readers take the complete group, the next writer finishes."""
    readable_summary, recover_summary, summary_status = (getattr(_summary(), n) for n in ("readable_summary", "recover_summary", "summary_status"))
    root = open_store(reduced, mode="r+")
    reduce_module._reduce(root, 0.5, None, False, None, reduce_module.DEFAULT_MEMORY_BUDGET)  # a complete summary.new, not swapped
    assert readable_summary(root) == SUMMARY_NEW  # the newer complete summary wins
    # killed between the two renames: summary -> summary.old done, summary.new -> summary not yet
    os.rename(reduced / "summary", reduced / SUMMARY_OLD)
    assert readable_summary(root) == SUMMARY_NEW and report_rows(reduced)  # readable
    assert recover_summary(root).startswith("finished the swap")
    assert readable_summary(root) == "summary" and not (reduced / SUMMARY_OLD).exists() and not (reduced / SUMMARY_NEW).exists()
    assert zarr.open_group(reduced / "summary", mode="r")["ci_lower"].attrs["level"] == 0.5
    # killed mid-copy (object storage): summary has lost its zarr.json and some arrays, summary.new is complete
    reduce_module._reduce(root, 0.8, None, False, None, reduce_module.DEFAULT_MEMORY_BUDGET)
    (reduced / "summary" / "zarr.json").unlink()
    shutil.rmtree(reduced / "summary" / "rhat")
    assert readable_summary(root) == SUMMARY_NEW and summary_status(root).state == "fresh"
    recover_summary(root)
    assert zarr.open_group(reduced / "summary", mode="r")["ci_lower"].attrs["level"] == 0.8
    # killed while writing summary.new: it is incomplete, never read, removed by the next writer
    reduce_module._reduce(root, 0.7, None, False, None, reduce_module.DEFAULT_MEMORY_BUDGET)
    zarr.open_group(reduced / SUMMARY_NEW, mode="r+").attrs["complete"] = 0
    assert readable_summary(root) == "summary"
    assert recover_summary(root).startswith("removed the unfinished") and not (reduced / SUMMARY_NEW).exists()


def _drop_root_override() -> None:  # pragma: no cover - runs in the child before exec
    """As root, drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH from the bounding set: file modes then apply."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for cap in (1, 2):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


def test_read_only_store_reduce_is_one_line(reduced: Path) -> None:
    before = _files(reduced)
    modes = {p: p.stat().st_mode for p in [reduced, *reduced.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    uqc = Path(sys.executable).with_name("uqc")
    preexec = _drop_root_override if os.geteuid() == 0 else None
    try:
        proc = subprocess.run([str(uqc), "reduce", str(reduced)], capture_output=True, text=True, timeout=120, preexec_fn=preexec)
        report = subprocess.run([str(uqc), "report", str(reduced)], capture_output=True, text=True, timeout=120, preexec_fn=preexec)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert f"error: {reduced}: cannot write to the store (`uqc reduce` keeps its lease and results there): Permission denied" in proc.stderr
    assert _files(reduced) == before
    assert report.returncode == 0 and "tiny" in report.stdout  # readers need no write access


def test_stale_summary_after_a_resume_is_named(write_campaign) -> None:
    """Run (interrupted), reduce, resume to completion: report/maps refuse the stale summary, inspect says it."""
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    store = Path(campaign.store_location)
    group = zarr.open_group(store, mode="r+")
    group["draws_done"][0, 0:4] = 3  # as a run stopped after the first chunk of unit (0, 0) leaves it
    for k in (1, 2):
        shutil.rmtree(store / "samples" / "c" / "0" / "0" / str(k))
    with pytest.warns(UserWarning, match=r"measurements \[0\]"):
        reduce_store(str(store), progress=False)
    run_campaign(campaign, progress=False)  # resume to completion
    for command in (["report", str(store)], ["maps", str(store), "--out", str(store.parent / "maps")]):
        line = _one_line_error(command)
        assert f"the summary of store {store} is stale: it was computed from 68 chain-draws and the store now holds 84" in line
        assert f"run `uqc reduce {store}` (or pass --reduce)" in line
    assert not (store.parent / "maps").exists() or not list((store.parent / "maps").glob("*.png"))
    inspect = runner.invoke(app, ["inspect", str(store)])
    assert inspect.exit_code == 0 and "summary:  present but stale" in inspect.stdout and "68 chain-draws" in inspect.stdout
    result = runner.invoke(app, ["report", str(store), "--reduce"])
    assert result.exit_code == 0 and "stale summary (68 of 84 chain-draws): reducing it first" in result.stderr
    assert "—" not in result.stdout.split("verdict")[1].split("draws:")[0].replace("│   — │", "")  # no empty (NaN) cell left but "implausible" (not scored)
    assert _summary().summary_status(open_store(store)).state == "fresh"


def test_removed_summary_is_not_read_from_stale_consolidated_metadata(reduced: Path) -> None:
    shutil.rmtree(reduced / "summary")  # the root's consolidated metadata still lists summary/ and its arrays
    assert "summary" in zarr.open_group(reduced, mode="r")
    for command in (["report", str(reduced)], ["maps", str(reduced), "--out", str(reduced.parent / "maps")]):
        assert f"store {reduced} has no summary: run `uqc reduce {reduced}`" in _one_line_error(command)
    assert "summary:  absent" in runner.invoke(app, ["inspect", str(reduced)]).stdout


def test_measurements_with_too_few_draws_say_so(write_campaign) -> None:
    """A measurement below 4 complete draws per chain has NaN statistics: its row says why, maps skip it aloud."""
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    store = Path(campaign.store_location)
    zarr.open_group(store, mode="r+")["draws_done"][1, 0:4] = 3
    with pytest.warns(UserWarning):
        reduce_store(str(store), progress=False)
    rows = report_rows(store)
    assert rows[1]["verdict"] == "too few draws" and rows[1]["reasons"] == "3 draws complete in every chain (< 4): no summary"
    assert rows[0]["reasons"] != rows[1]["reasons"]
    result = runner.invoke(app, ["maps", str(store), "--out", str(store.parent / "maps")])
    assert result.exit_code == 0 and "measurement 1: 3 draws complete in every chain (< 4), not reduced: no map" in result.stderr
    assert sorted(p.name for p in (store.parent / "maps").glob("*.png")) == ["measurement-000.png"]
