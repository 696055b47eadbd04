"""Sort-based MCMC diagnostics on numpy blocks of pixels: ArviZ's numbers, a fraction of its time.

Every function takes a block ``draws: (pixels, chain, draw)`` (float32 or float64; computed
in float64) and returns one value per pixel ``(pixels,)``. The definitions are exactly those
of ArviZ 0.23 (Vehtari et al. 2021, "Rank-normalization, folding, and localization"):

* ``rhat``: rank-normalised split R̂, ``max(R̂_bulk, R̂_tail)`` (``az.rhat(method="rank")``);
* ``rhat_group``: the same R̂ over **chain groups** (:func:`group_chains`): the chains are split into
  ``G = min(4, chains)`` groups of ``k = chains // G`` consecutive chains (Vehtari et al.'s four
  chains; a remainder of chains is left out of this statistic only), and each group is one
  "superchain" made of the first halves of its chains followed by their second halves, so that
  ArviZ's split compares early with late draws of the whole group. ``= az.rhat`` of
  :func:`group_chains` of the draws. With many short chains that start from dispersed points
  (Margossian et al. 2024, "Nested R̂", many short chains) the per-chain R̂ stays above 1.01
  until every chain is long (R̂² − 1 ≈ chains/ESS for stationary chains) while the group R̂
  tends to 1 as the total ESS grows (R̂_group − 1 ≈ G/ESS); a trend common to the chains
  (unfinished burn-in) still separates early from late draws. With ``chains ≤ 4`` it equals ``rhat``;
* ``ess_bulk``: ESS of the rank-normalised split chains (``az.ess(method="bulk")``);
* ``ess_tail``: ``min`` of the ESS of ``I(x ≤ q05)`` and ``I(x ≤ q95)`` (``az.ess(method="tail")``);
* ``mcse_mean``: ``sd / sqrt(ess_mean)`` (``az.mcse(method="mean")``);
* ``quantiles``: ``numpy.quantile``'s default (linear, Hyndman & Fan type 7).

How it is fast. ArviZ ranks each pixel with ``scipy.stats.rankdata`` twice, evaluates
``norm.ppf`` on every draw twice and runs Geyer's truncation in a Python loop per pixel. Here:

1. one ``argsort`` per pixel of the split draws gives the average ranks (ties handled in
   the sorted order), the median and, for an even draw count, every quantile;
2. ranks are half-integers, so ``Φ⁻¹((r − 3/8)/(M + 1/4))`` is a lookup in a table built once
   per block (``M`` = number of split draws);
3. the folded draws ``|x − median|`` are V-shaped in sorted order: a stable sort (timsort)
   of that sequence is a merge of two runs, nearly linear;
4. the autocovariances of the four series that need an ESS (bulk z, two tail indicators,
   raw draws) come from one batched ``rfft``; the mean over chains is taken on the power
   spectrum, so one ``irfft`` per pixel and series;
5. Geyer's initial positive + monotone sequence is vectorised over pixels (see ``_geyer_ess``).

Degenerate input is handled like ArviZ: a pixel with a NaN gets NaN everywhere, fewer than
4 draws gives NaN, fewer than 2 chains gives NaN R̂, constant draws give NaN R̂ and
``ess = chains · draws`` (ArviZ's early return).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy.fft import next_fast_len
from scipy.special import ndtri

from uqcampaign.kernels.errors import UQError

__all__ = [
    "BlockSummary",
    "CHAIN_GROUPS",
    "group_chains",
    "summarize",
    "rhat",
    "rhat_group",
    "ess_bulk",
    "ess_tail",
    "mcse_mean",
    "quantiles",
    "numpy_quantile_sorted",
    "MIN_DRAWS",
]

MIN_DRAWS = 4
"""Fewest draws per chain a summary is computed from (split R̂ halves each chain); fewer: NaN."""
CHAIN_GROUPS = 4
"""Chain groups of ``rhat_group``: ``min(CHAIN_GROUPS, chains)`` (Vehtari et al. 2021 run four chains)."""

# ArviZ: `_ess` treats a series whose range is below this as constant.
_CONSTANT_RANGE = np.finfo(float).resolution
# Tail-ESS probabilities of ArviZ's default `ess(method="tail")`.
_TAIL_PROBS = (0.05, 0.95)
# Pixels per internal batch are chosen so that one batch holds about this many draws:
# bounds the temporaries (the FFT stack is ~4 × 2 × 16 bytes per draw).
_BATCH_DRAWS = 1 << 18


class BlockSummary(NamedTuple):
    """Per-pixel summary of one block; every field is ``(pixels,)`` float64."""

    mean: np.ndarray
    std: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    mcse_mean: np.ndarray
    rhat_group: np.ndarray


# ----------------------------------------------------------------------------- inputs


def _as_block(draws: np.ndarray) -> np.ndarray:
    """Validate ``draws: (pixels, chain, draw)``; C-contiguous float32 or float64."""
    arr = np.asarray(draws)
    if arr.ndim != 3:
        raise UQError(
            f"diagnostics need draws of shape (pixels, chain, draw), got shape {arr.shape}; "
            "reshape to put pixels first"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UQError(f"diagnostics need real-valued draws, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def group_chains(draws: np.ndarray, groups: int = CHAIN_GROUPS) -> np.ndarray:
    """``(P, chain, n)`` → ``(P, G, k·2h)``: the superchains of ``rhat_group`` (module docstring).

    ``G = min(groups, chain)``, ``k = chain // G``, ``h = n // 2``; superchain ``g`` is the first ``h``
    draws of chains ``g k … g k + k − 1`` (in chain order), then their last ``h`` draws.
    """
    x = np.asarray(draws)
    p, n_chain, n = x.shape
    g = max(1, min(groups, n_chain))
    k, h = n_chain // g, n // 2
    kept = x[:, : g * k]
    early = kept[:, :, :h].reshape(p, g, k * h)
    late = kept[:, :, n - h :].reshape(p, g, k * h)
    return np.concatenate([early, late], axis=2)


def _group_rows(z: np.ndarray, n_chain: int) -> np.ndarray:
    """Split-layout values ``z: (P, 2C, h)`` (first halves, then second halves) → ``(P, 2G, k·h)``:
    early and late halves of each chain group, the layout ArviZ's split gives :func:`group_chains`."""
    p, _, h = z.shape
    g = max(1, min(CHAIN_GROUPS, n_chain))
    k = n_chain // g
    early = z[:, : g * k].reshape(p, g, k * h)
    late = z[:, n_chain : n_chain + g * k].reshape(p, g, k * h)
    return np.concatenate([early, late], axis=1)


