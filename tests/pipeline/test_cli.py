"""`uqc`: bad inputs give one line `error: …` and exit code 2; commands run end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.config import load_campaign
from uqcampaign.pipeline.demo import DEMO_YAML, run_demo
from uqcampaign.pipeline.runner import prepare_store, run_campaign

runner = CliRunner()


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _files_campaign(write_campaign, tmp_path: Path, y: np.ndarray, truth: np.ndarray | None = None) -> Path:
    np.save(tmp_path / "y.npy", y)
    data = {"y": "y.npy"}
    if truth is not None:
        np.save(tmp_path / "x.npy", truth)
        data["truth"] = "x.npy"
    return write_campaign(data=data)


def test_missing_and_invalid_yaml(tmp_path: Path) -> None:
    assert "not found" in _one_line_error(["run", str(tmp_path / "none.yaml"), "--in-process"])
    (tmp_path / "bad.yaml").write_text("name: [x\n")
    assert "invalid YAML" in _one_line_error(["run", str(tmp_path / "bad.yaml"), "--in-process"])


def test_unknown_key(write_campaign) -> None:
    path = write_campaign(drawz=3)
    line = _one_line_error(["run", str(path), "--in-process"])
    assert "unknown key 'drawz'" in line and "campaign.yaml:" in line


@pytest.mark.parametrize(
    ("y_shape", "nan", "truth_shape", "expected"),
    [
        ((2, 1, 8, 7), False, None, "data.y has shape (2, 1, 8, 7) but the operator expects (M, 1, 8, 8)"),
        ((2, 1, 8, 8), True, None, "data.y holds 1 NaN/Inf values"),
        ((2, 1, 8, 8), False, (3, 1, 8, 8), "data.truth has shape (3, 1, 8, 8) but (2, 1, 8, 8) is expected"),
    ],
)
def test_bad_data_files(write_campaign, tmp_path: Path, y_shape, nan, truth_shape, expected) -> None:
    y = np.full(y_shape, 0.5, np.float32)
    if nan:
        y[1, 0, 2, 3] = np.nan
    truth = None if truth_shape is None else np.zeros(truth_shape, np.float32)
    line = _one_line_error(["run", str(_files_campaign(write_campaign, tmp_path, y, truth)), "--in-process"])
    assert expected in line and ".npy" in line


def test_duplicate_key_boolean_number_and_non_utf8(write_campaign, tmp_path: Path) -> None:
    path = write_campaign()
    lines = path.read_text().splitlines()
    first = lines.index("chains: 6") + 1
    path.write_text("\n".join([*lines, "chains: 4", ""]))  # a valid value: the repetition is the only error
    expected = f"campaign.yaml:{len(lines) + 1}: key 'chains' is given twice (lines {first} and {len(lines) + 1})"
    assert expected in _one_line_error(["run", str(path), "--in-process"])
    line = _one_line_error(["run", str(write_campaign(chains=True)), "--in-process"])
    assert "'chains': got True" in line and "booleans" in line
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    assert "not a UTF-8 text file" in _one_line_error(["run", str(tmp_path / "latin1.yaml"), "--in-process"])


def test_refused_sampler_writes_no_store(write_campaign) -> None:
    bad = write_campaign(sampler={"kind": "ula", "step": 10, "burn_in": 1, "thin": 1})
    assert "stability bound" in _one_line_error(["run", str(bad), "--in-process"])
    assert not (bad.parent / "store.zarr").exists()  # the corrected campaign may use the path


def test_force_with_a_bad_campaign_keeps_the_old_store(write_campaign, tmp_path: Path) -> None:
    run_campaign(load_campaign(write_campaign("a.yaml", name="first")), progress=False)
    bad_sampler = write_campaign("b.yaml", name="second", sampler={"kind": "ula", "step": 10, "burn_in": 1, "thin": 1})
    assert "stability bound" in _one_line_error(["run", str(bad_sampler), "--in-process", "--force", "--delete-draws"])
    np.save(tmp_path / "y.npy", np.zeros((2, 1, 8, 7), np.float32))
    bad_data = write_campaign("c.yaml", name="third", data={"y": "y.npy"})
    assert "data.y has shape" in _one_line_error(["run", str(bad_data), "--in-process", "--force", "--delete-draws"])
    result = runner.invoke(app, ["inspect", str(tmp_path / "store.zarr")])
    assert result.exit_code == 0 and "campaign: first" in result.output and "84/84 chain-draws" in result.output


def test_store_of_another_campaign(write_campaign) -> None:
    run_campaign(load_campaign(write_campaign("a.yaml", name="first")), progress=False)
    second = write_campaign("b.yaml", name="second", seed=9)
    line = _one_line_error(["run", str(second), "--in-process"])
    assert "campaign 'first'" in line and "--force" in line
    assert "seed 3 -> 9" in line  # the key that differs
    line = _one_line_error(["run", str(second), "--in-process", "--force", "--no-progress"])  # --force alone deletes no draws
    assert "--force would delete the 84 chain-draws of campaign 'first'" in line and "add --delete-draws to confirm" in line
    assert "campaign: first" in runner.invoke(app, ["inspect", str(second.parent / "store.zarr")]).stdout  # kept
    result = runner.invoke(app, ["run", str(second), "--in-process", "--force", "--delete-draws", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "--force --delete-draws: removing" in result.stderr and "campaign 'first'" in result.stderr


def test_read_only_store_location(write_campaign) -> None:
    path = write_campaign(store="/sys/uqcampaign-read-only-test/store.zarr")
    assert "cannot create the store" in _one_line_error(["run", str(path), "--in-process"])


def test_reduce_with_no_draws(write_campaign) -> None:
    prepare_store(load_campaign(write_campaign()))
    _one_line_error(["reduce", str(Path(write_campaign()).parent / "store.zarr")])


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "run", str(tmp_path / "none.yaml")])
    assert isinstance(result.exception, UQError)


def test_console_script_error_is_one_line(tmp_path: Path) -> None:
    uqc = Path(sys.executable).with_name("uqc")
    proc = subprocess.run([str(uqc), "run", str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("section", "spec", "bad_key", "expected"),
    [
        ("operator", {"kind": "inpaint", "fracton": 0.5}, "fracton", "unknown key 'fracton' in the inpaint operator spec"),
        ("operator", {"seed": 0, "kind": "inpaint-x"}, "kind", "unknown operator kind 'inpaint-x'"),
        ("prior", {"kind": "gaussian", "shape": [1, 8, 8], "mean": 0.5, "varience": 0.04}, "varience", "unknown key 'varience' in the gaussian prior spec"),
    ],
)
def test_bad_component_spec_names_file_and_line(write_campaign, section: str, spec: dict, bad_key: str, expected: str) -> None:
    path = write_campaign(**{section: spec})
    lines = path.read_text().splitlines()
    start = lines.index(f"{section}:")
    line = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {bad_key}:")) + 1
    assert _one_line_error(["run", str(path)]).startswith(f"error: {path}:{line}: {expected}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "CAMPAIGN", "--workers", "0"], "Invalid value for '--workers'"),
        (["run", "CAMPAIGN", "--gpus-per-worker", "-1"], "Invalid value for '--gpus-per-worker'"),
        (["train-prior", "diffusion", "--out", "OUT", "--steps", "0"], "Invalid value for '--steps'"),
        (["run"], "Missing argument 'campaign'"),
        (["run", "CAMPAIGN", "--wrkers", "2"], "No such option: --wrkers"),
        (["runn", "CAMPAIGN"], "No such command 'runn'"),
    ],
)
def test_usage_errors_are_one_line(write_campaign, tmp_path: Path, args: list[str], expected: str) -> None:
    args = [{"CAMPAIGN": str(write_campaign()), "OUT": str(tmp_path / "out")}.get(arg, arg) for arg in args]
    line = _one_line_error(args)
    assert line.startswith(f"error: {expected}") and "--help'" in line, line
    assert not (tmp_path / "store.zarr").exists() and not (tmp_path / "out").exists()


def test_no_arguments_still_print_the_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "run" in result.output and "error:" not in result.output


def test_console_script_option_below_its_minimum_is_one_line(write_campaign) -> None:
    uqc = Path(sys.executable).with_name("uqc")
    proc = subprocess.run([str(uqc), "run", str(write_campaign()), "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: Invalid value for '--workers'") and "uqc run --help" in proc.stderr


def test_local_ray_run_prints_no_auth_warning(write_campaign) -> None:
    """`uqc run` on a new local Ray instance keeps Ray's token auth without Ray's warning about it."""
    path = write_campaign(cluster={"address": "local", "workers": 1})
    folder = tempfile.mkdtemp(prefix="uqr", dir="/tmp")  # Ray's socket paths must stay short
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(UQC_RAY_TMPDIR=folder, RAY_TMPDIR=folder, RAY_AUTH_TOKEN=uuid.uuid4().hex, RAY_USAGE_STATS_ENABLED="0")
    uqc = Path(sys.executable).with_name("uqc")
    try:
        proc = subprocess.run([str(uqc), "run", str(path), "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0 and "store:" in proc.stdout, proc.stderr
    assert "Token authentication" not in proc.stderr, proc.stderr


def test_run_inspect_reduce_report_maps(write_campaign, tmp_path: Path) -> None:
    path = write_campaign()
    result = runner.invoke(app, ["run", str(path), "--in-process", "--no-progress"])
    assert result.exit_code == 0, result.output
    store = str(tmp_path / "store.zarr")
    assert f"store: {store}" in result.stdout
    result = runner.invoke(app, ["inspect", store])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.stdout and "84/84 chain-draws" in result.stdout and "absent" in result.stdout
    assert "has no summary" in _one_line_error(["maps", store, "--out", str(tmp_path / "maps")])  # maps never reduce unasked
    assert "has no summary" in _one_line_error(["report", store])
    result = runner.invoke(app, ["maps", store, "--out", str(tmp_path / "maps"), "--reduce"])  # asked: reduce first, and say so
    assert result.exit_code == 0, result.output
    assert "reducing it first (--reduce)" in result.stderr
    assert list((tmp_path / "maps").glob("*.png"))
    assert "present, up to date (84 chain-draws)" in runner.invoke(app, ["inspect", store]).stdout
    assert runner.invoke(app, ["reduce", store, "--level", "0.8"]).exit_code == 0
    assert runner.invoke(app, ["report", store]).exit_code == 0
    assert "outside (0, 1)" in _one_line_error(["reduce", store, "--level", "1.5"])


def test_demo_yaml_meets_the_issue() -> None:
    campaign = load_campaign(DEMO_YAML)
    assert campaign.data.simulate.count >= 4 and campaign.chains >= 32
    assert campaign.sampler["kind"] == "ula" and campaign.prior["kind"] == "gmm"
    assert Path(campaign.resolve(campaign.prior["file"])).is_file()
    assert campaign.operator["kind"] in ("inpaint", "blur") and campaign.noise.sigma == 0.05


def test_run_demo_on_a_tiny_campaign(tmp_path: Path) -> None:
    spec = yaml.safe_load(DEMO_YAML.read_text())
    spec.update(chains=4, draws=6, chunks={"chains": 2, "draws": 3}, data={"simulate": {"count": 2}})
    spec["sampler"].update(burn_in=2, thin=1)
    spec["prior"]["file"] = str(DEMO_YAML.parent.parent / "priors" / "digits16.npz")
    tiny = tmp_path / "demo.yaml"
    tiny.write_text(yaml.safe_dump(spec))
    out = run_demo(tmp_path / "out", yaml_path=tiny, progress=False)
    assert out["store"] == str(tmp_path / "out" / "demo.zarr")
    assert out["maps"] and all(Path(p).is_file() for p in out["maps"])


def test_train_prior_distils_an_lcm_from_the_command_line(tmp_path: Path) -> None:
    """`uqc train-prior latent-consistency --teacher priors/digits16-ldm` passes every recipe option through."""
    teacher = Path(__file__).resolve().parents[2] / "priors" / "digits16-ldm"
    if not teacher.is_dir():
        pytest.skip("priors/digits16-ldm not shipped")
    out = tmp_path / "lcm"
    result = runner.invoke(app, ["train-prior", "latent-consistency", "--out", str(out), "--teacher", str(teacher), "--steps", "1",
                                 "--batch-size", "2", "--lr", "1e-4", "--seed", "3", "--checkpoint-every", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training.json").read_text())
    assert record["options"] == {"kind": "latent-consistency", "dataset": "digits16", "steps": 1, "batch_size": 2, "lr": 1e-4,
                                 "seed": 3, "teacher": str(teacher)}
    assert json.loads((out / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 32
    line = _one_line_error(["train-prior", "consistency", "--out", str(tmp_path / "cm"), "--vae-steps", "5"])
    assert line.startswith("error: option 'vae_steps' does not apply to training a consistency prior"), line
