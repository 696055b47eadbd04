"""Write CALIBRATION.md: `uqc calibrate` of every sampler kind on two GMM problems (``make calibrate``).

Usage: ``python benchmarks/calibration.py --out CALIBRATION.md --figures docs/calibration [--trials 200] [--only exact,ula]``

Each row is one ``uqc calibrate`` run (:func:`uqcampaign.pipeline.calibrate.run_calibration`, in process):
``--trials`` truths drawn from the prior, each measured ``--replicates`` times; SBC and TARP on the first
replicates, replicated coverage on all. The rows include two controls known wrong: the exact sampler
with its spread scaled by 0.7 and ULA with a fifth of the burn-in it needs (8 relaxation times of the
slowest posterior direction, ``τ = λ_max / δ``, chains started at ``pinv(y)``). Figures (rank histogram
with its binomial band, TARP curve with its bootstrap band, coverage with binomial intervals) go to
``--figures/<problem>-<row>/``.

Problems (exact posteriors, so that every departure is the sampler's): ``gmm``, a random 4-component
Gaussian mixture on 4×4 images with a blur (``kernels.problems.random_problem("blur", "gmm", 3)``), and
``digits``, the shipped GMM learned from 16×16 digits (``priors/digits16.npz``, 8 components) with a
Gaussian blur (σ 1, size 5). Noise σ = 0.05 on both. The neural priors (LCM) are not calibrated here:
a row costs ``trials × replicates × chains × draws`` network calls per step, hours on CPU.

Cost on CPU (2 cores): the independent-draw rows take 1–3 min each; the ULA rows take about a minute
per measurement (≈ 4,000 burn-in steps of 20 chains), ≈ 7 h for 400 measurements, and ``dps`` (50 steps)
≈ 6 s per measurement, ≈ 40 min on the 16-pixel problem, so the shipped
CALIBRATION.md was made with ``--only`` (each section names its command) and ULA's known-wrong control
is measured in ``tests/pipeline/test_calibration_tools.py`` instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
SIGMA = 0.05
ULA_RELAXATIONS = 8  # the burn-in ULA needs (tests/kernels/test_ula.py)


def _problems() -> dict[str, dict[str, Any]]:
    from uqcampaign.kernels.problems import random_problem

    gmm = random_problem("blur", "gmm", seed=3, sigma=SIGMA)
    digits = np.load(ROOT / "priors" / "digits16.npz")
    return {
        "gmm": {"operator": gmm.operator_spec, "prior_arrays": gmm.prior_arrays, "label": "random GMM, 4 components, 1×4×4, blur"},
        "digits": {"operator": {"kind": "blur", "sigma": 1.0, "size": 5}, "prior_arrays": {k: digits[k] for k in digits.files},
                   "label": "shipped digits GMM (priors/digits16.npz), 8 components, 1×16×16, blur σ 1"},
    }


def _ula_burn_in(spec: dict[str, Any], folder: Path) -> int:
    """The burn-in ULA needs on this problem: ``8 λ_max / δ`` (λ_max: the largest posterior variance)."""
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.priors.registry import build_prior
    from uqcampaign.kernels.samplers.ula import ULAConfig, ula_parameters

    prior = build_prior({"kind": "gmm", "file": "prior.npz"}, folder).to(dtype=torch.float64)
    operator = build_operator(spec["operator"], tuple(prior.img_shape)).to(dtype=torch.float64)
    params = ula_parameters(ULAConfig(box=None), operator, prior, SIGMA)
    # posterior precision of component k: AᵀA/σ² + diag(1/v_k); its smallest eigenvalue sets λ_max
    d = math.prod(prior.img_shape)
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *prior.img_shape)
    ata = operator.A_T(operator.A(eye)).reshape(d, d)
    variances = torch.as_tensor(spec["prior_arrays"]["variances"], dtype=torch.float64).reshape(-1, d)
    slowest = max(float(1.0 / torch.linalg.eigvalsh(ata / SIGMA**2 + torch.diag(1.0 / v))[0]) for v in variances)
    return math.ceil(ULA_RELAXATIONS * slowest / params.delta)


def _rows(burn_in: int) -> dict[str, dict[str, Any]]:
    """Row name → sampler spec, chains, draws, and whether it is a known-wrong control."""
    return {
        "exact": {"sampler": {"kind": "exact"}, "chains": 20, "draws": 5},
        "exact-spread-0.7": {"sampler": {"kind": "exact", "spread": 0.7}, "chains": 20, "draws": 5, "control": "known wrong: std × 0.7"},
        "ula": {"sampler": {"kind": "ula", "box": None, "init": "pinv", "burn_in": burn_in}, "chains": 20, "draws": 100},
        "ula-fifth-burn-in": {"sampler": {"kind": "ula", "box": None, "init": "pinv", "burn_in": max(1, burn_in // 5)}, "chains": 20, "draws": 100,
                              "control": "known wrong: a fifth of the burn-in"},
        "skrock": {"sampler": {"kind": "skrock"}, "chains": 20, "draws": 20},
        "dps": {"sampler": {"kind": "dps", "steps": 50}, "chains": 20, "draws": 5},
        "latino": {"sampler": {"kind": "latino"}, "chains": 20, "draws": 5},
    }


def _calibrate(name: str, problem: dict[str, Any], row: dict[str, Any], trials: int, replicates: int, figures: Path, work: Path) -> dict[str, Any]:
    from uqcampaign.pipeline.calibrate import CalibrationDesign, run_calibration
    from uqcampaign.pipeline.config import load_campaign

    spec = {"name": name, "store": f"{name}.zarr", "seed": 11, "data": {"simulate": {"count": 1}}, "operator": problem["operator"],
            "noise": {"sigma": SIGMA}, "prior": {"kind": "gmm", "file": "prior.npz"}, "sampler": row["sampler"], "chains": row["chains"],
            "draws": row["draws"], "chunks": {"chains": row["chains"], "draws": row["draws"]}, "cluster": {"address": "in-process"}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    start = time.perf_counter()
    result = run_calibration(load_campaign(path), CalibrationDesign(trials=trials, replicates=replicates), figures=figures, progress=False, console=quiet)
    result["seconds"] = time.perf_counter() - start
    return result


def _line(row_name: str, row: dict[str, Any], result: dict[str, Any], figures: Path, out: Path) -> str:
    cov, interval = result["coverage"], result["coverage_interval"]
    ecp_gap = max(abs(e - a) for e, a in zip(result["tarp_ecp"], result["tarp_alpha"]))
    links = " ".join(f"[{Path(f).stem}]({os.path.relpath(f, out.parent)})" for f in result.get("figures", []))
    spec = ", ".join(f"{k}: {v}" for k, v in row["sampler"].items())
    control = f" ({row['control']})" if row.get("control") else ""
    return (
        f"| {row_name}{control} | `{spec}` | {result['sbc_pvalue']:.2g} | {result['tarp_pvalue']:.2g} | {ecp_gap:.3f} | "
        f"{cov['0.5']:.3f} [{interval['0.5'][0]:.3f}, {interval['0.5'][1]:.3f}] | {cov['0.9']:.3f} [{interval['0.9'][0]:.3f}, {interval['0.9'][1]:.3f}] | "
        f"{result['joint_coverage']['0.9']:.3f} | **{result['verdict']}** | {result['seconds']:.0f} | {links} |"
    )


def _read_sections(path: Path) -> dict[str, str]:
    """The ``## <problem>: …`` sections of an existing CALIBRATION.md, by problem name."""
    if not path.is_file():
        return {}
    parts = path.read_text().split("\n## ")[1:]
    return {part.split(":", 1)[0]: "## " + part.rstrip("\n") + "\n" for part in parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "CALIBRATION.md")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "calibration")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--problems", default="gmm,digits")
    args = parser.parse_args(argv)
    only = {r for r in args.only.split(",") if r}
    lines = [
        "# Calibration of the samplers",
        "",
        (f"Written by `make calibrate` (`python benchmarks/calibration.py --trials {args.trials} --replicates {args.replicates}`) "
        f"on {dt.date.today().isoformat()}, torch {torch.__version__}, CPU. Every row is one `uqc calibrate` run of a campaign with that "
        "sampler: truths drawn from the prior, y simulated, the sampler run on each y as a campaign, then SBC (Talts et al. 2018: rank "
        "of the truth among thinned draws, χ² on the rank histogram, Bonferroni over pixels and projections), TARP expected coverage "
        "(Lemos et al. 2023: p of the largest |ECP − α| under exact draws) and replicated-experiment coverage (Thong, Kemajou Mbakam & "
        "Pereyra 2024: share of pixels whose order-statistic interval holds the truth, with cluster-robust 95% binomial intervals; "
        "joint: HPD over random projections). Verdict and thresholds: `pipeline/calibration/verdict.py`. Rows marked *known wrong* "
        "are controls that the tools must flag."),
        "",
        ("A calibrated sampler has SBC p and TARP p above 0.01 and coverage intervals that contain the nominal level (0.5, 0.9). "
         "Markov chains (ula) are thinned to about one draw per effective sample (bulk ESS)."),
        "",
    ]
    sections = _read_sections(args.out)  # problems not run this time keep their section
    command = " ".join(["python benchmarks/calibration.py", *(argv if argv is not None else sys.argv[1:])])

    def write() -> None:
        body = [sections[name] for name in _problems() if name in sections]
        args.out.write_text("\n".join(lines) + "\n" + "\n".join(body))

    with tempfile.TemporaryDirectory(prefix="uqc-calibration-") as tmp:
        for problem_name, problem in _problems().items():
            if problem_name not in args.problems.split(","):
                continue
            work = Path(tmp) / problem_name
            work.mkdir()
            np.savez(work / "prior.npz", **problem["prior_arrays"])
            burn_in = _ula_burn_in(problem, work)
            rows = {name: row for name, row in _rows(burn_in).items() if not only or name in only}
            skipped = [name for name in _rows(burn_in) if name not in rows]
            section = [f"## {problem_name}: {problem['label']}, σ = {SIGMA}", "",
                       f"Rows from `{command}` ({args.trials} truths × {args.replicates} replicates)"
                       + (f"; not run here: {', '.join(skipped)}." if skipped else "."),
                       f"ULA needs {burn_in} burn-in steps here ({ULA_RELAXATIONS} relaxation times of the slowest posterior direction).", "",
                       "| sampler | spec | SBC p | TARP p | max \\|ECP − α\\| | coverage 0.5 [95% CI] | coverage 0.9 [95% CI] | joint 0.9 | verdict | s | figures |",
                       "|---|---|---|---|---|---|---|---|---|---|---|"]
            for row_name, row in rows.items():
                figures = args.figures / f"{problem_name}-{row_name}"
                shutil.rmtree(figures, ignore_errors=True)
                result = _calibrate(row_name, problem, row, args.trials, args.replicates, figures, work)
                section.append(_line(row_name, row, result, figures, args.out))
                print(section[-1], file=sys.stderr, flush=True)
                sections[problem_name] = "\n".join(section) + "\n"
                write()  # each row kept as soon as measured
    write()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
