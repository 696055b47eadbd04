"""``exact``: i.i.d. draws from the closed-form posterior of a Gaussian / GMM prior.

The ground truth sampler: for an exact prior and the linear Gaussian likelihood
``y = A x + σ ε`` the posterior is a Gaussian mixture (``prior.posterior``), sampled
directly. No network calls (``nfe = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.samplers.base import ConfiguredSampler, Draw, check_run_inputs, is_exact_prior

__all__ = ["ExactConfig", "ExactSampler"]


@dataclass(frozen=True)
class ExactConfig:
    """No parameters: the posterior is known in closed form."""


@dataclass(frozen=True)
class ExactSampler(ConfiguredSampler):
    """Draws i.i.d. samples of ``prior.posterior(operator, y, sigma)``; only for exact priors."""

    config: ExactConfig = ExactConfig()
    kind: str = "exact"

    def nfe_per_draw(self) -> float:
        return 0.0

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
        return self._draws(y, operator, prior, float(sigma), int(n_chains), int(n_draws), generator)

    @staticmethod
    def _draws(y, operator, prior, sigma, n_chains, n_draws, generator) -> Iterator[Draw]:
        posterior = prior.posterior(operator, y, sigma)
        for index in range(n_draws):
            x = posterior.sample(n_chains, generator)
            yield Draw(index, x.to(device=y.device, dtype=y.dtype), 0)
