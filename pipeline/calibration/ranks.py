"""What every calibration statistic starts from: trials of (draws, truth), ranks, random projections.

A calibration experiment is ``T`` trials. Trial ``t`` has a truth ``x_t`` (drawn from the prior, or
fixed for replicated experiments), a measurement ``y_t`` simulated from it, and ``L`` posterior
draws of the sampler under test given ``y_t``:

    samples: (T, L, C, H, W) or (T, L, d)      truths: (T, C, H, W) or (T, d)

Everything here is numpy (torch CPU tensors are accepted through ``np.asarray``), float64.

The one fact all three tools rest on (Talts et al. 2018, Theorem 1): when the draws are exact
posterior draws and the truth was drawn with ``y`` from the model, the truth and the ``L`` draws
are exchangeable, so the rank of the truth among them under any statistic ``s`` — the number of
draws with ``s(x_l) < s(x_t)`` — is uniform on ``{0, …, L}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uqcampaign.kernels.errors import require

__all__ = ["as_trials", "random_directions", "truth_ranks", "thin_draws"]

_DIRECTION_STREAM = 12  # SeedSequence key of the projection directions (fixed: same directions for every tool)


def as_trials(samples: Any, truths: Any) -> tuple[np.ndarray, np.ndarray]:
    """``samples (T, L, ...)`` and ``truths (T, ...)`` as float64 arrays ``(T, L, d)`` and ``(T, d)``.

    Raises :class:`UQError` on mismatched shapes, fewer than 2 trials or 1 draw, or non-finite values.
    """
    s = np.asarray(samples, dtype=np.float64)
    x = np.asarray(truths, dtype=np.float64)
    require(s.ndim >= 3, f"samples must have shape (trials, draws, ...) with at least one value dimension, got {s.shape}")
    require(
        x.ndim == s.ndim - 1 and x.shape[0] == s.shape[0] and x.shape[1:] == s.shape[2:],
        f"truths have shape {x.shape} but samples have shape {s.shape}; truths must be (trials, *{s.shape[2:]}) with trials = {s.shape[0]}",
    )
    require(s.shape[0] >= 2 and s.shape[1] >= 1, f"a calibration needs at least 2 trials and 1 draw per trial, got {s.shape[0]} trials of {s.shape[1]} draws")
    require(bool(np.isfinite(s).all()), f"samples hold {int((~np.isfinite(s)).sum())} NaN/Inf values; drop the unfinished trials first")
    require(bool(np.isfinite(x).all()), f"truths hold {int((~np.isfinite(x)).sum())} NaN/Inf values; every trial needs a finite truth")
    t, n = s.shape[:2]
    return s.reshape(t, n, -1), x.reshape(t, -1)


def random_directions(d: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` unit vectors in ``R^d``, ``(count, d)``: i.i.d. Gaussian rows, normalised.

    Seeded by ``numpy.random.SeedSequence([seed, 12])``; the first ``k`` rows do not depend on
    ``count``, so every tool asked for fewer projections uses the same first directions.
    """
    require(isinstance(d, int) and d >= 1, f"dimension d = {d!r} must be an integer >= 1")
    require(isinstance(count, int) and count >= 0, f"number of projections = {count!r} must be an integer >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DIRECTION_STREAM]))
    theta = rng.standard_normal((count, d))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


def truth_ranks(draw_stats: np.ndarray, truth_stats: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rank of the truth among the draws, per trial and statistic: ``#{l : s(x_l) < s(x_t)}``.

    ``draw_stats (T, L, m)``, ``truth_stats (T, m)`` → ``(T, m)`` integers in ``[0, L]``. Ties
    (draws equal to the truth: clipped or quantised images) are broken uniformly at random with
    ``rng`` (Talts et al. 2018, Section 4.1), so ties do not pile ranks up in one bin.
    """
    below = (draw_stats < truth_stats[:, None, :]).sum(axis=1)
    ties = (draw_stats == truth_stats[:, None, :]).sum(axis=1)
    if ties.any():
        rng = rng if rng is not None else np.random.default_rng(0)
        below = below + np.floor(rng.random(below.shape) * (ties + 1)).astype(below.dtype)
    return below


def thin_draws(samples: np.ndarray, count: int) -> np.ndarray:
    """Keep ``count`` of the ``L`` draws of each trial, evenly spaced: ``samples (T, L, ...)`` → ``(T, count, ...)``.

    Index ``⌊k L / count⌋`` for ``k = 0 … count − 1``. Ranks need (nearly) independent draws
    (Talts et al. 2018, Section 5.1): thin a Markov chain to about one draw per effective sample.
    Order the draws chain by chain, each chain in time order, so that the stride skips along time.
    """
    n = samples.shape[1]
    require(isinstance(count, int) and 1 <= count <= n, f"cannot keep {count!r} draws out of {n}; ask for 1 to {n}")
    return samples[:, (np.arange(count) * n) // count]
