"""Loading the ``latent-consistency`` prior from the folders users download.

Accepted ``path`` folders (resolved as :mod:`~uqcampaign.kernels.priors.hf_loading` resolves them):

* ``LatentConsistencyModelPipeline`` (``SimianLuo/LCM_Dreamshaper_v7``; the shipped ``priors/digits16-*``);
* ``StableDiffusionPipeline`` (SD-1.5) and ``StableDiffusionXLPipeline`` (SDXL): the folder's scheduler
  config is turned into an ``LCMScheduler`` (``LCMScheduler.from_config``, as diffusers' LCM-LoRA
  recipe swaps it), with

  - ``lora: FOLDER_OR_FILE``: an LCM-LoRA (``latent-consistency/lcm-lora-sdv1-5``, ``lcm-lora-sdxl``,
    a DMD2 LoRA) loaded by the pipeline's ``load_lora_weights`` and merged by ``fuse_lora``
    (the peft layers are then unloaded, the fused weights kept);
  - ``unet: FOLDER``: a distilled UNet replacing the pipeline's (``latent-consistency/lcm-sdxl``,
    an SD-1.5 LCM UNet, a DMD2 UNet in safetensors).

Only the VAE, UNet, text encoder(s) and tokenizer(s) are read (``safety_checker``/``feature_extractor``
never are, whatever their files); every size and shape is checked from the configs before any weight
is read. The text encoders run once, on the CPU, to embed the prompt, and are then dropped.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from uqcampaign.kernels.errors import UQError, require
from uqcampaign.kernels.priors.diffusion import check_sample_steps
from uqcampaign.kernels.priors.hf_loading import (
    PICKLE_SUFFIXES,
    ModelFolder,
    check_component_class,
    first_line,
    image_shape,
    load_component,
    open_model_folder,
    parse_dtype,
    parse_variant,
    quiet_loading,
    read_json,
    resolve_model_dir,
)
from uqcampaign.kernels.priors.latent_consistency import LatentConsistencyPrior
from uqcampaign.kernels.priors.pixel_loading import pixel_range_of
from uqcampaign.kernels.priors.pixel_range import SYMMETRIC_RANGE
from uqcampaign.kernels.priors.prompts import (
    encode_prompt,
    encode_prompt_sdxl,
    sdxl_time_ids,
)
from uqcampaign.kernels.priors.registry import PRIOR_KEYS, check_keys

__all__ = ["DEFAULT_PROMPT", "LATENT_PIPELINES", "load_latent_consistency_prior"]

LATENT_PIPELINES = ("LatentConsistencyModelPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline")
DEFAULT_PROMPT = "a handwritten digit"
_SDXL = "StableDiffusionXLPipeline"
_LORA_NAMES = ("pytorch_lora_weights.safetensors",)


def _unet_location(spec: dict[str, Any], folder: ModelFolder, root: Path | str | None, kind: str) -> tuple[Path, str]:
    """``(folder, subfolder)`` of the UNet: the pipeline's ``unet/`` or the ``unet`` key's folder (bare or a pipeline's)."""
    if spec.get("unet") is None:
        return folder.root, "unet"
    location = resolve_model_dir(spec["unet"], root, kind, "unet")
    if (location / "config.json").is_file():
        return location, ""
    if (location / "unet" / "config.json").is_file():
        return location, "unet"
    raise UQError(f"prior {kind!r}: unet folder {str(location)!r} holds no config.json (nor unet/config.json); give the distilled UNet's folder")


def _lora_file(spec: dict[str, Any], root: Path | str | None, kind: str) -> Path:
    """The LoRA's ``.safetensors`` file (a file, or a folder holding ``pytorch_lora_weights.safetensors`` or one ``.safetensors``)."""
    location = resolve_model_dir(spec["lora"], root, kind, "lora", allow_file=True)
    if location.is_file():
        require(location.suffix == ".safetensors",
                f"prior {kind!r}: lora file {str(location)!r} is not .safetensors" + (" (a pickle file, refused: it can run code on load)"
                                                                                     if location.suffix.lower() in PICKLE_SUFFIXES else "")
                + "; give the LoRA's .safetensors file or folder")
        return location
    for name in _LORA_NAMES:
        if (location / name).is_file():
            return location / name
    files = sorted(location.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    pickles = sorted(p.name for p in location.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    reason = (f"holds {len(files)} .safetensors files; set lora to one of them" if files else
              f"has only pickle weights ({', '.join(pickles)}), refused (they can run code on load); convert them to .safetensors"
              if pickles else "holds no .safetensors LoRA weights")
    raise UQError(f"prior {kind!r}: lora folder {str(location)!r} {reason}")


def _check_sizes(kind: str, vae_cfg: dict, unet_cfg: dict, encoder_cfgs: list[dict], sdxl: bool) -> None:
    """The components fit each other (configs only): latent channels, cross-attention width, SDXL's added embedding."""
    require(unet_cfg.get("in_channels") == vae_cfg.get("latent_channels"),
            f"prior {kind!r}: the UNet takes {unet_cfg.get('in_channels')} latent channels but the VAE makes "
            f"{vae_cfg.get('latent_channels')}; the unet/lora does not belong to this pipeline")
    width = sum(int(cfg.get("hidden_size", 0)) for cfg in encoder_cfgs)
    require(unet_cfg.get("cross_attention_dim") == width,
            f"prior {kind!r}: the UNet attends to width {unet_cfg.get('cross_attention_dim')} but the text encoder(s) give {width}; "
            "the unet does not belong to this pipeline (SD-1.5 UNets go with SD-1.5 folders, SDXL with SDXL)")
    if sdxl:
        require(unet_cfg.get("addition_embed_type") == "text_time",
                f"prior {kind!r}: an SDXL folder needs a UNet with addition_embed_type 'text_time', got {unet_cfg.get('addition_embed_type')!r}")
        expected = int(unet_cfg.get("addition_time_embed_dim") or 0) * 6 + int(encoder_cfgs[1].get("projection_dim", 0))
        require(unet_cfg.get("projection_class_embeddings_input_dim") == expected,
                f"prior {kind!r}: the UNet's added embedding takes {unet_cfg.get('projection_class_embeddings_input_dim')} inputs, "
                f"6 time ids and the pooled text give {expected}; the unet does not belong to this SDXL folder")
    else:
        require(unet_cfg.get("addition_embed_type") is None,
                f"prior {kind!r}: the UNet needs added conditioning {unet_cfg.get('addition_embed_type')!r} (an SDXL UNet?) "
                "but the folder is not an SDXL pipeline; give an SDXL folder as path")


def _fuse_lora(pipeline_name: str, components: dict[str, Any], lora: Path, kind: str) -> None:
    """Load the LoRA into the components through the pipeline's ``load_lora_weights`` and ``fuse_lora`` them (in place)."""
    import diffusers
    from safetensors.torch import load_file

    cls = diffusers.StableDiffusionXLPipeline if pipeline_name == _SDXL else diffusers.StableDiffusionPipeline
    extra = {} if pipeline_name == _SDXL else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    # a throwaway scheduler: the pipeline's constructor may rewrite its config (steps_offset)
    pipe = cls(**{**components, "scheduler": copy.deepcopy(components["scheduler"])}, **extra)
    try:
        with quiet_loading():
            pipe.load_lora_weights(load_file(str(lora)))
            pipe.fuse_lora()
            pipe.unload_lora_weights()
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise UQError(f"prior {kind!r}: cannot fuse the LoRA {str(lora)!r} into this {pipeline_name}: {first_line(err)}") from None


def load_latent_consistency_prior(spec: dict[str, Any], root: Path | str | None = None) -> LatentConsistencyPrior:
    """A latent consistency model (LCM, SD-1.5 / SDXL + LCM scheduler, + LCM-LoRA or a distilled UNet) as LATINO's prior.

    Reference: Luo et al. 2023, arXiv:2310.04378 (LCM, eq. 9); Luo et al. 2023, arXiv:2311.05556 (LCM-LoRA);
    Spagnoletti et al. 2025, arXiv:2503.12615 (LATINO).

    Keys:
        path: the pipeline folder (relative to the campaign file): LatentConsistencyModelPipeline,
            StableDiffusionPipeline or StableDiffusionXLPipeline, a hub-cache folder models--ORG--NAME or a
            hub id ORG/NAME already in the local hub cache (never downloaded). Its scheduler becomes an LCMScheduler.
        prompt: the text condition (default "a handwritten digit").
        guidance_scale: w >= 1 (default 1): through the UNet's guidance embedding when it has one
            (time_cond_proj_dim), else classifier-free guidance against the empty prompt when w > 1
            (2 network calls per consistency evaluation, counted in nfe).
        img_shape: [C, H, W] of the campaign images (default the VAE's sample_size); H and W must be
            multiples of the VAE's downsampling factor (8 for SD/SDXL).
        image_size: H (or [H, W]) instead of img_shape.
        data_range: [lo, hi] the VAE takes (default: training.json's, else [-1, 1] as Stable Diffusion).
        image_range: [lo, hi] of the campaign images (default [0, 1]).
        variant: weight-file variant of every loaded component, e.g. fp16 (model.fp16.safetensors).
        dtype: float32, float16 or bfloat16: the UNet's and VAE's dtype (default float32; a float16 VAE
            with force_upcast stays float32, as diffusers does).
        lora: an LCM-LoRA .safetensors file or folder, fused into the UNet (and text encoders) with
            diffusers' load_lora_weights + fuse_lora.
        unet: a distilled UNet folder (config.json + safetensors) replacing the pipeline's unet/.
        sample_steps: LCM steps of prior.sample (data.simulate); default 4.
    """
    import diffusers
    import transformers

    kind = "latent-consistency"
    check_keys(spec, PRIOR_KEYS[kind])
    prompt = spec.get("prompt", DEFAULT_PROMPT)
    require(isinstance(prompt, str), f"prior {kind!r}: prompt must be a string, got {prompt!r}")
    guidance = spec.get("guidance_scale", 1.0)
    require(isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and guidance >= 1.0,
            f"prior {kind!r}: guidance_scale = {guidance!r} must be a number >= 1")
    variant, dtype = parse_variant(spec.get("variant"), kind), parse_dtype(spec.get("dtype"), kind)
    sample_steps = check_sample_steps(spec.get("sample_steps"), kind)
    folder = open_model_folder(spec, root, kind, LATENT_PIPELINES)
    sdxl = folder.pipeline == _SDXL
    # -- configs only: classes, sizes, shapes ---------------------------------------------------------
    vae_cfg = check_component_class(folder.root, "vae", "config.json", kind, ("AutoencoderKL",))
    unet_dir, unet_sub = _unet_location(spec, folder, root, kind)
    unet_cfg = check_component_class(unet_dir, unet_sub, "config.json", kind, ("UNet2DConditionModel",))
    encoders = [("text_encoder", "tokenizer", "CLIPTextModel")] + ([("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection")] if sdxl else [])
    encoder_cfgs = [check_component_class(folder.root, sub, "config.json", kind, (cls,)) for sub, _, cls in encoders]
    sched_cfg = read_json(folder.root / "scheduler" / "scheduler_config.json", f"prior {kind!r} component 'scheduler'")
    _check_sizes(kind, vae_cfg, unet_cfg, encoder_cfgs, sdxl)
    size = vae_cfg.get("sample_size") or 512
    default_hw = (size, size) if isinstance(size, int) else tuple(size)
    shape = image_shape(spec, int(vae_cfg.get("in_channels", 3)), default_hw, 2 ** (len(vae_cfg["block_out_channels"]) - 1), kind, "VAE")
    pixel_range, origin = pixel_range_of(spec, folder, {}, kind, SYMMETRIC_RANGE, "Stable Diffusion VAE default")
    lora = _lora_file(spec, root, kind) if spec.get("lora") is not None else None
    # -- weights ---------------------------------------------------------------------------------------
    net_dtype = dtype or torch.float32
    vae_dtype = torch.float32 if net_dtype == torch.float16 and vae_cfg.get("force_upcast", True) else net_dtype
    vae = load_component(diffusers.AutoencoderKL, folder.root, "vae", kind, variant=variant, dtype=vae_dtype)
    unet = load_component(diffusers.UNet2DConditionModel, unet_dir, unet_sub, kind, variant=variant, dtype=net_dtype)
    scheduler = diffusers.LCMScheduler.from_config(sched_cfg)
    text_encoders, tokenizers = [], []
    for sub, tok_sub, cls in encoders:
        text_encoders.append(load_component(getattr(transformers, cls), folder.root, sub, kind, variant=variant,
                                            dtype=torch.float32, library="transformers").eval())
        try:
            with quiet_loading():
                tokenizers.append(transformers.CLIPTokenizer.from_pretrained(folder.root, subfolder=tok_sub, local_files_only=True))
        except (OSError, ValueError, TypeError) as err:
            raise UQError(f"prior {kind!r}: cannot load {tok_sub} of {str(folder.root)!r}: {first_line(err)}") from None
    if lora is not None:
        names = ("text_encoder", "text_encoder_2") if sdxl else ("text_encoder",)
        components = {"vae": vae, "unet": unet, "scheduler": scheduler, **dict(zip(names, text_encoders)),
                      **dict(zip(("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",), tokenizers))}
        _fuse_lora(_SDXL if sdxl else "StableDiffusionPipeline", components, lora, kind)
    # -- the condition (text encoders run once, then are dropped) ---------------------------------------
    negative: Any = None
    if sdxl:
        cond = encode_prompt_sdxl(tuple(tokenizers), tuple(text_encoders), prompt)
        condition: Any = (cond.embeds.float(), cond.pooled.float())
        if guidance > 1.0 and unet_cfg.get("time_cond_proj_dim") is None:
            if folder.index.get("force_zeros_for_empty_prompt", True):
                negative = (torch.zeros_like(condition[0]), torch.zeros_like(condition[1]))
            else:
                empty = encode_prompt_sdxl(tuple(tokenizers), tuple(text_encoders), "")
                negative = (empty.embeds.float(), empty.pooled.float())
        time_ids = sdxl_time_ids(shape[1], shape[2])
    else:
        condition = encode_prompt(tokenizers[0], text_encoders[0], prompt).float()
        if guidance > 1.0 and unet_cfg.get("time_cond_proj_dim") is None:
            negative = encode_prompt(tokenizers[0], text_encoders[0], "").float()
        time_ids = None
    source: dict[str, Any] = {"pipeline": folder.pipeline, "data_range_from": origin}
    for key in ("variant", "lora", "unet"):
        if spec.get(key) is not None:
            source[key] = str(spec[key])
    return LatentConsistencyPrior(vae, unet, scheduler, condition, prompt=prompt, guidance_scale=float(guidance),
                                  negative_condition=negative, time_ids=time_ids, img_shape=shape, pixel_range=pixel_range,
                                  sample_steps=sample_steps, path=str(spec["path"]), source=source)