def _split(x: np.ndarray) -> np.ndarray:
    """ArviZ's `_split_chains`: ``(P, C, n) -> (P, 2C, n // 2)``; an odd middle draw is dropped."""
    half = x.shape[2] // 2
    return np.concatenate((x[:, :, :half], x[:, :, x.shape[2] - half :]), axis=1)


# ----------------------------------------------------------------------------- ranks


@functools.lru_cache(maxsize=8)
def _z_table(m: int) -> np.ndarray:
    """``Φ⁻¹((r − 3/8)/(m − 3/4 + 1))`` for every half-integer rank ``r = h/2 + 1``, ``h = 0..2m−2``.

    Average ranks are half-integers, so rank normalisation is a table lookup. The arithmetic is
    ArviZ's `_backtransform_ranks` (Blom 1958) verbatim: the z-values are bit-identical to
    ``norm.ppf`` of ``scipy.stats.rankdata(..., method="average")``.
    """
    ranks = np.arange(2 * m - 1, dtype=np.float64) / 2.0 + 1.0
    table = ndtri((ranks - 3 / 8) / (m - 2 * (3 / 8) + 1))
    table.flags.writeable = False  # cached
    return table


@functools.lru_cache(maxsize=4)
def _z_no_ties(p: int, m: int) -> np.ndarray:
    """``table[2j]`` (rank ``j + 1``) for every sorted position of ``p`` rows of ``m``: ``(p·m,)``, read-only."""
    z = np.tile(_z_table(m)[::2], p)
    z.flags.writeable = False
    return z


