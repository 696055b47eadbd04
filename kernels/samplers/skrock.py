"""``skrock``: the PnP-ULA target with the SK-ROCK stabilised step (Pereyra, Vargas-Mieles & Zygalakis 2020).

SK-ROCK (Abdulle, Almuslimani & Vilmart 2018, SIAM/ASA J. Uncertain. Quantif. 6(2)) is an explicit
stabilised integrator of the Langevin SDE ``dX = ∇log π(X) dt + √2 dW``: ``s`` internal stages, a
Chebyshev recurrence of the first kind with damping ``η``, one evaluation of ``∇log π`` per stage.
Its stability region along the negative real axis grows as ``s²`` (ℓ_s), so for ``s`` network calls
the step is about ``ℓ_s ≈ 2s²`` times ULA's. Pereyra et al. 2020 (SIAM J. Imaging Sci. 13(2),
"Accelerating proximal Markov chain Monte Carlo by using an explicit stabilized method", §3) use it
on imaging posteriors; here the target is PnP-ULA's (:mod:`uqcampaign.kernels.samplers.langevin`).

One iteration, every chain at once (``x: (chains, C, H, W)``), ``∇log π`` = :func:`langevin.score`::

    ω₀ = 1 + η/s²,  ω₁ = T_s(ω₀)/T_s'(ω₀),  μ₁ = ω₁/ω₀,  ν₁ = sω₁/2,  κ₁ = sω₁/ω₀
    Q  = √(2δ) ξ,   ξ ~ N(0, I)
    K₀ = x
    K₁ = x + μ₁ δ ∇log π(x + ν₁ Q) + κ₁ Q
    K_j = μ_j δ ∇log π(K_{j−1}) + ν_j K_{j−1} + κ_j K_{j−2},   j = 2 … s
          μ_j = 2ω₁ T_{j−1}(ω₀)/T_j(ω₀),  ν_j = 2ω₀ T_{j−1}(ω₀)/T_j(ω₀),  κ_j = 1 − ν_j
    x ← K_s   (then Π_C under box_rule: project)

``T_j`` is the Chebyshev polynomial of the first kind. This is the authors' MATLAB code
(github.com/luisvargasmieles/2020-SIIMS-AcceleratingMCMCmethods, ``SKROCK.m``) and deepinv's
``SKRockIterator``; the authors' Python port shifts the stage index of ``μ_j, ν_j`` by one.

Step: the stability region is ``ℓ_s = (s − 0.5)²(2 − 4η/3) − 1.5`` (the authors' code: a
conservative fit of the exact ``2ω₀/ω₁``), so the bound is ``δ ≤ ℓ_s/L`` with ULA's ``L``;
``step: auto`` takes a third of it, as ULA's rule does of its bound ``1/L``. Box rules as in
``ula``: ``penalty`` puts the Moreau–Yosida pull in ``∇log π`` (the setting of Pereyra et al.,
whose non-smooth terms enter through their Moreau–Yosida envelopes); ``project`` applies ``Π_C``
to each iteration's output (as deepinv's ``SKRockIterator`` clips; not in the paper).

Draws: as ``ula`` (dispersed starts by default; ``burn_in`` and ``thin`` count iterations), with
``s`` denoiser calls per iteration: ``nfe = s·thin`` per draw, plus ``s·burn_in`` on draw 0 (and the
start's ``prior.sample_calls`` under ``init: prior`` with a learned prior, as ULA).
``Draw.info``: ``{"outside_box": fraction of pixel-iterations whose update fell outside C since
the previous draw}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, NamedTuple

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.samplers.langevin import (
    ChainState,
    LangevinConfig,
    LangevinParameters,
    LangevinSampler,
    StepInfo,
    finish_update,
    langevin_parameters,
    score,
)

__all__ = ["SKRockConfig", "SKRockCoefficients", "skrock_coefficients", "stability_length", "skrock_parameters", "skrock_stages", "step", "SKRockSampler"]

# As ULA's rule: a third of the stability bound.
AUTO_FRACTION = 1.0 / 3.0


@dataclass(frozen=True)
class SKRockConfig(LangevinConfig):
    """SK-ROCK: the PnP-ULA target with a stabilised Chebyshev step (s network calls per iteration).

    Reference: Pereyra, Vargas-Mieles & Zygalakis 2020, SIAM J. Imaging Sci. 13(2), §3 (SK-ROCK of
    Abdulle, Almuslimani & Vilmart 2018); target and box rules of Laumont et al. 2022, Algorithms 1–2.

    Keys:
        step: "auto" (a third of the stability bound ℓ_s/L) or a step δ > 0 below ℓ_s/L.
        stages: s, internal Chebyshev stages = network calls per iteration (the authors use 10–15).
        eta: damping η of the Chebyshev recurrence (the paper's 0.05).
        burn_in: iterations discarded before draw 0 (s network calls each).
        thin: iterations between kept draws (s·thin network calls per draw).
        alpha: weight α of the denoiser's score.
        epsilon: noise variance ε of the denoiser (Laumont et al.'s (5/255)²).
        box: the convex set C: "auto" (the prior's support(), per pixel), [lo, hi], or null (none).
        box_rule: "penalty" (the Moreau–Yosida pull (1/λ)(Π_C(x) − x) in the score) or
            "project" (Π_C applied to each iteration's output).
        init: "prior" (each chain starts at its own prior draw, from the unit's generator; a learned
            prior's draw costs its sample_calls, counted in draw 0's nfe) or "pinv" (every chain
            starts at pinv(y)).
    """

    stages: int = 10
    eta: float = 0.05

    _kind: ClassVar[str] = "skrock"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            isinstance(self.stages, int) and not isinstance(self.stages, bool) and self.stages >= 2,
            f"skrock stages = {self.stages!r} must be an integer >= 2 (network calls per iteration)",
        )
        require(
            isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool) and 0 < self.eta < 1.5,
            f"skrock eta = {self.eta!r} must be in (0, 1.5) (the paper's damping is 0.05)",
        )


class SKRockCoefficients(NamedTuple):
    """``mu, nu, kappa``: per stage ``j = 1 … s`` (index ``j − 1``), float; ``nu1`` is ``ν₁`` (the
    noise shift of the first stage), ``nu[0]`` is unused and ``kappa[0] = κ₁``."""

    mu: tuple[float, ...]
    nu: tuple[float, ...]
    kappa: tuple[float, ...]
    nu1: float


def _chebyshev(j: int, w: float) -> float:
    """``T_j(w)`` for ``w ≥ 1``."""
    return math.cosh(j * math.acosh(w))


def skrock_coefficients(stages: int, eta: float) -> SKRockCoefficients:
    """The SK-ROCK recurrence coefficients for ``s = stages`` and damping ``η``."""
    s = stages
    w0 = 1.0 + eta / s**2
    t_prime = s * math.sinh(s * math.acosh(w0)) / math.sqrt(w0**2 - 1.0)  # T_s'(ω₀)
    w1 = _chebyshev(s, w0) / t_prime
    mu, nu, kappa = [w1 / w0], [0.0], [s * w1 / w0]
    for j in range(2, s + 1):
        ratio = _chebyshev(j - 1, w0) / _chebyshev(j, w0)
        mu.append(2.0 * w1 * ratio)
        nu.append(2.0 * w0 * ratio)
        kappa.append(1.0 - 2.0 * w0 * ratio)
    return SKRockCoefficients(tuple(mu), tuple(nu), tuple(kappa), s * w1 / 2.0)


def stability_length(stages: int, eta: float) -> float:
    """``ℓ_s = (s − 0.5)²(2 − 4η/3) − 1.5``: the stable ``δL`` of SK-ROCK (the authors' code)."""
    return (stages - 0.5) ** 2 * (2.0 - 4.0 * eta / 3.0) - 1.5


def skrock_parameters(config: SKRockConfig, operator: Any, prior: Any, sigma: float) -> LangevinParameters:
    """Resolve ``ε``, ``λ``, ``C``, ``δ`` and check ``δ`` against the bound ``ℓ_s/L``."""
    ell = stability_length(config.stages, config.eta)
    return langevin_parameters(config, operator, prior, sigma, stability=ell, auto_fraction=AUTO_FRACTION, kind="skrock")


def skrock_stages(
    x: torch.Tensor, q: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor], delta: float, coefficients: SKRockCoefficients
) -> torch.Tensor:
    """``K_s`` of one SK-ROCK iteration from ``x`` with noise ``q = √(2δ) ξ``; ``grad`` = ∇log π (``s`` calls)."""
    mu, nu, kappa = coefficients.mu, coefficients.nu, coefficients.kappa
    # first stage: K₁ = x + μ₁ δ ∇log π(x + ν₁ Q) + κ₁ Q
    previous, current = x, x + (mu[0] * delta) * grad(x + coefficients.nu1 * q) + kappa[0] * q
    # Chebyshev recurrence K_j = μ_j δ ∇log π(K_{j−1}) + ν_j K_{j−1} + κ_j K_{j−2}, j = 2 … s
    for j in range(1, len(mu)):
        previous, current = current, (mu[j] * delta) * grad(current) + nu[j] * current + kappa[j] * previous
    return current


def step(
    generator: torch.Generator,
    state: ChainState,
    y_chains: torch.Tensor,
    operator: Any,
    prior: Any,
    sigma: float,
    params: LangevinParameters,
    coefficients: SKRockCoefficients,
) -> tuple[ChainState, StepInfo]:
    """One SK-ROCK iteration (``s`` denoiser calls) for all chains."""
    x, delta = state.x, params.delta
    # 1. the noise of the whole iteration, Q = √(2δ) ξ
    q = math.sqrt(2.0 * delta) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    # 2. the s stages, each with one evaluation of ∇log π
    proposal = skrock_stages(x, q, lambda u: score(u, y_chains, operator, prior, sigma, params), delta, coefficients)
    # 3. Π_C under the project rule
    x_next, outside = finish_update(proposal, params)
    return ChainState(x_next, state.n_steps + 1), StepInfo(len(coefficients.mu), outside)


@dataclass(frozen=True)
class SKRockSampler(LangevinSampler):
    """SK-ROCK over a batch of independent chains (``stages`` denoiser calls per iteration)."""

    config: SKRockConfig = SKRockConfig()
    kind: str = "skrock"
    STATE_COPIES: ClassVar[int] = 9
    STATE_TENSORS: ClassVar[str] = "x, the two previous stages, stage input, drift, denoiser input and output, noise, next state"

    def nfe_per_step(self) -> int:
        return self.config.stages

    def parameters(self, operator: Any, prior: Any, sigma: float) -> LangevinParameters:
        """The resolved step constants for this problem (raises on an unstable step or a prior without support)."""
        return skrock_parameters(self.config, operator, prior, sigma)

    def step_function(self, generator, y_chains, operator, prior, sigma, params):
        coefficients = skrock_coefficients(self.config.stages, self.config.eta)
        return partial(step, generator, y_chains=y_chains, operator=operator, prior=prior, sigma=sigma, params=params, coefficients=coefficients)
