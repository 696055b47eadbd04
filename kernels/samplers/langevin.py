"""What the Langevin samplers (``ula``, ``skrock``) share: the PnP target, its step bound, the box, the starts.

The target (Laumont et al. 2022, SIAM J. Imaging Sci. 15(2), "Bayesian imaging using Plug & Play priors") is the posterior with the
prior smoothed at noise variance ``ε``; its score, for every chain at once (``x: (chains, C, H, W)``)::

    ∇log π(x) = Aᵀ(y − Ax)/σ²  +  (α/ε)(D_ε(x) − x)  [+ (1/λ)(Π_C(x) − x)]

* ``D_ε`` is the prior's MMSE denoiser at noise *variance* ``ε``: the prior is a VP diffusion
  prior, so ``D_ε(x) = prior.denoise(sqrt(ᾱ_t) x, t)`` at the step ``t`` whose equivalent
  additive noise ``sqrt((1−ᾱ_t)/ᾱ_t)`` is nearest ``sqrt(ε)``, and the exact ``ε = (1−ᾱ_t)/ᾱ_t``
  of that step is used in the drift (Tweedie: ``(D_ε(x) − x)/ε`` is the score of the prior
  convolved with ``N(0, ε I)``);
* the box ``C`` (pixel-wise ``[lo, hi]``) enters by one of two rules (``box_rule``):
  ``penalty`` adds the Moreau–Yosida term ``(1/λ)(Π_C(x) − x)`` of the box indicator to the
  score (Laumont et al.'s Algorithm 1, PnP-ULA); ``project`` leaves the score alone and applies
  ``Π_C`` to every update (their Algorithm 2, PPnP-ULA; deepinv's ``ULAIterator`` and
  ``SKRockIterator`` clip the same way);
* Lipschitz constant of the score: ``L = L_y + α/ε (+ 1/λ under penalty with a box)`` with
  ``L_y = ||A||²/σ²`` and the paper's ``λ = 0.5/(2L_y + α/ε)``. Each sampler scales ``1/L`` by
  its stability region to get its largest step (ULA: ``1/L``; SK-ROCK: ``ℓ_s/L``).

Box ``auto`` takes ``C`` from ``prior.support()`` (per pixel); starts (``init``) are independent
prior draws (``prior``, the default: dispersed starts let R̂ see chains that have not forgotten
them, Gelman & Rubin 1992; Vehtari et al. 2021, Bayesian Anal. 16(2)) or ``pinv(y)`` for every chain (``pinv``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.base import (
    ConfiguredSampler,
    Draw,
    UnitArray,
    chains_measurement,
    check_run_inputs,
    likelihood_grad,
    require_pixel_prior,
)
from uqcampaign.kernels.schedule import timestep_for_noise_std

__all__ = [
    "BOX_RULES",
    "INITS",
    "LangevinConfig",
    "LangevinParameters",
    "ChainState",
    "StepInfo",
    "langevin_parameters",
    "resolve_box",
    "prior_box",
    "score",
    "finish_update",
    "check_start",
    "start",
    "start_calls",
    "chain_draws",
    "LangevinSampler",
]

BOX_RULES = ("penalty", "project")
INITS = ("prior", "pinv")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class LangevinConfig:
    """The keys every Langevin sampler shares (each subclass documents them in its own ``Keys:``)."""

    step: float | str = "auto"
    burn_in: int = 500
    thin: int = 10
    alpha: float = 1.0
    epsilon: float = (5.0 / 255.0) ** 2
    box: tuple[float, float] | str | None = "auto"
    box_rule: str = "penalty"
    init: str = "prior"

    _kind: ClassVar[str] = "langevin"

    def __post_init__(self) -> None:
        kind = self._kind
        if isinstance(self.step, str):
            require(self.step == "auto", f"{kind} step = {self.step!r} must be 'auto' or a number > 0")
        else:
            require(
                _is_number(self.step) and math.isfinite(self.step) and self.step > 0,
                f"{kind} step = {self.step!r} must be 'auto' or a number > 0",
            )
        require(isinstance(self.burn_in, int) and self.burn_in >= 0, f"{kind} burn_in = {self.burn_in!r} must be an integer >= 0")
        require(isinstance(self.thin, int) and self.thin >= 1, f"{kind} thin = {self.thin!r} must be an integer >= 1")
        require(_is_number(self.alpha) and self.alpha > 0, f"{kind} alpha = {self.alpha!r} must be > 0")
        require(_is_number(self.epsilon) and self.epsilon > 0, f"{kind} epsilon = {self.epsilon!r} must be > 0 (a noise variance)")
        if self.box is not None and self.box != "auto":
            numbers_given = isinstance(self.box, (tuple, list)) and all(_is_number(b) for b in self.box)
            box = tuple(float(b) for b in self.box) if numbers_given else ()
            require(
                len(box) == 2 and box[0] < box[1],
                f"{kind} box = {self.box!r} must be 'auto' (the prior's support), [lo, hi] with lo < hi, or null",
            )
            object.__setattr__(self, "box", box)
        require(self.box_rule in BOX_RULES, f"{kind} box_rule = {self.box_rule!r} must be one of {', '.join(BOX_RULES)}")
        require(self.init in INITS, f"{kind} init = {self.init!r} must be one of {', '.join(INITS)}")


@dataclass(frozen=True)
class LangevinParameters:
    """The constants of one run, resolved from the config, the operator, the prior and σ.

    ``box``: ``(lo, hi)``, each ``(C, H, W)`` float64, or None. ``lipschitz``: ``L`` of the score;
    ``bound``: the largest stable step (the sampler's stability region over ``L``).
    """

    delta: float  # step δ
    lam: float  # Moreau–Yosida λ of the box (used by the penalty rule only)
    epsilon: float  # exact noise variance of the denoiser step
    t: int  # VP step of the denoiser
    sqrt_alpha_bar: float  # sqrt(ᾱ_t)
    alpha: float
    box: tuple[Tensor, Tensor] | None
    box_rule: str
    lipschitz: float
    bound: float


class ChainState(NamedTuple):
    """``x: (chains, C, H, W)``; ``n_steps``: iterations taken since the start."""

    x: Tensor
    n_steps: int


class StepInfo(NamedTuple):
    """Diagnostics of one iteration (never fed back). ``nfe``: denoiser calls of the iteration;
    ``outside_box``: scalar tensor, fraction of the pixels of the update (before any projection)
    outside ``C`` (0 without a box)."""

    nfe: int
    outside_box: Tensor


def prior_box(prior: Any, img_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``C`` from ``prior.support()``: ``(lo, hi)``, each ``(C, H, W)`` float64; UQError if the prior has none."""
    support = getattr(prior, "support", None)
    if not callable(support):
        raise UQError(
            f"box: auto needs the prior's support, but prior kind {getattr(prior, 'kind', type(prior).__name__)!r} "
            "has no support(); give the sampler box as [lo, hi] or null"
        )
    lo, hi = support()
    return _box_tensors(lo, hi, img_shape, "the prior's support()")


def _box_tensors(lo: Any, hi: Any, img_shape: tuple[int, ...], what: str) -> tuple[Tensor, Tensor]:
    bounds = []
    for name, value in (("lo", lo), ("hi", hi)):
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        try:
            t = t.expand(*img_shape).clone()
        except RuntimeError:
            raise UQError(f"{what} gives {name} of shape {tuple(t.shape)}, not broadcastable to the image shape {tuple(img_shape)}") from None
        bounds.append(t)
    lo_t, hi_t = bounds
    require(bool(torch.isfinite(lo_t).all() & torch.isfinite(hi_t).all()), f"{what} has non-finite bounds; give the box as [lo, hi] or null")
    require(bool((lo_t < hi_t).all()), f"{what} has lo >= hi at {int((lo_t >= hi_t).sum())} pixels; give the box as [lo, hi] or null")
    return lo_t, hi_t


def resolve_box(box: Any, prior: Any, img_shape: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
    """The box of a config (``"auto"``, ``(lo, hi)`` or None) as per-pixel ``(lo, hi)`` tensors ``(C, H, W)``."""
    if box is None:
        return None
    if box == "auto":
        return prior_box(prior, img_shape)
    return _box_tensors(box[0], box[1], img_shape, f"box {list(box)}")


def langevin_parameters(
    config: LangevinConfig, operator: Any, prior: Any, sigma: float, stability: float, auto_fraction: float, kind: str
) -> LangevinParameters:
    """Resolve ``ε``, ``λ``, ``C``, ``L`` and ``δ``; a given ``δ`` above ``stability/L`` raises UQError.

    ``stability``: the sampler's stability region in units of ``1/L``; ``auto_fraction``: the
    fraction of the bound that ``step: auto`` takes.
    """
    alphas_cumprod = prior.alphas_cumprod
    t = timestep_for_noise_std(alphas_cumprod, math.sqrt(config.epsilon))
    a = float(alphas_cumprod[t])
    eps = (1.0 - a) / a
    lipschitz_y = float(operator.norm_sq()) / sigma**2
    prior_term = config.alpha / eps
    lam = 0.5 / (2.0 * lipschitz_y + prior_term)
    box = resolve_box(config.box, prior, tuple(operator.img_shape))
    penalty = box is not None and config.box_rule == "penalty"
    lipschitz = lipschitz_y + prior_term + (1.0 / lam if penalty else 0.0)
    bound = stability / lipschitz
    if config.step == "auto":
        delta = auto_fraction * bound
    else:
        delta = float(config.step)
        if delta > bound:
            terms = " + 1/λ" if penalty else ""
            raise UQError(
                f"{kind} step = {delta:.4g} is above the stability bound {stability:.4g}/(L_y + α/ε{terms}) = {bound:.4g} "
                f"(L_y = ||A||²/σ² = {lipschitz_y:.4g}, α/ε = {prior_term:.4g}); use step: auto or a value below the bound"
            )
    return LangevinParameters(delta, lam, eps, t, math.sqrt(a), float(config.alpha), box, config.box_rule, lipschitz, bound)


def _box_like(params: LangevinParameters, x: Tensor) -> tuple[Tensor, Tensor]:
    lo, hi = params.box  # type: ignore[misc]
    return lo.to(dtype=x.dtype, device=x.device), hi.to(dtype=x.dtype, device=x.device)


def score(x: Tensor, y_chains: Tensor, operator: Any, prior: Any, sigma: float, params: LangevinParameters) -> Tensor:
    """``∇log π(x)`` of the PnP target, ``x: (chains, C, H, W)``; one denoiser call.

    Likelihood ``Aᵀ(y − Ax)/σ²`` plus the denoiser score ``(α/ε)(D_ε(x) − x)``, plus under the
    penalty rule the Moreau–Yosida pull ``(1/λ)(Π_C(x) − x)`` of the box.
    """
    grad = likelihood_grad(x, y_chains, operator, sigma)
    denoised = prior.denoise(params.sqrt_alpha_bar * x, params.t)  # D_ε(x) = E[x0 | sqrt(ᾱ_t) x]
    grad = grad + (params.alpha / params.epsilon) * (denoised - x)
    if params.box is not None and params.box_rule == "penalty":
        lo, hi = _box_like(params, x)
        grad = grad + (torch.clamp(x, lo, hi) - x) / params.lam
    return grad


def finish_update(proposal: Tensor, params: LangevinParameters) -> tuple[Tensor, Tensor]:
    """``(x_next, outside)``: the update after the box rule (``Π_C`` under ``project``), and the
    fraction of its pixels outside ``C`` before that (a scalar tensor: no device sync)."""
    if params.box is None:
        return proposal, proposal.new_zeros(())
    lo, hi = _box_like(params, proposal)
    projected = torch.clamp(proposal, lo, hi)
    outside = (projected != proposal).to(proposal.dtype).mean()
    return (projected if params.box_rule == "project" else proposal), outside


def check_start(init: str, prior: Any) -> None:
    """Raise UQError now if ``init: prior`` cannot be honoured (a prior with neither ``sample`` nor ``support``)."""
    if init == "prior" and not (callable(getattr(prior, "sample", None)) or callable(getattr(prior, "support", None))):
        raise UQError(
            f"init: prior needs a prior that can sample() or has a support(); prior kind {getattr(prior, 'kind', '?')!r} has neither; use init: pinv"
        )


def start(init: str, y_chains: Tensor, operator: Any, prior: Any, generator: torch.Generator) -> Tensor:
    """The chains' starting points ``(chains, C, H, W)`` in ``y``'s dtype/device.

    ``pinv``: every chain at ``pinv(y)``. ``prior``: independent draws ``prior.sample(chains,
    generator)`` when the prior can sample (their network calls, :func:`start_calls`, are counted
    in draw 0's ``nfe``; exact priors make none), else ``pinv(y)`` plus Gaussian noise of std
    ``(hi − lo)/12`` per pixel from ``prior.support()`` (a support of ±6 std).
    """
    n_chains = y_chains.shape[0]
    cast = {"dtype": y_chains.dtype, "device": y_chains.device}
    if init == "pinv":
        return operator.pinv(y_chains).clone()
    sample = getattr(prior, "sample", None)
    if callable(sample):
        x = sample(n_chains, generator).to(**cast)
        shape = (n_chains, *operator.img_shape)
        require(tuple(x.shape) == shape, f"prior.sample gave {tuple(x.shape)}, expected {shape}; the prior and the operator disagree on the image shape")
        return x
    check_start(init, prior)
    lo, hi = prior_box(prior, tuple(operator.img_shape))
    scale = ((hi - lo) / 12.0).to(**cast)
    base = operator.pinv(y_chains)
    noise = torch.randn(base.shape, generator=generator, dtype=base.dtype, device=generator.device).to(base.device)
    return base + scale * noise


def start_calls(init: str, prior: Any) -> int:
    """Network calls per chain of :func:`start`: a learned prior's ``sample_calls`` under ``init: prior``
    (e.g. all T = 1000 steps of a DDPM folder unless its ``sample_steps`` says fewer), else 0."""
    if init != "prior" or not callable(getattr(prior, "sample", None)):
        return 0
    return int(getattr(prior, "sample_calls", 0))


StepFn = Callable[[ChainState], tuple[ChainState, StepInfo]]


def chain_draws(step_fn: StepFn, x0: Tensor, burn_in: int, thin: int, n_draws: int, nfe_per_step: int,
                nfe_start: int = 0) -> Iterator[Draw]:
    """Run a Markov chain from ``x0 (chains, C, H, W)``: ``burn_in`` iterations, then ``n_draws``
    draws ``thin`` iterations apart.

    Draw ``k`` is the state after ``burn_in + (k+1)·thin`` iterations; ``nfe = thin·nfe_per_step``
    (draw 0 also pays the burn-in and ``nfe_start``, the calls that made ``x0``); ``info["outside_box"]``: the fraction of pixel-steps whose
    update fell outside the box since the previous draw (draw 0: since the start).
    """
    state = ChainState(x0, 0)
    outside = x0.new_zeros(())
    with torch.no_grad():
        for _ in range(burn_in):
            state, info = step_fn(state)
            outside = outside + info.outside_box
        for index in range(n_draws):
            for _ in range(thin):
                state, info = step_fn(state)
                outside = outside + info.outside_box
            steps = thin + (burn_in if index == 0 else 0)
            nfe = steps * nfe_per_step + (nfe_start if index == 0 else 0)
            yield Draw(index, state.x.detach().clone(), nfe, {"outside_box": float(outside) / steps})
            outside = x0.new_zeros(())


class LangevinSampler(ConfiguredSampler):
    """Base of the Langevin samplers: input checks, starts and the draw loop; a subclass gives
    :meth:`parameters`, :meth:`step_function` and :meth:`nfe_per_step`."""

    config: LangevinConfig
    kind: str

    def nfe_per_step(self) -> int:
        """Denoiser calls per iteration."""
        return 1

    def nfe_per_draw(self) -> float:
        """Denoiser calls per draw in the steady state (``thin`` iterations; draw 0 also pays ``burn_in``)."""
        return float(self.nfe_per_step() * self.config.thin)

    def nfe_per_unit(self, n_draws: int) -> float:
        """``(burn_in + n_draws · thin) · nfe_per_step`` network calls per chain."""
        return float(self.nfe_per_step() * (self.config.burn_in + n_draws * self.config.thin))

    def unit_arrays(self, n_chains: int, prior: Any) -> tuple[UnitArray, ...]:
        """``outside_box`` per draw; the store keeps its mean over the unit weighted by the draws' network
        calls, i.e. the fraction of all the unit's pixel-updates (burn-in included) that fell outside C."""
        return (
            UnitArray("outside_box", "units", (), (), "float64", "fraction of the unit's pixel-updates outside the box C (burn-in included)", per_draw=True, units="1"),
        )

    def parameters(self, operator: Any, prior: Any, sigma: float) -> LangevinParameters:
        """The resolved step constants for this problem (raises on an unstable step or a prior without support)."""
        raise NotImplementedError

    def step_function(
        self, generator: torch.Generator, y_chains: Tensor, operator: Any, prior: Any, sigma: float, params: LangevinParameters
    ) -> StepFn:
        """One iteration of every chain, ``ChainState -> (ChainState, StepInfo)``."""
        raise NotImplementedError

    def run(
        self, y: Tensor, operator: Any, prior: Any, sigma: float, n_chains: int, n_draws: int, generator: torch.Generator
    ) -> Iterator[Draw]:
        """Yield ``n_draws`` thinned states ``x (n_chains, C, H, W)`` after ``burn_in`` iterations
        (inputs, step and start checked before the first draw is asked for)."""
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        require_pixel_prior(prior, self.kind)
        params = self.parameters(operator, prior, float(sigma))
        check_start(self.config.init, prior)
        return self._draws(y, operator, prior, float(sigma), int(n_chains), int(n_draws), generator, params)

    def _draws(self, y, operator, prior, sigma, n_chains, n_draws, generator, params) -> Iterator[Draw]:
        y_chains = chains_measurement(y, n_chains)
        with torch.no_grad():
            x0 = start(self.config.init, y_chains, operator, prior, generator)
        advance = self.step_function(generator, y_chains, operator, prior, sigma, params)
        yield from chain_draws(advance, x0, self.config.burn_in, self.config.thin, n_draws, self.nfe_per_step(),
                               start_calls(self.config.init, prior))
