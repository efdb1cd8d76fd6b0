"""Named sizes of the PixelLLM model, as plain data (timm style).

Each preset is a dict of :class:`~.configuration_pixtok.PixtokConfig` keyword arguments. Only this
module knows the sizes; :meth:`PixtokConfig.from_preset` merges a preset with the caller's overrides.
Sub-config entries are plain dicts of the matching config class's keyword arguments. Every preset
rounds the T5's embedding / LM-head rows up to a multiple of 64 (``pad_vocab_to_multiple_of``:
T5-base's 33187-id head becomes 33216 rows, the tiny tokenizer's 3135 ids 3136), so the LM-head
GEMMs run on the GPU's aligned kernels; the extra ids are never tokens.

- ``tiny``: every part real but small, so that a training step for every head runs on a 2-core CPU
  in seconds. SAM at 128 px with 16 px patches (8 x 8 grid, 32 x 32 masks = S / 4), EVA02 at
  64 px with 8 px patches (the same 8 x 8 grid), a 2 + 2 layer T5 of width 64, and the tiny
  tokenizer shipped in ``model/assets`` (2048 base entries).
- ``small``: the size the learning benchmarks train from scratch in minutes on one GPU
  (``benchmarks/learning/``): SAM 6 x 256 at 128 px with 8 px patches (16 x 16 grid, 64 x 64
  masks), EVA02 4 x 192 at 128 px / 8 px patches (the same grid), a 6 + 6 layer T5 of width 384,
  the tiny tokenizer, T5 initialised at a 0.1 scale for training from scratch; the extractor hands
  the T5 its 32 tokens plus 8 x 8 pooled, position-encoded grid tokens (``grid_tokens``,
  ``position_in_values``), and the T5 decoder gets a learned absolute position table
  (``decoder_position_embeddings``, 512 rows) as Pix2Seq's decoder has; 44 M parameters.
- ``base``: SAM ViT-B + EVA02-B/14 at 448 px + T5-base.
- ``large``: SAM ViT-L + EVA02-L/14 at 448 px + Flan-T5-large.
- ``pixelllm-xl``: the paper's model, SAM ViT-H + EVA02-L/14 + Flan-T5-XL with LoRA rank 32 on
  ``q`` and ``v``.
"""

from __future__ import annotations

