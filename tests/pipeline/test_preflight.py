"""Pre-flight: a campaign that cannot fit is refused before any allocation, with the figures and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from uqcampaign.cluster.driver import open_campaign_store
from uqcampaign.cluster.resources import WorkerShape, worker_budget
from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline import data as data_module
from uqcampaign.pipeline import units as units_module
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.preflight import Budget, check_campaign, check_fits, human_bytes
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.units import load_components

# One chunk of one chain x 25.6 million draws of 100 x 100 images: 1.024e12 bytes (the case).
TERABYTE_CHUNK = {
    "prior": {"kind": "gaussian", "shape": [1, 100, 100], "mean": 0.5, "variance": 0.04},
    "sampler": {"kind": "ula", "burn_in": 1, "thin": 1},
    "data": {"simulate": {"count": 1}},
    "chains": 1,
    "draws": 25_600_000,
    "chunks": {"chains": 1, "draws": 25_600_000},
}


def test_human_bytes() -> None:
    assert human_bytes(1_024_000_000_000) == "1.02 TB" and human_bytes(512) == "512 B" and human_bytes(3_000_000) == "3 MB"


def test_a_terabyte_chunk_is_refused_before_any_allocation(write_campaign, monkeypatch) -> None:
    """Before the fix: `RuntimeError: ... tried to allocate 1024000000000 bytes` from the unit's chunk buffer."""
    path = write_campaign(**TERABYTE_CHUNK)

    def forbidden(*args, **kwargs):
        raise AssertionError("the data, the store or a unit was touched before the pre-flight")

    monkeypatch.setattr(data_module, "load_or_simulate", forbidden)  # measurements simulated or read
    monkeypatch.setattr(units_module, "run_unit", forbidden)  # the chunk buffer and the chains
    with pytest.raises(UQError) as info:
        run_campaign(load_campaign(path), progress=False)
    message = str(info.value).splitlines()[0]
    assert "does not fit in memory" in message and "chunk buffer (1, 25600000, 1, 100, 100) float32 1.02 TB" in message
    assert "lower chunks.draws from 25600000 to" in message
    assert not (path.parent / "store.zarr").exists()


