"""`uqc calibrate CAMPAIGN.yaml --trials N`: is the campaign's sampler calibrated on its own problem?

A calibration is a campaign: the campaign's operator, noise, prior, sampler, chains and draws, with
its measurements replaced by ones simulated from the prior (the **derived campaign**,
:func:`calibration_campaign`). It runs like ``uqc run`` (Ray or in process, resumable, a lost worker's
unit redone), into its own store, by default beside the campaign's (:func:`calibration_location`:
``runs/x.zarr`` → ``runs/x.calibration.zarr``); ``uqc reduce`` summarises it, then the statistics are
computed from its draws and kept in the store's ``calibration/`` group, the figures written as PNG.

One derived campaign gives both designs (``data.simulate: {count: N·R, replicates: R}``):

* measurement ``m`` measures truth ``g = m // R`` (``N`` truths drawn from the prior, each measured
  ``R`` times with fresh noise); replicate 0 of truth ``g`` (measurement ``g·R``) is exactly
  measurement ``g`` of a plain simulated campaign;
* **SBC** (Talts et al. 2018) and **TARP** (Lemos et al. 2023) take the ``N`` first replicates: one
  ``y`` per truth, truths i.i.d. from the prior, as both need;
* **replicated coverage** (Thong, Kemajou Mbakam & Pereyra 2024) takes all ``N·R`` measurements, the
  replicates of a truth as one cluster (``estimand="prior"``: the coverage averaged over the prior,
  which exact posteriors attain; cluster-robust binomial intervals).

Draws per trial. SBC, TARP and the order-statistic intervals rank the truth among ``L`` draws that
must be (nearly) independent. ``L`` is the largest number of the form ``20k − 1`` (so the 0.5 and 0.9
intervals attain their levels exactly) not above ``--rank-draws`` (default 99) and not above what the
draws hold:

* independent-draw kinds (every kind but ``ula``, ``skrock``): ``chains × draws`` per measurement;
* Markov-chain kinds (``ula``, ``skrock``, :data:`~uqcampaign.kernels.samplers.registry.MARKOV_CHAIN_KINDS`):
  the **bulk ESS rule** — the median over measurements of the smallest bulk ESS over pixels (the
  summary's ``ess_bulk``), so that the ``L`` draws kept, evenly spaced along the chains, are about
  one per effective sample (Talts et al. 2018, Section 5.1: thin to remove autocorrelation, which
  alone makes rank histograms ∪-shaped).

When that leaves fewer than 19 draws, ``L = 19`` anyway and the verdict says that the draws are
correlated (a rejection may then come from the autocorrelation). A measurement's draws are taken
chain by chain, each chain in time order, at indices ``⌊k n / L⌋`` (:func:`thin_draws`), ``n`` the
draws complete in every chain.

Point-estimate kinds (``map-hqs``, ``map-admm``, ``map-latent``) are refused: one estimate per chain
has no spread to calibrate. A prior that cannot draw samples (``prior.sample``) is refused too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from rich.console import Console

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.pipeline.calibration.coverage import replicated_coverage
from uqcampaign.pipeline.calibration.plots import coverage_figure, sbc_figure, tarp_figure
from uqcampaign.pipeline.calibration.sbc import MIN_SBC_TRIALS, sbc
from uqcampaign.pipeline.calibration.tarp import tarp
from uqcampaign.pipeline.calibration.verdict import calibration_summary
from uqcampaign.pipeline.config import Campaign, campaign_from_dict, is_url
from uqcampaign.pipeline.location import Location, io_errors
from uqcampaign.pipeline.store import consolidate, json_attr, open_store, store_location

__all__ = [
    "CALIBRATION_GROUP",
    "CALIBRATION_SUFFIX",
    "DEFAULT_RANK_DRAWS",
    "DEFAULT_REPLICATES",
    "LEVELS",
    "MATCH_KEYS",
    "MIN_RANK_DRAWS",
    "CalibrationDesign",
    "calibration_campaign",
    "calibration_differences",
    "calibration_location",
    "check_calibratable",
    "compute_calibration",
    "rank_draw_count",
    "rank_draw_indices",
    "read_calibration",
    "result_lines",
    "run_calibration",
]

CALIBRATION_GROUP = "calibration"
CALIBRATION_SUFFIX = ".calibration.zarr"
DEFAULT_RANK_DRAWS = 99
"""Cap on ``L``: ``L + 1 = 100`` makes the 0.5 and 0.9 intervals exact and SBC's bins fine."""
MIN_RANK_DRAWS = 19
"""Fewest draws per trial: ``[x_(1), x_(19)]`` is the smallest order-statistic 90% interval."""
DEFAULT_REPLICATES = 2
"""Measurements per truth of the replicated design (``--replicates``)."""
LEVELS = (0.5, 0.9)
MATCH_KEYS = ("operator", "noise", "prior", "sampler")
"""What a calibration must share with a campaign to stand for it (``uqc report`` checks them)."""


