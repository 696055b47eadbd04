"""Write BENCHMARKS.md: every section is produced by a command in this folder.

Usage: ``python benchmarks/run.py --out BENCHMARKS.md [--quick] [--only samplers,sampler_choice,reduce,cluster,joins,learned,realistic,sampling,latino_pro,smc]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SECTIONS = {
    "samplers": "bench_samplers.py",
    "sampler_choice": "bench_sampler_choice.py",
    "reduce": "bench_reduce.py",
    "cluster": "bench_cluster.py",
    "joins": "bench_joins.py",
    "learned": "bench_learned.py",
    "realistic": "bench_realistic.py",
    "sampling": "bench_prior_sampling.py",
    "latino_pro": "bench_latino_pro.py",
    "smc": "bench_smc.py",
}


def _load(file: str):
    spec = importlib.util.spec_from_file_location(file.removesuffix(".py"), HERE / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


MARK = "<!-- section: {} -->"


def _read_sections(path: Path) -> dict[str, str]:
    """The sections of an existing BENCHMARKS.md, by name (each starts after its ``MARK`` line)."""
    if not path.exists():
        return {}
    found: dict[str, str] = {}
    for chunk in path.read_text().split("<!-- section: ")[1:]:
        name, _, body = chunk.partition(" -->\n")
        if name in SECTIONS:
            found[name] = body.rstrip("\n") + "\n"
    return found


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{cpu}, {dt.date.today().isoformat()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, figures not meaningful")
    parser.add_argument("--only", default=",".join(SECTIONS))
    args = parser.parse_args(argv)
    header = (
        "# Benchmarks\n\n"
        "Written by `make bench` (`python benchmarks/run.py --out BENCHMARKS.md`); every figure below comes from "
        "the command named in its section; `--only NAME` reruns one section and keeps the others.\n\n"
        f"Machine: {machine_line()}.\n"
    )
    sections = _read_sections(args.out)
    for name in args.only.split(","):
        file = SECTIONS[name]
        if not (HERE / file).exists():
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        sections[name] = _load(file).section(quick=args.quick)
        # after every section: a failure later keeps the rest
        args.out.write_text(header + "".join(f"\n{MARK.format(n)}\n{sections[n]}" for n in SECTIONS if n in sections))
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
