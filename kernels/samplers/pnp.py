"""What the plug-and-play point estimates share: the noise-level schedule, the start, the one-draw rule.

Schedule (DPIR, Zhang, Li, Zuo, Zhang, Van Gool & Timofte 2021, IEEE TPAMI 44(10), Section 4.2):
the denoiser's noise std falls log-uniformly from ``sigma_max`` (49/255 for images in [0, 1]) to
``sigma_min`` over the first ``anneal`` iterations (at most ``iterations``; DPIR: 8 iterations
ending at the measurement's σ) and stays at ``sigma_min`` for the remaining ``iterations − anneal`` ones, where the iteration
converges to its fixed point. Each std ``s_k`` is met at the VP step whose additive-noise std is
nearest (:func:`~uqcampaign.kernels.schedule.additive_step`) and that step's exact variance ``ε_k``
is used everywhere (the denoiser is exact for ``ε_k``, not for ``s_k²``). With prior weight ``λ``
the data step is ``prox_data(·, y, σ, δ_k)`` with ``δ_k = ε_k / λ`` (DPIR's ``μ_k = λ/σ_k²``).

One draw per chain: a point estimate is one image, so ``n_draws > 1`` is refused (repeating it
would make a store claim ``L`` draws of a zero-width posterior: std 0, undefined R̂, every credible
interval empty); chains differ only through ``start_noise``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.samplers.base import ConfiguredSampler, Draw, UnitArray, chains_measurement, check_run_inputs, require_pixel_prior
from uqcampaign.kernels.schedule import additive_step

__all__ = ["DPIR_SIGMA_MAX", "PnPConfig", "PnPLevels", "PnPSampler", "pnp_levels", "require_one_draw", "start_point", "denoise_at"]

DPIR_SIGMA_MAX = 49.0 / 255.0


@dataclass(frozen=True)
class PnPLevels:
    """The resolved schedule: per iteration ``k`` the VP step ``t[k]``, its ``sqrt_alpha_bar[k]``,
    the denoiser variance ``epsilon[k]`` and the data-prox step ``delta[k] = epsilon[k] / λ``."""

    t: tuple[int, ...]
    sqrt_alpha_bar: tuple[float, ...]
    epsilon: tuple[float, ...]
    delta: tuple[float, ...]


@dataclass(frozen=True)
class PnPConfig:
    """The keys ``map-hqs`` and ``map-admm`` share (each kind's config documents them)."""

    iterations: int = 100
    anneal: int = 8
    sigma_max: float = DPIR_SIGMA_MAX
    sigma_min: float | str = "noise"
    lam: float = 1.0
    start_noise: float = 0.0
    KIND: ClassVar[str] = "pnp"

    def __post_init__(self) -> None:
        name = self.KIND
        iterations, anneal, sigma_max, sigma_min = self.iterations, self.anneal, self.sigma_max, self.sigma_min
        require(isinstance(iterations, int) and iterations >= 1, f"{name} iterations = {iterations!r} must be an integer >= 1")
        require(isinstance(anneal, int) and anneal >= 1, f"{name} anneal = {anneal!r} must be an integer >= 1")
        require(isinstance(sigma_max, (int, float)) and math.isfinite(sigma_max) and sigma_max > 0, f"{name} sigma_max = {sigma_max!r} must be a number > 0")
        if isinstance(sigma_min, str):
            require(sigma_min == "noise", f"{name} sigma_min = {sigma_min!r} must be 'noise' (the measurement's σ) or a number > 0")
        else:
            require(
                isinstance(sigma_min, (int, float)) and math.isfinite(sigma_min) and 0 < sigma_min <= sigma_max,
                f"{name} sigma_min = {sigma_min!r} must be 'noise' or a number in (0, sigma_max = {sigma_max}]",
            )
        require(isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam > 0, f"{name} lam = {self.lam!r} must be a number > 0")
        require(
            isinstance(self.start_noise, (int, float)) and math.isfinite(self.start_noise) and self.start_noise >= 0,
            f"{name} start_noise = {self.start_noise!r} must be a number >= 0",
        )


def pnp_levels(alphas_cumprod: torch.Tensor, iterations: int, anneal: int, sigma_max: float, sigma_min: float | str, lam: float, sigma: float) -> PnPLevels:
    """The schedule of the module docstring; ``sigma_min = "noise"`` is the measurement's ``sigma``;
    ``anneal > iterations`` anneals over all ``iterations`` (the last one reaching ``sigma_min``)."""
    anneal = min(anneal, iterations)
    low = float(sigma if sigma_min == "noise" else sigma_min)
    high = max(float(sigma_max), low)  # a noise level above sigma_max: no annealing, stay at σ
    stds = [high * (low / high) ** (k / (anneal - 1)) if anneal > 1 else low for k in range(anneal)] + [low] * (iterations - anneal)
    steps = [additive_step(alphas_cumprod, s) for s in stds]
    return PnPLevels(
        tuple(s.t for s in steps), tuple(s.sqrt_alpha_bar for s in steps), tuple(s.epsilon for s in steps), tuple(s.epsilon / lam for s in steps)
    )


def require_one_draw(kind: str, n_draws: int) -> None:
    """UQError unless ``n_draws == 1`` (see the module docstring)."""
    require(
        n_draws == 1,
        f"sampler {kind!r} is a point estimate: it writes one draw per chain, got n_draws = {n_draws}; set draws: 1 (and chunks.draws: 1)",
    )


def start_point(base: torch.Tensor, start_noise: float, generator: torch.Generator) -> torch.Tensor:
    """``base (chains, ...)`` plus ``N(0, start_noise²)`` per entry from ``generator`` (a copy of ``base`` when 0)."""
    if start_noise == 0:
        return base.clone()
    noise = torch.randn(base.shape, generator=generator, dtype=base.dtype, device=generator.device).to(base.device)
    return base + start_noise * noise


def denoise_at(prior: Any, x: torch.Tensor, levels: PnPLevels, k: int) -> torch.Tensor:
    """``D_{ε_k}(x) = E[x_0 | x_0 + sqrt(ε_k) n = x]`` through the prior's VP denoiser; ``x (chains, C, H, W)``."""
    return prior.denoise(levels.sqrt_alpha_bar[k] * x, levels.t[k])


class PnPSampler(ConfiguredSampler):
    """Base of ``map-hqs`` and ``map-admm``: input checks, schedule, the loop and the one draw.

    A subclass sets ``init(y_chains, operator, start_noise, generator) -> state`` and
    ``step(state, y_chains, operator, prior, sigma, levels) -> (state, info)`` (a state with ``x``,
    an info whose first field is a per-chain residual ``(chains,)``), as static attributes.
    """

    config: PnPConfig
    init: ClassVar[Callable[..., Any]]
    step: ClassVar[Callable[..., Any]]
    MAX_DRAWS: ClassVar[int | None] = 1

    def unit_arrays(self, n_chains: int, prior: Any) -> tuple[UnitArray, ...]:
        """``residual (iteration,)`` per unit, in group ``map`` (store: ``(measurement, block, iteration)``)."""
        return (UnitArray("residual", "map", ("iteration",), (self.config.iterations,), "float64", "residual per iteration, max over the unit's chains"),)

    def nfe_per_draw(self) -> float:
        return float(self.config.iterations)

    def nfe_per_unit(self, n_draws: int) -> float:
        """``iterations`` denoiser calls per chain (one draw)."""
        return float(self.config.iterations)

    def levels(self, prior: Any, sigma: float) -> PnPLevels:
        """The resolved noise-level schedule for this prior and noise σ."""
        c = self.config
        return pnp_levels(prior.alphas_cumprod, c.iterations, c.anneal, c.sigma_max, c.sigma_min, c.lam, sigma)

    def run(
        self, y: torch.Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]:
        """Yield one draw ``x (n_chains, C, H, W)``: the estimate after ``iterations``."""
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        require_pixel_prior(prior, self.kind)
        require_one_draw(self.kind, int(n_draws))
        return self._draws(y, operator, prior, float(sigma), int(n_chains), generator, self.levels(prior, float(sigma)))

    def _draws(self, y, operator, prior, sigma, n_chains, generator, levels) -> Iterator[Draw]:
        y_chains = chains_measurement(y, n_chains)
        residuals = []  # kept on the chains' device: no sync inside the loop
        with torch.no_grad():
            state = type(self).init(y_chains, operator, self.config.start_noise, generator)
            for _ in range(self.config.iterations):
                state, info = type(self).step(state, y_chains, operator, prior, sigma, levels)
                residuals.append(info[0].max())
        residual = torch.stack(residuals).to("cpu", torch.float64)
        yield Draw(0, state.x.detach().clone(), self.config.iterations, {"residual": residual})
