"""``latino-pro``: LATINO with the condition (prompt) estimated by SAPG (Spagnoletti et al. 2025, arXiv:2503.12615; seed 004).

LATINO-PRO estimates the condition ``c`` of the prior by maximum marginal likelihood,
``ĉ(y) = argmax_{c ∈ C} p(y | c)``, with stochastic approximation proximal gradient (SAPG) while it
samples: by Fisher's identity ``∇_c log p(y | c) = E_{x | y, c}[∇_c log p(x | c)]``, so the chains'
states give a stochastic gradient. All ``chains`` of one ``run`` (one measurement) estimate one ``c``
together::

    x⁽⁰⁾ = A⁺y,  c_0 = the prior's condition (or ``run(..., condition=)``)
    for m = 0 .. M−1:
        x⁽ᵐ⁺¹⁾ = LATINO_N(x⁽ᵐ⁾; c_m)                   N = ``steps`` steps, state carried (x⁽⁰⁾ ← x⁽ᴺᵐ⁾)
        h_m    ≈ ∇_c log p(x | c_m)                     over all chains (``gradient``, below)
        c_m+1  = Π_C[prox_{γ_m λ/2 ||· − c_p||²}(c_m + γ_m h_m)],   γ_m = γ₀ ρ^max(0, m − m₀)
    then ``draws`` final LATINO runs of ``final_steps`` steps with ĉ = c_M, each started from the
    previous state (a Markov chain: the draws of a chain are correlated, not independent runs).

The gradient estimator (``gradient``):

* ``exact`` (the default where the prior gives it: conditional ``gmm``): SAPG with
  ``g_m = mean over chains of prior.condition_score(x⁽ᵐ⁺¹⁾, c_m)`` = ``∇_c log p(x | c_m)`` in closed
  form at the chains' last states, made feasible (on the boundary of ``C``, its outward part is
  dropped) and normalised per token as the authors normalise theirs, ``h_m = P(g_m) / ||P(g_m)||``:
  a step of length γ_m (per token) along ``C`` whatever the scale of ``c``. Measured on the exact
  problems it converges where the raw gradient crawls (the marginal likelihood of one measurement
  is flat along the boundary of ``C``, where its maximum lies).
* ``surrogate`` (the authors' estimator; the only one for a ``latent-consistency`` prior): the
  gradient of the log transition density of each LATINO step to the next,
  ``ℓ_i(c) = −||z_{t_{i+1}} − sqrt(ᾱ_{t_{i+1}}) G(z_{t_i}, t_i, c)||² / (2(1 − ᾱ_{t_{i+1}}))``, summed over chains,
  for the ``steps − 1`` consecutive pairs of an iteration (autograd through the network,
  ``prior.consistency(z, t, condition=c)``). As the authors' ``main_LATINO_PRO.py`` does, each step's
  gradient is normalised per token (over the last axis of ``c``), the first ``freeze_tokens`` tokens
  are zeroed, and the normalised gradients are **accumulated over all iterations, never reset**:
  ``h_m = Σ_{j ≤ m} Σ_i ∇ℓ_{j,i} / ||∇ℓ_{j,i}||``. Its fixed point is not ``argmax p(y | c)`` in general
  (``tests/kernels/test_latino_pro.py`` measures how far it lands on exact problems).

``C`` (``radius`` or ``box``): the ball of radius ``r`` around the prior's condition ``c_p``, per
token for an embedding ``(1, L, D)`` (the authors' ``project_onto_ball``), or the box
``lo ≤ c ≤ hi``. ``edit_weight λ > 0`` is seed 004's condition editing (keep ``c`` near the given
prompt ``c_p`` while matching the data): after each step the proximal map of
``γ_m λ/2 ||· − c_p||²`` (exact for the quadratic) pulls ``c`` back toward ``c_p``. The steps being
normalised, the pull balances a full step at ``||c − c_p|| = 1/λ`` (per token): ``1/λ`` is the reach
of the edit, taken in the direction the data pull (it is not the maximiser of
``log p(y | c) − λ/2 ||c − c_p||²``, whose balance would depend on the gradient's size); ``λ = 0``
is plain LATINO-PRO.

Network calls (``Draw.nfe``, per chain): the first draw carries the SAPG phase,
``iterations · steps + final_steps`` (the authors' schedule: 15 · 4 + 8 = 68); later draws
``final_steps``; each times ``prior.network_calls`` (2 under classifier-free guidance). The surrogate also runs ``steps − 1`` backward passes per iteration through the
network (not counted as calls; about two forward calls of compute each). ``exact`` on a ``gmm``
calls the exact Tweedie denoiser, counted the same way.

``Draw.info`` on the **last** draw of a run (``None`` on the others):

* ``condition``: ĉ, shape of the prior's condition (``(k,)``; a latent prior: ``(1, L, D)``);
* ``condition_start``: c_0, same shape;
* ``condition_trace``: ``(iterations, *condition.shape)``, c after each SAPG iteration;
* ``objective_trace``: ``(iterations,)`` float64, the marginal-likelihood proxy: at each iteration,
  the chain mean of the log-density whose ``c``-gradient SAPG follows (``exact``: ``log p(x⁽ᵐ⁺¹⁾ | c_m)``,
  EM's ``Q(c_m | c_m)``; ``surrogate``: ``Σ_i ℓ_i(c_m)`` per chain, without constants). It is not
  ``log p(y | c_m)`` itself.

Divergence: a non-finite condition, gradient, objective or chain state stops the run with a
``UQError`` naming the iteration; no draw is yielded for it (the SAPG phase runs before the first draw).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.samplers.base import (
    ConfiguredSampler,
    Draw,
    UnitArray,
    chains_measurement,
    check_run_inputs,
    network_calls,
)
from uqcampaign.kernels.samplers.latino import (
    LatinoState,
    codec,
    consistency_map,
    init,
    latino_timesteps,
    renoise,
    step,
)

__all__ = [
    "DEFAULT_GAMMA",
    "condition_dims",
    "condition_shape",
    "GRADIENTS",
    "LatinoProConfig",
    "LatinoProSampler",
    "feasible_direction",
    "normalise_per_token",
    "project",
    "sapg_reference",
    "sapg_step_size",
    "sapg_update",
    "token_norm",
]

GRADIENTS = ("auto", "exact", "surrogate")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LatinoProConfig:
    """LATINO-PRO: LATINO plus SAPG estimation of the prior's condition c (prompt embedding) from the measurement.

    Reference: Spagnoletti, Prost, Almansa, Papadakis & Pereyra 2025, arXiv:2503.12615 (LATINO-PRO);
    the authors' main_LATINO_PRO.py; Vidal, De Bortoli, Pereyra & Durmus 2020, SIAM J. Imaging Sci. 13(4) (SAPG).

    Defaults: the authors' schedule (15 iterations of 4 steps, then 8 final steps: 68 network
    calls for one draw; γ_m = γ₀ · 0.9^max(0, m − 10)); γ₀ = 0.08 for their surrogate, 0.3 for the
    exact gradient (a unit direction per token, so γ is a distance in condition units), chosen on
    the exact conditional-GMM problems (tests/kernels/test_latino_pro.py); the latino ladder
    t = 250 … 20 (`t_max: null, t_min: null` gives the authors' 999 … 249 and 999 … 124).

    Keys:
        iterations: M, SAPG iterations, each one LATINO run of `steps` steps from the carried state.
        steps: LATINO steps per SAPG iteration (network calls per iteration); >= 2 for the surrogate.
        final_steps: LATINO steps of each final run that yields a draw, with the estimated c.
        delta: prox scale δ of the data step (prox step δ(1 − ᾱ_t)), as in latino.
        t_max: first timestep of both ladders (null: T − 1).
        t_min: last timestep of both ladders (null: the LCM trailing ladders, 999 … 249 for 4 steps
            and 999 … 124 for 8, the authors').
        gradient: auto (exact where the prior gives ∇_c log p(x | c), else surrogate), exact (closed
            form at the chains' states, normalised per token) or surrogate (the authors' normalised,
            accumulated latent-transition gradient).
        gamma: γ₀ of the step sizes γ_m = γ₀ · gamma_decay^max(0, m − decay_after) (null: 0.3 with
            the exact gradient, 0.08 with the surrogate, the authors').
        gamma_decay: ρ in (0, 1] of the step sizes.
        decay_after: m₀, the iteration after which the steps decay.
        radius: C = ball of this radius around the prior's condition (per token for a (1, L, D)
            embedding, as the authors' project_onto_ball); null when box is given.
        box: [lo, hi]: C = the box lo <= c <= hi (every coordinate) instead of the ball.
        edit_weight: λ >= 0, condition editing (Spagnoletti et al. 2025, prompt editing): a proximal pull toward the prior's prompt
            after each step, so that c moves at most about 1/λ (per token) from it in the direction
            the data pull; 0 = plain LATINO-PRO.
        freeze_tokens: leading tokens of a (1, L, D) embedding kept fixed (the authors freeze 4:
            BOS + "a photo of"); 0 for a vector condition.
    """

    iterations: int = 15
    steps: int = 4
    final_steps: int = 8
    delta: float = 0.3
    t_max: int | None = 250
    t_min: int | None = 20
    gradient: str = "auto"
    gamma: float | None = None
    gamma_decay: float = 0.9
    decay_after: int = 10
    radius: float | None = 15.0
    box: tuple[float, float] | None = None
    edit_weight: float = 0.0
    freeze_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "steps", "final_steps"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"latino-pro {name} = {value!r} must be an integer >= 1")
        for name in ("decay_after", "freeze_tokens"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"latino-pro {name} = {value!r} must be an integer >= 0")
        for name in ("t_max", "t_min"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and value >= 0), f"latino-pro {name} = {value!r} must be an integer >= 0 or null")
        require(_is_number(self.delta) and self.delta > 0, f"latino-pro delta = {self.delta!r} must be a finite number > 0")
        require(self.gamma is None or (_is_number(self.gamma) and self.gamma > 0),
                f"latino-pro gamma = {self.gamma!r} must be a finite number > 0 or null")
        require(_is_number(self.gamma_decay) and 0 < self.gamma_decay <= 1, f"latino-pro gamma_decay = {self.gamma_decay!r} must be in (0, 1]")
        require(_is_number(self.edit_weight) and self.edit_weight >= 0, f"latino-pro edit_weight = {self.edit_weight!r} must be a finite number >= 0")
        require(self.gradient in GRADIENTS, f"latino-pro gradient = {self.gradient!r}; choose one of {', '.join(GRADIENTS)}")
        require(self.gradient != "surrogate" or self.steps >= 2,
                f"latino-pro steps = {self.steps} gives the surrogate gradient no step-to-step transition; use steps >= 2")
        require((self.radius is None) != (self.box is None),
                f"latino-pro needs exactly one projection set: radius (a ball) or box, got radius = {self.radius!r}, box = {self.box!r}; "
                "set the other to null")
        if self.radius is not None:
            require(_is_number(self.radius) and self.radius > 0,
                    f"latino-pro radius = {self.radius!r} leaves the projection set C no interior; give a finite radius > 0")
        if self.box is not None:
            box = self.box
            require(isinstance(box, (tuple, list)) and len(box) == 2 and all(_is_number(b) for b in box),
                    f"latino-pro box = {box!r} must be [lo, hi], two finite numbers")
            require(box[0] < box[1], f"latino-pro box = {list(box)!r} has no interior (lo >= hi); give lo < hi")


DEFAULT_GAMMA = {"exact": 0.3, "surrogate": 0.08}


def sapg_step_size(config: LatinoProConfig, m: int, gradient: str) -> float:
    """γ_m = γ₀ · ρ^max(0, m − m₀) for iteration ``m`` (0-based): the authors' schedule shape.

    ``gradient``: ``exact`` or ``surrogate``, whose default γ₀ (``gamma: null``) differ.
    """
    gamma = DEFAULT_GAMMA[gradient] if config.gamma is None else config.gamma
    return gamma * config.gamma_decay ** max(0, m - config.decay_after)


def token_norm(v: Tensor) -> Tensor:
    """``||v||`` over the last axis, keepdim, without overflow (scaled by the largest entry first)."""
    scale = v.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return scale * torch.linalg.vector_norm(v / scale, dim=-1, keepdim=True)


def project(c: Tensor, centre: Tensor, config: LatinoProConfig) -> Tensor:
    """Π_C: onto the ball of ``config.radius`` around ``centre`` (per token: over the last axis), or the box."""
    if config.box is not None:
        return c.clamp(config.box[0], config.box[1])
    delta = c - centre
    return centre + delta * (config.radius / token_norm(delta).clamp_min(torch.finfo(c.dtype).tiny)).clamp(max=1.0)


def _in_set(c: Tensor, centre: Tensor, config: LatinoProConfig) -> bool:
    """True when ``c`` lies in C (to a relative 1e-6)."""
    if config.box is not None:
        span = config.box[1] - config.box[0]
        return bool(((c >= config.box[0] - 1e-6 * span) & (c <= config.box[1] + 1e-6 * span)).all())
    return bool((token_norm(c - centre) <= config.radius * (1 + 1e-6)).all())


def feasible_direction(g: Tensor, c: Tensor, centre: Tensor, config: LatinoProConfig) -> Tensor:
    """``g`` without its components that leave C at ``c``: on the ball's sphere (per token) the outward
    radial part, at an active box bound the outward coordinate. Normalising this, rather than ``g``,
    gives steps of length γ along the boundary where the maximiser of one measurement's p(y | c) sits."""
    if config.box is not None:
        lo, hi = config.box
        outward = ((c <= lo) & (g < 0)) | ((c >= hi) & (g > 0))
        return torch.where(outward, torch.zeros_like(g), g)
    offset = c - centre
    norm = token_norm(offset)
    unit = offset / norm.clamp_min(torch.finfo(c.dtype).tiny)
    radial = (g * unit).sum(-1, keepdim=True)
    on_sphere = (norm >= config.radius * (1 - 1e-6)) & (radial > 0)
    return torch.where(on_sphere, g - radial * unit, g)


def sapg_update(c: Tensor, direction: Tensor, gamma: float, anchor: Tensor, config: LatinoProConfig) -> Tensor:
    """One SAPG update ``Π_C[prox_{γλ/2||· − anchor||²}(c + γ h)]``; frozen tokens keep their values.

    The prox of the editing penalty is ``(v + γλ anchor) / (1 + γλ)``; ``c, direction, anchor`` share one shape.
    """
    moved = c + gamma * direction
    if config.edit_weight > 0:
        moved = (moved + gamma * config.edit_weight * anchor) / (1.0 + gamma * config.edit_weight)
    new = project(moved, anchor, config)
    if config.freeze_tokens:
        new[..., : config.freeze_tokens, :] = c[..., : config.freeze_tokens, :]
    return new


def sapg_reference(prior: Any, operator: Any, y: Tensor, sigma: float, config: LatinoProConfig, start: Tensor, n: int,
                   generator: torch.Generator) -> Tensor:
    """The trace ``(iterations, k)`` of the same SAPG (exact estimator, step rule, schedule and ``C``) fed
    ``n`` i.i.d. draws of the exact ``p(x | y, c_m)`` per iteration instead of LATINO's chains.

    The reference latino-pro is measured against: its fixed point is the maximiser of ``p(y | c)``
    over ``C`` (exact conditional ``gmm`` priors only; float64).
    """
    anchor = prior.condition.to(torch.float64)
    c, trace = start.to(torch.float64), []
    for m in range(config.iterations):
        draws = prior.posterior(operator, y, sigma, condition=c).sample(n, generator)
        h = normalise_per_token(feasible_direction(prior.condition_score(draws, c).mean(0), c, anchor, config), config.freeze_tokens)
        c = sapg_update(c, h, sapg_step_size(config, m, "exact"), anchor, config)
        trace.append(c)
    return torch.stack(trace)


def normalise_per_token(grad: Tensor, freeze_tokens: int) -> Tensor:
    """``g / ||g||`` over the last axis (zero rows stay zero); the first ``freeze_tokens`` tokens zeroed."""
    out = grad / token_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    if freeze_tokens:
        out[..., :freeze_tokens, :] = 0
    return out


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def sdxl_refusal(kind: str) -> str:
    """The one line refusing SDXL's condition pair (prompt embeddings, pooled embeddings)."""
    return (f"sampler 'latino-pro' estimates one condition tensor, but prior kind {kind!r} holds SDXL's pair (prompt embeddings, "
            "pooled embeddings), which it does not estimate; use sampler latino with SDXL folders, or an SD-1.5 / LCM folder")


def condition_shape(prior: Any) -> tuple[int, ...]:
    """The shape of a prior's condition from its description (``describe()``): ``condition_shape``, or
    ``(condition_dim,)`` for a conditional ``gmm``; UQError when it has none."""
    if prior.get("condition_shape") is not None:
        return tuple(int(n) for n in prior["condition_shape"])
    require(prior.get("condition_shapes") is None, sdxl_refusal(prior.get("kind", "?")))
    if prior.get("condition_dim") is not None:
        return (int(prior["condition_dim"]),)
    raise UQError(
        f"sampler 'latino-pro' estimates the prior's condition, but prior kind {prior.get('kind', '?')!r} describes none; use a "
        "latent-consistency prior or a gmm whose .npz holds logit_weights (K, k) and a condition (k,)"
    )


def condition_dims(shape: tuple[int, ...]) -> tuple[str, ...]:
    """Dimension names of a condition: ``(k,)`` for a vector, ``(prompt, token, embedding)`` for a prompt
    embedding ``(P, L, D)``, else ``k0, k1, …``."""
    if len(shape) == 1:
        return ("k",)
    if len(shape) == 3:
        return ("prompt", "token", "embedding")
    return tuple(f"k{i}" for i in range(len(shape)))


@dataclass(frozen=True)
class LatinoProSampler(ConfiguredSampler):
    """LATINO-PRO over the chains of one measurement; they estimate one condition together (see the module)."""

    config: LatinoProConfig = LatinoProConfig()
    kind: str = "latino-pro"
    INTERACTING_CHAINS: ClassVar[bool] = True

    def unit_arrays(self, n_chains: int, prior: Any) -> tuple[UnitArray, ...]:
        """Per measurement (its unit holds all its chains), at the store's root: ``condition`` and
        ``condition_start`` ``(*k)``, ``condition_trace (iteration, *k)``, ``objective_trace (iteration,)``;
        ``k`` = the prior's condition shape and dims (:func:`condition_dims`)."""
        shape = condition_shape(prior)
        dims, m = condition_dims(shape), (self.config.iterations,)
        return (
            UnitArray("condition", "", dims, shape, "float32", "condition estimated by SAPG (maximum marginal likelihood)", None),
            UnitArray("condition_start", "", dims, shape, "float32", "condition SAPG started from", None),
            UnitArray("condition_trace", "", ("iteration", *dims), m + shape, "float32", "condition after each SAPG iteration", None),
            UnitArray("objective_trace", "", ("iteration",), m, "float64",
                      "marginal-likelihood proxy per SAPG iteration (chain mean of the log-density SAPG ascends)", None),
        )

    def nfe_per_draw(self) -> float:
        """Network calls of a run with one draw: ``iterations · steps + final_steps`` (later draws: ``final_steps``)."""
        return float(self.config.iterations * self.config.steps + self.config.final_steps)

    def gradient_for(self, prior: Any) -> str:
        """The estimator ``run`` uses with ``prior``: ``exact`` or ``surrogate`` (``auto`` resolved)."""
        exact = callable(getattr(prior, "condition_score", None)) and isinstance(getattr(prior, "condition", None), Tensor)
        if self.config.gradient == "auto":
            return "exact" if exact else "surrogate"
        if self.config.gradient == "exact":
            require(exact, f"latino-pro gradient: exact needs a prior with a closed-form ∇_c log p(x | c) (a conditional gmm); "
                           f"prior kind {getattr(prior, 'kind', '?')!r} has none: use gradient: surrogate or auto")
        return self.config.gradient

    def run(
        self,
        y: Tensor,
        operator: Any,
        prior: Any,
        sigma: float,
        n_chains: int,
        n_draws: int,
        generator: torch.Generator,
        condition: Tensor | None = None,
    ) -> Iterator[Draw]:
        """Yield ``n_draws`` draws ``x (n_chains, C, H, W)`` after the SAPG phase; inputs are checked here.

        ``condition``: the starting point c_0 (default: the prior's condition, which is also the
        centre of the ball and the editing anchor); it must lie in C.
        """
        check_run_inputs(y, operator, sigma, n_chains, n_draws)
        require(callable(getattr(prior, "consistency", None)),
                f"sampler 'latino-pro' needs a prior with a consistency map, got {type(prior).__name__}")
        anchor = getattr(prior, "condition", None)
        kind = getattr(prior, "kind", "?")
        require(not isinstance(anchor, tuple), sdxl_refusal(kind))
        require(isinstance(anchor, Tensor),
                f"sampler 'latino-pro' estimates the prior's condition, but prior kind {kind!r} has none; use sampler latino, "
                "a latent-consistency prior, or a gmm whose .npz holds logit_weights (K, k) and a condition (k,)")
        prompt = getattr(prior, "prompt", None)
        require(not (isinstance(prompt, str) and not prompt.strip()),
                f"sampler 'latino-pro' starts from the prior's prompt, which is empty ({prompt!r}); give the prior a prompt "
                "that describes the images, e.g. prompt: \"a handwritten digit\"")
        require(anchor.numel() > 0, f"the prior's condition is empty (shape {tuple(anchor.shape)}); give it a non-empty condition")
        gradient = self.gradient_for(prior)
        if self.config.freeze_tokens:
            require(anchor.dim() >= 2 and self.config.freeze_tokens < anchor.shape[-2],
                    f"latino-pro freeze_tokens = {self.config.freeze_tokens} needs a token axis with more tokens; the condition has "
                    f"shape {tuple(anchor.shape)}")
        anchor = anchor.detach().to(device=y.device, dtype=y.dtype)
        start = anchor if condition is None else torch.as_tensor(condition).detach().to(device=y.device, dtype=y.dtype)
        require(tuple(start.shape) == tuple(anchor.shape),
                f"latino-pro starting condition has shape {tuple(start.shape)} but the prior's condition is {tuple(anchor.shape)}")
        require(_finite(start), "latino-pro starting condition has NaN/Inf entries; give a finite condition")
        where = f"the box {list(self.config.box)}" if self.config.box is not None else f"the ball of radius {self.config.radius:g} around the prior's condition"
        require(_in_set(start, anchor, self.config),
                f"latino-pro starting condition lies outside the projection set C ({where}); start inside C or enlarge it")
        steps_total = int(prior.alphas_cumprod.shape[0])
        ladder = latino_timesteps(steps_total, self.config.steps, self.config.t_max, self.config.t_min)
        final = latino_timesteps(steps_total, self.config.final_steps, self.config.t_max, self.config.t_min)
        return self._draws(y, operator, prior, float(sigma), int(n_chains), int(n_draws), generator, ladder, final,
                           gradient, anchor, start.clone())

    # -- the SAPG phase and the final runs ------------------------------------------------------
    def _draws(self, y, operator, prior, sigma, n_chains, n_draws, generator, ladder, final, gradient, anchor, c) -> Iterator[Draw]:
        cfg = self.config
        y_chains = chains_measurement(y, n_chains)
        start = c.clone()
        with torch.no_grad():
            state = init(y_chains, operator)
        accumulated = torch.zeros_like(c)
        trace, objective = [], []
        for m in range(cfg.iterations):
            if gradient == "exact":
                state, h, value = self._exact_iteration(generator, state, y_chains, operator, prior, sigma, ladder, c)
                h = normalise_per_token(feasible_direction(h, c, anchor, cfg), cfg.freeze_tokens)
            else:
                x, g, value = self._surrogate_iteration(generator, state.x, y_chains, operator, prior, sigma, ladder, c)
                state = LatinoState(x, 0)
                accumulated = accumulated + g
                h = accumulated
            gamma = sapg_step_size(cfg, m, gradient)
            if not _finite(h, state.x) or not math.isfinite(value):
                raise UQError(f"latino-pro diverged at SAPG iteration {m + 1}/{cfg.iterations}: the chains or the condition gradient "
                              f"are not finite (step γ = {gamma:g}); lower gamma or delta, or shrink the projection set")
            c = sapg_update(c, h, gamma, anchor, cfg)
            if not _finite(c):
                raise UQError(f"latino-pro diverged at SAPG iteration {m + 1}/{cfg.iterations}: the condition is not finite "
                              f"(step γ = {gamma:g}); lower gamma or shrink the projection set")
            trace.append(c.clone())
            objective.append(value)
        sapg_nfe = cfg.iterations * cfg.steps
        with torch.no_grad():
            for index in range(n_draws):
                state = LatinoState(state.x, 0)
                while state.k < len(final):
                    state, _ = step(generator, state, y_chains, operator, prior, sigma, final, cfg.delta, c)
                if not _finite(state.x):
                    raise UQError(f"latino-pro diverged in the final run of draw {index}: the chains are not finite; "
                                  "lower delta, or check the estimated condition")
                info = None
                if index == n_draws - 1:
                    info = {
                        "condition": c.clone(),
                        "condition_start": start,
                        "condition_trace": torch.stack(trace),
                        "objective_trace": torch.tensor(objective, dtype=torch.float64),
                    }
                calls = (len(final) + (sapg_nfe if index == 0 else 0)) * network_calls(prior)  # × 2 under classifier-free guidance
                yield Draw(index, state.x.detach().clone(), calls, info)

    def _exact_iteration(self, generator, state, y_chains, operator, prior, sigma, ladder, c):
        """One LATINO run with ``c`` from the carried state, then ``h = mean_chains ∇_c log p(x | c)`` (closed form)."""
        with torch.no_grad():
            state = LatinoState(state.x, 0)
            while state.k < len(ladder):
                state, _ = step(generator, state, y_chains, operator, prior, sigma, ladder, self.config.delta, c)
            h = prior.condition_score(state.x, c).mean(0)
            value = float(prior.log_prob(state.x, c).mean())
        return state, h, value

    def _surrogate_iteration(self, generator, x, y_chains, operator, prior, sigma, ladder, c):
        """One LATINO run with ``c``, summing the normalised gradients of the step-to-step log transition densities.

        Returns ``(x (chains, C, H, W), Σ_i ∇ℓ_i / ||∇ℓ_i|| (shape of c), Σ_i ℓ_i / chains)``.
        """
        encode, decode = codec(prior)
        n_chains = x.shape[0]
        total = torch.zeros_like(c)
        value = 0.0
        previous = None  # (G(z_{t_i}, t_i, c) with its graph, the leaf c)
        for i, t in enumerate(ladder):
            ab = float(prior.alphas_cumprod[t])
            with torch.no_grad():
                z = renoise(generator, encode(x), ab)
            if previous is not None:
                g_prev, leaf = previous
                with torch.enable_grad():
                    ell = -(z - math.sqrt(ab) * g_prev).square().sum() / (2.0 * (1.0 - ab))
                    (grad,) = torch.autograd.grad(ell, leaf)
                total = total + normalise_per_token(grad.to(c.dtype), self.config.freeze_tokens)
                value += float(ell.detach()) / n_chains
                previous = None
            if i < len(ladder) - 1:
                leaf = c.detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    g = consistency_map(prior, z, t, leaf)
                previous = (g, leaf)
                g = g.detach()
            else:
                with torch.no_grad():
                    g = consistency_map(prior, z, t, c)
            with torch.no_grad():
                x = operator.prox_data(decode(g), y_chains, sigma, self.config.delta * (1.0 - ab))
        return x, total, value
