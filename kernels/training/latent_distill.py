"""Recipe for a distilled ``latent-consistency`` prior: latent consistency distillation (Luo et al. 2023, Alg. 1).

The teacher is a latent ε-model folder (what :mod:`~uqcampaign.kernels.training.latent` trains,
e.g. ``priors/digits16-ldm``). The student is the teacher's ``UNet2DConditionModel`` with a
guidance-scale embedding (``time_cond_proj_dim``), initialised from the teacher's weights, and
is trained so that two points of one guided probability-flow ODE trajectory map to the same ``z_0``
(as diffusers' ``train_lcm_distill_sd_wds.py``)::

    t_n ∈ {k−1, 2k−1, …, T−1} (k = T / ddim_steps),  s = max(t_n − k, 0),  w ~ U[w_min, w_max]
    z_{t_n} = sqrt(ᾱ_{t_n}) z_0 + sqrt(1−ᾱ_{t_n}) ε
    x̂_0, ε̂  = (1 + w) teacher(z_{t_n}, c) − w teacher(z_{t_n}, c_∅)               (guided teacher)
    z_s     = sqrt(ᾱ_s) x̂_0 + sqrt(1−ᾱ_s) ε̂                                       (one DDIM step)
    f_θ(z, t, w, c) = c_skip(t) z + c_out(t) x̂_0(ε_θ(z, t, w, c))                  (LCM boundary scalings)
    loss    = || f_θ(z_{t_n}, t_n, w, c) − f_θ⁻(z_s, s, w, c) ||²,  θ⁻ ← μ θ⁻ + (1 − μ) θ (stop-gradient target)

``c`` is a class prompt ``"a handwritten digit seven"`` (80%) or the generic ``"a handwritten digit"``
(20%), ``c_∅`` the generic prompt. The VAE, tokenizer, text encoder and scheduler are the teacher's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from uqcampaign.kernels.errors import require
from uqcampaign.kernels.training.consistency import update_target
from uqcampaign.kernels.training.loop import Stage

__all__ = ["latent_distillation_stages", "GUIDANCE_DIM"]

GUIDANCE_DIM = 32  # width of the guidance-scale embedding (SD-1.5's LCM uses 256)
_TARGET_DECAY = 0.95
_GENERIC_FRACTION = 0.2


def latent_distillation_stages(dataset_name: str, steps: int, batch_size: int, lr: float, device: torch.device,
                               teacher: str | None = None, ddim_steps: int = 50, w_min: float = 0.0,
                               w_max: float = 2.0) -> tuple[list[Stage], Any]:
    """One distillation stage; returns ``([stage], LatentConsistencyModelPipeline)``.

    ``teacher``: a latent-consistency folder holding an ε-model; ``ddim_steps``: the teacher's
    solver ladder (skip ``k = T / ddim_steps``); ``w`` ~ U[w_min, w_max] is the guidance weight
    (``guidance_scale = 1 + w`` at sampling time).
    """
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from uqcampaign.kernels.priors.diffusion import tweedie_x0
    from uqcampaign.kernels.priors.latent_consistency import guidance_embedding, lcm_consistency
    from uqcampaign.kernels.priors.latent_loading import load_latent_consistency_prior
    from uqcampaign.kernels.training.datasets import digits16
    from uqcampaign.kernels.training.latent import prompt_embeddings, training_latent_means

    require(teacher is not None, "latent consistency distillation needs teacher=<latent ε-model folder> (e.g. priors/digits16-ldm)")
    require(dataset_name == "digits16", f"latent consistency distillation runs on the teacher's data set digits16, got {dataset_name!r}")
    require(isinstance(ddim_steps, int) and ddim_steps >= 2, f"ddim_steps = {ddim_steps!r} must be an integer >= 2")
    require(0.0 <= w_min <= w_max, f"guidance weights w_min = {w_min!r}, w_max = {w_max!r} must satisfy 0 <= w_min <= w_max")
    folder = Path(teacher)
    prior = load_latent_consistency_prior({"kind": "latent-consistency", "path": str(folder)}, None)  # checks the folder
    require(prior.prediction_type == "epsilon" and prior.unet.config.time_cond_proj_dim is None,
            f"teacher {str(folder)!r} must be a plain ε-prediction latent model (no guidance embedding)")
    vae, teacher_unet, scheduler = prior.vae.to(device), prior.unet.to(device), prior.scheduler  # frozen, eval mode
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True, local_files_only=True)
    text_encoder = text_encoder.to(device).eval().requires_grad_(False)

    student = UNet2DConditionModel.from_config({**teacher_unet.config, "time_cond_proj_dim": GUIDANCE_DIM})
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    require(not unexpected and all("time_embedding.cond_proj" in key for key in missing),
            f"teacher UNet does not fit the student: missing {missing}, unexpected {unexpected}")
    student = student.to(device).train()
    target = copy.deepcopy(student).requires_grad_(False)

    latents = training_latent_means(vae, device) * vae.config.scaling_factor
    embeddings = prompt_embeddings(tokenizer, text_encoder)
    _, labels = digits16("train")
    alphas = scheduler.alphas_cumprod.to(device)
    T = int(alphas.shape[0])
    skip = T // ddim_steps
    ladder = (torch.arange(1, ddim_steps + 1) * skip - 1).to(device)  # t_n = k−1, 2k−1, …, T−1

    def consistency(unet: Any, z: torch.Tensor, t: torch.Tensor, w_emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return lcm_consistency(unet, scheduler, alphas, z, t, cond, w_emb, "epsilon")

    def loss(generator: torch.Generator, step: int) -> torch.Tensor:
        if step > 0:
            update_target(target, student, _TARGET_DECAY)
        index = torch.randint(0, latents.shape[0], (batch_size,), generator=generator)
        generic = torch.rand(batch_size, generator=generator) < _GENERIC_FRACTION
        prompt = torch.where(generic, torch.full_like(labels[index], 10), labels[index]).to(device)
        n = torch.randint(0, ddim_steps, (batch_size,), generator=generator).to(device)
        w = (w_min + (w_max - w_min) * torch.rand(batch_size, generator=generator)).to(device)
        noise = torch.randn((batch_size, *latents.shape[1:]), generator=generator).to(device)
        z0, cond, uncond = latents[index.to(device)], embeddings[prompt], embeddings[10].expand(batch_size, -1, -1)
        t_n = ladder[n]
        s = (t_n - skip).clamp(min=0)
        ab_n = alphas[t_n].view(-1, 1, 1, 1)
        z_n = ab_n.sqrt() * z0 + (1.0 - ab_n).sqrt() * noise
        w_emb = guidance_embedding(w, GUIDANCE_DIM)
        with torch.no_grad():
            eps_pair = teacher_unet(torch.cat([z_n, z_n]), torch.cat([t_n, t_n]),
                                    encoder_hidden_states=torch.cat([cond, uncond])).sample
            eps_c, eps_u = eps_pair.chunk(2)
            x0_c, x0_u = tweedie_x0(z_n, eps_c, ab_n, "epsilon"), tweedie_x0(z_n, eps_u, ab_n, "epsilon")
            wv = w.view(-1, 1, 1, 1)
            x0_hat, eps_hat = x0_c + wv * (x0_c - x0_u), eps_c + wv * (eps_c - eps_u)
            ab_s = alphas[s].view(-1, 1, 1, 1)
            z_s = ab_s.sqrt() * x0_hat + (1.0 - ab_s).sqrt() * eps_hat
            y_target = consistency(target, z_s, s, w_emb, cond)
        y_online = consistency(student, z_n, t_n, w_emb, cond)
        return torch.nn.functional.mse_loss(y_online, y_target)

    pipeline = LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=student,
                                              scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    stage = Stage("student", {"student": student, "target": target}, loss, steps, lr=lr, ema_decay=0.999)
    return [stage], pipeline
