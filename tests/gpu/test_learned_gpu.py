"""Learned priors on CUDA (skipped without a GPU): same outputs as on the CPU, chains batched, no autograd.

The half-precision check on CUDA is a case of ``tests/kernels/test_learned_priors.py::test_half_precision_lcm_changes_no_latino_figure``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uqcampaign.kernels.priors.registry import build_prior

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
REPO = Path(__file__).resolve().parents[2]


def test_diffusion_prior_on_cuda_matches_cpu() -> None:
    prior = build_prior({"kind": "diffusion", "path": "priors/gmm8-diffusion"}, REPO)
    gpu = prior.to("cuda")
    x = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu_out = prior.denoise(x, 30)
        gpu_out = gpu.denoise(x.cuda(), 30)
    assert gpu_out.device.type == "cuda" and not gpu_out.requires_grad
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=1e-3, atol=1e-4)


def test_latino_with_latent_prior_on_cuda() -> None:
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.samplers.latino import LatinoConfig, LatinoSampler
    from uqcampaign.kernels.training.datasets import held_out_measurements

    prior = build_prior({"kind": "latent-consistency", "path": "priors/digits16-lcm", "prompt": "a handwritten digit"}, REPO).to("cuda")
    cpu_operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, (1, 16, 16))
    _, y, _ = held_out_measurements(cpu_operator, 0.05, 1)
    operator = cpu_operator.to("cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        (draw,) = list(LatinoSampler(LatinoConfig(steps=8)).run(y[0].cuda(), operator, prior, 0.05, 64, 1, generator))
    assert draw.x.shape == (64, 1, 16, 16) and draw.x.device.type == "cuda" and draw.nfe == 8

