"""A CLI that teaches: --version, every YAML error at once, report formats, progress on stderr, no private documents cited."""

from __future__ import annotations

import ast
import csv
import importlib.metadata
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from uqcampaign.kernels.errors import UQErrors
from uqcampaign.pipeline.cli import app
from uqcampaign.pipeline.kinds import GROUPS, kinds_of

runner = CliRunner()
UQC = Path(sys.executable).with_name("uqc")
REPO = Path(__file__).resolve().parents[2]


def _uqc(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UQC), *args], capture_output=True, text=True, timeout=timeout)


def test_version_is_the_installed_one() -> None:
    proc = _uqc("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"uqc (uqcampaign) {importlib.metadata.version('uqcampaign')}", proc


THREE_ERRORS = """\
name: three
store: store.zarr
data: {simulate: {count: 2}}
operator: {kind: inpaint, fraction: 0.5}
noise: {sigma: 0.1}
prior: {kind: gaussian, shape: [1, 8, 8], mean: 0.5, variance: 0.04}
sampler:
  kind: ula
  stepp: auto
chains: many
draws: 7
chunks: {chains: 4, draws: 3}
store: again.zarr
"""


def test_a_yaml_with_three_errors_lists_three_lines_sorted_by_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(THREE_ERRORS)
    proc = _uqc("run", str(path), "--in-process")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [line.split(":")[2] for line in lines] == ["9", "10", "13"], lines  # error: PATH:LINE: ...
    assert "unknown key 'stepp' in the ula sampler spec" in lines[0]
    assert "'chains': Input should be a valid integer" in lines[1]
    assert "key 'store' is given twice (lines 2 and 13)" in lines[2]
    result = runner.invoke(app, ["--debug", "run", str(path)])
    assert isinstance(result.exception, UQErrors) and len(result.exception.messages) == 3
    assert all(message in str(result.exception) for message in result.exception.messages)


def test_a_union_key_is_one_line_and_a_misspelt_key_names_the_missing_one(write_campaign) -> None:
    path = write_campaign(cluster={"address": "in-process", "workers": "many"}, draws=None, drawz=7)
    result = runner.invoke(app, ["run", str(path)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2, lines
    assert "unknown key 'drawz'; did you mean 'draws' (missing)?" in result.stderr
    assert "'cluster.workers': Input should be 'auto'" in result.stderr and "or Input should be a valid integer" in result.stderr


@pytest.fixture
def reduced_store(write_campaign) -> str:
    from uqcampaign.pipeline.config import load_campaign
    from uqcampaign.pipeline.reduce import reduce_store
    from uqcampaign.pipeline.runner import run_campaign

    campaign = load_campaign(write_campaign())
    run_campaign(campaign, progress=False)
    reduce_store(campaign.store_location, progress=False)
    return campaign.store_location


def _same(a: object, b: object) -> bool:
    if isinstance(b, float) and not math.isfinite(b):
        return a is None or a == ""
    if isinstance(b, float):
        return math.isclose(float(a), b, rel_tol=1e-12)  # type: ignore[arg-type]
    return str(a) == str(b) if isinstance(a, str) else a == b


def test_report_json_and_csv_carry_the_rows(reduced_store: str) -> None:
    from uqcampaign.pipeline.report import report_rows

    rows = report_rows(reduced_store)
    result = runner.invoke(app, ["report", reduced_store, "--format", "json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert len(parsed) == len(rows) + 1 and parsed[-1]["measurement"] == "campaign"  # the last row is the campaign's verdict
    assert all(_same(p[k], v) for p, row in zip(parsed, rows) for k, v in row.items())
    result = runner.invoke(app, ["report", reduced_store, "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))[:-1]
    assert len(table) == len(rows) and list(table[0]) == list(rows[0])
    assert all(_same(t[k], "" if v is None else str(v) if not isinstance(v, float) else v) for t, row in zip(table, rows) for k, v in row.items())
    result = runner.invoke(app, ["report", reduced_store, "--format", "xml"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --format 'xml' is not one of table, json, csv")
    assert "coverage" in runner.invoke(app, ["report", reduced_store]).stdout  # the table stays the default


def test_progress_bars_go_to_stderr_and_say_what_they_count(write_campaign, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(write_campaign()), "--in-process"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("store: "), result.stdout
    assert "tiny: 4/4 units done" in result.stderr and "84/84 chain-draws" in result.stderr, result.stderr
    result = runner.invoke(app, ["reduce", str(tmp_path / "store.zarr")])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"summary written to {tmp_path / 'store.zarr'}/summary\n" and "% Completed" in result.stderr


FORBIDDEN = re.compile(r"DESIGN|STYLE\.md|architecture\.md|\b[Ii]ssues? ?#?\d|seed 0\d\d\b")


def _user_facing_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (messages, help texts, labels)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_messages_cite_no_document_the_user_lacks() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {text!r}"
        for folder in ("kernels", "pipeline", "cluster")
        for path in sorted((REPO / folder).rglob("*.py"))
        for line, text in _user_facing_strings(path)
        if FORBIDDEN.search(text)
    ]
    assert not found, found
    for group in GROUPS:  # `uqc kinds` prints docstrings: those parts too
        for kind in kinds_of(group):
            out = runner.invoke(app, ["kinds", group, kind]).stdout
            assert not FORBIDDEN.search(out), (group, kind, out)


def test_empty_campaign_names_the_keys_and_no_document(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("")
    result = runner.invoke(app, ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "the keys name, store, data, operator, noise, prior, sampler, chains, draws (" in result.stderr and "DESIGN" not in result.stderr
