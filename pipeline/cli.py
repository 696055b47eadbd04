"""The ``uqc`` command line (DESIGN §7): run, validate, kinds, reduce, maps, report, calibrate, export, inspect, demo, train-prior.

Every command imports its heavy modules inside its body, so ``uqc --help`` stays fast.
User errors (:class:`UQError`, pydantic validation, YAML) print one line ``error: …`` on
stderr and exit with code 2 (several problems found at once, :class:`UQErrors`, print one
such line each); ``uqc --debug COMMAND`` shows the traceback instead. Usage errors (an option
below its ``min=``, a missing argument, an unknown option or command) are one line with exit
code 2 too. Results go to stdout, progress bars and messages about the work to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from uqcampaign.kernels.errors import UQError, UQErrors

try:  # recent typer ships its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import UsageError

__all__ = ["app", "main"]

console = Console(soft_wrap=True)  # results are not wrapped: a long path stays on one line
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


@contextlib.contextmanager
def _usage_errors_on_one_line() -> Iterator[None]:
    """Print a command-line usage error (bad option value, missing argument, unknown command) as
    one line ``error: …`` and exit 2, instead of typer's usage text and boxed message."""
    try:
        yield
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `uqc`: typer prints the help
            raise
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        err_console.print(f"error: {' '.join(exc.format_message().split()).rstrip('.')}{hint}", markup=False)
        raise typer.Exit(2) from None


class _OneLineUsageErrors(TyperGroup):
    """The ``uqc`` group: usage errors of the group and of its commands are one line, exit code 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_on_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_on_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    name="uqc",
    cls=_OneLineUsageErrors,
    help="Distributed MCMC campaigns for uncertainty quantification in imaging inverse problems.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
_options: dict[str, bool] = {"debug": False}  # global CLI flags, set by the app callback


def _one_line(exc: BaseException | str) -> str:
    """The user-facing one-line message of a user error (or of one line of a :class:`UQErrors`)."""
    from pydantic import ValidationError

    if isinstance(exc, str):
        return " ".join(exc.split())
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "value"
        return f"'{key}': {first['msg']}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _user_errors() -> tuple[type[BaseException], ...]:
    import yaml
    from pydantic import ValidationError

    return (UQError, ValidationError, yaml.YAMLError)


def handled(func: F) -> F:
    """Print user errors as ``error: …`` (exit 2), unless ``--debug`` asks for the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _user_errors() as exc:
            if _options["debug"]:
                raise
            for message in exc.messages if isinstance(exc, UQErrors) else [exc]:
                err_console.print(f"error: {_one_line(message)}", markup=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished chunks are kept; rerun the same command to resume", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _print_version(value: bool) -> None:
    if value:
        import importlib.metadata

        try:
            version = importlib.metadata.version("uqcampaign")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            version = "unknown (not installed: pip install -e .)"
        console.print(f"uqc (uqcampaign) {version}", markup=False)
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of errors."),
    version: bool = typer.Option(False, "--version", help="Print the installed uqcampaign version and exit.", callback=_print_version, is_eager=True),
) -> None:
    """uqcampaign: run sampling campaigns into a Zarr store, reduce them, map and report them."""
    _options["debug"] = debug


def _load_campaign(path: Path) -> Any:
    """``load_campaign(path)``; its ``CampaignWarning`` warnings are printed as ``warning: …`` on stderr."""
    import warnings

    from uqcampaign.pipeline.config import CampaignWarning, load_campaign

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CampaignWarning)
        spec = load_campaign(path)
    for warning in caught:
        if issubclass(warning.category, CampaignWarning):
            err_console.print(f"warning: {_one_line(str(warning.message))}", markup=False)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return spec


def _file_address(campaign: Path) -> Any:
    """The campaign file's ``cluster.address``, parsed (an ``Address``), read before the rest is validated:
    None when absent or not understood (``load_campaign`` then reports it with its line)."""
    import yaml

    from uqcampaign.pipeline.address import parse_address

    try:
        return parse_address(yaml.safe_load(campaign.read_text())["cluster"]["address"])
    except Exception:  # absent, not a mapping, not YAML, not an address: the full load says what and where
        return None


