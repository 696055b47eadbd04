"""Recipe for the ``consistency`` prior: consistency distillation from a diffusion prior (Song et al. 2023, Alg. 2).

The student ``f_θ(x, σ)`` (a ``UNet2DModel`` in the Karras parameterisation of
:func:`~uqcampaign.kernels.priors.consistency.karras_consistency`) is trained so that two
neighbouring points of one probability-flow ODE trajectory map to the same ``x_0``::

    x_{n+1} = x_0 + σ_{n+1} z
    x̂_n     = x_{n+1} + (σ_n − σ_{n+1}) (x_{n+1} − D(x_{n+1}, σ_{n+1})) / σ_{n+1}     (one Euler step of the teacher's ODE)
    loss    = || f_θ(x_{n+1}, σ_{n+1}) − f_θ⁻(x̂_n, σ_n) ||²,   θ⁻ ← μ θ⁻ + (1 − μ) θ   (stop-gradient target)

The grid ``σ_n`` is a ladder of the teacher's own VP steps (``σ_t = sqrt((1-ᾱ_t)/ᾱ_t)``), so
the teacher ``D(x, σ_t) = denoise(sqrt(ᾱ_t) x, t)`` is always called at a step it was trained
on, and ``σ_min = σ_0`` (where ``f_θ`` is the identity).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.training.datasets import get_dataset
from uqcampaign.kernels.training.loop import Stage

__all__ = ["consistency_stages", "teacher_ladder", "update_target"]

_TARGET_DECAY = 0.95


def update_target(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """The stop-gradient target of consistency training, ``θ⁻ ← μ θ⁻ + (1 − μ) θ`` (in place)."""
    with torch.no_grad():
        for p_target, p in zip(target.parameters(), online.parameters()):
            p_target.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def teacher_ladder(n: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """``n`` increasing VP steps from 0 to ``T - 1``, denser at small t (quadratic spacing), LongTensor ``(n,)``."""
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return torch.unique((u.square() * (num_train_timesteps - 1)).round().long())


def consistency_stages(dataset_name: str, steps: int, batch_size: int, lr: float, device: torch.device,
                       teacher: str | None = None, grid: int = 40) -> tuple[list[Stage], Any]:
    """One distillation stage; returns ``([stage], ConsistencyModelPipeline)``. ``teacher``: a diffusion prior folder."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline

    from uqcampaign.kernels.priors.consistency import karras_consistency
    from uqcampaign.kernels.priors.diffusion import load_diffusion_prior
    from uqcampaign.kernels.training.models import tiny_unet2d

    require(teacher is not None, "consistency distillation needs teacher=<diffusion prior folder> (e.g. priors/gmm8-diffusion)")
    data = get_dataset(dataset_name)
    prior = load_diffusion_prior({"kind": "diffusion", "path": str(Path(teacher).resolve())}, None).to(device)
    require(prior.img_shape == data.img_shape, f"teacher takes images {prior.img_shape} but dataset {dataset_name!r} has {data.img_shape}; use a matching teacher")
    ladder = teacher_ladder(grid, prior.num_train_timesteps).to(device)
    ab = prior.alphas_cumprod.to(device)[ladder]
    sigmas = ((1.0 - ab) / ab).sqrt().float()  # (N,) increasing
    sigma_min, sigma_data = float(sigmas[0]), 0.5
    student = tiny_unet2d(data.img_shape).to(device)
    target = copy.deepcopy(student).requires_grad_(False)
    # clip_denoised=False: the student is trained unclipped on data in [0, 1] (diffusers clamps to [-1, 1])
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=len(ladder), sigma_min=sigma_min,
                                               sigma_max=float(sigmas[-1]), sigma_data=sigma_data, clip_denoised=False)

    def loss(generator: torch.Generator, step: int) -> torch.Tensor:
        if step > 0:
            update_target(target, student, _TARGET_DECAY)
        x0, _ = data.sample(batch_size, generator)
        n = torch.randint(0, len(ladder) - 1, (batch_size,), generator=generator)
        z = torch.randn(x0.shape, generator=generator)
        x0, n, z = x0.to(device), n.to(device), z.to(device)
        s_hi, s_lo = sigmas[n + 1], sigmas[n]
        x_hi = x0 + s_hi.view(-1, 1, 1, 1) * z
        with torch.no_grad():
            a_hi = ab[n + 1].float().view(-1, 1, 1, 1)
            d_hi = prior.denoise(a_hi.sqrt() * x_hi, ladder[n + 1])
            x_lo = x_hi + ((s_lo - s_hi) / s_hi).view(-1, 1, 1, 1) * (x_hi - d_hi)
            y_target = karras_consistency(target, x_lo, s_lo, sigma_min, sigma_data)
        y_online = karras_consistency(student, x_hi, s_hi, sigma_min, sigma_data)
        return torch.nn.functional.mse_loss(y_online, y_target)

    pipeline = ConsistencyModelPipeline(unet=student, scheduler=scheduler)
    stage = Stage("student", {"student": student, "target": target}, loss, steps, lr=lr, ema_decay=0.999)
    return [stage], pipeline
