"""Learned priors (issue 6): offline safetensors loading, the Tweedie denoiser, one-line errors.

Model folders are tiny untrained networks written with ``save_pretrained`` into ``tmp_path``;
the shipped priors under ``priors/`` are loaded as a user would (``build_prior``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.priors.registry import build_prior

REPO = Path(__file__).resolve().parents[2]


def tiny_diffusion_folder(folder: Path, prediction_type: str = "epsilon", size: int = 8) -> tuple:
    """A seeded untrained ``UNet2DModel`` + ``DDPMScheduler`` saved as a ``DDPMPipeline`` folder."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=4)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(folder), safe_serialization=True)
    return unet, scheduler


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("learned") / "tiny-diffusion"
    tiny_diffusion_folder(folder)
    return folder


def one_line_error(spec: dict, root: Path | None = None) -> str:
    with pytest.raises(UQError) as info:
        build_prior(spec, root)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# ---------------------------------------------------------------------------- diffusion prior


def test_diffusion_reload_is_bit_identical_offline(diffusion_dir: Path, monkeypatch) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    from uqcampaign.kernels.priors.diffusion import DiffusionPrior

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    prior = build_prior({"kind": "diffusion", "path": diffusion_dir.name}, diffusion_dir.parent)
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the loader went offline by itself
    assert prior.img_shape == (1, 8, 8) and prior.alphas_cumprod.dtype == torch.float64
    assert prior.alphas_cumprod.shape == (1000,)
    torch.manual_seed(0)
    # a hub-layout folder without training.json: the network's range is [-1, 1] (hub pixel models)
    assert prior.pixel_range.data_range == (-1.0, 1.0) and prior.describe()["data_range"] == [-1.0, 1.0]
    reference = DiffusionPrior(UNet2DModel.from_pretrained(diffusion_dir / "unet"), DDPMScheduler.from_pretrained(diffusion_dir / "scheduler"),
                               pixel_range=prior.pixel_range)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 10, 200, 500, 999])
    with torch.no_grad():
        assert torch.equal(prior.denoise(x, t), reference.denoise(x, t))
    # a second save/load round trip keeps every weight bit for bit
    second = diffusion_dir.parent / "again"
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=prior.unet, scheduler=prior.scheduler).save_pretrained(str(second), safe_serialization=True)
    again = build_prior({"kind": "diffusion", "path": str(second)})
    with torch.no_grad():
        assert torch.equal(again.denoise(x, t), prior.denoise(x, t))
    assert prior.describe()["kind"] == "diffusion" and json.dumps(prior.describe())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_tweedie_formula_inverts_the_noising(prediction_type: str) -> None:
    """Fed the true ε (or v, or x0), the conversion returns x0 exactly: E[x0|x_t] for a perfect network."""
    from uqcampaign.kernels.priors.diffusion import tweedie_x0

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    ab = torch.tensor([0.999, 0.7, 0.2, 1e-3], dtype=torch.float64).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = {"epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(tweedie_x0(x_t, out, ab, prediction_type), x0, rtol=1e-10, atol=1e-10)


def test_denoise_batches_timesteps_and_casts_dtype(diffusion_dir: Path) -> None:
    prior = build_prior({"kind": "diffusion", "path": str(diffusion_dir)})
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 300, 900])
    with torch.no_grad():
        batched = prior.denoise(x, t)
        single = torch.cat([prior.denoise(x[i : i + 1], int(t[i])) for i in range(3)])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
        as64 = prior.denoise(x.double(), t)
    assert as64.dtype == torch.float64 and batched.dtype == torch.float32
    torch.testing.assert_close(as64.float(), batched, rtol=1e-5, atol=1e-6)
    assert prior.consistency(x, 100).shape == x.shape
    moved = prior.to(dtype=torch.float64)
    assert moved is not prior and moved.dtype == torch.float64 and prior.dtype == torch.float32
    assert prior.to("cpu") is prior


