"""Weights and resampling over a batch of runs: pure functions of a generator and log-weights ``(R, N)``.

As BlackJAX's ``blackjax/smc/resampling.py`` and ``ess.py``, batched over ``R`` independent runs
of ``N`` particles; randomness only from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["normalize", "ess", "systematic"]


def normalize(log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """``(log W, log mean w)`` per run: ``log W = log w − logsumexp(log w)`` ``(R, N)`` and the log of the
    mean unnormalised weight ``(R,)`` (BlackJAX ``smc.base._normalize``); float64."""
    log_w = log_weights.to(torch.float64)
    total = torch.logsumexp(log_w, dim=-1, keepdim=True)
    return log_w - total, total[:, 0] - torch.log(torch.tensor(float(log_w.shape[-1]), dtype=torch.float64))


def ess(log_weights: Tensor) -> Tensor:
    """Effective sample size ``1 / Σ_i W_i²`` of each run's normalised weights, ``(R, N)`` → ``(R,)`` in particles."""
    log_w, _ = normalize(log_weights)
    return torch.exp(-torch.logsumexp(2.0 * log_w, dim=-1))


def systematic(generator: torch.Generator, log_weights: Tensor, num_samples: int | None = None) -> Tensor:
    """Systematic resampling of every run: ancestors ``(R, num_samples)`` (indices in ``[0, N)``).

    One uniform ``u ~ U[0, 1)`` per run; the ``j``-th offspring takes the particle whose cumulative
    weight first exceeds ``(j + u) / num_samples`` (Kitagawa 1996; Douc, Cappé & Moulines 2005).
    ``num_samples`` defaults to ``N``.
    """
    log_w, _ = normalize(log_weights)
    runs, n = log_w.shape
    m = n if num_samples is None else int(num_samples)
    cumulative = torch.cumsum(log_w.exp(), dim=-1)
    u = torch.rand((runs, 1), generator=generator, dtype=torch.float64, device=generator.device).to(log_w.device)
    positions = (torch.arange(m, dtype=torch.float64, device=log_w.device) + u) / m
    return torch.searchsorted(cumulative, positions).clamp_max(n - 1)
