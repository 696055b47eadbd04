"""Prompt conditioning of the latent priors, built as diffusers' pipelines build it.

* SD-1.5 / LCM (``StableDiffusionPipeline.encode_prompt``, ``clip_skip = None``): ``c`` is CLIP's
  last hidden state of the padded prompt tokens, ``(P, L, D)``; the unconditional embedding of
  classifier-free guidance is that of the empty prompt ``""``.
* SDXL (``StableDiffusionXLPipeline.encode_prompt``): the penultimate hidden states of both text
  encoders concatenated, ``(P, L, D1 + D2)``, plus the pooled, projected embedding of the second
  encoder (``text_embeds``, ``(P, D_proj)``); the unconditional pair is zeros when the pipeline's
  ``force_zeros_for_empty_prompt`` is true (SDXL base), else the empty prompt's. The UNet also
  takes ``time_ids = (H, W, 0, 0, H, W)`` (original size, crop top-left, target size:
  ``_get_add_time_ids`` with the defaults of ``__call__``).

A condition is a :class:`Condition`: ``embeds`` (the cross-attention states) and ``pooled``
(None except for SDXL).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Condition", "as_condition", "encode_prompt", "encode_prompt_sdxl", "sdxl_time_ids"]


class Condition(NamedTuple):
    """``embeds (P, L, D)``; ``pooled (P, D_proj)`` for SDXL, else None."""

    embeds: Tensor
    pooled: Tensor | None = None


def as_condition(value: Tensor | tuple | Condition) -> Condition:
    """A :class:`Condition` from a tensor ``(P, L, D)`` (SD) or a pair ``(embeds, pooled)`` (SDXL)."""
    if isinstance(value, Tensor):
        return Condition(value, None)
    embeds, pooled = value
    return Condition(embeds, pooled)


def _tokens(tokenizer: Any, prompt: str | list[str]) -> Any:
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")


def encode_prompt(tokenizer: Any, text_encoder: Any, prompt: str | list[str]) -> Tensor:
    """The SD-1.5 condition ``c (P, L, D)`` of ``P`` prompts (one string: ``P = 1``): CLIP's last hidden state of the padded tokens."""
    tokens = _tokens(tokenizer, prompt)
    mask = tokens.attention_mask.to(text_encoder.device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=mask).last_hidden_state


def encode_prompt_sdxl(tokenizers: tuple[Any, Any], text_encoders: tuple[Any, Any], prompt: str) -> Condition:
    """The SDXL condition of one prompt: ``embeds (1, L, D1 + D2)`` (penultimate layers) and ``pooled (1, D_proj)``."""
    states, pooled = [], None
    with torch.no_grad():
        for tokenizer, encoder in zip(tokenizers, text_encoders):
            out = encoder(_tokens(tokenizer, prompt).input_ids.to(encoder.device), output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds, the pooled output
                pooled = out[0]
            states.append(out.hidden_states[-2])
    return Condition(torch.cat(states, dim=-1), pooled)


def sdxl_time_ids(height: int, width: int) -> Tensor:
    """``(1, 6)`` float32: original size, crop top-left (0, 0), target size, all ``(height, width)``."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