def _scatter_z(out: np.ndarray, order: np.ndarray, xs: np.ndarray) -> None:
    """Write the rank-normalised values of the sorted rows ``xs: (P, M)`` to ``out`` (flat, original order).

    ``order``: flat positions ``(P·M,)`` of the sorted elements in ``out``. Without ties sorted
    position ``j`` has rank ``j + 1`` (``table[2j]``). A tie group at sorted positions ``s..e``
    has average rank ``(s + e)/2 + 1``, i.e. ``table[s + e]``; ties are rare (float draws),
    so they are patched sparsely after the scatter.
    """
    p, m = xs.shape
    table = _z_table(m)
    out[order] = _z_no_ties(p, m)
    rows, cols = np.nonzero(xs[:, 1:] == xs[:, :-1])  # pair (cols, cols + 1) is tied
    if rows.size:
        lin = rows * m + cols
        new_run = np.ones(lin.size, dtype=bool)
        new_run[1:] = lin[1:] != lin[:-1] + 1
        starts = np.flatnonzero(new_run)
        s = cols[starts]
        e = cols[np.r_[starts[1:], lin.size] - 1] + 1
        size = e - s + 1
        members = np.repeat(rows[starts] * m + s - np.cumsum(np.r_[0, size[:-1]]), size)
        members += np.arange(members.size)
        out[order[members]] = np.repeat(table[s + e], size)


# ----------------------------------------------------------------------------- quantiles


def numpy_quantile_sorted(xs: np.ndarray, q: float) -> np.ndarray:
    """``numpy.quantile(x, q)`` (method "linear") per row of the sorted rows ``xs: (P, N)``.

    Reproduces numpy's `_lerp`: ``a + (b − a) g`` for ``g < 1/2``, ``b − (b − a)(1 − g)`` else.
    """
    n = xs.shape[1]
    virtual = (n - 1) * q
    lo = int(math.floor(virtual))
    hi = min(lo + 1, n - 1)
    g = virtual - lo
    a, b = xs[:, lo], xs[:, hi]
    diff = b - a
    return b - diff * (1 - g) if g >= 0.5 else a + diff * g


def _mquantile_sorted(xs: np.ndarray, q: float) -> np.ndarray:
    """``scipy.stats.mstats.mquantiles(x, q, alphap=1, betap=1)`` per sorted row (ArviZ's `_quantile`)."""
    n = xs.shape[1]
    aleph = n * q + (1.0 + q * (1.0 - 1.0 - 1.0))
    k = int(math.floor(min(max(aleph, 1), n - 1)))
    gamma = min(max(aleph - k, 0.0), 1.0)
    return (1.0 - gamma) * xs[:, k - 1] + gamma * xs[:, k]


def quantiles(draws: np.ndarray, probs: tuple[float, ...] | list[float]) -> np.ndarray:
    """Equal-tailed quantiles ``(len(probs), pixels)`` of ``draws: (pixels, chain, draw)``.

    Equal to ``numpy.quantile(draws.reshape(P, -1), probs, axis=1)``.
    """
    x = _as_block(draws)
    for q in probs:
        if not 0.0 <= q <= 1.0:
            raise UQError(f"quantile probability {q} is outside [0, 1]; pass values in [0, 1]")
    xs = np.sort(x.reshape(x.shape[0], -1), axis=1).astype(np.float64)
    bad = np.isnan(xs).any(axis=1)
    out = np.stack([numpy_quantile_sorted(xs, q) for q in probs])
    out[:, bad] = np.nan
    return out


# ----------------------------------------------------------------------------- R-hat / ESS