def test_autograd_only_when_the_caller_asks(diffusion_dir: Path) -> None:
    """ULA/LATINO get no graph; DPS's x_t.requires_grad gives a vector-Jacobian product, no parameter grads."""
    prior = build_prior({"kind": "diffusion", "path": str(diffusion_dir)})
    x = torch.randn(2, 1, 8, 8)
    assert not prior.denoise(x, 50).requires_grad
    assert not any(p.requires_grad for p in prior.unet.parameters())
    x.requires_grad_(True)
    loss = prior.denoise(x, 50).square().sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------------------- one-line errors


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    message = one_line_error({"kind": "diffusion", "path": "nowhere"}, tmp_path)
    assert "nowhere" in message and "does not exist" in message
    (tmp_path / "weights.npz").write_bytes(b"")
    message = one_line_error({"kind": "diffusion", "path": "weights.npz"}, tmp_path)
    assert "weights.npz' is a file, not a model folder" in message


def test_folder_of_another_kind_is_refused(diffusion_dir: Path, tmp_path: Path) -> None:
    message = one_line_error({"kind": "latent-consistency", "path": str(diffusion_dir)})
    assert "DDPMPipeline" in message
    # a pipeline index that claims DDPM but whose unet is another class
    fake = tmp_path / "fake"
    shutil.copytree(diffusion_dir, fake)
    config = json.loads((fake / "unet" / "config.json").read_text())
    config["_class_name"] = "UNet2DConditionModel"
    (fake / "unet" / "config.json").write_text(json.dumps(config))
    assert "UNet2DConditionModel" in one_line_error({"kind": "diffusion", "path": str(fake)})
    # a folder without model_index.json (not written by save_pretrained)
    (tmp_path / "empty").mkdir()
    assert "model_index.json" in one_line_error({"kind": "diffusion", "path": str(tmp_path / "empty")})