def test_console_script_refuses_the_terabyte_chunk_in_one_line_each(write_campaign) -> None:
    path = write_campaign(**TERABYTE_CHUNK)
    uqc = Path(sys.executable).with_name("uqc")
    proc = subprocess.run([str(uqc), "run", str(path), "--in-process"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("error: campaign 'tiny' does not fit") for line in lines), lines
    assert "1.02 TB" in lines[0] and not (path.parent / "store.zarr").exists()


def test_a_store_larger_than_the_disk_is_refused(write_campaign) -> None:
    # 10^12 draws of one 8x8 chain: 256 TB of samples, one tiny chunk in memory
    path = write_campaign(chains=1, draws=10**12, chunks={"chains": 1, "draws": 1}, data={"simulate": {"count": 1}})
    with pytest.raises(UQError, match=r"does not fit on disk: its store needs 264 TB \(samples 256 TB .* free; lower draws"):
        run_campaign(load_campaign(path), progress=False)
    assert not (path.parent / "store.zarr").exists()


def test_the_figures_add_up(write_campaign) -> None:
    campaign = load_campaign(write_campaign())
    prior, operator, sampler = load_components(campaign)
    fp = check_campaign(campaign, prior, operator, sampler)  # fits: returns the footprint
    image = 64 * 4
    assert fp.chunk_buffer == 4 * 3 * image and fp.chunk_write == 2 * fp.chunk_buffer  # (chunks.chains, chunks.draws, 1, 8, 8) float32
    assert fp.samples == 2 * 6 * 7 * image and fp.n_units == 4
    assert fp.worker == fp.chunk_buffer + fp.chunk_write + fp.sampler_state + fp.prior + fp.operator
    assert fp.prior >= 2 * 64 * 8  # mean and variance of the Gaussian prior, float64
    assert fp.sampler_state == 4 * 4 * image + 7 * 64 * 64 * 8  # exact: draws and noise in float64, 2 + 5K posterior matrices


def test_workers_sharing_a_machine_and_the_suggested_chunks(write_campaign) -> None:
    path = write_campaign(
        prior={"kind": "gaussian", "shape": [1, 16, 16], "mean": 0.5, "variance": 0.04},
        sampler={"kind": "ula"}, chains=8, draws=100, chunks={"chains": 8, "draws": 100},
    )
    campaign = load_campaign(path)
    prior, operator, sampler = load_components(campaign)
    fp = check_campaign(campaign, prior, operator, sampler)
    assert fp.chunk_buffer == 8 * 100 * 256 * 4 and fp.sampler_state == 8 * 8 * 256 * 4  # ULA states 8 copies
    with pytest.raises(UQError) as info:
        check_fits(fp, Budget(2_000_000, "a test node", 2), store="/nonexistent/x.zarr", sampler=sampler, prior_description=prior.describe())
    line = str(info.value)
    assert "x 2 workers" in line and "2 MB available on a test node" in line
    suggested = int(line.split("lower chunks.draws from 100 to ")[1].split()[0])
    assert suggested in (1, 2, 5, 10, 20, 50) and "fewer workers (--workers)" in line
    smaller = load_campaign(write_campaign("c2.yaml", prior=campaign.prior, sampler={"kind": "ula"}, chains=8, draws=100,
                                           chunks={"chains": 8, "draws": suggested}))
    fits = check_campaign(smaller, prior, operator, sampler, Budget(2_000_000, "a test node", 2))  # the suggestion fits
    assert 2 * fits.worker <= 0.5 * 2_000_000


def test_the_estimate_bounds_what_a_unit_holds(write_campaign, tmp_path: Path) -> None:
    """Measured: the peak resident memory a unit adds (Linux VmHWM, reset before the unit) is within the estimate, and not far below it."""
    path = write_campaign(
        prior={"kind": "gaussian", "shape": [1, 64, 64], "mean": 0.5, "variance": 0.04},
        sampler={"kind": "ula", "burn_in": 0, "thin": 1},
        chains=32, draws=200, chunks={"chains": 32, "draws": 200}, data={"simulate": {"count": 1}},
    )
    script = f"""
import torch
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import prepare_store
from uqcampaign.pipeline.units import Unit, run_unit
from uqcampaign.pipeline.preflight import check_campaign

def status(key):  # kB figures of /proc/self/status
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

torch.set_num_threads(1)
campaign = load_campaign({str(path)!r})
group, _, (prior, operator, sampler) = prepare_store(campaign)
fp = check_campaign(campaign, prior, operator, sampler)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident set
before = status("VmRSS:")
run_unit(campaign, Unit(0, 0), group, prior=prior, operator=operator)
print(fp.worker - fp.prior - fp.operator, status("VmHWM:") - before, before)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    estimate, measured, before = map(int, proc.stdout.split())
    assert estimate >= 3 * 104_857_600  # the chunk, 32 x 200 x 64 x 64 float32 = 105 MB, and Zarr's 2 copies
    print("memory estimate", human_bytes(estimate), "measured", human_bytes(measured), "resident before", human_bytes(before))
    assert 0.5 * estimate <= measured <= 1.1 * estimate, (human_bytes(estimate), human_bytes(measured))


def test_the_store_size_bounds_the_store_written(write_campaign, tmp_path: Path) -> None:
    """Measured: bytes on disk of a run and reduced store against the uncompressed estimate."""
    from uqcampaign.pipeline.reduce import reduce_store

    path = write_campaign(
        prior={"kind": "gaussian", "shape": [1, 16, 16], "mean": 0.5, "variance": 0.04},
        chains=8, draws=60, chunks={"chains": 8, "draws": 30}, data={"simulate": {"count": 2}},
    )
    campaign = load_campaign(path)
    fp = check_campaign(campaign, *load_components(campaign))
    run_campaign(campaign, progress=False)
    reduce_store(campaign.store_location, progress=False)
    on_disk = sum(f.stat().st_size for f in Path(campaign.store_location).rglob("*") if f.is_file())
    print("store estimate", human_bytes(fp.store), "on disk", human_bytes(on_disk))
    assert 0.5 * fp.store <= on_disk <= 1.1 * fp.store, (human_bytes(fp.store), human_bytes(on_disk))


def test_a_resumed_store_is_checked_from_its_attrs(write_campaign) -> None:
    """The Ray driver reopens a store of the same campaign without loading the prior: the pre-flight reads the attrs."""
    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    before = zarr.open_group(campaign.store_location, mode="r")["draws_done"][...]
    with pytest.raises(UQError, match="does not fit in memory: a worker needs .* of the 1 kB available on a tiny node"):
        open_campaign_store(campaign, budget=Budget(1000, "a tiny node", 1))
    group, messages = open_campaign_store(campaign, budget=Budget(10**9, "a node", 1))
    assert "holds the same campaign" in messages[0]
    assert np.array_equal(np.asarray(group["draws_done"][...]), before)


def test_worker_budget_by_cluster_kind() -> None:
    nodes = [{"CPU": 8.0, "GPU": 0.0, "memory": 4e9}, {"CPU": 8.0, "GPU": 0.0, "memory": 2e9}]
    remote = worker_budget(nodes, WorkerShape(workers=6, cpus=2, gpus=0.0), local=False)
    assert (remote.memory, remote.workers) == (2_000_000_000, 3)  # the smallest node holds half the workers
    local = worker_budget(nodes, WorkerShape(workers=3, cpus=1, gpus=0.0), local=True)
    assert local.where == "this machine" and local.workers == 3 and local.memory > 0
    assert worker_budget(nodes, WorkerShape(workers=2, cpus=1, gpus=1.0), local=True).memory is None  # GPU memory: not visible here