def _rhat_of(z: np.ndarray) -> np.ndarray:
    """ArviZ `_rhat` of ``z: (P, chain, draw)``: ``sqrt((B/W + n − 1)/n)``."""
    n = z.shape[2]
    between = n * np.var(np.mean(z, axis=2), axis=1, ddof=1)
    within = np.mean(np.var(z, axis=2, ddof=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _mean_autocov(series: np.ndarray, chain_means: np.ndarray) -> np.ndarray:
    """Chain-averaged autocovariance ``(..., n)`` of ``series: (..., chain, n)`` by one FFT.

    ArviZ's `autocov` is ``irfft(|rfft(x − x̄, m)|²)[:n] / n`` per chain (``m`` =
    `next_fast_len(2n)`); the irfft is linear, so the chain mean is taken on the spectrum.
    """
    n = series.shape[-1]
    m = next_fast_len(2 * n)
    spec = np.fft.rfft(series - chain_means[..., None], n=m, axis=-1)
    parts = spec.view(np.float64)  # (..., chain, 2F): (re, im) interleaved
    np.square(parts, out=parts)
    summed = parts.sum(axis=-2)  # over chains, row by row (contiguous)
    power = (summed[..., 0::2] + summed[..., 1::2]) / series.shape[-2]
    return np.fft.irfft(power, n=m, axis=-1)[..., :n] / n


def _geyer_ess(series: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """ArviZ `_ess` of ``series: (..., chain, n)`` vectorised over the leading axes.

    ``constant: (...)`` marks series whose range is below ArviZ's threshold (ESS = chain · n).
    With ``ρ_t = 1 − (W − γ̄_t)/V̂⁺`` (``γ̄_t`` the chain-mean autocovariance, ``W = γ̄_0 n/(n−1)``,
    ``V̂⁺ = γ̄_0 + var(chain means)``) and pair sums ``Q_k = ρ_{2k} + ρ_{2k+1}`` (``ρ_0 = 1``),
    ArviZ's loop runs ``I = min(K − 1, first k with Q_k ≤ 0)`` iterations
    (``K = max(1, ⌈(n − 2)/2⌉)`` from its bound ``t < n − 3``); the monotone pass makes the pair
    sums a running minimum, so ``τ = −1 + 2 Σ_{k<I} min_{j≤k} Q_j + ρ_{2I}·[ρ_{2I} > 0 or Q_I ≥ 0]``,
    clipped below at ``1/log10(N)``, and ``ESS = N/τ`` with ``N = chains · n``.
    """
    n_chain, n = series.shape[-2], series.shape[-1]
    total = n_chain * n
    chain_means = series.mean(axis=-1)
    acov = _mean_autocov(series, chain_means)
    mean_var = acov[..., 0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if n_chain > 1:
        var_plus = var_plus + np.var(chain_means, axis=-1, ddof=1)
    n_pairs = max(1, -(-(n - 2) // 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var[..., None] - acov[..., : 2 * n_pairs]) / var_plus[..., None]
    rho[..., 0] = 1.0
    pairs = rho[..., 0::2] + rho[..., 1::2]  # Q_k, k = 0..K-1
    nonpos = ~(pairs > 0)  # NaN stops the loop too
    first_nonpos = np.where(nonpos.any(axis=-1), nonpos.argmax(axis=-1), n_pairs)
    n_iter = np.minimum(n_pairs - 1, first_nonpos)[..., None]
    running = np.cumsum(np.minimum.accumulate(pairs, axis=-1), axis=-1)
    pair_sum = np.where(
        n_iter > 0, np.take_along_axis(running, np.maximum(n_iter - 1, 0), axis=-1), 0.0
    )[..., 0]
    even = np.take_along_axis(rho[..., 0::2], n_iter, axis=-1)[..., 0]
    q_last = np.take_along_axis(pairs, n_iter, axis=-1)[..., 0]
    last = np.where((even > 0) | (q_last >= 0), even, 0.0)
    tau = np.maximum(-1.0 + 2.0 * pair_sum + last, 1.0 / np.log10(total))
    ess = total / tau
    ess[np.isnan(rho[..., 1])] = np.nan
    ess[constant] = total
    return ess


# ----------------------------------------------------------------------------- one batch


def _summarize_batch(x: np.ndarray, level: float) -> BlockSummary:
    """All diagnostics of one batch ``x: (P, C, n)`` (float32 or float64, validated).

    Sorting runs in the input dtype (float32 sorts twice as fast; order and ties are the
    same as in float64); all arithmetic is float64.
    """
    p, n_chain, n_draw = x.shape
    h = n_draw // 2
    # series of the four ESS: 0 bulk z, 1 I(x <= q05), 2 I(x <= q95), 3 raw split draws
    buf = np.empty((4, p, 2 * n_chain, h), dtype=np.float64)
    split = _split(x)  # (P, 2C, h), input dtype
    buf[3] = split
    # 1.-2. ranks of the split draws and of the folded draws
    xs, z_fold = _rank_normalise(split, buf[0])
    m = xs.shape[1]

    # 3. quantiles of all draws (the middle draw included when the count is odd).
    full = x.reshape(p, -1)
    xs_full = xs if n_draw % 2 == 0 else np.sort(full, axis=1).astype(np.float64)
    alpha = (1.0 - level) / 2.0
    ci_lower = numpy_quantile_sorted(xs_full, alpha)
    ci_upper = numpy_quantile_sorted(xs_full, 1.0 - alpha)
    constant = np.empty((4, p), dtype=bool)
    constant[0] = xs[:, -1] == xs[:, 0]  # z-values constant only when every draw ties
    constant[3] = (xs[:, -1] - xs[:, 0]) < _CONSTANT_RANGE  # ArviZ's absolute threshold on raw draws
    for i, q in enumerate(_TAIL_PROBS, start=1):
        quant = _mquantile_sorted(xs_full, q)
        np.less_equal(buf[3], quant[:, None, None], out=buf[i])  # I(x ≤ q) of ArviZ's tail ESS
        constant[i] = xs[:, -1] <= quant  # all draws ≤ q (never none: q ≥ the smallest draw)

    # 4. one FFT for the four series that need an ESS.
    ess = _geyer_ess(buf, constant)
    mean = full.mean(axis=1, dtype=np.float64)
    std = full.std(axis=1, ddof=1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mcse = std / np.sqrt(ess[3])
    rhat = np.maximum(_rhat_of(buf[0]), _rhat_of(z_fold))
    g = max(1, min(CHAIN_GROUPS, n_chain))
    if n_chain % g == 0:  # the same draws are ranked: the group R̂ reuses the z-values
        rhat_group = np.maximum(_rhat_of(_group_rows(buf[0], n_chain)), _rhat_of(_group_rows(z_fold, n_chain)))
    else:  # a remainder of chains is left out: rank the kept draws again (as ArviZ on group_chains does)
        rhat_group = _rhat_only(group_chains(x))
    if n_chain < 2:
        rhat[:] = np.nan
        rhat_group[:] = np.nan
    return BlockSummary(mean, std, ci_lower, ci_upper, rhat, ess[0], np.minimum(ess[1], ess[2]), mcse, rhat_group)


def _rank_normalise(split: np.ndarray, z_bulk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1–2 of :func:`_summarize_batch` on ``split: (P, 2C, h)``: fills ``z_bulk`` (same shape,
    float64) with the rank-normalised draws and returns ``(sorted draws (P, M) float64, folded z (P, 2C, h))``."""
    p, rows, h = split.shape
    m = rows * h
    row0 = (np.arange(p, dtype=np.int64) * m)[:, None]
    # 1. one argsort of the split draws: bulk ranks, median, (even count) quantiles.
    order = np.argsort(split.reshape(p, m), axis=1)
    order += row0  # flat positions into (P, M)
    order = order.ravel()
    xs = np.take(split.ravel(), order).reshape(p, m)
    _scatter_z(z_bulk.reshape(-1), order, xs)
    xs = xs.astype(np.float64, copy=False)
    # 2. folded draws |x − median| (np.median's (a + b)/2 of the middle pair, m is even), in
    #    the sorted order of x they are V-shaped: a stable sort merges the two runs.
    folded = np.abs(xs - ((xs[:, m // 2 - 1] + xs[:, m // 2]) / 2)[:, None])
    order_f = np.argsort(folded, axis=1, kind="stable")
    order_f += row0
    z_fold = np.empty((p, rows, h), dtype=np.float64)
    _scatter_z(z_fold.reshape(-1), np.take(order, order_f.ravel()), np.take(folded, order_f))
    return xs, z_fold


def _rhat_only(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R̂ ``(P,)`` of ``x: (P, C, n)`` without the ESS (``az.rhat``)."""
    split = _split(x)
    z = np.empty(split.shape, dtype=np.float64)
    _, z_fold = _rank_normalise(split, z)
    return np.maximum(_rhat_of(z), _rhat_of(z_fold))


def summarize(draws: np.ndarray, level: float = 0.9, batch_draws: int | None = None) -> BlockSummary:
    """Mean, std (ddof 1), equal-tailed ``level`` interval, R̂, bulk/tail ESS and MCSE per pixel.

    ``draws: (pixels, chain, draw)``; returns a :class:`BlockSummary` of ``(pixels,)`` arrays.
    Pixels are processed in batches of about ``batch_draws`` draws (default 2¹⁸), which bounds
    the temporaries to about ``batch_draws × 160`` bytes.
    """
    if not 0.0 < level < 1.0:
        raise UQError(f"credible level {level} is outside (0, 1); use e.g. 0.9")
    x = _as_block(draws)
    p, n_chain, n_draw = x.shape
    nan = np.full(p, np.nan)
    if p == 0 or n_chain < 1 or n_draw < 4:
        base = [nan.copy() for _ in BlockSummary._fields]
        if p and n_chain >= 1 and n_draw >= 1:
            flat = x.reshape(p, -1)
            xs = np.sort(flat, axis=1).astype(np.float64)
            base[0] = flat.mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                base[1] = flat.std(axis=1, ddof=1)
            base[2] = numpy_quantile_sorted(xs, (1 - level) / 2)
            base[3] = numpy_quantile_sorted(xs, (1 + level) / 2)
        return BlockSummary(*base)
    batch = max(1, (batch_draws or _BATCH_DRAWS) // (n_chain * n_draw))
    parts = [_summarize_batch(x[i : i + batch], level) for i in range(0, p, batch)]
    out = BlockSummary(*(np.concatenate(field) for field in zip(*parts)))
    bad = np.isnan(x).any(axis=(1, 2))
    if bad.any():
        for field in out:
            field[bad] = np.nan
    return out


def rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split R̂ ``(pixels,)`` of ``draws: (pixels, chain, draw)`` (= ``az.rhat``)."""
    return summarize(draws).rhat


def rhat_group(draws: np.ndarray) -> np.ndarray:
    """R̂ over chain groups ``(pixels,)`` of ``draws: (pixels, chain, draw)`` (= ``az.rhat`` of :func:`group_chains`)."""
    return summarize(draws).rhat_group


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS ``(pixels,)`` of ``draws: (pixels, chain, draw)`` (= ``az.ess(method="bulk")``)."""
    return summarize(draws).ess_bulk


def ess_tail(draws: np.ndarray) -> np.ndarray:
    """Tail ESS ``(pixels,)`` of ``draws: (pixels, chain, draw)`` (= ``az.ess(method="tail")``)."""
    return summarize(draws).ess_tail


def mcse_mean(draws: np.ndarray) -> np.ndarray:
    """MCSE of the mean ``(pixels,)`` of ``draws: (pixels, chain, draw)`` (= ``az.mcse``)."""
    return summarize(draws).mcse_mean
