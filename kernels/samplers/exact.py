"""``exact``: i.i.d. draws from the closed-form posterior of a Gaussian / GMM prior.

The ground truth sampler: for an exact prior and the linear Gaussian likelihood
``y = A x + σ ε`` the posterior is a Gaussian mixture (``prior.posterior``), sampled
directly. No network calls (``nfe = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.base import ConfiguredSampler, Draw, StateSize, check_run_inputs, is_exact_prior

__all__ = ["ExactConfig", "ExactSampler"]


@dataclass(frozen=True)
class ExactConfig:
    """I.i.d. draws from the closed-form posterior of a Gaussian or Gaussian-mixture prior (the ground truth); no network calls.

    Only for the ``gaussian`` and ``gmm`` priors: with ``y = A x + σ ε`` every component is
    conjugate, so the posterior is a Gaussian mixture again (``prior.posterior``).

    Reference: Bishop 2006, Pattern Recognition and Machine Learning, Section 2.3.3 (Bayes' theorem for Gaussian variables).

    Keys:
        spread: multiplies each draw's deviation from the exact posterior mean (1: exact draws). Another
            value makes a deliberately miscalibrated sampler (0.7: too narrow, 1.3: too wide), the known-wrong
            control that shows `uqc calibrate` detects a miscalibration on your problem.
    """

    spread: float = 1.0

    def __post_init__(self) -> None:
        require(
            isinstance(self.spread, (int, float)) and not isinstance(self.spread, bool) and math.isfinite(self.spread) and self.spread > 0,
            f"exact sampler spread = {self.spread!r} must be a number > 0 (1 = exact draws)",
        )


@dataclass(frozen=True)
class ExactSampler(ConfiguredSampler):
    """Draws i.i.d. samples of ``prior.posterior(operator, y, sigma)``; only for exact priors."""

    config: ExactConfig = ExactConfig()
    kind: str = "exact"
    STATE_COPIES: ClassVar[int] = 4
    STATE_TENSORS: ClassVar[str] = "the draws and their noise, in float64"

    def nfe_per_draw(self) -> float:
        return 0.0

    def state_size(self, n_chains: int, img_shape: tuple[int, ...], prior: dict[str, Any]) -> StateSize:
        """The draws, plus the posterior's ``(d × d)`` float64 matrices: ``2 + 5K`` of them while it is built
        (AᵀA, A, and per component the prior precision, posterior precision, its Cholesky factor, covariance and scale)."""
        draws = super().state_size(n_chains, img_shape, prior)
        d, k = math.prod(img_shape), int(prior.get("components", 1) or 1)
        matrices = (2 + 5 * k) * d * d * 8
        return StateSize(draws.bytes + matrices, f"{draws.what} + {2 + 5 * k} x ({d}, {d}) float64 posterior matrices (K = {k})")

    def run(
        self, y: torch.Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]:
        """Yield ``n_draws`` draws ``x (n_chains, C, H, W)`` in the dtype/device of ``y``."""
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        if not is_exact_prior(prior):
            raise UQError(
                f"sampler 'exact' needs a prior with a closed-form posterior (gaussian, gmm), got prior kind "
                f"{getattr(prior, 'kind', '?')!r}; use ula, dps or latino"
            )
        return self._draws(y, operator, prior, float(sigma), int(n_chains), int(n_draws), generator, float(self.config.spread))

    @staticmethod
    def _draws(y, operator, prior, sigma, n_chains, n_draws, generator, spread) -> Iterator[Draw]:
        posterior = prior.posterior(operator, y, sigma)
        mean = posterior.mean().to(generator.device) if spread != 1.0 else None
        for index in range(n_draws):
            x = posterior.sample(n_chains, generator)
            if mean is not None:
                x = mean + spread * (x - mean)
            yield Draw(index, x.to(device=y.device, dtype=y.dtype), 0)
