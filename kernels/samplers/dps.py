"""``dps``: Diffusion Posterior Sampling (Chung et al. 2022, ICLR 2023) as in their reference code.

Each draw is one full ancestral DDPM reverse run from ``x_T ~ N(0, I)``, for every chain
at once (``x: (chains, C, H, W)``). At each step ``t`` (descending)::

    x̂0          = D(x_t, t)                                   (Tweedie denoiser, with autograd)
    x'_{t−1}    = c1_t x̂0 + c2_t x_t + sqrt(β̃_t) ξ             (DDPM posterior q(x_{t−1}|x_t, x̂0), "fixed small")
    x_{t−1}     = x'_{t−1} − ζ ∇_{x_t} ||y − A x̂0||            (un-squared norm, per chain)

with ``c1 = β_t sqrt(ᾱ_{t−1})/(1−ᾱ_t)``, ``c2 = sqrt(α_t)(1−ᾱ_{t−1})/(1−ᾱ_t)``,
``β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t)``, no noise on the last step. The per-chain norms are summed
before the gradient, so each chain gets the gradient of its own norm (chains stay independent;
the reference code takes the norm of the whole batch, the same for batch size 1).

``steps`` < T respaces the schedule as guided-diffusion's ``space_timesteps``: steps
``t_i`` evenly spaced in ``[0, T−1]``, ``ᾱ'_i = ᾱ_{t_i}``, ``β'_i = 1 − ᾱ'_i/ᾱ'_{i−1}``.
``nfe`` per draw = ``steps`` denoiser forward calls (each also costs one backward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.samplers.base import ConfiguredSampler, Draw, chains_measurement, check_run_inputs, require_pixel_prior

__all__ = ["DPSConfig", "DPSSchedule", "DPSState", "DPSInfo", "respaced_schedule", "init", "step", "DPSSampler"]


@dataclass(frozen=True)
class DPSConfig:
    """Diffusion Posterior Sampling: each draw is one reverse diffusion run guided by the gradient of the data misfit.

    Reference: Chung, Kim, McCann, Klasky & Ye 2023, ICLR, "Diffusion posterior sampling for general noisy inverse problems".

    Keys:
        zeta: guidance scale ζ on the gradient of the un-squared residual norm ||y − A x̂0|| (the reference
            code uses 0.3 to 1.0); σ is not used, ζ replaces it.
        steps: reverse steps evenly respaced over the prior's schedule = network calls per draw; null = all of them.
    """

    zeta: float = 0.3
    steps: int | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.zeta, (int, float)) and math.isfinite(self.zeta) and self.zeta >= 0,
            f"dps zeta = {self.zeta!r} must be a finite number >= 0 (the reference code uses 0.3 to 1.0)",
        )
        require(
            self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
            f"dps steps = {self.steps!r} must be an integer >= 1 or null (all steps)",
        )


@dataclass(frozen=True)
class DPSSchedule:
    """A (respaced) reverse schedule, ascending in ``i``: denoiser step ``timesteps[i]`` (original
    indexing) and the per-step coefficients ``c1``, ``c2``, ``std = sqrt(β̃)``, all ``(n,)`` float64."""

    timesteps: tuple[int, ...]
    c1: torch.Tensor
    c2: torch.Tensor
    std: torch.Tensor


class DPSState(NamedTuple):
    """``x: (chains, C, H, W)`` at reverse position ``i`` (next step uses ``timesteps[i]``)."""

    x: torch.Tensor
    i: int


class DPSInfo(NamedTuple):
    """Diagnostics of one step: ``residual_norm: (chains,)`` ``||y − A x̂0||``; ``nfe`` denoiser calls."""

    residual_norm: torch.Tensor
    nfe: int


def respaced_schedule(alphas_cumprod: torch.Tensor, steps: int | None) -> DPSSchedule:
    """The DDPM posterior coefficients on ``steps`` evenly spaced timesteps of ``alphas_cumprod (T,)``."""
    total = int(alphas_cumprod.shape[0])
    n = total if steps is None else steps
    require(n <= total, f"dps steps = {n} exceeds the prior's {total} diffusion steps; use at most {total}")
    timesteps = sorted({int(round(v)) for v in torch.linspace(0, total - 1, n, dtype=torch.float64).tolist()})
    ab = alphas_cumprod.to(torch.float64)[torch.tensor(timesteps)]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    betas = 1.0 - ab / ab_prev
    c1 = betas * ab_prev.sqrt() / (1.0 - ab)
    c2 = (1.0 - betas).sqrt() * (1.0 - ab_prev) / (1.0 - ab)
    var = betas * (1.0 - ab_prev) / (1.0 - ab)
    return DPSSchedule(tuple(timesteps), c1, c2, var.clamp_min(0.0).sqrt())


def init(generator: torch.Generator, n_chains: int, img_shape: tuple[int, ...], like: torch.Tensor, schedule: DPSSchedule) -> DPSState:
    """``x_T ~ N(0, I)``, ``(chains, C, H, W)`` in ``like``'s dtype/device."""
    x = torch.randn((n_chains, *img_shape), generator=generator, dtype=like.dtype, device=like.device)
    return DPSState(x, len(schedule.timesteps) - 1)