class _Tripwire:
    """Unpickling this writes a marker file: proof that a pickle was (or was not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickle_weight_file_is_never_opened_and_refused_alone(diffusion_dir: Path, tmp_path: Path) -> None:
    """A .bin beside a usable .safetensors is ignored (never unpickled); a loaded component with only a .bin is refused."""
    import pickle

    folder, marker = tmp_path / "pickled", tmp_path / "unpickled.txt"
    shutil.copytree(diffusion_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(marker)))
    build_prior({"kind": "diffusion", "path": str(folder)})
    assert not marker.exists()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    message = one_line_error({"kind": "diffusion", "path": str(folder)})
    assert "diffusion_pytorch_model.bin" in message and "pickle" in message and not marker.exists()


def test_image_size_that_does_not_fit_is_refused(diffusion_dir: Path) -> None:
    """Any size the UNet takes runs (multiples of its downsampling factor 2); others are refused up front, naming the allowed sizes."""
    message = one_line_error({"kind": "diffusion", "path": str(diffusion_dir), "img_shape": [1, 15, 16]})
    assert "H = 15" in message and "multiples of 2" in message and "(14 or 16 here)" in message
    assert "3 channels" in one_line_error({"kind": "diffusion", "path": str(diffusion_dir), "img_shape": [3, 16, 16]})
    wide = build_prior({"kind": "diffusion", "path": str(diffusion_dir), "image_size": [16, 24]})
    assert wide.img_shape == (1, 16, 24) and wide.denoise(torch.zeros(2, 1, 16, 24), 10).shape == (2, 1, 16, 24)
    prior = build_prior({"kind": "diffusion", "path": str(diffusion_dir), "image_size": 8})
    with pytest.raises(UQError) as info:
        prior.denoise(torch.zeros(2, 1, 16, 16), 10)
    assert "\n" not in str(info.value)
    with pytest.raises(UQError):
        prior.denoise(torch.zeros(2, 1, 8, 8), 1000)  # timestep outside the schedule


# ---------------------------------------------------------------------------- latent consistency


def tiny_lcm_folder(folder: Path) -> None:
    """A seeded untrained tiny LCM pipeline (VAE, conditioned UNet, CLIP, tokenizer) saved with save_pretrained."""
    import tempfile

    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    from uqcampaign.kernels.training.models import tiny_autoencoder, tiny_clip, tiny_cond_unet, write_tiny_clip_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = tiny_clip(len(tokenizer))
    pipe = LatentConsistencyModelPipeline(
        vae=tiny_autoencoder((1, 16, 16)), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=tiny_cond_unet((4, 8, 8), text_encoder.config.hidden_size),
        scheduler=LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)


@pytest.fixture(scope="module")
def lcm_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("learned") / "tiny-lcm"
    tiny_lcm_folder(folder)
    return folder


def test_tiny_clip_tokenizer_knows_the_prompts(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from uqcampaign.kernels.training.models import write_tiny_clip_tokenizer

    write_tiny_clip_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    ids = tokenizer("a handwritten digit seven").input_ids
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 1
    assert len(ids) == 6 and tokenizer.unk_token_id not in ids  # one token per word
    assert tokenizer("a handwritten digit three").input_ids != ids


def test_latent_consistency_reload_and_interface(lcm_dir: Path) -> None:
    spec = {"kind": "latent-consistency", "path": lcm_dir.name, "prompt": "a handwritten digit seven"}
    prior = build_prior(spec, lcm_dir.parent)
    again = build_prior(spec, lcm_dir.parent)
    assert prior.is_latent and prior.img_shape == (1, 16, 16) and prior.latent_shape == (4, 8, 8)
    assert prior.condition.shape[0] == 1 and prior.alphas_cumprod.dtype == torch.float64
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = prior.encode(x)
        assert z.shape == (3, 4, 8, 8) and prior.decode(z).shape == x.shape
        z0 = prior.consistency(z, torch.tensor([10, 500, 999]))
        assert torch.equal(z0, again.consistency(z, torch.tensor([10, 500, 999])))
    other = build_prior({**spec, "prompt": "a handwritten digit three"}, lcm_dir.parent)
    assert not torch.equal(other.condition, prior.condition)
    assert "multiples of 2" in one_line_error({**spec, "img_shape": [1, 9, 9]}, lcm_dir.parent)
    assert "LatentConsistencyModelPipeline" in one_line_error({"kind": "diffusion", "path": str(lcm_dir)})
    with pytest.raises(UQError):
        prior.denoise(x, 10)


# ---------------------------------------------------------------------------- shipped priors


@pytest.mark.parametrize("name, kind", [("gmm8-diffusion", "diffusion"), ("digits16-ldm", "latent-consistency"), ("digits16-lcm", "latent-consistency"),
                                        ("gmm8-cm", "consistency")])
def test_shipped_prior_loads_offline_and_is_small(name: str, kind: str) -> None:
    folder = REPO / "priors" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not shipped")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    assert not list(folder.rglob("*.bin")) and not (folder / "checkpoint").exists()
    prior = build_prior({"kind": kind, "path": f"priors/{name}"}, REPO)
    assert prior.kind == kind and json.loads((folder / "training.json").read_text())["command"].startswith("uqc train-prior")


# ---------------------------------------------------------------------------- consistency prior


def test_consistency_prior_reload_and_boundary_condition(tmp_path: Path) -> None:
    """A ``ConsistencyModelPipeline`` folder reloads bit-identically; at σ ≈ σ_min the map is the identity."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=4)
    ConsistencyModelPipeline(unet=unet, scheduler=CMStochasticIterativeScheduler()).save_pretrained(str(tmp_path / "cm"), safe_serialization=True)
    prior = build_prior({"kind": "consistency", "path": "cm"}, tmp_path)
    again = build_prior({"kind": "consistency", "path": str(tmp_path / "cm")})
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 50, 500, 999])
    with torch.no_grad():
        out = prior.consistency(x, t)
        assert torch.equal(out, again.consistency(x, t)) and torch.equal(prior.denoise(x, t), out)
        # t = 0: σ = sqrt((1-ᾱ_0)/ᾱ_0) = 0.01, c_skip ≈ 1 - 1.6e-4, c_out ≈ 0.016: f ≈ x / sqrt(ᾱ'_0) in campaign
        # units ([0, 1] mapped to the hub range [-1, 1]), clamped to [0, 1] (clip_denoised: true, diffusers' default)
        ab0 = float(prior.alphas_cumprod[0])
        torch.testing.assert_close(out[0], (x[0] / ab0**0.5).clamp(0, 1), rtol=0, atol=0.05)
    assert "ConsistencyModelPipeline" in one_line_error({"kind": "diffusion", "path": str(tmp_path / "cm")})
    assert "multiples of 2" in one_line_error({"kind": "consistency", "path": str(tmp_path / "cm"), "image_size": 15})


