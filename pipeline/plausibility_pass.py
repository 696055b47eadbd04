"""The prior axis of the hallucination flags, written by ``uqc reduce`` into ``summary/`` (seed 000: judge
every reconstruction on prior plausibility and on data fidelity; the data axis is ``chi2_draws``).

Per measurement, :data:`SCORED_DRAWS` draws of every chain (evenly spaced among the draws the summary
counts: ``⌊k n / S⌋``) get the prior-plausibility score of
:func:`~uqcampaign.kernels.plausibility.prior_plausibility` (pixel priors: the denoiser residual
``||D_ε(x) − x||²/(d ε)``; latent priors: the network's own denoising loss). A thinned subset keeps the
cost bounded: ``chains × S`` scores per measurement, computed in batches of :data:`BATCH` images, one
measurement's scored draws in memory.

Reference (what "plausible" means): the scores of :data:`REFERENCE_DRAWS` draws of the prior itself
(``prior.sample`` with the generator ``reference_generator(seed)``): a draw of the exact posterior,
averaged over measurements, *is* a prior draw, so about 1% of a calibrated sampler's draws score above
the reference's 99% quantile. The same prior draws give the per-pixel prior mean and std (the
"supported by the data" map divides the posterior std by it) and the prior's value range (the maps'
common scale of truth, ``y`` and mean). A prior that cannot sample gets scores but no reference (no
flag), a prior that cannot be loaded (a moved file) none of this: ``reduce`` warns and goes on.

Arrays (all in ``summary/``): ``plausibility (measurement, chain, scored)`` float64 (NaN where not
scored), ``plausibility_draw (measurement, scored)`` int64 (the draw index scored, −1 none),
``plausibility_reference (reference)``, ``prior_mean``, ``prior_std (channel, y, x)``; attrs of
``summary/``: ``plausibility_noise_std``, ``prior_range`` ``[q_0.005, q_0.995]`` of the reference draws' values.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.store import json_attr

__all__ = ["SCORED_DRAWS", "REFERENCE_DRAWS", "BATCH", "PRIOR_RANGE", "scored_indices", "write_plausibility"]

SCORED_DRAWS = 8
"""Draws scored per chain and measurement."""
REFERENCE_DRAWS = 256
"""Prior draws behind the reference scores, the prior's per-pixel std and its value range."""
BATCH = 256
"""Images per call of the prior's network."""
PRIOR_RANGE = (0.005, 0.995)
"""Quantiles of the reference draws' values that make the prior's value range."""


def scored_indices(used: int, count: int = SCORED_DRAWS) -> np.ndarray:
    """The draws scored among ``used``: ``⌊k used / S⌋``, ``S = min(count, used)``."""
    s = min(count, int(used))
    return (np.arange(s) * int(used)) // s if s > 0 else np.empty(0, dtype=np.int64)


def _load_prior(root: zarr.Group) -> Any:
    from uqcampaign.kernels.priors.registry import build_prior

    campaign = dict(json_attr(root, "campaign") or {})
    spec = campaign.get("prior")
    if not spec:
        raise UQError("the store keeps no prior spec")
    folder = root.attrs.get("campaign_root")
    return build_prior(dict(spec), None if folder is None else Path(folder)).to(dtype=torch.float32)


def _scores(prior: Any, images: np.ndarray, generator: torch.Generator) -> np.ndarray:
    from uqcampaign.kernels.plausibility import prior_plausibility

    out = np.empty(images.shape[0])
    with torch.no_grad():
        for start in range(0, images.shape[0], BATCH):
            batch = torch.as_tensor(images[start : start + BATCH], dtype=torch.float32)
            out[start : start + BATCH] = prior_plausibility(batch, prior, generator=generator).cpu().numpy()
    return out


def _array(group: zarr.Group, name: str, data: np.ndarray, dims: list[str], long_name: str, fill: Any = np.nan) -> None:
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, fill_value=fill, dimension_names=dims, attributes={"long_name": long_name})
    array[...] = data


def write_plausibility(root: zarr.Group, summary: zarr.Group, used: np.ndarray) -> None:
    """Score the draws of every measurement and the reference prior draws into ``summary`` (module docstring).

    ``used (measurement,)``: the draws per chain the summary counts. Warns and writes nothing when the
    prior cannot be loaded; writes scores without reference when it cannot sample.
    """
    from uqcampaign.kernels.plausibility import LATENT_NOISE_STD, PIXEL_NOISE_STD
    from uqcampaign.kernels.rng import reference_generator

    try:
        prior = _load_prior(root)
    except (UQError, ImportError, OSError, ValueError) as exc:
        warnings.warn(f"no prior-plausibility scores: the prior cannot be loaded here ({' '.join(str(exc).split())})", stacklevel=3)
        return
    campaign = dict(json_attr(root, "campaign") or {})
    seed = int(campaign.get("seed", 0))
    samples = root["samples"]
    n_meas, n_chains = samples.shape[:2]
    img = tuple(samples.shape[3:])
    if tuple(prior.img_shape) != img:
        warnings.warn(f"no prior-plausibility scores: the prior's images are {tuple(prior.img_shape)}, the store's {img}", stacklevel=3)
        return
    generator = reference_generator(seed)  # also the latent priors' noise: scores are reproducible
    reference = None
    if callable(getattr(prior, "sample", None)):
        with torch.no_grad():
            draws = torch.cat([prior.sample(min(BATCH, REFERENCE_DRAWS - k), generator) for k in range(0, REFERENCE_DRAWS, BATCH)]).float().cpu().numpy()
        reference = _scores(prior, draws, generator)
        _array(summary, "plausibility_reference", reference, ["reference"], "prior-plausibility score of draws of the prior (the reference)")
        _array(summary, "prior_mean", draws.mean(axis=0).astype(np.float64), ["channel", "y", "x"], f"mean of {REFERENCE_DRAWS} prior draws")
        _array(summary, "prior_std", draws.std(axis=0, ddof=1).astype(np.float64), ["channel", "y", "x"], f"std of {REFERENCE_DRAWS} prior draws")
        summary.attrs["prior_range"] = json.dumps([float(v) for v in np.quantile(draws, PRIOR_RANGE)])
    scores = np.full((n_meas, n_chains, SCORED_DRAWS), np.nan)
    which = np.full((n_meas, SCORED_DRAWS), -1, dtype=np.int64)
    for m in range(n_meas):
        index = scored_indices(int(used[m]))
        if index.size == 0:
            continue
        images = np.asarray(samples.get_orthogonal_selection((m, slice(None), index)), dtype=np.float32)  # (chains, S, C, H, W)
        scores[m, :, : index.size] = _scores(prior, images.reshape(-1, *img), generator).reshape(n_chains, index.size)
        which[m, : index.size] = index
    _array(summary, "plausibility", scores, ["measurement", "chain", "scored"], "prior-plausibility score of a scored draw (large: implausible)")
    _array(summary, "plausibility_draw", which, ["measurement", "scored"], "draw index of each scored draw (-1: none)", fill=-1)
    summary.attrs["plausibility_noise_std"] = float(LATENT_NOISE_STD if getattr(prior, "is_latent", False) else PIXEL_NOISE_STD)