import copy
from typing import Any

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO detection classes in contiguous-id order (COCO category ids sorted)."""

T5_BASE_VOCAB_SIZE = 32100
"""Entries of the T5 / Flan-T5 sentencepiece tokenizer (32000 pieces + 100 ``<extra_id_*>``)."""

TINY_BASE_VOCAB_SIZE = 2048
"""Entries of the tiny tokenizer shipped in ``model/assets`` (T5 convention: pad 0, eos 1, unk 2)."""


def _sam_vision(hidden: int, depth: int, heads: int, global_attn: list[int]) -> dict[str, Any]:
    """A SAM ViT at 1024 px / 16 px patches (64 x 64 grid) with a 256-channel neck."""
    return {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "global_attn_indexes": global_attn,
        "image_size": 1024,
        "patch_size": 16,
        "output_channels": 256,
        "num_pos_feats": 128,
        "window_size": 14,
    }


_SAM_MASK_DECODER: dict[str, Any] = {"hidden_size": 256, "mlp_dim": 2048, "num_hidden_layers": 2}

_EVA02_BASE: dict[str, Any] = {
    "img_size": 448,
    "patch_size": 14,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "timm_name": "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",
}
_EVA02_LARGE: dict[str, Any] = {
    "img_size": 448,
    "patch_size": 14,
    "embed_dim": 1024,
    "depth": 24,
    "num_heads": 16,
    "timm_name": "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k",
}


def _t5(d_model: int, d_ff: int, layers: int, heads: int, gated: bool, tied: bool) -> dict[str, Any]:
    """T5 sizes; ``gated`` selects the v1.1 / Flan gated-GELU MLP (untied LM head)."""
    return {
        "d_model": d_model,
        "d_kv": 64,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": heads,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "tie_word_embeddings": tied,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "image_size": 128,
            "patch_size": 16,
            "output_channels": 32,
            "num_pos_feats": 16,
            "window_size": 4,
            "mlp_dim": 64,
        },
        "prompt_encoder_config": {"mask_input_channels": 4},
        "mask_decoder_config": {
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        "eva_config": {
            "img_size": 64,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "ref_feat_shape": [8, 8],
            "timm_name": None,
        },
        "text_config": {
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "relative_attention_num_buckets": 16,
            "relative_attention_max_distance": 32,
            "dropout_rate": 0.0,
        },
        "extractor_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
        },
        "base_vocab_size": TINY_BASE_VOCAB_SIZE,
        "trace_head_hidden_size": 64,
        "box_head_hidden_size": 64,
        "proposal_head_hidden_size": 32,
        "pad_vocab_to_multiple_of": 64,
        "lora_r": 4,
        "lora_alpha": 8,
        "tokenizer_name_or_path": "pixtok-tiny",
    },
    "small": {
        "vision_config": {
            "hidden_size": 256,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "global_attn_indexes": [2, 5],
            "image_size": 128,
            "patch_size": 8,
            "output_channels": 128,
            "num_pos_feats": 64,
            "window_size": 8,
            "mlp_dim": 1024,
        },
        "prompt_encoder_config": {"mask_input_channels": 8},
        "mask_decoder_config": {
            "hidden_size": 128,
            "mlp_dim": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 128,
        },
        "eva_config": {
            "img_size": 128,
            "patch_size": 8,
            "embed_dim": 192,
            "depth": 4,
            "num_heads": 3,
            "ref_feat_shape": [16, 16],
            "timm_name": None,
        },
        "text_config": {
            "d_model": 384,
            "d_kv": 64,
            "d_ff": 1536,
            "num_layers": 6,
            "num_decoder_layers": 6,
            "num_heads": 6,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "dropout_rate": 0.0,
            # trained from scratch: a 0.1 init scale starts the logits near unit std, not ~sqrt(d),
            # and keeps AdamW stable on T5's unscaled attention; the learning benchmark's coordinate
            # rows train faster with T5's own init (1.0), text_embedding_init_std 0.051 and the
            # queries at 0.125 of the learning rate (train.lr_scales; benchmarks/RESULTS.md)
            "initializer_factor": 0.1,
        },
        "extractor_config": {
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "mlp_dim": 1024,
            # from scratch, the T5 learns coordinates only when it can attend image positions
            # itself (benchmarks/RESULTS.md): 8 x 8 pooled grid tokens, position in the values
            "grid_tokens": 8,
            "position_in_values": True,
        },
        # from scratch, the T5's relative positions alone make it slow to find a token's place in
        # the 5-token object grammar; Pix2Seq's learned absolute positions cut the coordinate error
        # ~2x at equal steps (benchmarks/learning/localization_probe.py, RESULTS.md)
        "decoder_position_embeddings": 512,
        "base_vocab_size": TINY_BASE_VOCAB_SIZE,
        "trace_head_hidden_size": 256,
        "box_head_hidden_size": 256,
        "proposal_head_hidden_size": 128,
        "pad_vocab_to_multiple_of": 64,
        "lora_r": 8,
        "lora_alpha": 16,
        "tokenizer_name_or_path": "pixtok-tiny",
    },
    "base": {
        "vision_config": _sam_vision(768, 12, 12, [2, 5, 8, 11]),
        "mask_decoder_config": dict(_SAM_MASK_DECODER),
        "eva_config": dict(_EVA02_BASE),
        "text_config": _t5(768, 3072, 12, 12, gated=False, tied=True),
        "extractor_config": {
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "mlp_dim": 2048,
        },
        "base_vocab_size": T5_BASE_VOCAB_SIZE,
        "id2label": dict(enumerate(COCO_CLASSES)),
        "pad_vocab_to_multiple_of": 64,
        "lora_r": 16,
        "lora_alpha": 32,
        "tokenizer_name_or_path": "google-t5/t5-base",
    },
    "large": {
        "vision_config": _sam_vision(1024, 24, 16, [5, 11, 17, 23]),
        "mask_decoder_config": dict(_SAM_MASK_DECODER),
        "eva_config": dict(_EVA02_LARGE),
        "text_config": _t5(1024, 2816, 24, 16, gated=True, tied=False),
        "extractor_config": {
            "hidden_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "mlp_dim": 2048,
        },
        "base_vocab_size": T5_BASE_VOCAB_SIZE,
        "id2label": dict(enumerate(COCO_CLASSES)),
        "pad_vocab_to_multiple_of": 64,
        "lora_r": 32,
        "lora_alpha": 64,
        "tokenizer_name_or_path": "google/flan-t5-large",
    },
    "pixelllm-xl": {
        "vision_config": _sam_vision(1280, 32, 16, [7, 15, 23, 31]),
        "mask_decoder_config": dict(_SAM_MASK_DECODER),
        "eva_config": dict(_EVA02_LARGE),
        "text_config": _t5(2048, 5120, 24, 32, gated=True, tied=False),
        "extractor_config": {
            "hidden_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "mlp_dim": 2048,
        },
        "base_vocab_size": T5_BASE_VOCAB_SIZE,
        "id2label": dict(enumerate(COCO_CLASSES)),
        "pad_vocab_to_multiple_of": 64,
        "lora_r": 32,
        "lora_alpha": 64,
        "tokenizer_name_or_path": "google/flan-t5-xl",
    },
}
"""Preset name -> :class:`PixtokConfig` keyword arguments."""


def preset_kwargs(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``'s keyword arguments.

    Raises:
        ValueError: ``name`` is not a preset; the message lists the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown pixtok preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


__all__ = ["COCO_CLASSES", "PRESETS", "T5_BASE_VOCAB_SIZE", "TINY_BASE_VOCAB_SIZE", "preset_kwargs"]