# ---------------------------------------------------------------------------- learned vs exact (issue 6, Done-when 1)

GMM8_LEVELS = (3, 10, 30, 100, 250, 500)  # VP steps; equivalent noise std 0.023 ... 3.4


@pytest.fixture(scope="module")
def gmm8_pair():
    """``(exact gmm8 prior, shipped learned diffusion prior trained on its samples)``."""
    from uqcampaign.kernels.training.datasets import gmm8_prior

    folder = REPO / "priors" / "gmm8-diffusion"
    if not folder.is_dir():
        pytest.skip("priors/gmm8-diffusion not shipped")
    return gmm8_prior(), build_prior({"kind": "diffusion", "path": "priors/gmm8-diffusion"}, REPO)


def test_learned_denoiser_mse_against_exact_gmm_denoiser(gmm8_pair) -> None:
    """E||D_learned − D_exact||² / E||x0 − D_exact||² (the exact MMSE) at six noise levels.

    Measured with the shipped model (2000 draws): 0.011, 0.021, 0.035, 0.024, 0.042, 0.063; an untrained
    network gives > 1. (At t = 800, σ ≈ 26, ε-prediction amplifies its error by 1/sqrt(ᾱ): 3.6.)
    """
    exact, learned = gmm8_pair
    g = torch.Generator().manual_seed(0)
    x0 = exact.sample(1000, g)
    for t in GMM8_LEVELS:
        ab = float(exact.alphas_cumprod[t])
        x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        with torch.no_grad():
            d_exact, d_learned = exact.denoise(x_t, t), learned.denoise(x_t, t).double()
        relative = float((d_learned - d_exact).square().mean() / (x0 - d_exact).square().mean())
        assert relative < 0.15, f"t = {t}: relative excess MSE {relative:.3f}"


