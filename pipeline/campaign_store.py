"""Open a campaign's store for ``uqc run``: create it, resume it, grow it, or refuse it.

What a campaign file may change against its store (DESIGN §3):

- nothing that determines the draws (:data:`~uqcampaign.pipeline.config.DRAW_KEYS`: seed,
  operator, noise, prior, sampler, chunks; and the data source, simulated or files): a
  difference is refused, naming each key with its stored and new value;
- ``draws``, ``chains`` and the number of measurements may grow (never shrink): the store is
  extended by :func:`~uqcampaign.pipeline.store.grow_store` and only the new work runs; the
  measurements already stored must be the first rows of the new ones (checked for files;
  simulated measurements are prefix-stable by construction); ``draws`` only with a sampler whose
  longer runs repeat a shorter run's draws first (``DRAWS_EXTEND``; not SMC, which pools all of a
  unit's draws at its end);
- anything else (``name``, ``store``, ``cluster``, ``reduce``, ``until``, ``storage_options``) is free
  (``until`` campaigns open their store at the draws it already holds: :mod:`~uqcampaign.pipeline.until`).

``--force`` replaces a refused store, but a store holding draws is deleted only with
``--delete-draws`` too (the refusal says how many chain-draws would go).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import DRAW_KEYS, Campaign
from uqcampaign.pipeline.location import Location, io_errors
from uqcampaign.pipeline.store import (
    LEASE_DIR,
    Sizes,
    StoreLayout,
    add_missing_facts,
    check_chain_growth,
    check_layout,
    create_store,
    existing_store_info,
    grow_store,
    obs_array,
    open_store,
    store_sizes,
)

__all__ = ["create_or_open", "draw_key_differences", "growth_refusals"]


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}.{key}"))
        return out or {prefix: {}}
    return {prefix: value}


def draw_key_differences(stored: dict[str, Any], new: Campaign) -> list[str]:
    """``"noise.sigma 0.1 -> 0.2"`` for every key that determines the draws and differs."""
    fresh = new.model_dump(mode="json")
    differences = []
    for key in DRAW_KEYS:
        a, b = _flatten(stored.get(key), key), _flatten(fresh.get(key), key)
        for path in sorted(set(a) | set(b)):
            if a.get(path, "(absent)") != b.get(path, "(absent)"):
                differences.append(f"{path} {a.get(path, '(absent)')!r} -> {b.get(path, '(absent)')!r}")
    was = "simulate" if (stored.get("data") or {}).get("simulate") else "files"
    if was != new.data_source:
        differences.append(f"data {'simulate' if was == 'simulate' else 'y'} -> {'simulate' if new.data_source == 'simulate' else 'y'}")
    elif was == "simulate":
        before = int(((stored.get("data") or {}).get("simulate") or {}).get("replicates", 1))
        if before != new.replicates:
            differences.append(f"data.simulate.replicates {before!r} -> {new.replicates!r}")
    return differences


def growth_refusals(location: str, stored: Sizes, target: Sizes, chunk_chains: int) -> list[str]:
    """Why the store cannot become ``target`` (shrinking, a partial chain block growing), or []."""
    reasons = []
    for key, before, after in (("draws", stored.draws, target.draws), ("chains", stored.chains, target.chains), ("measurements", stored.measurements, target.measurements)):
        if after < before:
            reasons.append(f"{key} {after} < {before} in the store (a store never shrinks)")
    try:
        check_chain_growth(location, stored.chains, target.chains, chunk_chains)
    except UQError as exc:
        reasons.append(str(exc).split(": ", 1)[1])
    return reasons


def _draw_growth_refusal(campaign: Campaign, stored: Sizes, target: Sizes) -> list[str]:
    """Why the draws cannot grow with this sampler (its ``DRAWS_EXTEND`` is False: SMC), or []."""
    if target.draws <= stored.draws:
        return []
    from uqcampaign.kernels.samplers.registry import build_sampler

    sampler = build_sampler(dict(campaign.sampler))
    if sampler.DRAWS_EXTEND:
        return []
    return [
        f"draws {stored.draws} -> {target.draws}: sampler {sampler.kind!r} takes all of a unit's draws from one pool at its end, so a unit "
        f"with more draws would take other draws than those stored (keep draws: {stored.draws} and add chains or measurements, or run "
        f"draws: {target.draws} into a new store path)"
    ]


def _measurement_count(campaign: Campaign) -> int:
    from uqcampaign.pipeline.units import count_measurements

    return count_measurements(campaign)


def _file_prefix_differs(group: zarr.Group, campaign: Campaign, stored: int) -> str | None:
    """For measurement files: which file's first ``stored`` rows differ from the store's, or None."""
    if campaign.data.simulate is not None:
        return None
    from uqcampaign.pipeline.data import read_array

    y = read_array(campaign.resolve(campaign.data.y), "data.y")
    kept = np.asarray(obs_array(group)[...])
    if y.shape[0] < stored or y.shape[1:] != kept.shape[1:] or not np.array_equal(y[:stored], kept):
        return f"data.y: its first {stored} measurements differ from the {stored} in the store"
    if "x_true" in group:
        if campaign.data.truth is None:
            return "data.truth: the store keeps the truth of its measurements; give data.truth for the new campaign too"
        x = read_array(campaign.resolve(campaign.data.truth), "data.truth")
        if x.shape[0] < stored or not np.array_equal(x[:stored], np.asarray(group["x_true"][...])):
            return f"data.truth: its first {stored} images differ from the {stored} truths in the store"
    elif campaign.data.truth is not None:
        return "data.truth: the store was made without a truth and cannot gain one; drop data.truth or use a new store path"
    return None


def _describe(attrs: dict[str, Any]) -> str:
    name = (attrs.get("campaign") or {}).get("name", "?")
    return f"campaign '{name}' (config hash {str(attrs.get('config_hash'))[:12]})"


def create_or_open(
    campaign: Campaign,
    *,
    force: bool = False,
    delete_draws: bool = False,
    layout: Callable[[int], StoreLayout],
    say: Callable[[str], None] | None = None,
) -> tuple[zarr.Group, list[str]]:
    """Open the campaign's store for writing, creating or growing it as needed; returns (group, messages).

    ``layout(first)`` gives the measurements ``first..M-1`` (it may load the prior; it is
    called only when a store is created or gains measurements, and before anything is removed,
    so a bad input it raises on leaves the old store as it was). Each message goes to ``say``
    *before* the action it announces, and is returned. Call it under the store's lease.
    """
    location = Location.of(campaign.store_location, campaign.storage_options)
    messages: list[str] = []

    def tell(message: str) -> None:
        messages.append(message)
        if say is not None:
            say(message)

    attrs = existing_store_info(location)
    if attrs is None:
        return create_store(campaign, layout(0), location), messages
    group = open_store(location, mode="r+")
    from uqcampaign.pipeline.summary import recover_summary

    recovered = recover_summary(group)
    if recovered:
        tell(f"{location.url}: {recovered}")
    same = attrs.get("config_hash") == campaign.config_hash() and attrs.get("layout") is not None
    if same and not attrs.get("initialized"):
        new_layout = layout(0)
        tell(f"{location.url}: half-created store of the same campaign found; creating it again")
        with io_errors(location, "remove the half-created store"):
            location.remove_all_but({LEASE_DIR})
        return create_store(campaign, new_layout, location), messages

    if attrs.get("layout") is not None:
        check_layout(group)  # a store of a newer uqcampaign is refused outright
    stored = store_sizes(group)
    reasons: list[str] = []
    if attrs.get("layout") is None:
        reasons.append("it has the store layout of uqcampaign 0.1 (measurements in `y`), which this version reads but does not extend")
    else:
        reasons += draw_key_differences(attrs.get("campaign") or {}, campaign)
    target = stored
    if not reasons:
        target = Sizes(_measurement_count(campaign), campaign.chains, campaign.draws)
        reasons += growth_refusals(location.url, stored, target, campaign.chunks.chains)
        reasons += _draw_growth_refusal(campaign, stored, target)
        if not reasons:
            differs = _file_prefix_differs(group, campaign, stored.measurements)
            if differs:
                reasons.append(differs)
    if reasons:
        done = int(np.asarray(group["draws_done"][...]).sum())
        total = stored.measurements * stored.chains * stored.draws
        if not force:
            raise UQError(
                f"{location.url} holds {_describe(attrs)}, {done}/{total} chain-draws done; campaign '{campaign.name}' (config hash {campaign.config_hash()[:12]}) cannot continue it: {'; '.join(reasons)}; "
                f"use another store path, or --force --delete-draws to delete the store"
            )
        if done and not delete_draws:
            raise UQError(
                f"--force would delete the {done} chain-draws of {_describe(attrs)} in {location.url}; "
                "add --delete-draws to confirm, or use another store path"
            )
        new_layout = layout(0)  # before removing anything
        tell(f"--force{' --delete-draws' if done else ''}: removing {location.url}: {_describe(attrs)}, {done}/{total} chain-draws done")
        with io_errors(location, "remove the old store"):
            location.remove_all_but({LEASE_DIR})
        return create_store(campaign, new_layout, location), messages

    added = add_missing_facts(group, campaign)
    if added:
        tell(f"{location.url}: written by an earlier uqcampaign: adding the sampler's fact arrays {', '.join(added)} (units done before keep them empty)")
    growing = attrs.get("growing")
    if target == stored and not growing:
        done = int(np.asarray(group["draws_done"][...]).sum())
        total = stored.measurements * stored.chains * stored.draws
        state = "complete, nothing to do" if done >= total else "resuming: draws depend only on the seed"
        if campaign.until is not None:
            state = "continuing its until: rounds from the draws stored (they depend only on the seed)"
        tell(f"{location.url}: holds the same campaign '{campaign.name}' ({done}/{total} chain-draws done); {state}")
        return group, messages

    changes = [f"{key} {a} -> {b}" for key, a, b in (("draws", stored.draws, target.draws), ("chains", stored.chains, target.chains), ("measurements", stored.measurements, target.measurements)) if a != b]
    added = target.measurements - stored.measurements
    new_rows = layout(stored.measurements) if added else None
    done = int(np.asarray(group["draws_done"][...]).sum())
    tell(f"{location.url}: growing campaign '{campaign.name}' ({', '.join(changes) or 'finishing an interrupted grow'}); the {done} chain-draws done are kept, only the new draws run")
    grow_store(
        group,
        measurements=target.measurements,
        chains=target.chains,
        draws=target.draws,
        y_obs=None if new_rows is None else new_rows.y,
        x_true=None if new_rows is None else new_rows.x_true,
        campaign=campaign,
    )
    return group, messages
