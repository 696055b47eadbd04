"""A campaign on object storage: a real S3 protocol server (moto, started here on a free port) and s3fs.

Run (killed with SIGKILL), resume, reduce, export: the store ends bit-identical to the same campaign
on a local disk; the summary swap on a store with no rename is read whole at every step.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import yaml
import zarr

from uqcampaign.pipeline import reduce as reduce_module
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.reduce import reduce_store
from uqcampaign.pipeline.runner import run_campaign
from uqcampaign.pipeline.store import open_store

pytestmark = pytest.mark.timeout(400)

BUCKET = "uqc-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AWS_KEYS = (*CREDENTIALS, "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (free port) with bucket ``uqc-test``; the AWS environment points at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # an instance cached for another endpoint must not be reused
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _campaign_file(folder: Path, store: str, endpoint: str | None) -> Path:
    spec = {
        "name": "s3", "store": store, "seed": 5, "data": {"simulate": {"count": 2}},
        "operator": {"kind": "denoise"}, "noise": {"sigma": 0.1},
        "prior": {"kind": "gaussian", "shape": [1, 8, 8], "mean": 0.5, "variance": 0.04},
        "sampler": {"kind": "ula", "burn_in": 0, "thin": 10},
        "chains": 4, "draws": 24, "chunks": {"chains": 2, "draws": 4}, "cluster": {"address": "in-process"},
    }
    if endpoint is not None:  # the run's own credentials: its process has no AWS environment at all
        spec["storage_options"] = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{store.rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _fs(url: str) -> tuple:
    import fsspec

    return fsspec.core.url_to_fs(url)


def _objects(url: str) -> dict[str, str]:
    """``{key: ETag}`` of every object under ``url``."""
    fs, root = _fs(url)
    fs.invalidate_cache()
    return {path: fs.info(path)["ETag"] for path in fs.find(root)}


def test_s3_campaign_killed_resumed_reduced_exported_equals_local_disk(s3_endpoint: str, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/runs/campaign.zarr"
    path = _campaign_file(tmp_path / "s3", url, s3_endpoint)
    env = {key: value for key, value in os.environ.items() if key not in AWS_KEYS}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "uqcampaign.pipeline.cli", "run", str(path), "--in-process", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    fs, root = _fs(url)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:  # one HEAD per poll: the first chunk of draws_done
        fs.invalidate_cache()
        if fs.exists(f"{root}/draws_done/c/0/0") or fs.exists(f"{root}/draws_done/c/1/0"):
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = np.asarray(open_store(url)["draws_done"][...])
    assert 0 < done.sum() < 2 * 4 * 24, "the run was not caught in the middle"
    before = {k: v for k, v in _objects(url).items() if "/samples/c/" in k}
    kept = {}
    for m in range(2):
        for block in range(2):
            for k in range(int(done[m, 2 * block]) // 4):
                key = f"{BUCKET}/runs/campaign.zarr/samples/c/{m}/{block}/{k}/0/0/0"
                kept[key] = before[key]
    assert kept

    campaign = load_campaign(path)
    result = run_campaign(campaign, resume=True, progress=False)  # takes over the killed run's lease
    assert result.units_run >= 1 and "resuming" in result.messages[0]
    after = _objects(url)
    assert {key: after[key] for key in kept} == kept  # done chunks never written again
    assert not [k for k in after if "/.uqc-lease/" in k]

    summary = reduce_store(url, progress=False)
    assert summary["ci_lower"].attrs["level"] == 0.9

    local = load_campaign(_campaign_file(tmp_path / "local", "local.zarr", None))
    run_campaign(local, progress=False)
    local_summary = reduce_store(local.store_location, progress=False)
    s3_root, local_root = open_store(url), open_store(local.store_location)
    for name in ("samples", "draws_done", "y_obs", "x_true", "draw"):
        assert s3_root[name][...].tobytes() == local_root[name][...].tobytes(), name
    for name in ("mean", "std", "rhat", "ess_bulk", "chi2_draws", "draws_done"):
        np.testing.assert_array_equal(summary[name][...], local_summary[name][...], err_msg=name)

    from uqcampaign.pipeline.export import export_store
    from uqcampaign.pipeline.location import Location
    from uqcampaign.pipeline.summary import SUMMARY_NEW, readable_summary, recover_summary

    data = az.from_netcdf(export_store(url, tmp_path / "posterior.nc", measurement=1))
    np.testing.assert_array_equal(data.posterior["samples"].values, local_root["samples"][1].astype(np.float64))

    # A swap killed mid-copy (no rename on S3): the old summary has lost its zarr.json (the swap's first step)
    root = open_store(url, mode="r+")
    reduce_module._reduce(root, 0.5, None, False, None, reduce_module.DEFAULT_MEMORY_BUDGET)  # complete, not swapped
    location = Location.of(root)
    location.remove("summary", "zarr.json")
    assert readable_summary(root) == SUMMARY_NEW  # read whole, from the complete new one
    assert recover_summary(root).startswith("finished the swap")  # the next writer copies it over, zarr.json last
    assert readable_summary(root) == "summary" and not location.exists(SUMMARY_NEW)
    assert zarr.open_group(url, path="summary", mode="r", use_consolidated=False)["ci_lower"].attrs["level"] == 0.5
    # the lease's exclusive create: If-None-Match on S3, one winner
    assert location.create_exclusive(b"first", ".probe") and not location.create_exclusive(b"second", ".probe")
    assert location.read_bytes(".probe") == b"first"


MISSING_S3FS = "import sys; sys.modules['s3fs'] = None; from uqcampaign.pipeline.cli import app; sys.argv = ['uqc', *sys.argv[1:]]; app()"


def test_missing_s3fs_is_one_line(tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/runs/none.zarr"
    proc = subprocess.run([sys.executable, "-c", MISSING_S3FS, "run", str(_campaign_file(tmp_path, url, None)), "--in-process"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {url}: opening s3:// stores needs s3fs, which is not installed; pip install s3fs"), proc.stderr


def test_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    """An S3 endpoint nobody listens on: botocore's EndpointConnectionError (not an OSError) is one line."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    url = f"s3://{BUCKET}/runs/unreachable.zarr"
    path = _campaign_file(tmp_path, url, endpoint)
    spec = yaml.safe_load(path.read_text())
    spec["storage_options"]["config_kwargs"] = {"connect_timeout": 1, "retries": {"max_attempts": 1}}
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "uqcampaign.pipeline.cli", "run", str(path), "--in-process"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {url}: cannot read the store: Could not connect to the endpoint URL"), proc.stderr
