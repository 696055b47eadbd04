"""``ula``: PnP-ULA and projected PnP-ULA (Laumont et al. 2022, SIAM J. Imaging Sci. 15(2), Algorithms 1 and 2).

One step, for every chain at once (``x: (chains, C, H, W)``, ``ξ ~ N(0, I)``)::

    box_rule: penalty  (Algorithm 1, PnP-ULA)
        x ← x + δ ∇log p(y|x) + (αδ/ε)(D_ε(x) − x) + (δ/λ)(Π_C(x) − x) + √(2δ) ξ
    box_rule: project  (Algorithm 2, PPnP-ULA)
        x ← Π_C( x + δ ∇log p(y|x) + (αδ/ε)(D_ε(x) − x) + √(2δ) ξ )

with the target, ``D_ε``, ``Π_C``, ``λ`` and ``L`` of :mod:`uqcampaign.kernels.samplers.langevin`.
Step: ``δ = (1/3)/L`` by default (the paper's rule); a given ``δ`` above the bound ``1/L`` is
refused. ``L = L_y + α/ε + 1/λ`` under the penalty rule with a box, ``L_y + α/ε`` otherwise
(``1/λ`` is about twice the rest, so a box with the penalty rule makes steps 3× smaller).

Draws (a Markov chain): the chains start at independent prior draws (``init: prior``) or all at
``pinv(y)`` (``init: pinv``); draw ``k`` is the state after ``burn_in + (k+1)·thin`` steps. One
denoiser call per step, so ``nfe = thin`` per draw, plus the ``burn_in`` calls charged to draw 0 and,
under ``init: prior`` with a learned prior, the ``prior.sample_calls`` of each chain's start draw
(a DDPM folder samples with all its T steps unless the prior's ``sample_steps`` says fewer).
``Draw.info``: ``{"outside_box": fraction of pixel-steps whose update fell outside C since the
previous draw}`` (0 without a box).

Burn-in: the chain's mean relaxes by ``(1 − δ/v)`` per step along a posterior direction of
variance ``v``, so forgetting the start takes several ``v_max/δ`` steps: on the 16-pixel test
problems (pixel std 0.25, σ = 0.05) that is 400–1700 steps per relaxation time with ``box: null``
and 3× more with the penalty rule; the default ``burn_in: 500`` is short for such problems (R̂
shows it with the default dispersed starts). ``skrock`` takes the same target with far larger steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch

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

__all__ = ["ULAConfig", "ula_parameters", "step", "ULASampler"]

# Laumont et al.'s rule: a third of the bound 1/L.
AUTO_FRACTION = 1.0 / 3.0


@dataclass(frozen=True)
class ULAConfig(LangevinConfig):
    """PnP-ULA: Langevin steps on the posterior with the denoiser's score as the prior's.

    Reference: Laumont, De Bortoli, Almansa, Delon, Durmus & Pereyra 2022, SIAM J. Imaging Sci. 15(2),
    Algorithm 1 (PnP-ULA, box_rule: penalty) and Algorithm 2 (PPnP-ULA, box_rule: project).

    Keys:
        step: "auto" (the paper's rule: a third of the stability bound 1/L) or a step δ > 0 below 1/L.
        burn_in: steps discarded before draw 0.
        thin: steps between kept draws (= network calls per draw).
        alpha: weight α of the denoiser's score.
        epsilon: noise variance ε of the denoiser (the paper's (5/255)²).
        box: the convex set C: "auto" (the prior's support(), per pixel), [lo, hi], or null (none).
        box_rule: "penalty" (the Moreau–Yosida pull (δ/λ)(Π_C(x) − x) in the drift, Algorithm 1)
            or "project" (Π_C applied to every update, Algorithm 2).
        init: "prior" (each chain starts at its own prior draw, from the unit's generator; a learned
            prior's draw costs its sample_calls, counted in draw 0's nfe) or "pinv" (every chain
            starts at pinv(y)).
    """

    _kind: ClassVar[str] = "ula"


def ula_parameters(config: ULAConfig, operator: Any, prior: Any, sigma: float) -> LangevinParameters:
    """Resolve ``ε``, ``λ``, ``C``, ``δ`` and check ``δ`` against the stability bound ``1/L``."""
    return langevin_parameters(config, operator, prior, sigma, stability=1.0, auto_fraction=AUTO_FRACTION, kind="ula")


def step(
    generator: torch.Generator,
    state: ChainState,
    y_chains: torch.Tensor,
    operator: Any,
    prior: Any,
    sigma: float,
    params: LangevinParameters,
) -> tuple[ChainState, StepInfo]:
    """One PnP-ULA step for all chains (Algorithm 1 or 2 of Laumont et al. 2022, by ``params.box_rule``)."""
    x, delta = state.x, params.delta
    # 1. drift δ ∇log π(x): likelihood, denoiser score, and (penalty rule) the box pull
    drift = delta * score(x, y_chains, operator, prior, sigma, params)
    # 2. Langevin noise √(2δ) ξ
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    # 3. the update, then Π_C under the project rule
    x_next, outside = finish_update(x + drift + math.sqrt(2.0 * delta) * noise, params)
    return ChainState(x_next, state.n_steps + 1), StepInfo(1, outside)


@dataclass(frozen=True)
class ULASampler(LangevinSampler):
    """PnP-ULA over a batch of independent chains (one denoiser call per step)."""

    config: ULAConfig = ULAConfig()
    kind: str = "ula"
    STATE_COPIES: ClassVar[int] = 8
    STATE_TENSORS: ClassVar[str] = "x, likelihood gradient, drift, denoiser input and output, box projection, noise, next state"

    def parameters(self, operator: Any, prior: Any, sigma: float) -> LangevinParameters:
        """The resolved step constants for this problem (raises on an unstable step or a prior without support)."""
        return ula_parameters(self.config, operator, prior, sigma)

    def step_function(self, generator, y_chains, operator, prior, sigma, params):
        return partial(step, generator, y_chains=y_chains, operator=operator, prior=prior, sigma=sigma, params=params)
