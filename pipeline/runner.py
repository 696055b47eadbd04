"""Run a campaign in this process (no Ray): take the store's lease, create, reopen or grow the
store, run the pending units.

Resuming: a unit's draws depend only on the campaign seed, so a store written by the *same*
campaign (same config hash) is always continued — with or without ``--resume`` — and the
output says so; finished units are skipped, a half-done unit recomputes its done chunks
without writing them. A campaign with more draws, chains or measurements grows its store
(:mod:`~uqcampaign.pipeline.campaign_store`). A store of another campaign is refused unless
``force`` (and ``delete_draws`` when it holds draws). A second writer on the same store is
refused while this one holds the lease (:mod:`~uqcampaign.pipeline.lease`). A campaign with
``until:`` runs in rounds until each measurement has converged (:mod:`~uqcampaign.pipeline.until`,
whose round loop the Ray driver shares).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import zarr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.campaign_store import create_or_open
from uqcampaign.pipeline.config import Campaign, sampler_notes
from uqcampaign.pipeline.lease import Lease, hold_lease
from uqcampaign.pipeline.preflight import Budget, check_campaign
from uqcampaign.pipeline.store import StoreLayout, consolidate, draws_done
from uqcampaign.pipeline.units import Unit, load_components, pending_units, run_unit

__all__ = ["RunResult", "prepare_store", "measurement_layout", "check_sampler", "run_campaign", "draw_progress", "units_done"]


@dataclass
class RunResult:
    """What :func:`run_campaign` did."""

    store: str
    units_run: int
    units_total: int
    draws_written: int  # chain-draws
    seconds: float
    messages: list[str] = field(default_factory=list)


def measurement_layout(campaign: Campaign, components: Callable[[], tuple[Any, Any, Any]]) -> Callable[[int], StoreLayout]:
    """``layout(first)``: the campaign's measurements ``first..M-1`` from
    :func:`~uqcampaign.pipeline.data.load_or_simulate`, with the component descriptions.

    ``components()`` gives ``(prior, operator, sampler)`` (the Ray driver loads them only when
    a layout is needed, i.e. when a store is created or gains measurements).
    """
    from uqcampaign.pipeline.data import load_or_simulate

    def layout(first: int) -> StoreLayout:
        prior, operator, sampler = components()
        y, x_true = load_or_simulate(campaign, prior, operator, first)
        descriptions = {"operator": operator.describe(), "prior": prior.describe(), "sampler": sampler.describe()}
        return StoreLayout(y=y, x_true=x_true, img_shape=tuple(prior.img_shape), descriptions=descriptions, first=first)

    return layout


def prepare_store(
    campaign: Campaign,
    *,
    force: bool = False,
    delete_draws: bool = False,
    prior: Any = None,
    operator: Any = None,
    say: Callable[[str], None] | None = None,
    budget: Budget | None = None,
) -> tuple[zarr.Group, list[str], tuple[Any, Any, Any]]:
    """Create, reopen or grow the campaign's store; returns (group, messages, (prior, operator, sampler)).

    ``say`` receives each message (``--force`` removal, resuming, growing) before its action
    happens. A new store gets ``y_obs``/``x_true`` from :func:`measurement_layout` and the
    component descriptions in its attrs. The caller holds the store's lease (``run_campaign``
    does); the Ray driver calls this too.

    The sampler is checked against the prior, operator and noise (ULA step bound, latent or
    pixel prior) before the store is touched, so a bad campaign neither writes an empty store
    that would block its corrected version nor lets ``--force`` delete the old one. The
    pre-flight (:func:`~uqcampaign.pipeline.preflight.check_campaign`) then refuses a campaign
    whose workers (``budget``: this machine, one worker, by default) or store cannot hold it,
    before the data is read, the store written or any chain tensor allocated.
    """
    components = load_components(campaign, prior, operator)
    check_sampler(campaign, *components)
    check_campaign(campaign, *components, budget)
    group, messages = create_or_open(campaign, force=force, delete_draws=delete_draws, layout=measurement_layout(campaign, lambda: components), say=say)
    return group, messages, components


def check_sampler(campaign: Campaign, prior: Any, operator: Any, sampler: Any) -> None:
    """UQError if ``sampler`` refuses this campaign's layout (``campaign_notes``) or prior/operator/noise; runs no sampling step.

    Every sampler's ``run`` checks its inputs when called and returns a lazy generator, so
    calling it on a zero measurement ``(*obs_shape)`` and never consuming it costs nothing.
    """
    refused = [note.message for note in sampler_notes(campaign, sampler) if note.error]
    if refused:  # load_campaign refuses these too; a campaign built another way is checked here
        raise UQError(refused[0])
    y = torch.zeros(tuple(operator.obs_shape), dtype=torch.float32)  # prepare_store builds on the CPU
    sampler.run(y, operator, prior, campaign.noise.sigma, 1, 1, torch.Generator())


class _DrawRate(ProgressColumn):
    """Chain-draws per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} draws/s" if speed else "- draws/s", style="progress.data.speed")


