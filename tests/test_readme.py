"""The README's store recipes (between ``<!-- recipes -->`` markers) run as written.

``sh`` lines run through the ``uqc`` app (leading ``VAR=value`` words set the environment), ``python``
blocks run in one namespace, the ``yaml`` block is the S3 campaign (its keys over a tiny campaign),
all in a folder holding ``runs/inpaint-gmm.zarr``; ``http://localhost:9000`` is replaced by a moto S3
server started here on a free port, with the bucket ``my-bucket``.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.runner import run_campaign

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = {
    "name": "inpaint-gmm", "store": "runs/inpaint-gmm.zarr", "seed": 3, "data": {"simulate": {"count": 2}},
    "operator": {"kind": "inpaint", "fraction": 0.5, "seed": 0}, "noise": {"sigma": 0.1},
    "prior": {"kind": "gaussian", "shape": [1, 8, 8], "mean": 0.5, "variance": 0.04},
    "sampler": {"kind": "ula", "burn_in": 5, "thin": 1}, "chains": 4, "draws": 8, "chunks": {"chains": 2, "draws": 4},
    "cluster": {"address": "in-process"},
}


def _recipes() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"<!-- recipes -->(.*?)<!-- /recipes -->", text, re.S)
    assert section, "README.md lost its <!-- recipes --> section"
    return re.findall(r"```(\w+)\n(.*?)```", section.group(1), re.S)


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch):
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    endpoint = f"http://{host}:{port}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("my-bucket")
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_readme_recipes_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(BASE))
    run_campaign(load_campaign(tmp_path / "campaign.yaml"), progress=False)
    blocks = _recipes()
    assert [lang for lang, _ in blocks] == ["sh", "python", "python", "yaml", "sh", "python"]
    namespace: dict = {}
    runner = CliRunner()
    for lang, code in blocks:
        code = code.replace("http://localhost:9000", moto_endpoint)
        if lang == "yaml":
            (tmp_path / "s3-campaign.yaml").write_text(yaml.safe_dump({**BASE, **yaml.safe_load(code)}))
        elif lang == "python":
            exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
        else:
            for line in code.splitlines():
                words = shlex.split(line, comments=True)
                env = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
                args = [word for word in words if not re.match(r"^[A-Z_]+=", word)]
                assert args[0] == "uqc", line
                result = runner.invoke(app, args[1:], env=env)
                assert result.exit_code == 0, (line, result.output)

    summary = zarr.open_group(tmp_path / "runs" / "inpaint-gmm.zarr" / "summary", mode="r")
    table = namespace["table"]
    for column, key in (("mean", "mean"), ("sd", "std"), ("r_hat", "rhat"), ("ess_bulk", "ess_bulk")):
        np.testing.assert_allclose(table[column].values, np.asarray(summary[key][0]).reshape(-1), rtol=1e-6, err_msg=column)
    np.testing.assert_allclose(namespace["worst_rhat"].values, np.nanmax(summary["rhat"][...], axis=(1, 2, 3)))
    assert namespace["pixel"].dims == ("chain", "draw", "channel") and (tmp_path / "measurements.nc").is_file()
    # the same campaign on S3: the same draws, the same R̂
    np.testing.assert_array_equal(namespace["ds"]["samples"].values, zarr.open_group(tmp_path / "runs" / "inpaint-gmm.zarr", mode="r")["samples"][...])
    np.testing.assert_array_equal(namespace["rhat"].values, summary["rhat"][...])
