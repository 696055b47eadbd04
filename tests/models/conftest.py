"""Model folders in the exact layouts users download from the hub, with tiny random weights.

Every folder is written by the diffusers / transformers class a hub model is saved with
(``save_pretrained``), so the file names, ``model_index.json`` and configs are the hub's:

=================  ===============================================================  ===========================
name               layout                                                           hub model it stands for
=================  ===============================================================  ===========================
ddpm               DDPMPipeline, 3×32×32, DDPMScheduler (linear, clip_sample)       google/ddpm-cifar10-32
ddim               DDIMPipeline + DDIMScheduler                                     (DDIM re-saves of the same)
ddpm-v             DDPMPipeline, v-prediction                                       v-prediction pixel models
ddpm-cosine        DDPMPipeline, squaredcos_cap_v2 (cosine) schedule                improved-DDPM models
cm                 ConsistencyModelPipeline, unconditional                          openai/diffusers-cd_bedroom256_*
cm-class           ConsistencyModelPipeline, num_class_embeds = 10                  openai/diffusers-cd_imagenet64_l2
lcm                LatentConsistencyModelPipeline, slow-tokenizer files only,       SimianLuo/LCM_Dreamshaper_v7
                   safety_checker null
sd15               StableDiffusionPipeline (PNDMScheduler), a safety_checker/       stable-diffusion-v1-5
                   holding only a pickle (.bin) that must never be opened
sd15-lora/         an LCM-LoRA for sd15, made with peft, saved by save_lora_weights latent-consistency/lcm-lora-sdv1-5
sdxl               StableDiffusionXLPipeline (EulerDiscreteScheduler), 2 encoders    stabilityai/stable-diffusion-xl-base-1.0
sdxl-lcm-unet      a bare distilled SDXL UNet with a guidance embedding             latent-consistency/lcm-sdxl
ddpm-fp16          the ddpm pipeline saved with variant="fp16" only (float16)       *.fp16.safetensors downloads
hub-cache/         models--tiny--ddpm/{refs/main, blobs/, snapshots/<rev>/}         ~/.cache/huggingface/hub
=================  ===============================================================  ===========================

The set is built once per test session (:func:`hub_layouts`); tests must not modify it (copy first).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

TOKENIZER_MAX = 16
HIDDEN = 32


class Tripwire:
    """Unpickling this writes a marker file: proof that a pickle was (or was not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _pixel_unet(channels: int, size: int, num_class_embeds: int | None = None):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=4, num_class_embeds=num_class_embeds)


def _slow_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer as hub SD/LCM folders ship it: vocab.json, merges.txt, special_tokens_map.json,
    tokenizer_config.json (no tokenizer.json)."""
    from uqcampaign.kernels.training.models import write_tiny_clip_tokenizer

    write_tiny_clip_tokenizer(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|unk|>"}))


def _tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    _slow_tokenizer(tmp)
    return CLIPTokenizer.from_pretrained(str(tmp))


def _text_config(vocab: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=TOKENIZER_MAX, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, projection_dim=HIDDEN)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=16, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4)


def _sd_unet(time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                norm_num_groups=8, cross_attention_dim=HIDDEN, attention_head_dim=4, time_cond_proj_dim=time_cond_proj_dim)


def _sdxl_unet(time_cond_proj_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                norm_num_groups=8, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=8 * 6 + HIDDEN, cross_attention_dim=2 * HIDDEN,
                                time_cond_proj_dim=time_cond_proj_dim)


def _sd_scheduler():
    from diffusers import PNDMScheduler

    # stable-diffusion-v1-5's scheduler_config.json
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


def _write_lora(base_unet, out: Path) -> None:
    """An LCM-LoRA-like adapter of ``base_unet``'s attention projections, made with peft, saved as diffusers does."""
    import copy

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(base_unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights="gaussian"))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)