def units_done(name: str, done: int, total: int) -> str:
    """The label of the ``run`` bar: what it counts, done/total."""
    return f"{name}: {done}/{total} units done"


def draw_progress(console: Console | None, enabled: bool) -> Progress:
    """The progress bar of ``run``: units done/total (the label, see :func:`units_done`), chain-draws done/total, draws/s, ETA.

    Give it a ``console`` on stderr: results go to stdout.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chain-draws"),
        _DrawRate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def run_campaign(
    campaign: Campaign,
    *,
    resume: bool = False,
    force: bool = False,
    delete_draws: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> RunResult:
    """Run every pending unit of ``campaign`` in this process, holding the store's lease, and
    consolidate the store metadata.

    ``resume`` is accepted for symmetry with the Ray driver: a store of the same campaign is
    continued either way (see the module docstring). Messages (resuming, growing, ``--force``
    removal) are printed on ``console`` before any work and returned. An ``until`` campaign runs
    its rounds (:func:`~uqcampaign.pipeline.until.run_rounds`); its result counts the units and
    chain-draws of every round.
    """
    console = console or Console(stderr=True)
    start = time.perf_counter()
    with hold_lease(campaign.store_location, "run", campaign.storage_options) as lease:
        say = lambda text: console.print(text, markup=False)  # noqa: E731
        opening = campaign
        if campaign.until is not None:
            from uqcampaign.pipeline.until import opening_campaign

            opening = opening_campaign(campaign)  # an until store may hold more draws than the first round
        group, messages, (prior, operator, _) = prepare_store(opening, force=force, delete_draws=delete_draws, say=say)
        if resume and not messages:
            console.print(f"{campaign.store_location}: no earlier run to resume; starting")

        def run_units(this: Campaign, units: list[Unit], name: str, total: int | None = None) -> int:
            return _run_units(this, group, units, len(units) if total is None else total, name, prior, operator, lease, console, progress)

        if campaign.until is not None:
            from uqcampaign.pipeline.until import run_rounds

            rounds = run_rounds(campaign, group, run_units, say=say)
            n_run, written, messages = rounds.units_run, rounds.draws_written, messages + rounds.messages
            total = n_run
        else:
            done = draws_done(group)
            units = pending_units(campaign, done)
            total = done.shape[0] * campaign.n_blocks
            n_run, written = len(units), run_units(campaign, units, campaign.name, total)
        consolidate(group)
    seconds = time.perf_counter() - start
    return RunResult(campaign.store_location, n_run, total, written, seconds, messages)


def _run_units(
    campaign: Campaign, group: zarr.Group, units: list[Unit], total: int, name: str, prior: Any, operator: Any, lease: Lease,
    console: Console, progress: bool,
) -> int:
    """Run ``units`` here, one after the other, under a progress bar labelled ``name`` (``total``
    units in all, the others done); returns the chain-draws written."""
    done = draws_done(group)
    remaining = sum(int((campaign.draws - done[u.measurement, campaign.block_chains(u.block)]).clip(min=0).sum()) for u in units)
    written = 0
    with draw_progress(console, progress and bool(units)) as bar:
        task = bar.add_task(units_done(name, total - len(units), total), total=remaining)
        for k, unit in enumerate(units, start=1):
            lease.check()
            stats = run_unit(campaign, unit, group, prior=prior, operator=operator, on_chunk=lambda n: bar.advance(task, n))
            chains = campaign.block_chains(unit.block)
            written += stats.draws_written * (chains.stop - chains.start)
            bar.update(task, description=units_done(name, total - len(units) + k, total))
    return written