@app.command()
@handled
def run(
    campaign: Path = typer.Argument(..., help="Campaign YAML file."),
    address: Optional[str] = typer.Option(
        None, help="Where to run: local (a Ray instance here), auto (the cluster `ray start` started here), HOST:PORT (a Ray head's GCS port), "
        "ray://HOST:10001 (Ray Client) or in-process (no Ray); default: the file's cluster.address."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue a store of the same campaign (always safe: draws depend only on the seed)."),
    force: bool = typer.Option(False, "--force", help="Replace a store written by another campaign (says what it removes first)."),
    delete_draws: bool = typer.Option(
        False, "--delete-draws", help="With --force: confirm that the replaced store's draws are deleted (--force alone refuses when it holds draws)."
    ),
    in_process: bool = typer.Option(False, "--in-process", help="Run in this process, without Ray."),
    workers: Optional[int] = typer.Option(None, min=1, help="Number of Ray workers (default: the file's cluster.workers)."),
    gpus_per_worker: Optional[float] = typer.Option(None, min=0, help="GPUs per Ray worker (default: the file's cluster.gpus_per_worker)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Run a campaign: sample every (measurement, chain block) unit into the store."""
    from uqcampaign.pipeline.address import parse_address

    where = parse_address(address) if address else _file_address(campaign)
    if not in_process and where is not None and where.joins_ray:
        from uqcampaign.pipeline.ray_join import prepare

        # Before anything imports torch or Ray (Ray reads RAY_AUTH_MODE then): an unreachable
        # cluster or an auth mismatch is one line in seconds, and the auth mode is set.
        prepare(where)
    spec = _load_campaign(campaign)
    from uqcampaign.pipeline.launch import run_where

    result = run_where(spec, address, console=err_console, in_process=in_process, workers=workers, gpus_per_worker=gpus_per_worker,
                       resume=resume, force=force, delete_draws=delete_draws, progress=progress)
    seconds = getattr(result, "seconds", None)
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    console.print(f"store: {spec.store_location}{took}", markup=False)


@app.command()
@handled
def validate(
    campaign: Path = typer.Argument(..., help="Campaign YAML file."),
    probe_seconds: float = typer.Option(3.0, "--probe-seconds", min=0.0, help="How long to probe the speed on the first unit (in memory)."),
) -> None:
    """Check a campaign as `uqc run` would and print its units, store size, memory, NFE and time; write nothing."""
    from uqcampaign.pipeline.validate import report_lines, validate_campaign

    result = validate_campaign(_load_campaign(campaign), probe_seconds=probe_seconds)
    for line in report_lines(result, str(campaign)):
        console.print(line, markup=False, soft_wrap=True)


@app.command()
@handled
def kinds(
    group: Optional[str] = typer.Argument(None, help="sampler, operator or prior (or a kind's name)."),
    name: Optional[str] = typer.Argument(None, help="A kind of that group: print its keys."),
) -> None:
    """List the sampler, operator and prior kinds; for one kind, its keys with type, default, meaning and reference."""
    from uqcampaign.pipeline.kinds import GROUPS, find_kind, kind_doc, kinds_of

    if group is not None and group not in GROUPS:
        if name is not None:
            raise UQError(f"unknown group {group!r}; give sampler, operator or prior, e.g. `uqc kinds sampler {name}`")
        group, name = find_kind(group)
    if name is None:
        for g in GROUPS if group is None else (group,):
            console.print(f"{g} kinds (`uqc kinds {g} NAME` for the keys):", markup=False)
            docs = [kind_doc(g, k) for k in kinds_of(g)]
            width = max(len(d.kind) for d in docs)
            for doc in docs:
                console.print(f"  {doc.kind:<{width}}  {doc.summary}", markup=False, soft_wrap=True)
        return
    doc = kind_doc(group, name)
    console.print(f"{group} {doc.kind}: {doc.summary}", markup=False, soft_wrap=True)
    console.print(f"Reference: {doc.reference or '-'}", markup=False, soft_wrap=True)
    if not doc.keys:
        console.print("Keys: none (write just `kind: " + doc.kind + "`)", markup=False)
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"Keys of {group} {doc.kind}", title_justify="left")
    for column in ("key", "type", "default", "meaning"):
        table.add_column(column, no_wrap=column != "meaning", overflow="fold")
    for key in doc.keys:
        table.add_row(key.name, key.type or "-", key.default or "-", key.meaning, style=None)
    console.print(table, markup=False)


@app.command()
@handled
def reduce(
    store: str = typer.Argument(..., help="Store path or URL."),
    level: Optional[float] = typer.Option(None, help="Credible level of the intervals, in (0, 1) (default: the campaign's reduce.level)."),
    address: Optional[str] = typer.Option(
        None, help="Where to reduce: threads here (default, or local), auto, HOST:PORT or ray://HOST:10001 (a Ray cluster, "
        "Dask-on-Ray), tcp://HOST:8786 (a Dask distributed scheduler)."
    ),
) -> None:
    """Reduce the draws into the summary/ group (mean, std, intervals, R-hat, ESS, chi2)."""
    if level is not None and not 0 < level < 1:
        raise UQError(f"--level {level} is outside (0, 1); use e.g. 0.9")
    from uqcampaign.pipeline.reduce import reduce_store

    reduce_store(store, level=level, address=address, progress=True)
    console.print(f"summary written to {store}/summary", markup=False)


_REDUCE_HELP = "Reduce first when the summary is missing or stale (else that is an error naming `uqc reduce`)."


@app.command()
@handled
def maps(
    store: str = typer.Argument(..., help="Store path or URL."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG files."),
    reduce: bool = typer.Option(False, "--reduce", help=_REDUCE_HELP),
) -> None:
    """Write uncertainty maps (PNG) per measurement: truth, y, mean, std, z-score, coverage, data support, R-hat."""
    from uqcampaign.pipeline.maps import write_maps

    paths = write_maps(store, out, reduce=reduce, say=lambda text: err_console.print(text, markup=False))
    console.print(f"{len(paths)} PNG files in {out}", markup=False)


@app.command()
@handled
def report(
    store: str = typer.Argument(..., help="Store path or URL."),
    format: str = typer.Option("table", "--format", help="table (for reading), json or csv (for programs; the last row is the campaign's)."),
    reduce: bool = typer.Option(False, "--reduce", help=_REDUCE_HELP),
    calibration: Optional[str] = typer.Option(
        None, "--calibration", help="A `uqc calibrate` store of this configuration (default: NAME.calibration.zarr beside the store, when there)."
    ),
    baseline: list[str] = typer.Option(
        [], "--baseline", help="A store of a MAP sampler (map-hqs, map-admm, map-latent) on the same measurements: PSNR, SSIM, chi2 against it (repeatable)."
    ),
    condition: bool = typer.Option(False, "--condition", help="latino-pro: list the marginal-likelihood proxy and the condition's distance from its start per SAPG iteration."),
) -> None:
    """Print the per-measurement table with a verdict (ok, not converged, too few draws, data misfit, miscalibrated) and the sampler's facts (SMC log-evidence, box, condition)."""
    from uqcampaign.pipeline.report import REPORT_FORMATS, format_rows, print_report, report_table

    if format not in REPORT_FORMATS:
        raise UQError(f"--format {format!r} is not one of {', '.join(REPORT_FORMATS)}; use e.g. --format json")
    if condition:
        _print_condition(store, format)
        return
    say = lambda text: err_console.print(text, markup=False)  # noqa: E731
    if baseline:
        from uqcampaign.pipeline.baseline import baseline_rows, print_baseline

        compared = baseline_rows(store, baseline)
        if format == "table":
            print_baseline(compared, console)
        else:
            print(format_rows(compared, format), end="")
        return
    if format == "table":
        print_report(store, console, reduce=reduce, say=say, calibration=calibration)
    else:
        print(format_rows(report_table(store, reduce=reduce, say=say, calibration=calibration), format), end="")


@app.command()
@handled
def calibrate(
    campaign: Path = typer.Argument(..., help="Campaign YAML file: its operator, noise, prior, sampler, chains and draws are calibrated."),
    trials: int = typer.Option(..., "--trials", help="Truths drawn from the prior: the SBC and TARP trials (at least 50; 100 for a verdict 'calibrated')."),
    replicates: int = typer.Option(2, "--replicates", min=1, help="Noisy measurements per truth for the replicated coverage."),
    rank_draws: int = typer.Option(99, "--rank-draws", min=19, help="Most draws ranked per trial (a number 20k - 1; Markov chains are thinned by their bulk ESS)."),
    format: str = typer.Option("table", "--format", help="table (for reading) or json (the result on stdout)."),
    store: Optional[str] = typer.Option(None, "--store", help="Calibration store (default: beside the campaign's store, NAME.calibration.zarr)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for sbc.png, tarp.png, coverage.png (default: beside the calibration store)."),
    chains: Optional[int] = typer.Option(None, "--chains", min=1, help="Chains per trial (default: the campaign's)."),
    draws: Optional[int] = typer.Option(None, "--draws", min=1, help="Draws per chain (default: the campaign's)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the truths, noise and chains (default: the campaign's)."),
    address: Optional[str] = typer.Option(None, help="Ray address: local, auto, ray://host:10001 or in-process (default: the file's cluster.address)."),
    in_process: bool = typer.Option(False, "--in-process", help="Run in this process, without Ray."),
    workers: Optional[int] = typer.Option(None, min=1, help="Number of Ray workers (default: the file's cluster.workers)."),
    gpus_per_worker: Optional[float] = typer.Option(None, min=0, help="GPUs per Ray worker (default: the file's cluster.gpus_per_worker)."),
    force: bool = typer.Option(False, "--force", help="Replace a calibration store of another configuration (with --delete-draws when it holds draws)."),
    delete_draws: bool = typer.Option(False, "--delete-draws", help="With --force: confirm that the replaced store's draws are deleted."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bars."),
) -> None:
    """Calibrate the campaign's sampler on its own problem: SBC, TARP and replicated coverage over truths drawn from the prior."""
    from uqcampaign.pipeline.calibrate import CalibrationDesign, run_calibration
    from uqcampaign.pipeline.config import load_campaign

    if format not in ("table", "json"):
        raise UQError(f"--format {format!r} is not one of table, json; use e.g. --format json")
    design = CalibrationDesign(trials=trials, replicates=replicates, rank_draws=rank_draws)
    spec = load_campaign(campaign)
    result = run_calibration(
        spec, design, store=store, figures=out, chains=chains, draws=draws, seed=seed,
        address="in-process" if in_process else address, workers=workers, gpus_per_worker=gpus_per_worker,
        force=force, delete_draws=delete_draws, progress=progress, console=err_console,
    )
    if format == "json":
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    from uqcampaign.pipeline.calibrate import result_lines

    for line in result_lines(result):
        console.print(line, markup=False, soft_wrap=True)


def _print_condition(store: str, fmt: str) -> None:
    """``uqc report --condition``: the SAPG trajectory of every measurement (no summary needed)."""
    from rich import box
    from rich.table import Table

    from uqcampaign.pipeline.report import format_rows
    from uqcampaign.pipeline.store import open_store
    from uqcampaign.pipeline.unit_facts import condition_rows

    rows = condition_rows(open_store(store))
    if fmt != "table":
        print(format_rows(rows, fmt), end="")
        return
    table = Table(box=box.SIMPLE_HEAD, title="latino-pro: SAPG per iteration", caption="objective: the marginal-likelihood proxy SAPG ascends (not log p(y | c)); ‖c − c₀‖: distance from the start", caption_justify="left")
    for column in ("meas.", "iteration", "objective", "‖c − c₀‖"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["measurement"]), str(row["iteration"]), f"{row['objective']:.5g}", f"{row['condition_distance']:.4g}")
    console.print(table)


@app.command()
@handled
def export(
    store: str = typer.Argument(..., help="Store path or URL."),
    out: Path = typer.Option(..., "--out", help="netCDF file to write (ArviZ InferenceData)."),
    measurement: Optional[int] = typer.Option(None, "--measurement", min=0, help="Export this measurement only (default: all)."),
) -> None:
    """Write the store as an ArviZ InferenceData netCDF file: posterior, observed_data, constant_data, sample_stats."""
    from uqcampaign.pipeline.export import export_store

    path = export_store(store, out, measurement, say=lambda text: err_console.print(text, markup=False))
    console.print(f"InferenceData written to {path} (read it with arviz.from_netcdf)", markup=False)


@app.command()
@handled
def inspect(store: str = typer.Argument(..., help="Store path or URL.")) -> None:
    """Say what a store holds, how far its campaign got, who writes it and whether its summary is up to date."""
    import numpy as np
    from rich.table import Table

    from uqcampaign.pipeline.lease import current_holder
    from uqcampaign.pipeline.location import Location
    from uqcampaign.pipeline.store import is_legacy, json_attr, obs_array, open_store, read_unit_stats
    from uqcampaign.pipeline.summary import summary_status
    from uqcampaign.pipeline.until import planned_draws

    group = open_store(store)
    attrs = dict(group.attrs)
    campaign = json_attr(group, "campaign") or {}
    samples = group["samples"]
    done = np.asarray(group["draws_done"][...])
    console.print(f"store:    {store}", markup=False)
    console.print(f"campaign: {campaign.get('name', '?')} (config hash {str(attrs.get('config_hash'))[:12]}, created {attrs.get('created', '?')})", markup=False)
    if is_legacy(group):
        console.print("layout:   1 (uqcampaign 0.1): readable by reduce, report, maps, export; `uqc run` does not extend it", markup=False)
    console.print(
        f"samples:  {' x '.join(map(str, samples.shape))} (measurement, chain, draw, channel, y, x), chunks {' x '.join(map(str, samples.chunks))}",
        markup=False,
    )
    obs = obs_array(group)
    console.print(f"{obs.basename + ':':9} {' x '.join(map(str, obs.shape))}; x_true: {'yes' if 'x_true' in group else 'no'}", markup=False)
    for key in ("operator", "prior", "sampler"):
        console.print(f"{key + ':':9} {json.dumps(json_attr(group, key))}", markup=False)
    growing = json_attr(group, "growing")
    if growing:
        console.print(f"growing:  interrupted while growing to {growing}; rerun the campaign to finish", markup=False)
    table = Table(title="draws done")
    for column in ("measurement", "chains complete", "chain-draws done", "of"):
        table.add_column(column, justify="right")
    planned = planned_draws(group)  # per measurement: an `until` campaign stops each at its own draws
    for m in range(done.shape[0]):
        table.add_row(str(m), f"{int((done[m] >= planned[m]).sum())}/{done.shape[1]}", str(int(done[m].sum())), str(int(planned[m]) * done.shape[1]))
    console.print(table)
    total = int(planned.sum()) * done.shape[1]
    console.print(f"total:    {int(done.sum())}/{total} chain-draws ({100 * done.sum() / max(total, 1):.1f} %)", markup=False)
    stats = read_unit_stats(group)
    if stats:
        workers = sorted({s.worker for s in stats})
        console.print(
            f"units:    {len(stats)} run, {sum(s.seconds for s in stats):.1f} s of sampling, "
            f"{len(workers)} worker(s), devices {', '.join(sorted({s.device for s in stats}))}",
            markup=False,
        )
    holder = current_holder(Location.of(group))
    console.print(f"writer:   {'held by ' + holder.describe() if holder else 'none (the store is free)'}", markup=False)
    status = summary_status(group)
    if status.state == "missing":
        text = f"absent (run `uqc reduce {store}`)"
    elif status.state == "fresh":
        text = f"present, up to date ({status.summarised} chain-draws)"
    else:
        text = f"present but stale: {status.describe(store)}"
    console.print(f"summary:  {text}", markup=False)


@app.command()
@handled
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the store and the maps."),
    learned: bool = typer.Option(
        False, "--learned", help="Run examples/digits-inpaint-latino.yaml instead: LATINO with the shipped latent-consistency prior."
    ),
) -> None:
    """Run examples/demo.yaml end to end: run, reduce, report, maps."""
    from uqcampaign.pipeline.demo import DEMO_YAML, LEARNED_DEMO_YAML, run_demo

    run_demo(out, console=console, yaml_path=LEARNED_DEMO_YAML if learned else DEMO_YAML)


@app.command("train-prior")
@handled
def train_prior(
    kind: str = typer.Argument(..., help="Prior kind to train (diffusion, consistency, latent-consistency)."),
    out: Path = typer.Option(..., "--out", help="Folder for the save_pretrained model."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps per stage (default: the kind's)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out."),
    dataset: str = typer.Option("digits16", help="Training data set (shipped with a package)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="Training batch size."),
    lr: float = typer.Option(2e-3, "--lr", min=0.0, help="Peak learning rate (warm-up then cosine decay)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and of every batch."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher folder: a diffusion prior (consistency) or a latent ε-model (latent-consistency: distil an LCM)."),
    vae_steps: Optional[int] = typer.Option(None, "--vae-steps", min=1, help="latent-consistency without --teacher: autoencoder steps (default 1500)."),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every", min=1, help="Steps between checkpoints."),
) -> None:
    """Train a small learned prior on a data set shipped with a package (priors/README.md has the recipes)."""
    from uqcampaign.kernels.training import train_prior as _train

    options = {"teacher": None if teacher is None else str(teacher), "vae_steps": vae_steps}
    path = _train(kind, out, dataset=dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                  resume=resume, force=force, checkpoint_every=checkpoint_every, **options)
    console.print(f"prior written to {path}", markup=False)


if __name__ == "__main__":  # pragma: no cover
    app()