def _judge(samples: torch.Tensor, posterior) -> tuple[float, float]:
    """``(SW to exact posterior draws / SW between two exact sets of the same size, exact mass of the 90% intervals)``."""
    from uqcampaign.kernels.metrics import equal_tailed_interval, sliced_wasserstein

    samples, n = samples.double(), samples.shape[0]
    reference = posterior.sample(n, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(reference, posterior.sample(n, torch.Generator().manual_seed(2)), 128)
    lower, upper = equal_tailed_interval(samples, 0.9)
    return sliced_wasserstein(samples, reference, 128) / floor, float(posterior.interval_mass(lower, upper).mean())


@pytest.mark.slow
def test_ula_dps_and_tds_with_learned_prior_match_the_exact_denoiser(gmm8_pair) -> None:
    """ULA, DPS and TDS on an inpainting problem (half the pixels, σ = 0.05): learned prior vs exact denoiser.

    Same sampler settings and seeds for both priors; the learned run must be as close to the
    exact posterior as the exact-denoiser run (SW ratio within 30% + 0.3, interval mass within 0.05).
    Measured (these settings): ULA exact 1.15 / 0.914, learned 1.35 / 0.911;
    DPS (100 steps, ζ = 0.3, 128 draws) exact 1.29 / 0.593, learned 1.41 / 0.611 (DPS is under-dispersed either way);
    TDS (8 runs × 32 particles, 250 steps, 128 draws of the 256 particles) exact 1.60 / 0.873, learned 1.89 / 0.876:
    TDS keeps the 90% intervals at 0.85–0.95 of the exact mass with the learned prior, which DPS does not.
    """
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.samplers.dps import DPSConfig, DPSSampler
    from uqcampaign.kernels.samplers.smc.sampler import TDSConfig, TDSSampler
    from uqcampaign.kernels.samplers.ula import ULAConfig, ULASampler

    exact, learned = gmm8_pair
    sigma = 0.05
    operator = build_operator({"kind": "inpaint", "fraction": 0.5, "seed": 0}, (1, 8, 8))
    x_true = exact.sample(1, torch.Generator().manual_seed(11))[0]
    y = operator.A(x_true[None].float())[0] + sigma * torch.randn(operator.obs_shape, generator=torch.Generator().manual_seed(12))
    posterior = exact.posterior(operator, y.double(), sigma)
    runs = {  # (sampler, chains, draws): 256 ULA draws, 128 DPS and TDS draws
        # the same start for both priors (pinv(y)): the comparison is of the denoisers alone
        "ula": (ULASampler(ULAConfig(burn_in=1000, thin=100, epsilon=0.0025, box=None, init="pinv")), 16, 16),
        "dps": (DPSSampler(DPSConfig(zeta=0.3, steps=100)), 128, 1),
        "tds": (TDSSampler(TDSConfig(runs=8, particles=32, steps=250)), 128, 1),
    }
    for name, (sampler, chains, draws) in runs.items():
        figures = {}
        for label, prior in (("exact", exact.to(dtype=torch.float32)), ("learned", learned)):
            draws_ = [d.x for d in sampler.run(y.float(), operator, prior, sigma, chains, draws, torch.Generator().manual_seed(5))]
            figures[label] = _judge(torch.cat(draws_), posterior)
        (sw_exact, mass_exact), (sw_learned, mass_learned) = figures["exact"], figures["learned"]
        print(f"{name}: SW/floor exact {sw_exact:.2f} learned {sw_learned:.2f}; 90% mass exact {mass_exact:.3f} learned {mass_learned:.3f}")
        assert sw_learned <= 1.3 * sw_exact + 0.3, f"{name}: SW/floor learned {sw_learned:.2f} vs exact denoiser {sw_exact:.2f}"
        assert abs(mass_learned - mass_exact) <= 0.05, f"{name}: 90% mass learned {mass_learned:.3f} vs exact denoiser {mass_exact:.3f}"
        if name == "ula":  # ULA is asymptotically exact up to ε: both runs must be near the floor
            assert sw_exact < 1.5 and sw_learned < 2.0 and 0.85 < mass_learned < 0.95, figures
        if name == "tds":  # asymptotically exact too; these few particles leave it wider of the floor than ULA
            assert sw_exact < 2.0 and 0.85 < mass_learned < 0.95, figures


def test_latino_with_shipped_latent_consistency_prior_beats_pinv_and_spreads() -> None:
    """LATINO with the inpainting example's settings (8 consistency calls per draw, δ = 0.01, t = 999 … 124)
    on two held-out digits, 16 chains × 4 draws each.

    Measured on validation digits (benchmarks/sweep_latino_digits.py, 8 digits × 64 draws): PSNR of the
    posterior mean ≈ 24 dB vs 10 dB for pinv; 90% interval pixel coverage ≈ 0.69 at δ = 0.01 against
    0.43 at δ = 0.1 (which fails the coverage check); the undistilled teacher ``priors/digits16-ldm``
    reaches 0.66 at δ = 0.01.
    """
    from uqcampaign.kernels.metrics import interval_coverage, psnr
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.samplers.registry import build_sampler
    from uqcampaign.kernels.training.datasets import held_out_measurements

    if not (REPO / "priors" / "digits16-lcm").is_dir():
        pytest.skip("priors/digits16-lcm not shipped")
    example = yaml.safe_load((REPO / "examples" / "digits-inpaint-latino.yaml").read_text())
    prior = build_prior(example["prior"], REPO / "examples")
    operator = build_operator(example["operator"], (1, 16, 16))
    x, y, _ = held_out_measurements(operator, 0.05, 2)
    sampler = build_sampler(example["sampler"])
    coverage = []
    for m in range(2):
        with torch.no_grad():
            draws = list(sampler.run(y[m], operator, prior, 0.05, 16, 4, torch.Generator().manual_seed(m)))
        assert all(d.nfe == 8 for d in draws) and draws[0].x.shape == (16, 1, 16, 16)
        samples = torch.cat([d.x for d in draws])  # (64, 1, 16, 16)
        mean_psnr = float(psnr(samples.mean(0, keepdim=True).clamp(0, 1), x[m : m + 1]))
        pinv_psnr = float(psnr(operator.pinv(y[m : m + 1]).clamp(0, 1), x[m : m + 1]))
        assert mean_psnr > pinv_psnr + 10.0, f"digit {m}: posterior mean {mean_psnr:.1f} dB vs pinv {pinv_psnr:.1f} dB"
        coverage.append(interval_coverage(samples, x[m], 0.9))
    assert sum(coverage) / 2 > 0.55, f"90% interval pixel coverage {coverage}"


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device, dtype", [("cpu", torch.bfloat16), ("cpu", torch.float16),
                                           pytest.param("cuda", torch.float16, marks=[pytest.mark.gpu, _CUDA])])