@dataclass(frozen=True)
class CalibrationDesign:
    """``trials`` truths drawn from the prior (SBC/TARP trials), each measured ``replicates`` times
    (coverage trials ``trials × replicates``); ``rank_draws``: cap on the draws ranked per trial."""

    trials: int
    replicates: int = DEFAULT_REPLICATES
    rank_draws: int = DEFAULT_RANK_DRAWS

    def __post_init__(self) -> None:
        require(
            isinstance(self.trials, int) and self.trials >= MIN_SBC_TRIALS,
            f"--trials {self.trials!r}: SBC needs at least {MIN_SBC_TRIALS} trials (a verdict 'calibrated' needs 100); use e.g. --trials 200",
        )
        require(isinstance(self.replicates, int) and self.replicates >= 1, f"--replicates {self.replicates!r} must be an integer >= 1")
        require(
            isinstance(self.rank_draws, int) and self.rank_draws >= MIN_RANK_DRAWS,
            f"--rank-draws {self.rank_draws!r} must be at least {MIN_RANK_DRAWS} (the smallest order-statistic 90% interval)",
        )

    @property
    def measurements(self) -> int:
        return self.trials * self.replicates


def calibration_location(store: str) -> str:
    """The calibration store beside a campaign store: ``…/x.zarr`` → ``…/x.calibration.zarr`` (URLs alike)."""
    text = str(store).rstrip("/")
    stem = text.removesuffix(".zarr")
    return stem + CALIBRATION_SUFFIX


def calibration_campaign(
    campaign: Campaign,
    design: CalibrationDesign,
    *,
    store: str | None = None,
    chains: int | None = None,
    draws: int | None = None,
    seed: int | None = None,
) -> Campaign:
    """The derived campaign of the module docstring (a new object; ``campaign`` is unchanged).

    ``store``: where its store goes (default :func:`calibration_location` of the campaign's store);
    ``chains``/``draws``/``seed`` replace the campaign's (chunks are clipped to them).
    """
    check_calibratable(campaign.sampler)
    spec = campaign.model_dump(mode="json")
    spec["name"] = f"{campaign.name}-calibration"
    spec["store"] = store if store is not None else calibration_location(campaign.store_location)
    spec["data"] = {"simulate": {"count": design.measurements, "replicates": design.replicates}}
    if chains is not None:
        spec["chains"] = chains
    if draws is not None:
        spec["draws"] = draws
    if seed is not None:
        spec["seed"] = seed
    spec["chunks"] = {"chains": min(spec["chunks"]["chains"], spec["chains"]), "draws": min(spec["chunks"]["draws"], spec["draws"])}
    if not spec.get("storage_options"):
        spec.pop("storage_options", None)
    return campaign_from_dict(spec, campaign.root)


def check_calibratable(sampler: dict[str, Any]) -> None:
    """UQError (one line) for a point-estimate sampler kind."""
    from uqcampaign.kernels.samplers.registry import POINT_ESTIMATE_KINDS

    kind = sampler.get("kind")
    require(
        kind not in POINT_ESTIMATE_KINDS,
        f"sampler {kind!r} returns one point estimate per chain, which has no spread to calibrate; calibrate a posterior sampler "
        f"(e.g. ula, dps, latino) and compare the MAP with `uqc report STORE --baseline MAP_STORE`",
    )


