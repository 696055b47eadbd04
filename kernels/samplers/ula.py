"""``ula``: projected PnP-ULA (Laumont et al. 2022, SIAM J. Imaging Sci., Algorithm 2).

One step, for every chain at once (``x: (chains, C, H, W)``)::

    x ← x + δ ∇log p(y|x) + (αδ/ε)(D_ε(x) − x) + (δ/λ)(Π_C(x) − x) + √(2δ) ξ,   ξ ~ N(0, I)

* ``∇log p(y|x) = Aᵀ(y − Ax)/σ²`` (Lipschitz constant ``L_y = ||A||²/σ²``);
* ``D_ε`` is the prior's MMSE denoiser at noise *variance* ``ε``; ``(D_ε(x) − x)/ε`` is
  Tweedie's score of the prior smoothed by ``N(0, ε I)``. The prior is a VP diffusion
  prior, so ``D_ε(x) = prior.denoise(sqrt(ᾱ_t) x, t)`` at the step ``t`` whose
  equivalent additive noise ``sqrt((1−ᾱ_t)/ᾱ_t)`` is nearest ``sqrt(ε)``; the exact
  ``ε = (1−ᾱ_t)/ᾱ_t`` of that step is then used in the drift;
* ``Π_C`` projects on the box ``C = [lo, hi]`` (pixel-wise clamp); ``λ`` is the
  Moreau–Yosida parameter of the box indicator;
* defaults (the paper's): ``λ = 0.5/(2L_y + α/ε)`` and ``δ = (1/3)/(L_y + 1/λ + α/ε)``;
  a given ``δ`` above the stability bound ``1/(L_y + 1/λ + α/ε)`` is refused. With
  ``box: null`` (plain PnP-ULA, Algorithm 1) the box term and its ``1/λ`` leave the drift
  and the bound: ``δ = (1/3)/(L_y + α/ε)``, about 3× larger.

Draws (a Markov chain): the chains start at ``pinv(y)``; draw ``k`` is the state after
``burn_in + (k+1)·thin`` steps. One denoiser call per step, so ``nfe = thin`` per draw,
plus the ``burn_in`` calls charged to draw 0 (``nfe = burn_in + thin`` there).

Burn-in: the chain's mean relaxes by ``(1 − δ/v)`` per step along a posterior direction of
variance ``v``, so forgetting ``pinv(y)`` takes several ``v_max/δ`` steps: on the 16-pixel test
problems (pixel std 0.25, σ = 0.05) that is 400–1700 steps per relaxation time with
``box: null`` and 3× more with the projected rule; the default ``burn_in: 500`` is short for
such problems (R̂ shows it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple

import torch

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.base import (
    ConfiguredSampler,
    Draw,
    chains_measurement,
    check_run_inputs,
    likelihood_grad,
    require_pixel_prior,
)
from uqcampaign.kernels.schedule import timestep_for_noise_std

__all__ = ["ULAConfig", "ULAParameters", "ULAState", "ULAInfo", "ula_parameters", "init", "step", "ULASampler"]


@dataclass(frozen=True)
class ULAConfig:
    """Projected PnP-ULA: a Langevin Markov chain whose prior score comes from a denoiser; a draw is a thinned state.

    Reference: Laumont, De Bortoli, Almansa, Delon, Durmus & Pereyra 2022, SIAM J. Imaging Sci. 15(2), Algorithms 1 and 2.

    Keys:
        step: "auto" (a third of the stability bound 1/(L_y + 1/λ + α/ε), the paper's rule) or a step δ > 0
            below that bound (a larger one is refused).
        burn_in: steps discarded before draw 0 (one denoiser call each).
        thin: steps between two kept draws = denoiser calls per draw.
        alpha: weight α of the denoiser score (D_ε(x) − x)/ε.
        epsilon: noise variance ε of the denoiser (the paper's (5/255)²).
        box: [lo, hi] of the box C that the Moreau–Yosida term pulls the chain back into (Algorithm 2), or null
            for plain PnP-ULA (Algorithm 1, a step about 3 times larger).
    """

    step: float | str = "auto"
    burn_in: int = 500
    thin: int = 10
    alpha: float = 1.0
    epsilon: float = (5.0 / 255.0) ** 2
    box: tuple[float, float] | None = (-1.0, 2.0)

    def __post_init__(self) -> None:
        if isinstance(self.step, str):
            require(self.step == "auto", f"ula step = {self.step!r} must be 'auto' or a number > 0")
        else:
            require(
                isinstance(self.step, (int, float)) and math.isfinite(self.step) and self.step > 0,
                f"ula step = {self.step!r} must be 'auto' or a number > 0",
            )
        require(isinstance(self.burn_in, int) and self.burn_in >= 0, f"ula burn_in = {self.burn_in!r} must be an integer >= 0")
        require(isinstance(self.thin, int) and self.thin >= 1, f"ula thin = {self.thin!r} must be an integer >= 1")
        require(self.alpha > 0, f"ula alpha = {self.alpha!r} must be > 0")
        require(self.epsilon > 0, f"ula epsilon = {self.epsilon!r} must be > 0 (a noise variance)")
        if self.box is not None:
            numbers = isinstance(self.box, (tuple, list)) and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.box)
            box = tuple(float(b) for b in self.box) if numbers else ()
            require(len(box) == 2 and box[0] < box[1], f"ula box = {self.box!r} must be [lo, hi] with lo < hi, or null")
            object.__setattr__(self, "box", box)


@dataclass(frozen=True)
class ULAParameters:
    """The constants of one run, resolved from the config, the operator, the prior and σ."""

    delta: float  # step δ
    lam: float  # Moreau–Yosida λ of the box
    epsilon: float  # exact noise variance of the denoiser step
    t: int  # VP step of the denoiser
    sqrt_alpha_bar: float  # sqrt(ᾱ_t)
    alpha: float
    box: tuple[float, float] | None
    bound: float  # stability bound 1/(L_y + 1/λ + α/ε)


class ULAState(NamedTuple):
    """``x: (chains, C, H, W)``; ``n_steps``: steps taken since ``init``."""

    x: torch.Tensor
    n_steps: int


class ULAInfo(NamedTuple):
    """Diagnostics of one step (never fed back). ``nfe``: denoiser calls of the step."""

    nfe: int
    outside_box: torch.Tensor  # scalar: fraction of pixels outside C before the step


def ula_parameters(config: ULAConfig, operator: Any, prior: Any, sigma: float) -> ULAParameters:
    """Resolve ``ε``, ``λ``, ``δ`` and check ``δ`` against the stability bound."""
    alphas_cumprod = prior.alphas_cumprod
    t = timestep_for_noise_std(alphas_cumprod, math.sqrt(config.epsilon))
    a = float(alphas_cumprod[t])
    eps = (1.0 - a) / a
    lipschitz_y = float(operator.norm_sq()) / sigma**2
    prior_term = config.alpha / eps
    lam = 0.5 / (2.0 * lipschitz_y + prior_term)
    # Lipschitz constant of the whole drift: likelihood + denoiser score + box penalty (none without a box)
    bound = 1.0 / (lipschitz_y + prior_term + (1.0 / lam if config.box is not None else 0.0))
    if config.step == "auto":
        delta = bound / 3.0
    else:
        delta = float(config.step)
        if delta > bound:
            raise UQError(
                f"ula step = {delta:.4g} is above the stability bound 1/(L_y + 1/λ + α/ε) = {bound:.4g} "
                f"(L_y = ||A||²/σ² = {lipschitz_y:.4g}, α/ε = {prior_term:.4g}); use step: auto or a value below the bound"
            )
    return ULAParameters(delta, lam, eps, t, math.sqrt(a), config.alpha, config.box, bound)


def init(y_chains: torch.Tensor, operator: Any) -> ULAState:
    """Start every chain at the least-norm solution ``pinv(y)``; ``y_chains: (chains, *obs_shape)``."""
    return ULAState(operator.pinv(y_chains).clone(), 0)


def step(
    generator: torch.Generator,
    state: ULAState,
    y_chains: torch.Tensor,
    operator: Any,
    prior: Any,
    sigma: float,
    params: ULAParameters,
) -> tuple[ULAState, ULAInfo]:
    """One projected PnP-ULA step for all chains (Algorithm 2 of Laumont et al. 2022)."""
    x = state.x
    delta = params.delta
    # 1. data term δ ∇log p(y|x)
    drift = delta * likelihood_grad(x, y_chains, operator, sigma)
    # 2. prior term (αδ/ε)(D_ε(x) − x), with D_ε(x) = E[x0 | sqrt(ᾱ_t) x] (VP form of x = x0 + sqrt(ε) n)
    denoised = prior.denoise(params.sqrt_alpha_bar * x, params.t)
    drift = drift + (params.alpha * delta / params.epsilon) * (denoised - x)
    # 3. box term (δ/λ)(Π_C(x) − x)
    outside = x.new_zeros(())
    if params.box is not None:
        projected = x.clamp(params.box[0], params.box[1])
        outside = (projected != x).to(x.dtype).mean()  # a tensor: no device sync in the loop
        drift = drift + (delta / params.lam) * (projected - x)
    # 4. Langevin noise √(2δ) ξ
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    x_next = x + drift + math.sqrt(2.0 * delta) * noise
    return ULAState(x_next, state.n_steps + 1), ULAInfo(1, outside)


@dataclass(frozen=True)
class ULASampler(ConfiguredSampler):
    """Projected PnP-ULA over a batch of independent chains."""

    config: ULAConfig = ULAConfig()
    kind: str = "ula"
    STATE_COPIES: ClassVar[int] = 8
    STATE_TENSORS: ClassVar[str] = "x, likelihood gradient, drift, denoiser input and output, box projection, noise, next state"

    def nfe_per_draw(self) -> float:
        """Denoiser calls per draw in the steady state (``thin``; draw 0 also pays ``burn_in``)."""
        return float(self.config.thin)

    def nfe_per_unit(self, n_draws: int) -> float:
        """``burn_in + n_draws · thin`` denoiser calls per chain."""
        return float(self.config.burn_in + n_draws * self.config.thin)

    def parameters(self, operator: Any, prior: Any, sigma: float) -> ULAParameters:
        """The resolved step constants for this problem (raises on an unstable step)."""
        return ula_parameters(self.config, operator, prior, sigma)

    def run(
        self, y: torch.Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]:
        """Yield ``n_draws`` thinned states ``x (n_chains, C, H, W)`` after ``burn_in`` steps."""
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        require_pixel_prior(prior, self.kind)
        params = ula_parameters(self.config, operator, prior, float(sigma))
        return self._draws(y, operator, prior, float(sigma), int(n_chains), int(n_draws), generator, params)

    def _draws(self, y, operator, prior, sigma, n_chains, n_draws, generator, params) -> Iterator[Draw]:
        y_chains = chains_measurement(y, n_chains)
        with torch.no_grad():
            state = init(y_chains, operator)
            for _ in range(self.config.burn_in):
                state, _ = step(generator, state, y_chains, operator, prior, sigma, params)
            for index in range(n_draws):
                for _ in range(self.config.thin):
                    state, _ = step(generator, state, y_chains, operator, prior, sigma, params)
                nfe = self.config.thin + (self.config.burn_in if index == 0 else 0)
                yield Draw(index, state.x.detach().clone(), nfe)