def _hub_cache(source: Path, cache: Path, repo: str, revision: str = "0" * 39 + "1") -> Path:
    """Copy ``source`` into a hub-cache repo folder as huggingface_hub lays it out: blobs named by sha256,
    snapshot files as relative symlinks to them, ``refs/main`` naming the snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return root


def build_layouts(base: Path) -> dict[str, Path]:
    """Write every layout of the module docstring under ``base``; returns name -> folder."""
    from diffusers import (
        CMStochasticIterativeScheduler,
        ConsistencyModelPipeline,
        DDIMPipeline,
        DDIMScheduler,
        DDPMPipeline,
        DDPMScheduler,
        EulerDiscreteScheduler,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out: dict[str, Path] = {}

    def save(name: str, pipe, **kwargs) -> None:
        out[name] = base / name
        pipe.save_pretrained(str(out[name]), safe_serialization=True, **kwargs)

    torch.manual_seed(0)
    ddpm = DDPMPipeline(unet=_pixel_unet(3, 32), scheduler=DDPMScheduler(num_train_timesteps=1000))  # clip_sample: true
    save("ddpm", ddpm)
    save("ddim", DDIMPipeline(unet=_pixel_unet(3, 32), scheduler=DDIMScheduler(num_train_timesteps=1000)))
    save("ddpm-v", DDPMPipeline(unet=_pixel_unet(3, 32), scheduler=DDPMScheduler(prediction_type="v_prediction")))
    save("ddpm-cosine", DDPMPipeline(unet=_pixel_unet(3, 32), scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")))
    cm_scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)  # cd_imagenet64's
    save("cm", ConsistencyModelPipeline(unet=_pixel_unet(3, 32), scheduler=cm_scheduler))
    save("cm-class", ConsistencyModelPipeline(unet=_pixel_unet(3, 32, num_class_embeds=10), scheduler=cm_scheduler))
    ddpm.to(torch.float16)
    save("ddpm-fp16", ddpm, variant="fp16")
    ddpm.to(torch.float32)

    tokenizer = _tokenizer(base / "_tokenizer")
    vocab = len(tokenizer)
    lcm = LatentConsistencyModelPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(vocab)), tokenizer=tokenizer, unet=_sd_unet(time_cond_proj_dim=32),
        scheduler=LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save("lcm", lcm)
    shutil.rmtree(out["lcm"] / "tokenizer")  # the hub folder's tokenizer files: the slow (BPE) ones only
    _slow_tokenizer(out["lcm"] / "tokenizer")
    sd_unet = _sd_unet()
    sd = StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(vocab)), tokenizer=tokenizer, unet=sd_unet,
                                 scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save("sd15", sd)
    # SD-1.5 as downloaded: model_index names a safety checker whose folder holds a pickle (never to be opened)
    index = json.loads((out["sd15"] / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"], feature_extractor=["transformers", "CLIPImageProcessor"],
                 requires_safety_checker=True)
    (out["sd15"] / "model_index.json").write_text(json.dumps(index, indent=2))
    (out["sd15"] / "safety_checker").mkdir()
    (out["sd15"] / "safety_checker" / "config.json").write_text(json.dumps({"architectures": ["StableDiffusionSafetyChecker"]}))
    (out["sd15"] / "safety_checker" / "pytorch_model.bin").write_bytes(pickle.dumps(Tripwire(base / "unpickled.txt")))
    out["sd15-lora"] = base / "sd15-lora"
    _write_lora(sd_unet, out["sd15-lora"])

    sdxl = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(vocab)), text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=_sdxl_unet(),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                         timestep_spacing="leading"))
    save("sdxl", sdxl)
    out["sdxl-lcm-unet"] = base / "sdxl-lcm-unet"
    _sdxl_unet(time_cond_proj_dim=32).save_pretrained(str(out["sdxl-lcm-unet"]), safe_serialization=True)

    out["hub-cache"] = base / "hub-cache"
    _hub_cache(out["ddpm"], out["hub-cache"], "tiny/ddpm")
    shutil.rmtree(base / "_tokenizer")
    return out


@pytest.fixture(scope="session")
def hub_layouts(tmp_path_factory) -> dict[str, Path]:
    """Every layout of the module docstring, built once per session (read-only for the tests)."""
    from uqcampaign.kernels.priors.hf_loading import quiet_loading

    with quiet_loading():
        return build_layouts(tmp_path_factory.mktemp("hub-layouts"))
