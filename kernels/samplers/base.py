"""What every sampler shares: the ``Draw`` record, the ``Sampler`` protocol and input checks.

A sampler object holds only its frozen config. All chain state lives inside the
``run`` generator (BlackJAX shape: ``init(...) -> State``, ``step(generator, state,
...) -> (State, Info)`` over a leading chain dimension ``(chains, C, H, W)``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar, Iterator, NamedTuple, Protocol, runtime_checkable

import torch

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.facts import BLOCK, CampaignNote, UnitArray

__all__ = [
    "Draw",
    "StateSize",
    "UnitArray",
    "CampaignNote",
    "BLOCK",
    "Sampler",
    "ConfiguredSampler",
    "check_run_inputs",
    "chains_measurement",
    "likelihood_grad",
    "is_exact_prior",
    "require_pixel_prior",
    "network_calls",
]


class Draw(NamedTuple):
    """One draw of every chain of a work unit.

    ``index``: draw index within the unit, ``0 .. n_draws - 1``.
    ``x``: ``(chains, C, H, W)``, detached, in the dtype/device of ``y``.
    ``nfe``: network (denoiser) calls spent on this draw, per chain.
    ``info``: what the sampler reports beside the draw (never fed back), or None. Scalars per
    draw (e.g. ``outside_box``: fraction of proposals outside the box since the last draw) and,
    on the last draw of a unit, per-unit arrays (e.g. SMC's ``ess``/``resamples``/``log_evidence``
    per run, LATINO-PRO's ``condition`` and ``condition_trace``); each sampler documents its keys.
    """

    index: int
    x: torch.Tensor
    nfe: int
    info: dict[str, Any] | None = None


@runtime_checkable
class Sampler(Protocol):
    """A posterior sampler: frozen config in, stream of draws out."""

    kind: str

    def run(
        self, y: torch.Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]: ...

    def nfe_per_draw(self) -> float: ...

    def describe(self) -> dict: ...

    def unit_arrays(self, n_chains: int, prior: Mapping[str, Any]) -> tuple[UnitArray, ...]: ...

    def campaign_notes(self, chains: int, chunk_chains: int, draws: int) -> list[CampaignNote]: ...


class StateSize(NamedTuple):
    """Memory a sampler holds while it runs one unit: ``bytes``, and ``what`` they are (for messages)."""

    bytes: int
    what: str


class ConfiguredSampler:
    """Base of the samplers: a frozen dataclass holding ``config`` (a dataclass) and ``kind``."""

    config: Any
    kind: str

    #: True when the chains of one measurement interact (one estimate from all of them, e.g.
    #: latino-pro's condition): a work unit must then be the whole measurement (``chunks.chains == chains``)
    INTERACTING_CHAINS: ClassVar[bool] = False
    #: the most draws per chain a run returns (point estimates: 1), None for no limit
    MAX_DRAWS: ClassVar[int | None] = None
    #: True when a run with more draws yields a shorter run's draws first (a Markov chain, independent
    #: runs): a store may then grow in draws; False for SMC, whose draws are all taken from one pool at the end
    DRAWS_EXTEND: ClassVar[bool] = True

    #: live ``(chains, C, H, W)`` float32 tensors at the peak of one step (state, proposal,
    #: temporaries), used by the pre-flight memory estimate; a kind that does not say is
    #: assumed to hold 8, and ``STATE_TENSORS`` names them
    STATE_COPIES: ClassVar[int] = 8
    STATE_TENSORS: ClassVar[str] = "assumed: the sampler does not state its own"

    def describe(self) -> dict:
        """``{"kind": ..., **config}``: JSON-able, rebuilds the sampler with ``build_sampler``."""
        return {"kind": self.kind, **asdict(self.config)}

    def nfe_per_unit(self, n_draws: int) -> float:
        """Network calls per chain for ``n_draws`` draws of one unit (burn-in included where there is one)."""
        return n_draws * self.nfe_per_draw()  # type: ignore[attr-defined]

    def unit_arrays(self, n_chains: int, prior: Mapping[str, Any]) -> tuple[UnitArray, ...]:
        """The facts ``run`` reports in ``Draw.info`` that a campaign store keeps (none by default).

        ``n_chains``: chains of a full work unit; ``prior``: the prior's description (``describe()``).
        Every key a kind reports must be declared here (``tests/kernels/test_unit_arrays.py``).
        """
        return ()

    def campaign_notes(self, chains: int, chunk_chains: int, draws: int) -> list[CampaignNote]:
        """What this sampler refuses (``error``) or warns about in a campaign of ``chains`` chains per
        measurement in units of ``chunk_chains``, ``draws`` draws per chain; checked when the campaign
        file is loaded. The base checks ``INTERACTING_CHAINS`` and ``MAX_DRAWS``; a kind adds its own."""
        notes = []
        if self.INTERACTING_CHAINS and chunk_chains != chains:
            notes.append(CampaignNote(
                "chunks.chains",
                f"sampler {self.kind!r} estimates one quantity from all chains of a measurement, so a work unit must hold "
                f"them all: set chunks.chains: {chains} (= chains; now {chunk_chains})",
            ))
        if self.MAX_DRAWS is not None and draws > self.MAX_DRAWS:
            what = "a point estimate: it writes one draw per chain" if self.MAX_DRAWS == 1 else f"at most {self.MAX_DRAWS} draws per chain"
            notes.append(CampaignNote("draws", f"sampler {self.kind!r} is {what}, got draws: {draws}; set draws: {self.MAX_DRAWS}"))
        return notes

    def state_size(self, n_chains: int, img_shape: tuple[int, ...], prior: dict[str, Any]) -> StateSize:
        """Bytes the sampler holds for ``n_chains`` chains of ``img_shape`` images: ``STATE_COPIES`` float32 copies.

        ``prior`` is the prior's description (``describe()``); network activations are not counted.
        """
        shape = f"({n_chains}, {', '.join(map(str, img_shape))})"
        return StateSize(self.STATE_COPIES * n_chains * math.prod(img_shape) * 4, f"{self.STATE_COPIES} x {shape} float32 ({self.STATE_TENSORS})")


def check_run_inputs(y: torch.Tensor, operator: Any, sigma: float, n_chains: int, n_draws: int) -> None:
    """Raise :class:`UQError` on a bad measurement, noise level or chain/draw count.

    ``y``: one measurement of shape ``operator.obs_shape`` (finite values).
    """
    require(isinstance(y, torch.Tensor), f"y must be a torch.Tensor, got {type(y).__name__}; convert it with torch.as_tensor")
    require(
        tuple(y.shape) == tuple(operator.obs_shape),
        f"y has shape {tuple(y.shape)} but the {operator.kind} operator observes {tuple(operator.obs_shape)}; pass one measurement",
    )
    operator.check_measurement(y)
    require(
        isinstance(sigma, numbers.Real) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma > 0,
        f"noise sigma = {sigma!r} must be a finite number > 0; set noise.sigma to the measurement noise std",
    )
    for name, value in (("n_chains", n_chains), ("n_draws", n_draws)):
        require(
            isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1,
            f"{name} = {value!r} must be an integer >= 1",
        )


def is_exact_prior(prior: Any) -> bool:
    """True for priors with a closed-form posterior (``gaussian``, ``gmm``)."""
    return callable(getattr(prior, "posterior", None)) and not getattr(prior, "is_latent", False)


def require_pixel_prior(prior: Any, sampler_kind: str) -> None:
    """Raise :class:`UQError` when ``prior`` is a latent prior (``sampler_kind`` needs a pixel denoiser)."""
    if getattr(prior, "is_latent", False):
        raise UQError(
            f"sampler {sampler_kind!r} needs a pixel-space prior but prior kind {getattr(prior, 'kind', '?')!r} is latent; "
            "use sampler kind 'latino' with latent priors"
        )
    require(
        callable(getattr(prior, "denoise", None)),
        f"sampler {sampler_kind!r} needs a prior with a denoiser, got {type(prior).__name__}",
    )


def network_calls(prior: Any) -> int:
    """Network evaluations per ``denoise``/``consistency`` call of ``prior`` (its ``network_calls``, default 1).

    A latent prior under classifier-free guidance evaluates its UNet twice per call (2); samplers
    multiply their per-draw ``nfe`` by this so the store counts every network evaluation.
    """
    return int(getattr(prior, "network_calls", 1))


def chains_measurement(y: torch.Tensor, n_chains: int) -> torch.Tensor:
    """``y (*obs_shape)`` broadcast to ``(chains, *obs_shape)`` (a view, no copy)."""
    return y.unsqueeze(0).expand(n_chains, *y.shape)


def likelihood_grad(x: torch.Tensor, y: torch.Tensor, operator: Any, sigma: float) -> torch.Tensor:
    """``∇_x log p(y | x) = Aᵀ(y − A x) / σ²``; ``x (chains, C, H, W)``, ``y (chains, *obs_shape)``."""
    return operator.A_T(y - operator.A(x)) / sigma**2