def _check_prior_samples(prior: Any) -> None:
    require(
        callable(getattr(prior, "sample", None)),
        f"prior kind {getattr(prior, 'kind', '?')!r} cannot draw samples here (no prior.sample), and a calibration draws its truths "
        "from the prior; calibrate with a gaussian or gmm prior, or with a uqcampaign whose learned priors can sample",
    )


def _is_markov(sampler: dict[str, Any]) -> bool:
    from uqcampaign.kernels.samplers.registry import MARKOV_CHAIN_KINDS

    return sampler.get("kind") in MARKOV_CHAIN_KINDS


def rank_draw_count(available: float, cap: int) -> int:
    """``L``: the largest ``20k − 1`` not above ``min(cap, available)``, at least :data:`MIN_RANK_DRAWS`."""
    top = min(float(cap), float(available))
    return max(MIN_RANK_DRAWS, 20 * int(math.floor((top + 1) / 20)) - 1)


def rank_draw_indices(n: int, count: int) -> np.ndarray:
    """``⌊k n / L⌋`` for ``k < L``: evenly spaced positions among ``n`` draws (:func:`thin_draws`'s rule)."""
    return (np.arange(count) * n) // count


@dataclass
class _Draws:
    """The thinned draws of a calibration store and how they were chosen."""

    samples: np.ndarray  # (M, L, C, H, W) float32
    truths: np.ndarray  # (M, C, H, W)
    groups: np.ndarray  # (M,) truth of each measurement
    first: np.ndarray  # (N,) the first replicate of each truth
    indices: np.ndarray  # (L,) positions among chain-major draws
    rule: str
    notes: list[str] = field(default_factory=list)


def _select_draws(root: zarr.Group, summary: zarr.Group | None, cap: int, memory: int) -> _Draws:
    campaign = dict(json_attr(root, "campaign") or {})
    replicates = int(((campaign.get("data") or {}).get("simulate") or {}).get("replicates", 1))
    require("x_true" in root, f"{store_location(root)}: a calibration store keeps its truths (x_true); this one has none: recreate it with `uqc calibrate`")
    done = np.asarray(root["draws_done"][...])
    used = int(done.min())
    n_meas, n_chains = done.shape
    n = n_chains * used
    require(n >= MIN_RANK_DRAWS, f"{store_location(root)}: {n} draws per trial (chains × draws); a calibration needs at least {MIN_RANK_DRAWS}: raise chains or draws")
    notes: list[str] = []
    if _is_markov(campaign.get("sampler") or {}):
        ess = np.asarray(summary["ess_bulk"][...], dtype=np.float64).reshape(n_meas, -1)
        per_trial = np.nanmin(ess, axis=1)
        available = float(np.nanmedian(per_trial))
        count = rank_draw_count(min(available, n), cap)
        rule = f"bulk-ESS rule: L = {count} of {n} draws per trial (median over trials of the smallest bulk ESS over pixels = {available:.0f})"
        if available < MIN_RANK_DRAWS:
            notes.append(
                f"the chains hold about {available:.0f} effective draws per trial (< {MIN_RANK_DRAWS}): the {count} draws ranked are correlated, "
                "so a rejection may come from the autocorrelation; run longer chains"
            )
    else:
        count = rank_draw_count(n, cap)
        rule = f"independent draws: L = {count} of {n} draws per trial (chains × draws, capped at {cap})"
    img = tuple(root["samples"].shape[3:])
    need = n_meas * count * int(np.prod(img)) * 4
    require(need <= memory, f"the {count} draws of {n_meas} trials take {need / 2**30:.1f} GiB in memory (limit {memory / 2**30:.1f} GiB); lower --rank-draws or --trials")
    indices = rank_draw_indices(n, count)
    samples = np.empty((n_meas, count, *img), dtype=np.float32)
    chain_of, draw_of = indices // used, indices % used
    with io_errors(root, "read the calibration draws"):
        for m in range(n_meas):
            block = np.asarray(root["samples"][m, :, :used])  # (chains, used, C, H, W)
            samples[m] = block[chain_of, draw_of]
        truths = np.asarray(root["x_true"][...])
    groups = np.arange(n_meas) // replicates
    first = np.arange(0, n_meas, replicates)
    return _Draws(samples, truths, groups, first, indices, rule, notes)


