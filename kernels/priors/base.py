"""What every prior offers the samplers: the ``Prior``, ``LatentPrior`` and ``ExactPrior`` protocols.

A prior is met under variance-preserving noising ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``
(``ᾱ = alphas_cumprod``, shape ``(T,)``, float64). Images are ``(B, C, H, W)`` with ``B`` the
chains of one batch; the time ``t`` is a Python ``int`` (one step for every chain) or a
``LongTensor`` of shape ``(B,)``. :func:`alpha_bar` turns either into ᾱ_t shaped ``(B, 1, 1, 1)``.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from uqcampaign.kernels.errors import require

if TYPE_CHECKING:
    from uqcampaign.kernels.priors.posterior import GaussianMixturePosterior

__all__ = ["Prior", "LatentPrior", "ExactPrior", "ConditionalExactPrior", "alpha_bar"]


@runtime_checkable
class Prior(Protocol):
    """A pixel-space prior known through its denoiser.

    ``kind``: registry name (``gaussian``, ``gmm``, ``diffusion``, ...).
    ``img_shape``: ``(C, H, W)``.
    ``alphas_cumprod``: ᾱ_t, ``(T,)`` float64.
    ``is_latent``: ``False`` for pixel priors.
    """

    kind: str
    img_shape: tuple[int, int, int]
    alphas_cumprod: Tensor
    is_latent: bool

    def denoise(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """``E[x_0 | x_t]``; ``x_t: (B, C, H, W)``, ``t``: int or ``(B,)`` → ``(B, C, H, W)``."""
        ...

    def consistency(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """One-step map ``x_t -> x_0`` used by LATINO (``= denoise`` for exact and diffusion priors)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the prior (kept in the store's attributes)."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Prior:
        """A copy on ``device`` computing in float ``dtype``."""
        ...


@runtime_checkable
class LatentPrior(Prior, Protocol):
    """A latent prior (``latent-consistency``): the network acts on ``z = E(x)``.

    ``latent_shape``: ``(C_z, H_z, W_z)``; ``condition``: the prompt embedding ``c``.
    """

    latent_shape: tuple[int, int, int]
    condition: Tensor

    def encode(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W)`` → ``z: (B, *latent_shape)``."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """``z: (B, *latent_shape)`` → ``x: (B, C, H, W)``."""
        ...

    def consistency(self, z_t: Tensor, t: int | Tensor) -> Tensor:
        """The LCM network ``G(z_t, t, condition)``: ``(B, *latent_shape)`` → ``(B, *latent_shape)``."""
        ...


@runtime_checkable
class ExactPrior(Prior, Protocol):
    """A prior with exact sampling and a closed-form posterior (``gaussian``, ``gmm``)."""

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` i.i.d. prior draws, ``(n, C, H, W)``."""
        ...

    def posterior(self, operator: Any, y: Tensor, sigma: float) -> GaussianMixturePosterior:
        """The exact ``p(x | y)`` for ``y = A x + σ ε``; ``y: (*obs_shape)`` (one measurement)."""
        ...


@runtime_checkable
class ConditionalExactPrior(ExactPrior, Protocol):
    """An exact prior whose weights depend on a condition ``c (k,)``: the conditional ``gmm``,
    ``w(c) = softmax(logit_weights @ c)`` (LATINO-PRO's exact test bed). ``denoise``, ``consistency``,
    ``sample`` and ``posterior`` also take an optional ``condition`` (default :attr:`condition`).
    """

    logit_weights: Tensor
    condition: Tensor

    def condition_score(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """``∇_c log p(x | c)`` per image in closed form: ``x (B, C, H, W)`` → ``(B, k)``."""
        ...

    def log_prob(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """``log p(x | c)``: ``x (B, C, H, W)`` → ``(B,)``."""
        ...


def alpha_bar(alphas_cumprod: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
    """ᾱ_t as ``(B, 1, ..., 1)`` in ``like``'s dtype and device (``like: (B, ...)``).

    ``t`` is an int in ``[0, T)`` or an integer tensor of shape ``(B,)`` (or a 0-d tensor).
    """
    steps = alphas_cumprod.shape[0]
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):
        t = int(t)
        require(0 <= t < steps, f"timestep t = {t} is outside [0, {steps}); pick a step of the {steps}-step schedule")
        ab = alphas_cumprod[t].to(device=like.device, dtype=like.dtype)
        return ab.expand(like.shape[0], *([1] * (like.dim() - 1)))
    # Tensor t: dtype and shape are checked here; the range check is left to indexing (no device sync).
    require(
        isinstance(t, Tensor) and not t.is_floating_point() and not t.is_complex() and t.dim() <= 1,
        f"timestep t must be an int or an integer tensor of shape (B,), got {t!r}",
    )
    require(
        t.dim() == 0 or t.shape[0] in (1, like.shape[0]),
        f"timestep t has shape {tuple(t.shape)} but x_t has {like.shape[0]} chains; pass an int or a (B,) tensor",
    )
    index = t.to(device=alphas_cumprod.device, dtype=torch.long)
    ab = alphas_cumprod[index].to(device=like.device, dtype=like.dtype)
    return ab.reshape(-1, *([1] * (like.dim() - 1))).expand(like.shape[0], *([1] * (like.dim() - 1)))
