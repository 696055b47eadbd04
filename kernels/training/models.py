"""Tiny diffusers / transformers configurations built from code (no hub), sized for a CPU.

The classes are the full-size ones (``UNet2DModel``, ``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel``): only the widths and depths are small, so a full-size folder loads with the
same prior code.
"""

from __future__ import annotations

import json
from pathlib import Path

from uqcampaign.kernels.errors import require

__all__ = ["tiny_unet2d", "tiny_autoencoder", "tiny_cond_unet", "tiny_clip", "write_tiny_clip_tokenizer", "TOKENIZER_WORDS"]

# Every word of the prompts we train with (``"a handwritten digit seven"``), plus a few spares.
TOKENIZER_WORDS = ("a", "handwritten", "digit", "zero", "one", "two", "three", "four", "five",
                   "six", "seven", "eight", "nine", "number", "image", "of", "the")


def tiny_unet2d(img_shape: tuple[int, int, int]):
    """A ``UNet2DModel`` for ``(C, H, W)`` images with ``H = W`` divisible by 2 (~270k parameters)."""
    from diffusers import UNet2DModel

    c, h, w = img_shape
    require(h == w and h % 2 == 0, f"a tiny UNet needs square images with an even side, got {img_shape}")
    return UNet2DModel(
        sample_size=h, in_channels=c, out_channels=c, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    )


def tiny_autoencoder(img_shape: tuple[int, int, int], latent_channels: int = 4):
    """An ``AutoencoderKL`` halving the side: ``(C, H, W) -> (latent_channels, H/2, W/2)``."""
    from diffusers import AutoencoderKL

    c, h, _ = img_shape
    return AutoencoderKL(
        in_channels=c, out_channels=c, latent_channels=latent_channels, sample_size=h,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
    )


def tiny_cond_unet(latent_shape: tuple[int, int, int], cross_attention_dim: int):
    """A ``UNet2DConditionModel`` on latents ``(C_z, H_z, W_z)`` with cross-attention to the prompt."""
    from diffusers import UNet2DConditionModel

    c, h, _ = latent_shape
    return UNet2DConditionModel(
        sample_size=h, in_channels=c, out_channels=c, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=cross_attention_dim, attention_head_dim=8,
    )


def write_tiny_clip_tokenizer(folder: Path) -> None:
    """Write a byte-pair ``CLIPTokenizer`` (``vocab.json``, ``merges.txt``) knowing :data:`TOKENIZER_WORDS`.

    Single letters (with and without the end-of-word mark ``</w>``) and one merge chain per
    word; unknown words fall back to letters. Token ids: 0 = bos, 1 = eos (also pad), 2 = unk.
    """
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<|unk|>": 2}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for letter in "abcdefghijklmnopqrstuvwxyz":
        add(letter)
        add(letter + "</w>")
    for word in TOKENIZER_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            add(pieces[0])
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token="<|unk|>",
                              bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                              model_max_length=16)
    tokenizer.save_pretrained(str(folder))


def tiny_clip(vocab_size: int, hidden: int = 32, max_tokens: int = 16):
    """A two-layer ``CLIPTextModel`` (bos = 0, eos = pad = 1, matching :func:`write_tiny_clip_tokenizer`)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_tokens,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=hidden)
    return CLIPTextModel(config)
