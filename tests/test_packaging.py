"""Packaging contracts of DESIGN §1: one namespace, every subpackage in the wheel, no bare `kernels`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"kernels": "uqcampaign/kernels", "pipeline": "uqcampaign/pipeline", "cluster": "uqcampaign/cluster"}


def _source_packages() -> set[str]:
    """Every folder of the three top-level packages that holds an `__init__.py`, as a wheel path."""
    found = set()
    for folder, installed in TOP_LEVEL.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(installed if relative == Path(".") else f"{installed}/{relative.as_posix()}")
    return found


def test_wheel_contains_every_subpackage(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in TOP_LEVEL:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("uqcampaign-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
    missing = _source_packages() - packaged
    assert not missing, f"subpackages missing from the wheel (add them to pyproject `packages`): {sorted(missing)}"
    assert not any(name.startswith(("kernels/", "pipeline/", "cluster/")) for name in names), "bare top-level package in wheel"
    assert "uqcampaign/__init__.py" not in names, "uqcampaign must stay an implicit namespace package"


def test_top_level_init_files_are_empty() -> None:
    for folder in TOP_LEVEL:
        text = (REPO / folder / "__init__.py").read_text()
        assert "import" not in text and "__version__" not in text, f"{folder}/__init__.py must stay empty (DESIGN §1)"


def test_transformers_does_not_mistake_our_kernels_for_hf_kernels() -> None:
    """From the repo root `kernels/` is importable; transformers must still report no HF `kernels`."""
    code = (
        "import transformers, diffusers\n"
        "from transformers.utils import is_kernels_available\n"
        "print(is_kernels_available())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_version_comes_from_metadata() -> None:
    from importlib.metadata import version

    assert version("uqcampaign")