def test_half_precision_lcm_changes_no_latino_figure(device: str, dtype: torch.dtype) -> None:
    """The LCM networks in half precision (chains, Tweedie/LCM formulas and prox stay float32) give LATINO
    the same PSNR and 90% coverage as float32 on the same device, on two held-out digits with the
    inpainting example's settings. Campaigns keep float32 networks until the CUDA case has run on a GPU.

    Measured on 4 digits × 128 draws: float32 25.558 dB / 0.750, bfloat16 25.591 / 0.759, float16 25.556 /
    0.751. Before the LCM boundary scalings were computed in float64, float16 gave 12.8 dB / 0.0
    ((10 t)² overflows float16), which this test catches.
    """
    from uqcampaign.kernels.metrics import interval_coverage, psnr
    from uqcampaign.kernels.operators import build_operator
    from uqcampaign.kernels.samplers.registry import build_sampler
    from uqcampaign.kernels.training.datasets import held_out_measurements

    if not (REPO / "priors" / "digits16-lcm").is_dir():
        pytest.skip("priors/digits16-lcm not shipped")
    example = yaml.safe_load((REPO / "examples" / "digits-inpaint-latino.yaml").read_text())
    prior = build_prior(example["prior"], REPO / "examples")
    operator, sampler = build_operator(example["operator"], (1, 16, 16)), build_sampler(example["sampler"])
    x, y, _ = held_out_measurements(operator, 0.05, 2)
    operator, y = operator.to(device), y.to(device)
    figures = {}
    for model in (prior.to(device), prior.to(device, dtype=dtype)):
        scores = []
        for m in range(2):
            generator = torch.Generator(device=device).manual_seed(m)
            with torch.no_grad():
                samples = torch.cat([d.x for d in sampler.run(y[m], operator, model, 0.05, 16, 2, generator)]).cpu()
            assert samples.dtype == torch.float32
            scores.append([float(psnr(samples.mean(0, keepdim=True), x[m : m + 1])), interval_coverage(samples, x[m], 0.9)])
        figures[model.dtype] = torch.tensor(scores).mean(0).tolist()
    (psnr32, cov32), (psnr_half, cov_half) = figures[torch.float32], figures[dtype]
    assert abs(psnr_half - psnr32) < 0.1 and abs(cov_half - cov32) < 0.03, figures
