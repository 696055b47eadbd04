"""``map-latent``: MAP point estimate in the latent space of a latent prior (seed 000's generative MAP).

Seed 000 ("Generative priors through latent models"): with a decoder ``D`` and the latent prior
``z ~ N(0, I)``, solve the inverse problem in latent space and decode,

    ẑ = argmin_z F(z),   F(z) = ||A D(z) − y||² / (2σ²) + ||z||² / 2,      x̂ = D(ẑ)

(Bora, Jalal, Price & Dimakis 2017, ICML, "Compressed sensing using generative models", with the
Gaussian latent prior as the regulariser). ``D`` is the latent prior's ``decode`` (the VAE decoder
for ``latent-consistency``); the LCM network is not used. The VAE latents of Stable-Diffusion-type
models are scaled to unit variance, which is what the ``N(0, I)`` prior assumes.

Optimiser: Adam (Kingma & Ba 2015) on every chain at once, written out as a pure ``step`` on the
state ``(z, m, v, k)`` so that each chain's update uses only its own gradient (chains stay
independent: a unit recomputed with other chains beside it gives the same estimate); the learning
rate decays from ``lr`` to ``lr/100`` on a cosine over ``steps``. Adam moves each coordinate by at
most about the learning rate per step, so ``steps · lr / 2`` bounds the distance travelled: a start
far from the minimiser (``encode`` of an ill-conditioned ``pinv(y)``) needs more steps than ``zero``.
``F`` is non-convex (``D`` is a network): Adam finds a local minimum near the start; ``start_noise``
gives chains different starts.

``nfe`` per draw = ``steps`` decoder calls, each with a backward pass. Info on the draw:
``objective`` ``(steps + 1, chains)`` float64, ``F`` at every iterate (the start first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple

import torch

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.base import ConfiguredSampler, Draw, UnitArray, chains_measurement, check_run_inputs
from uqcampaign.kernels.samplers.pnp import require_one_draw, start_point

__all__ = ["LatentMAPConfig", "LatentMAPState", "latent_objective", "learning_rate", "init", "step", "LatentMAPSampler"]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # Adam's defaults (Kingma & Ba 2015, Algorithm 1)


@dataclass(frozen=True)
class LatentMAPConfig:
    """MAP estimate in the latent space of a latent prior, argmin_z ||A D(z) − y||²/(2σ²) + ||z||²/2, by Adam through the decoder.

    Reference: Bora, Jalal, Price & Dimakis 2017, ICML, "Compressed sensing using generative models";
        Kingma & Ba 2015, ICLR, "Adam", Algorithm 1.

    Keys:
        steps: Adam steps = decoder calls (with a backward pass) per chain.
        lr: Adam's learning rate at the first step, decayed on a cosine to lr/100 at the last.
        start: "zero" (z = 0, the latent prior's mode) or "encode" (z = E(pinv(y)), the encoder's
            latent of the least-norm image).
        start_noise: std of the Gaussian noise added to the start latent of each chain (0: every chain
            starts at the same latent and returns the same estimate).
    """

    steps: int = 300
    lr: float = 0.05
    start: str = "zero"
    start_noise: float = 0.0

    def __post_init__(self) -> None:
        require(isinstance(self.steps, int) and self.steps >= 1, f"map-latent steps = {self.steps!r} must be an integer >= 1")
        require(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, f"map-latent lr = {self.lr!r} must be a number > 0")
        require(self.start in ("zero", "encode"), f"map-latent start = {self.start!r} must be 'zero' or 'encode'")
        require(
            isinstance(self.start_noise, (int, float)) and math.isfinite(self.start_noise) and self.start_noise >= 0,
            f"map-latent start_noise = {self.start_noise!r} must be a number >= 0",
        )


class LatentMAPState(NamedTuple):
    """``z (chains, *latent_shape)``, Adam's moments ``m``, ``v`` (same shape), steps taken ``k``."""

    z: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    k: int


def latent_objective(z: torch.Tensor, y_chains: torch.Tensor, operator: Any, prior: Any, sigma: float) -> torch.Tensor:
    """``F(z) = ||A D(z) − y||²/(2σ²) + ||z||²/2`` per chain, ``(chains,)``; differentiable in ``z``."""
    resid = operator.A(prior.decode(z)) - y_chains
    return resid.reshape(z.shape[0], -1).square().sum(1) / (2 * sigma**2) + 0.5 * z.reshape(z.shape[0], -1).square().sum(1)


