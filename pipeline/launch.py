"""Run a campaign where its address says: in this process, or through the Ray driver (``uqc run``, ``uqc calibrate``).

The one dispatch on :func:`~uqcampaign.pipeline.address.parse_address`: ``in-process`` (or ``in_process=True``)
runs :func:`~uqcampaign.pipeline.runner.run_campaign`; every other address goes to
:func:`~uqcampaign.cluster.driver.run_campaign_ray` (which joins, sets up token auth and sizes the pool),
``local`` after naming the local auth mode, before the driver's modules import Ray.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from uqcampaign.pipeline.address import parse_address
from uqcampaign.pipeline.config import Campaign

__all__ = ["run_where"]


def run_where(
    campaign: Campaign,
    address: str | None,
    *,
    console: Console,
    in_process: bool = False,
    workers: Any = None,
    gpus_per_worker: Any = None,
    resume: bool = False,
    force: bool = False,
    delete_draws: bool = False,
    progress: bool = True,
) -> Any:
    """Run ``campaign`` at ``address`` (default: its ``cluster.address``); returns the runner's result."""
    where = parse_address(address or campaign.cluster.address)
    if in_process or where.kind == "in-process":
        from uqcampaign.pipeline.runner import run_campaign

        return run_campaign(campaign, resume=resume, force=force, delete_draws=delete_draws, progress=progress, console=console)
    if where.kind == "local":
        from uqcampaign.cluster.connect import name_local_auth_mode

        name_local_auth_mode()  # before the driver's modules import Ray
    from uqcampaign.cluster.driver import run_campaign_ray

    return run_campaign_ray(
        campaign,
        address=address,
        workers=workers if workers is not None else campaign.cluster.workers,
        gpus_per_worker=gpus_per_worker if gpus_per_worker is not None else campaign.cluster.gpus_per_worker,
        resume=resume,
        force=force,
        delete_draws=delete_draws,
        progress=progress,
        console=console,
    )