def compute_calibration(
    store: Any,
    *,
    figures: str | Path | None = None,
    memory: int = 2 * 2**30,
    cap: int = DEFAULT_RANK_DRAWS,
    storage_options: Any = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """SBC, TARP and replicated coverage of a calibration store's draws; writes ``calibration/`` and the figures.

    ``store``: a calibration store (for Markov-chain kinds reduced, its summary up to date: its ESS sets
    the thinning). ``figures``: folder of ``sbc.png``, ``tarp.png``, ``coverage.png`` (None: none written).
    ``memory``: refuse when the draws ranked exceed it. Returns the JSON-able result (see
    :func:`~uqcampaign.pipeline.calibration.verdict.calibration_summary`, plus ``sampler``, ``prior``,
    ``operator``, ``noise``, ``trials``, ``replicates``, ``rank_draws``, ``thinning``, ``store``, ``figures``).
    Deterministic: the same draws give the same result.
    """
    from uqcampaign.pipeline.lease import hold_lease
    from uqcampaign.pipeline.summary import open_summary_group

    root = open_store(store, mode="r+", storage_options=storage_options)
    summary = open_summary_group(root)[0] if _is_markov(dict(json_attr(root, "campaign") or {}).get("sampler") or {}) else None
    draws = _select_draws(root, summary, cap, memory)
    first = draws.first
    s, t = draws.samples[first], draws.truths[first]
    sbc_result = sbc(s, t)
    tarp_result = tarp(s, t)
    groups = draws.groups if (draws.groups != np.arange(draws.groups.shape[0])).any() else None
    coverage = replicated_coverage(draws.samples, draws.truths, levels=LEVELS, groups=groups)
    result = calibration_summary(sbc_result, tarp_result, coverage)
    if draws.notes and result["verdict"] != "calibrated":
        result["reasons"] = list(result["reasons"]) + draws.notes
    campaign = dict(json_attr(root, "campaign") or {})
    done = np.asarray(root["draws_done"][...])
    result.update(
        {
            "sampler": campaign.get("sampler"),
            "prior": campaign.get("prior"),
            "operator": campaign.get("operator"),
            "noise": campaign.get("noise"),
            "trials": {**result["trials"], "truths": int(first.shape[0]), "replicates": int(draws.groups.shape[0] // max(first.shape[0], 1))},
            "rank_draws": int(draws.indices.shape[0]),
            "thinning": draws.rule,
            "store": store_location(root),
            "draws_done": int(done.sum()),
        }
    )
    paths: list[str] = []
    if figures is not None:
        out = Path(figures)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UQError(f"cannot create the figures folder {out}: {exc.strerror}; give a writable --out") from None
        title = f"{campaign.get('name', '')} · sampler {(campaign.get('sampler') or {}).get('kind', '?')} · {result['verdict']}"
        for name, figure in (("sbc", sbc_figure(sbc_result, title=title)), ("tarp", tarp_figure(tarp_result, title=title)), ("coverage", coverage_figure(coverage, title=title))):
            path = out / f"{name}.png"
            figure.savefig(path)
            paths.append(str(path))
    result["figures"] = paths
    with hold_lease(Location.of(root), "calibrate"):
        _write_group(root, result, sbc_result, tarp_result, coverage, draws)
        consolidate(root)
    if say is not None:
        say(f"{store_location(root)}: calibration written ({CALIBRATION_GROUP}/ group){', figures in ' + str(figures) if figures else ''}")
    return result


def _has_group(root: zarr.Group, name: str) -> bool:
    from uqcampaign.pipeline.store import _members

    return any(key == name and isinstance(member, zarr.Group) for key, member in _members(root))


def _write_group(root: zarr.Group, result: dict[str, Any], sbc_result: Any, tarp_result: Any, coverage: Any, draws: _Draws) -> None:
    """Replace ``calibration/`` whole: attr ``complete`` is 0 until every array is written."""
    with io_errors(root, f"write the {CALIBRATION_GROUP}/ group"):
        if _has_group(root, CALIBRATION_GROUP):
            del root[CALIBRATION_GROUP]
        group = root.create_group(CALIBRATION_GROUP, attributes={"complete": 0})

        def put(name: str, data: np.ndarray, dims: tuple[str, ...], long_name: str) -> None:
            array = group.create_array(name, shape=data.shape, dtype=data.dtype, dimension_names=list(dims), attributes={"long_name": long_name})
            array[...] = data

        put("truth_of", draws.groups.astype(np.int64), ("measurement",), "truth (group of replicates) each measurement measures")
        put("draw_index", draws.indices.astype(np.int64), ("rank_draw",), "position of each ranked draw among the chain-major draws of a measurement")
        put("sbc_ranks", sbc_result.ranks.astype(np.int64), ("trial", "statistic"), "rank of the truth among the ranked draws (pixels, then projections)")
        put("sbc_pvalues", np.asarray(sbc_result.pvalues, dtype=np.float64), ("statistic",), "chi-square p-value of each rank histogram")
        put("tarp_credibility", np.asarray(tarp_result.credibility, dtype=np.float64), ("trial",), "TARP f_t: fraction of draws closer to the reference than the truth")
        for name in ("alpha", "ecp", "lower", "upper"):
            put(f"tarp_{name}", np.asarray(getattr(tarp_result, name), dtype=np.float64), ("alpha",), f"TARP {name}")
        put("pixel_covered", np.asarray(coverage.pixel_covered, dtype=np.float64), ("measurement", "level"), "fraction of pixel intervals holding the truth")
        put("joint_covered", np.asarray(coverage.joint_covered, dtype=np.float64), ("measurement", "level"), "joint HPD region holds the truth")
        put("level", np.asarray(LEVELS, dtype=np.float64), ("level",), "credibility level")
        group.attrs.put({"complete": 0, "result": json.dumps(result, sort_keys=True)})
        group.attrs["complete"] = 1


def read_calibration(store: Any, storage_options: Any = None) -> dict[str, Any] | None:
    """The result kept in a store's ``calibration/`` group; None when there is none, it is unfinished,
    or it no longer matches the store's draws (a grown or resumed calibration store: rerun ``uqc calibrate``)."""
    root = open_store(store, storage_options=storage_options)
    with io_errors(root, f"read the {CALIBRATION_GROUP}/ group"):
        if not _has_group(root, CALIBRATION_GROUP):
            return None
        group = root[CALIBRATION_GROUP]
        if int(group.attrs.get("complete", 0)) != 1:
            return None
        result = json.loads(group.attrs["result"])
        if int(result.get("draws_done", -1)) != int(np.asarray(root["draws_done"][...]).sum()):
            return None
    return result


def calibration_differences(calibration: dict[str, Any], campaign: dict[str, Any]) -> list[str]:
    """``"sampler.burn_in 100 -> 500"`` for every :data:`MATCH_KEYS` entry where a calibration and a campaign differ."""
    from uqcampaign.pipeline.campaign_store import _flatten

    out = []
    for key in MATCH_KEYS:
        a, b = _flatten(calibration.get(key), key), _flatten(campaign.get(key), key)
        for path in sorted(set(a) | set(b)):
            if a.get(path, "(absent)") != b.get(path, "(absent)"):
                out.append(f"{path} {a.get(path, '(absent)')!r} (calibration) vs {b.get(path, '(absent)')!r} (campaign)")
    return out


def default_figures(calibration_store: str, name: str) -> Path:
    """``…/x.calibration.zarr`` → ``…/x.calibration-figures``; for a URL store, ``./NAME-figures``."""
    if is_url(calibration_store):
        return Path.cwd() / f"{name}-figures"
    text = str(calibration_store).rstrip("/")
    return Path((text.removesuffix(".zarr")) + "-figures")


def run_calibration(
    campaign: Campaign,
    design: CalibrationDesign,
    *,
    store: str | None = None,
    figures: str | Path | None = None,
    chains: int | None = None,
    draws: int | None = None,
    seed: int | None = None,
    address: str | None = None,
    workers: Any = None,
    gpus_per_worker: Any = None,
    force: bool = False,
    delete_draws: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """``uqc calibrate``: run the derived campaign (resuming what a killed run left), reduce it when its
    summary is not current, compute and keep the calibration; returns its result (see :func:`compute_calibration`).

    Refuses (one line, before any store is written) point-estimate samplers and priors that cannot sample.
    """
    from uqcampaign.pipeline.reduce import reduce_store
    from uqcampaign.pipeline.summary import summary_status
    from uqcampaign.pipeline.units import load_components

    console = console or Console(stderr=True)
    derived = calibration_campaign(campaign, design, store=store, chains=chains, draws=draws, seed=seed)
    prior, _, _ = load_components(derived)
    _check_prior_samples(prior)
    console.print(
        f"calibration of sampler {derived.sampler.get('kind')}: {design.trials} truths x {design.replicates} measurements, "
        f"{derived.chains} chains x {derived.draws} draws each, into {derived.store_location}",
        markup=False,
    )
    from uqcampaign.pipeline.launch import run_where

    run_where(derived, address, console=console, workers=workers, gpus_per_worker=gpus_per_worker, force=force, delete_draws=delete_draws, progress=progress)
    root = open_store(derived.store_location, storage_options=derived.storage_options)
    if _is_markov(derived.sampler) and summary_status(root).state != "fresh":  # the ESS sets the thinning
        reduce_store(derived.store_location, progress=progress, storage_options=derived.storage_options)
    out = figures if figures is not None else default_figures(derived.store_location, derived.name)
    return compute_calibration(
        derived.store_location, figures=out, cap=design.rank_draws, storage_options=derived.storage_options,
        say=lambda text: console.print(text, markup=False),
    )


def result_lines(result: dict[str, Any]) -> list[str]:
    """The result of :func:`compute_calibration` for reading: verdict, the three tools, the design, the files."""
    cov, interval = result.get("coverage") or {}, result.get("coverage_interval") or {}
    joint, joint_interval = result.get("joint_coverage") or {}, result.get("joint_coverage_interval") or {}
    levels = result.get("coverage_level") or {}
    trials = result.get("trials") or {}
    lines = [f"verdict:   {result['verdict']}"]
    lines += [f"           {reason}" for reason in result.get("reasons", [])]
    lines.append(f"SBC:       p = {result['sbc_pvalue']:.3g} (rank uniformity over {trials.get('sbc')} trials, Bonferroni over pixels and projections)")
    lines.append(f"TARP:      p = {result['tarp_pvalue']:.3g} (max |ECP - alpha| = {max(abs(e - a) for e, a in zip(result['tarp_ecp'], result['tarp_alpha'])):.3f})")
    for key in cov:
        lo, hi = interval[key]
        jlo, jhi = joint_interval[key]
        lines.append(
            f"coverage:  {key}: pixels {cov[key]:.3f} [{lo:.3f}, {hi:.3f}], joint {joint[key]:.3f} [{jlo:.3f}, {jhi:.3f}] "
            f"(level attained with L draws: {levels[key]:.3f}; {trials.get('coverage')} measurements of {trials.get('truths')} truths)"
        )
    lines.append(f"draws:     {result['thinning']}")
    lines.append(f"store:     {result['store']}")
    if result.get("figures"):
        lines.append(f"figures:   {', '.join(result['figures'])}")
    return lines