def learning_rate(lr: float, k: int, steps: int) -> float:
    """Cosine decay from ``lr`` at ``k = 0`` to ``lr/100`` at ``k = steps − 1``."""
    frac = k / max(steps - 1, 1)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def init(y_chains: torch.Tensor, operator: Any, prior: Any, start: str, start_noise: float, generator: torch.Generator) -> LatentMAPState:
    """The start latent of every chain (``0`` or ``E(pinv(y))``, plus ``start_noise``) and zero moments."""
    if start == "encode":
        base = prior.encode(operator.pinv(y_chains))
    else:
        base = torch.zeros((y_chains.shape[0], *prior.latent_shape), dtype=y_chains.dtype, device=y_chains.device)
    z = start_point(base, start_noise, generator)
    return LatentMAPState(z, torch.zeros_like(z), torch.zeros_like(z), 0)


def step(state: LatentMAPState, y_chains: torch.Tensor, operator: Any, prior: Any, sigma: float, lr: float) -> tuple[LatentMAPState, torch.Tensor]:
    """One Adam step for every chain; returns the new state and ``F`` at the old iterate ``(chains,)``."""
    with torch.enable_grad():
        z = state.z.detach().requires_grad_(True)
        objective = latent_objective(z, y_chains, operator, prior, sigma)
        (grad,) = torch.autograd.grad(objective.sum(), z)  # chain b's gradient is that of its own F
    k = state.k + 1
    m = _BETA1 * state.m + (1 - _BETA1) * grad
    v = _BETA2 * state.v + (1 - _BETA2) * grad.square()
    m_hat, v_hat = m / (1 - _BETA1**k), v / (1 - _BETA2**k)
    z_next = state.z - lr * m_hat / (v_hat.sqrt() + _EPS)
    return LatentMAPState(z_next.detach(), m, v, k), objective.detach()


@dataclass(frozen=True)
class LatentMAPSampler(ConfiguredSampler):
    """Latent MAP point estimate over a batch of chains (one draw each); latent priors only."""

    config: LatentMAPConfig = LatentMAPConfig()
    kind: str = "map-latent"
    STATE_COPIES: ClassVar[int] = 6
    STATE_TENSORS: ClassVar[str] = "decoded image, its residual and gradient (latents and Adam moments are smaller)"
    MAX_DRAWS: ClassVar[int | None] = 1

    def unit_arrays(self, n_chains: int, prior: Any) -> tuple[UnitArray, ...]:
        """``objective (iteration, chain)`` (the start first, ``steps + 1`` values), in group ``map``."""
        shape = (self.config.steps + 1, n_chains)
        return (UnitArray("objective", "map", ("iteration", "chain"), shape, "float64", "objective F(z) at every Adam iterate, per chain", "chain"),)

    def nfe_per_draw(self) -> float:
        return float(self.config.steps)

    def nfe_per_unit(self, n_draws: int) -> float:
        """``steps`` decoder calls per chain (one draw)."""
        return float(self.config.steps)

    def run(
        self, y: torch.Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]:
        """Yield one draw ``x = D(ẑ) (n_chains, C, H, W)``."""
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        if not getattr(prior, "is_latent", False) or not callable(getattr(prior, "decode", None)):
            raise UQError(
                f"sampler 'map-latent' needs a latent prior with a decoder, got prior kind {getattr(prior, 'kind', '?')!r}; "
                "use map-hqs or map-admm with pixel priors"
            )
        require_one_draw(self.kind, int(n_draws))
        return self._draws(y, operator, prior, float(sigma), int(n_chains), generator)

    def _draws(self, y, operator, prior, sigma, n_chains, generator) -> Iterator[Draw]:
        c = self.config
        y_chains = chains_measurement(y, n_chains)
        objectives = []
        with torch.no_grad():
            state = init(y_chains, operator, prior, c.start, c.start_noise, generator)
            for k in range(c.steps):
                state, objective = step(state, y_chains, operator, prior, sigma, learning_rate(c.lr, k, c.steps))
                objectives.append(objective)
            objectives.append(latent_objective(state.z, y_chains, operator, prior, sigma))
            x = prior.decode(state.z)
        trace = torch.stack(objectives).to("cpu", torch.float64)
        yield Draw(0, x.detach().to(dtype=y.dtype).clone(), c.steps, {"objective": trace})