def step(
    generator: torch.Generator,
    state: DPSState,
    y_chains: torch.Tensor,
    operator: Any,
    prior: Any,
    schedule: DPSSchedule,
    zeta: float,
) -> tuple[DPSState, DPSInfo]:
    """One guided reverse step ``x_t → x_{t−1}`` for all chains."""
    i, t = state.i, schedule.timesteps[state.i]
    # 1. x̂0 = D(x_t, t) and the un-squared residual norm, per chain, with the graph kept
    with torch.enable_grad():
        x_t = state.x.detach().requires_grad_(True)
        x0 = prior.denoise(x_t, t)
        residual = (y_chains - operator.A(x0)).flatten(1).norm(dim=1)
        # 2. ∇_{x_t} Σ_chains ||y − A x̂0||: chain b's gradient is that of its own norm
        grad = torch.autograd.grad(residual.sum(), x_t)[0]
    with torch.no_grad():
        # 3. ancestral DDPM step from the posterior q(x_{t−1} | x_t, x̂0)
        x_prev = float(schedule.c1[i]) * x0.detach() + float(schedule.c2[i]) * x_t.detach()
        if i > 0:
            noise = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype, device=x_prev.device)
            x_prev = x_prev + float(schedule.std[i]) * noise
        # 4. measurement guidance x_{t−1} ← x'_{t−1} − ζ ∇||y − A x̂0||
        x_prev = x_prev - zeta * grad
    return DPSState(x_prev, i - 1), DPSInfo(residual.detach(), 1)


@dataclass(frozen=True)
class DPSSampler(ConfiguredSampler):
    """DPS over a batch of independent chains; each draw is one full reverse run."""

    config: DPSConfig = DPSConfig()
    kind: str = "dps"
    STATE_COPIES: ClassVar[int] = 7
    STATE_TENSORS: ClassVar[str] = "x_t, x̂0, residual gradient, x_t-1, noise, two temporaries; the denoiser's autograd graph is not counted"

    def nfe_per_draw(self) -> float:
        """Denoiser forward calls per draw (``steps``; ``1000`` for the default full schedule)."""
        return float(self.config.steps if self.config.steps is not None else 1000)

    def run(
        self, y: torch.Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]:
        """Yield ``n_draws`` draws ``x (n_chains, C, H, W)``, one reverse run each.

        ``sigma`` is checked but not used: DPS's ζ replaces the likelihood's ``1/σ²`` (as in the paper).
        """
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        require_pixel_prior(prior, self.kind)
        schedule = respaced_schedule(prior.alphas_cumprod, self.config.steps)
        return self._draws(y, operator, prior, int(n_chains), int(n_draws), generator, schedule)

    def _draws(self, y, operator, prior, n_chains, n_draws, generator, schedule) -> Iterator[Draw]:
        y_chains = chains_measurement(y, n_chains)
        img_shape = tuple(operator.img_shape)
        for index in range(n_draws):
            state = init(generator, n_chains, img_shape, y, schedule)
            while state.i >= 0:
                state, _ = step(generator, state, y_chains, operator, prior, schedule, self.config.zeta)
            yield Draw(index, state.x.detach(), len(schedule.timesteps))
