"""The SAM parts of pixtok: image encoder, prompt encoder, mask decoder, and their weight loaders.

Each part wraps transformers' own SAM module (``transformers.models.sam.modeling_sam``) and keeps its
parameter names, so that a transformers SAM checkpoint loads 1:1 under the prefixes
``vision_encoder.``, ``prompt_encoder.`` and ``mask_decoder.``. What the wrappers add is pixtok's
interface: prompts arrive as points normalized to the padded square model input (see
``docs/ARCHITECTURE.md``, "Geometry"), one prompt per image, one mask per prompt.

The random-frequency positional encoding is one module, owned by the prompt encoder
(``prompt_encoder.shared_embedding``), used both for prompt points and for the dense image
positional encoding (:meth:`SamPromptEncoder.image_pe`) — the wiring of transformers' ``SamModel``
(whose ``shared_image_embedding`` is tied to that same tensor) and of segment-anything's
``PromptEncoder.pe_layer``.

Loaders read an official segment-anything ``.pth`` (``torch.load(weights_only=True)``), a
transformers SAM checkpoint (hub id or folder, safetensors), or a file written by
:func:`convert_segment_anything_checkpoint`, and return one state dict per part::

    {"image_encoder": {...}, "prompt_encoder": {...}, "mask_decoder": {...}}

:func:`load_state_dict_checked` loads such a dict into a module and names every missing,
unexpected or mis-shaped key when they do not fit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SamConfig
from transformers.models.sam.modeling_sam import SamMaskDecoder as _HFSamMaskDecoder
from transformers.models.sam.modeling_sam import SamPositionalEmbedding, SamVisionAttention, SamVisionEncoder
from transformers.models.sam.modeling_sam import SamPromptEncoder as _HFSamPromptEncoder

from .configuration_towers import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig
from .input_checks import check_prompt, should_check
from .patch_embedding import use_patch_matmul

SAM_PARTS: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")
"""Names of the three SAM parts, in the order of every loader's output dict."""

PROMPT_LABELS: dict[str, int] = {
    "padding": -1,
    "background": 0,
    "foreground": 1,
    "box_top_left": 2,
    "box_bottom_right": 3,
}
"""Meaning of each value of ``prompt_labels`` (segment-anything's convention, boxes as two corners)."""

_CONVERTED_FILENAME = "sam_towers.safetensors"
_CONVERTED_CONFIG = "sam_config.json"


def _check_pixels(pixel_values: Tensor, num_channels: int, size: int, what: str) -> None:
    """Raise a ValueError naming the expected ``(B, num_channels, size, size)`` floating tensor."""
    expected = f"{what} of shape (batch, {num_channels}, {size}, {size}) and a floating dtype"
    if not isinstance(pixel_values, Tensor):
        raise ValueError(f"expected {expected}, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"expected {expected}, got a {pixel_values.ndim}-d tensor of shape {tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"expected {expected}, got {pixel_values.shape[1]} channels (shape {tuple(pixel_values.shape)})"
        )
    if tuple(pixel_values.shape[2:]) != (size, size):
        raise ValueError(
            f"expected {expected}, got spatial size {tuple(pixel_values.shape[2:])}; the processor resizes the "
            f"long side to {size} and pads to a square"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(f"expected {expected}, got dtype {pixel_values.dtype}")


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def fused_rel_pos_qk(
    query: Tensor, key: Tensor, rel_h: Tensor, rel_w: Tensor, height: int, width: int, scale: float
) -> tuple[Tensor, Tensor]:
    """Query and key of :class:`SamRelPosAttention`'s one attention call: ``q' = [q * scale,
    q . rel_h, q . rel_w]`` and ``k' = [k, one_hot(row), one_hot(col)]``, zero columns making the
    width a multiple of 8 (attention kernels want it), so that ``q' . k'`` is the biased score.

    Args:
        query, key: (B, heads, N, c) with N = height * width, row-major.
        rel_h, rel_w: (height, height, c) and (width, width, c) relative-position tables
            (``get_rel_pos``), in the query's dtype.
        height, width: the token grid.
        scale: the attention scale (on ``q . k`` only; the terms are unscaled, as in SAM).
    """
    batch, heads, n, dim = query.shape
    grid = query.reshape(batch, heads, height, width, dim)
    terms_h = torch.einsum("bnhwc,hkc->bnhwk", grid, rel_h).reshape(batch, heads, n, height)
    terms_w = torch.einsum("bnhwc,wkc->bnhwk", grid, rel_w).reshape(batch, heads, n, width)
    pad = -(dim + height + width) % 8
    index = torch.arange(n, device=query.device)
    one_hot = torch.cat(
        [F.one_hot(index // width, height), F.one_hot(index % width, width), index.new_zeros(n, pad)],
        dim=-1,
    ).to(key.dtype)
    q_aug = torch.cat([query * scale, terms_h, terms_w, query.new_zeros(batch, heads, n, pad)], -1)
    k_aug = torch.cat([key, one_hot.expand(batch, heads, n, -1)], -1)
    return q_aug, k_aug


def fused_rel_pos_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rel_h: Tensor,
    rel_w: Tensor,
    height: int,
    width: int,
    scale: float,
    narrow_value: bool = True,
) -> Tensor:
    """SAM's biased attention as one SDPA call over :func:`fused_rel_pos_qk`'s query and key:
    (B, heads, N, c). ``narrow_value`` passes the value at its own width; ``False`` zero-pads it to
    the widened query's width and drops the padding after (:attr:`SamRelPosAttention.narrow_value`)."""
    q_aug, k_aug = fused_rel_pos_qk(query, key, rel_h, rel_w, height, width, scale)
    if narrow_value:
        return F.scaled_dot_product_attention(q_aug, k_aug, value, scale=1.0)
    dim = value.shape[-1]
    v_aug = F.pad(value, (0, q_aug.shape[-1] - dim))
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., :dim]


class SamRelPosAttention(SamVisionAttention):
    """SAM's attention with the decomposed relative-position terms inside one fused attention call.

    Stock SAM adds ``rel_h[q, row(k)] + rel_w[q, col(k)]`` as a bias tensor of (B, heads, N, N) —
    for a 64 x 64 global layer, 16.8 M entries per head and image, written and read every call. The
    same sum is a dot product: with ``q' = [q * scale, rel_h(q), rel_w(q)]`` and ``k' = [k,
    one_hot(row(k)), one_hot(col(k))]``, ``q' . k'`` is the biased score, so
    ``scaled_dot_product_attention(q', k', v, scale=1)`` (v zero-padded to the same width) computes
    the stock result without any N x N tensor. Same parameters and names as the stock module.
    """

    narrow_value: bool = True
    """Pass the value at its own width instead of zero-padded to the widened query's: the same result
    with a third of the value-side work (at SAM-B's global layers the query/key width is 192, the
    value's 64). SDPA's flash kernel refuses unequal widths; cuDNN's and the memory-efficient one
    take them. Measured on one H100 in one run each (``benchmarks/towers.py``,
    ``benchmarks/sam_attention.py``, seventeenth session): the compiled SAM-B tower 298.4 img/s
    against 267.6 padded; one global layer's attention, forward + backward, 11.3 against 12.2 ms.
    ``False`` keeps the padded value (the form before)."""

    def forward(self, hidden_states: Tensor, output_attentions: bool = False) -> tuple[Tensor, None]:
        batch, height, width, _ = hidden_states.shape
        heads, n = self.num_attention_heads, height * width
        qkv = self.qkv(hidden_states).reshape(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (B, heads, N, c)
        dim = query.shape[-1]
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        else:
            rel_h = self.get_rel_pos(height, height, self.rel_pos_h).to(query.dtype)  # (h, h_k, c)
            rel_w = self.get_rel_pos(width, width, self.rel_pos_w).to(query.dtype)  # (w, w_k, c)
            out = fused_rel_pos_attention(
                query, key, value, rel_h, rel_w, height, width, self.scale, self.narrow_value
            )
        out = (
            out.reshape(batch, heads, height, width, dim)
            .permute(0, 2, 3, 1, 4)
            .reshape(batch, height, width, -1)
        )
        return self.proj(out), None


class SamImageEncoder(nn.Module):
    """SAM's ViT image encoder with its neck (transformers' ``SamVisionEncoder``).

    The patch embedding runs as one matrix product (:class:`~pixtok.model.patch_embedding.PatchConv2d`).
    Attention: :class:`SamRelPosAttention` (the relative-position terms inside the fused attention,
    no N x N bias tensor) when ``config._attn_implementation`` is ``"sdpa"`` or unset and
    ``fused_rel_pos`` is true; otherwise transformers' own (``"sdpa"`` with a bias tensor, or
    ``"eager"``).
    Gradient checkpointing is switched by the enclosing ``PreTrainedModel``
    (``gradient_checkpointing_enable``) or by ``self.vision_encoder.gradient_checkpointing_enable()``.

    Args:
        config: the SAM vision config (``image_size`` S, ``patch_size`` p, ``output_channels`` C).
        fused_rel_pos: use :class:`SamRelPosAttention` (same parameters; benchmarks compare both).
        narrow_value: with ``fused_rel_pos``, its layers' :attr:`SamRelPosAttention.narrow_value`.
    """

    def __init__(
        self, config: SamVisionConfig, fused_rel_pos: bool = True, narrow_value: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = SamVisionEncoder(config)
        use_patch_matmul(self.vision_encoder.patch_embed)
        if fused_rel_pos and getattr(config, "_attn_implementation", None) in (None, "sdpa"):
            for layer in self.vision_encoder.layers:
                # same parameters, another forward: re-class in place (building a new module would
                # draw from the random generator and change every later parameter's initialization)
                layer.attn.__class__ = SamRelPosAttention
                layer.attn.narrow_value = narrow_value

    @property
    def image_size(self) -> int:
        """Side S of the square input, pixels."""
        return int(self.config.image_size)

    @property
    def grid_size(self) -> int:
        """Side g = S / p of the output feature map."""
        return int(self.config.image_size) // int(self.config.patch_size)

    @property
    def output_channels(self) -> int:
        """Channels C of the output feature map (the neck's width)."""
        return int(self.config.output_channels)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Encode images.

        Args:
            pixel_values: (B, 3, S, S) float, SAM-normalized, long side resized to S and padded
                bottom/right. Cast to the encoder's dtype.

        Returns:
            (B, C, S/p, S/p) image embeddings (the SAM neck output).
        """
        _check_pixels(pixel_values, int(self.config.num_channels), self.image_size, "SAM pixel_values")
        pixel_values = pixel_values.to(_module_dtype(self))
        return self.vision_encoder(pixel_values).last_hidden_state


def reset_positional_encoding(module: SamPositionalEmbedding) -> None:
    """Draw SAM's random Fourier frequencies as segment-anything does: N(0, 1).

    transformers draws them with std ``hidden_size / 2`` (128 for a 256-wide SAM), which only
    pretrained checkpoints overwrite. Trained from scratch with that table, the encoding repeats
    about a hundred times across the image: neighbouring grid cells get unrelated codes, so nothing
    downstream can read a coordinate from it (the table is fixed, never trained).
    """
    nn.init.normal_(module.positional_embedding, std=1.0)


class SamPromptEncoder(nn.Module):
    """SAM's prompt encoder for one point/box prompt per image (transformers' ``SamPromptEncoder``).

    Owns the random-frequency positional encoding shared by prompt points and the image grid.

    Args:
        prompt_config: the SAM prompt encoder config (``hidden_size`` C, ``image_size`` S).
        vision_config: the SAM vision config; its ``num_pos_feats`` must be C / 2 and its
            ``image_size``/``patch_size`` must equal the prompt config's.
    """

    def __init__(self, prompt_config: SamPromptEncoderConfig, vision_config: SamVisionConfig) -> None:
        super().__init__()
        if int(prompt_config.image_size) != int(vision_config.image_size) or int(
            prompt_config.patch_size
        ) != int(vision_config.patch_size):
            raise ValueError(
                f"SAM prompt encoder image_size/patch_size ({prompt_config.image_size}/{prompt_config.patch_size}) "
                f"must equal the vision config's ({vision_config.image_size}/{vision_config.patch_size})"
            )
        if 2 * int(vision_config.num_pos_feats) != int(prompt_config.hidden_size):
            raise ValueError(
                f"SAM vision num_pos_feats ({vision_config.num_pos_feats}) must be half the prompt encoder "
                f"hidden_size ({prompt_config.hidden_size})"
            )
        if int(vision_config.output_channels) != int(prompt_config.hidden_size):
            raise ValueError(
                f"SAM vision output_channels ({vision_config.output_channels}) must equal the prompt encoder "
                f"hidden_size ({prompt_config.hidden_size})"
            )
        self.prompt_config = prompt_config
        self.vision_config = vision_config
        sam_config = SamConfig(
            vision_config=vision_config.to_dict(), prompt_encoder_config=prompt_config.to_dict()
        )
        self.prompt_encoder = _HFSamPromptEncoder(sam_config)
        self._image_pe_cache: tuple[tuple, Tensor] | None = None  # (table's identity, encoding)

    @property
    def image_size(self) -> int:
        """Side S of the SAM input frame, pixels."""
        return int(self.prompt_config.image_size)

    @property
    def grid_size(self) -> int:
        """Side g of the image embedding grid."""
        return int(self.prompt_config.image_size) // int(self.prompt_config.patch_size)

    @property
    def hidden_size(self) -> int:
        """Embedding width C."""
        return int(self.prompt_config.hidden_size)

    def forward(self, coords: Tensor, labels: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Embed one prompt per image.

        Args:
            coords: (B, N, 2) float, xy normalized to the padded square input, in [0, 1].
            labels: (B, N) long, per point: 1 foreground, 0 background, 2 box top-left corner,
                3 box bottom-right corner, -1 padding (ignored point). A box is two entries (2, 3);
                a point is conventionally padded with one -1 entry, as segment-anything does.
            masks: optional (B, 1, 4g, 4g) float mask logits to embed densely; `None` uses the
                learned "no mask" embedding.

        Returns:
            sparse: (B, N, C) prompt embeddings.
            dense: (B, C, g, g) dense prompt embeddings.
        """
        if not isinstance(coords, Tensor) or coords.ndim != 3 or coords.shape[-1] != 2:
            got = tuple(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
            raise ValueError(f"prompt coords must have shape (batch, num_points, 2) xy, got {got}")
        if not coords.is_floating_point():
            raise ValueError(
                f"prompt coords must be floating point (normalized to [0, 1]), got {coords.dtype}"
            )
        if not isinstance(labels, Tensor) or tuple(labels.shape) != tuple(coords.shape[:2]):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(
                f"prompt labels must have shape {tuple(coords.shape[:2])} (batch, num_points), got {got}"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"prompt labels must be an integer tensor, got {labels.dtype}")
        if should_check(coords):  # labels known, real points in [0, 1]: one device read
            check_prompt(coords, labels)
        encoder = self.prompt_encoder
        batch = coords.shape[0]
        # SAM embeds pixel coordinates of the S x S input, shifted to pixel centres, divided by S.
        position = self._fourier_features((coords.float() * self.image_size + 0.5) / self.image_size)
        kinds = torch.cat([embedding.weight for embedding in encoder.point_embed], dim=0)  # (4, C)
        labels = labels.long()
        sparse = position + kinds[labels.clamp(min=0)]
        sparse = torch.where(
            (labels == -1)[..., None], encoder.not_a_point_embed.weight.to(sparse.dtype), sparse
        )
        if masks is not None:
            expected = (batch, 1, 4 * self.grid_size, 4 * self.grid_size)
            if tuple(masks.shape) != expected:
                raise ValueError(f"prompt masks must have shape {expected}, got {tuple(masks.shape)}")
            dense = encoder.mask_embed(masks.to(sparse.dtype))
        else:
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch, -1, self.grid_size, self.grid_size
            )
        return sparse, dense

    def image_pe(self) -> Tensor:
        """Dense positional encoding of the image embedding grid.

        A function of the shared table alone: while the table does not train it is computed once and
        kept (recomputed when the table is replaced, moved or written in place, e.g. by
        ``load_state_dict``) — some thirty small kernels less in every step.

        Returns:
            (1, C, g, g): the shared encoding evaluated at the centre of every grid cell.
        """
        table = self.prompt_encoder.shared_embedding.positional_embedding
        if table.requires_grad and torch.is_grad_enabled():
            return self._grid_encoding(table)
        key = (table.data_ptr(), table._version, table.device, table.dtype, self.grid_size)
        cached = self._image_pe_cache
        if cached is None or cached[0] != key:
            cached = (key, self._grid_encoding(table).detach())
            self._image_pe_cache = cached
        return cached[1]

    def _grid_encoding(self, table: Tensor) -> Tensor:
        g = self.grid_size
        centres = (torch.arange(g, device=table.device, dtype=torch.float32) + 0.5) / g
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        encoding = self._fourier_features(torch.stack([x, y], dim=-1))  # (g, g, C)
        return encoding.permute(2, 0, 1).unsqueeze(0)

    def _fourier_features(self, points: Tensor) -> Tensor:
        """SAM's random Fourier features of points, computed in fp32 whatever the module dtype.

        The math of transformers' ``SamPositionalEmbedding`` (and segment-anything's
        ``PositionEmbeddingRandom``) on the shared table; fp32 because in bf16 a pixel coordinate of a
        1024 px frame keeps only ~3 significant digits and the angles reach tens of radians.

        Args:
            points: (..., 2) xy in [0, 1].

        Returns:
            (..., C) ``[sin, cos]`` features, in the table's dtype.
        """
        table = self.prompt_encoder.shared_embedding.positional_embedding  # (2, C / 2)
        with torch.autocast(device_type=table.device.type, enabled=False):
            angles = 2 * math.pi * ((2 * points.float() - 1) @ table.float())
            features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return features.to(table.dtype)


class SamMaskDecoder(nn.Module):
    """SAM's two-way-transformer mask decoder giving one mask per prompt (transformers' ``SamMaskDecoder``).

    Attention follows ``config._attn_implementation``; when unset it is set to ``"sdpa"``.

    Args:
        config: the SAM mask decoder config (``hidden_size`` C).
    """

    def __init__(self, config: SamMaskDecoderConfig) -> None:
        super().__init__()
        if getattr(config, "_attn_implementation", None) is None:
            config._attn_implementation = "sdpa"
        self.config = config
        self.mask_decoder = _HFSamMaskDecoder(config)

    def forward(
        self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Predict one mask per image.

        Args:
            image_embeddings: (B, C, g, g) SAM image embeddings.
            image_pe: (1, C, g, g) (or (B, C, g, g)) dense positional encoding,
                :meth:`SamPromptEncoder.image_pe`.
            sparse: (B, N, C) sparse prompt embeddings.
            dense: (B, C, g, g) dense prompt embeddings.

        Returns:
            mask_logits: (B, 1, 4g, 4g) mask logits over the padded square input (4g = S / 4 for p = 16).
            iou: (B, 1) predicted IoU of the mask.
        """
        if image_embeddings.ndim != 4 or image_embeddings.shape[1] != self.config.hidden_size:
            raise ValueError(
                f"image_embeddings must have shape (batch, {self.config.hidden_size}, g, g), "
                f"got {tuple(image_embeddings.shape)}"
            )
        batch, channels, height, width = image_embeddings.shape
        if sparse.ndim != 3 or sparse.shape[0] != batch or sparse.shape[2] != channels:
            raise ValueError(
                f"sparse must have shape ({batch}, num_points, {channels}), got {tuple(sparse.shape)}"
            )
        if tuple(dense.shape) != tuple(image_embeddings.shape):
            raise ValueError(
                f"dense must have shape {tuple(image_embeddings.shape)}, got {tuple(dense.shape)}"
            )
        if (
            image_pe.ndim != 4
            or image_pe.shape[0] not in (1, batch)
            or tuple(image_pe.shape[1:])
            != (
                channels,
                height,
                width,
            )
        ):
            raise ValueError(
                f"image_pe must have shape (1, {channels}, {height}, {width}), got {tuple(image_pe.shape)}"
            )
        dtype = _module_dtype(self)
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings.to(dtype),
            image_positional_embeddings=image_pe.to(dtype).expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=sparse.to(dtype)[:, None],
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=False,
        )
        return masks[:, 0], iou[:, 0]


# --- weight loading ------------------------------------------------------------------------------


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` exactly, or raise a ValueError naming every mismatch.

    Args:
        module: the module to fill (its own keys, no prefix).
        state_dict: tensors by key.
        source: a short description of where the weights came from, for the message.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches (expected vs got).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{key}: expected {tuple(own[key].shape)}, got {tuple(state_dict[key].shape)}"
        for key in sorted(set(own) & set(state_dict))
        if tuple(own[key].shape) != tuple(state_dict[key].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {source} does not match {type(module).__name__}:"]

        def listing(title: str, items: list[str]) -> None:
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))

        listing("missing keys", missing)
        listing("unexpected keys", unexpected)
        listing("shape mismatches", shapes)
        raise ValueError("\n".join(lines))
    module.load_state_dict(dict(state_dict), strict=True)


# segment-anything name -> transformers name, applied after stripping the part prefix. Each rule is a
# regular expression on the whole key; groups are reused by number.
_IMAGE_ENCODER_RULES: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.projection.\1"),
    (r"pos_embed", r"pos_embed"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"layers.\1.layer_norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"layers.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.attn\.(rel_pos_[hw])", r"layers.\1.attn.\2"),
    (r"blocks\.(\d+)\.mlp\.(lin[12])\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"neck\.0\.weight", r"neck.conv1.weight"),
    (r"neck\.1\.(weight|bias)", r"neck.layer_norm1.\1"),
    (r"neck\.2\.weight", r"neck.conv2.weight"),
    (r"neck\.3\.(weight|bias)", r"neck.layer_norm2.\1"),
)
_PROMPT_ENCODER_RULES: tuple[tuple[str, str], ...] = (
    (r"pe_layer\.positional_encoding_gaussian_matrix", r"shared_embedding.positional_embedding"),
    (r"point_embeddings\.(\d+)\.weight", r"point_embed.\1.weight"),
    (r"(not_a_point_embed|no_mask_embed)\.weight", r"\1.weight"),
    (r"mask_downscaling\.0\.(weight|bias)", r"mask_embed.conv1.\1"),
    (r"mask_downscaling\.1\.(weight|bias)", r"mask_embed.layer_norm1.\1"),
    (r"mask_downscaling\.3\.(weight|bias)", r"mask_embed.conv2.\1"),
    (r"mask_downscaling\.4\.(weight|bias)", r"mask_embed.layer_norm2.\1"),
    (r"mask_downscaling\.6\.(weight|bias)", r"mask_embed.conv3.\1"),
)
_MASK_DECODER_RULES: tuple[tuple[str, str], ...] = (
    (r"(iou_token|mask_tokens)\.weight", r"\1.weight"),
    (
        r"transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
        r"\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)",
        r"transformer.layers.\1.\2.\3.\4",
    ),
    (r"transformer\.layers\.(\d+)\.norm([1-4])\.(weight|bias)", r"transformer.layers.\1.layer_norm\2.\3"),
    (r"transformer\.layers\.(\d+)\.mlp\.(lin[12])\.(weight|bias)", r"transformer.layers.\1.mlp.\2.\3"),
    (
        r"transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)",
        r"transformer.final_attn_token_to_image.\1.\2",
    ),
    (r"transformer\.norm_final_attn\.(weight|bias)", r"transformer.layer_norm_final_attn.\1"),
    (r"output_upscaling\.0\.(weight|bias)", r"upscale_conv1.\1"),
    (r"output_upscaling\.1\.(weight|bias)", r"upscale_layer_norm.\1"),
    (r"output_upscaling\.3\.(weight|bias)", r"upscale_conv2.\1"),
    # MLP heads are handled separately (their layer list is split into proj_in / layers / proj_out).
)
_MLP_HEAD = re.compile(r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(weight|bias)")


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(replacement)
    return None


def _convert_mlp_heads(keys: list[str]) -> dict[str, str]:
    """Map segment-anything's ``MLP.layers.{i}`` onto transformers' ``proj_in``/``layers``/``proj_out``."""
    depth: dict[str, int] = {}
    for key in keys:
        match = _MLP_HEAD.fullmatch(key)
        if match:
            depth[match.group(1)] = max(depth.get(match.group(1), 0), int(match.group(2)) + 1)
    renamed = {}
    for key in keys:
        match = _MLP_HEAD.fullmatch(key)
        if not match:
            continue
        head, index, kind = match.group(1), int(match.group(2)), match.group(3)
        if index == 0:
            target = "proj_in"
        elif index == depth[head] - 1:
            target = "proj_out"
        else:
            target = f"layers.{index - 1}"
        renamed[key] = f"{head}.{target}.{kind}"
    return renamed


def convert_segment_anything_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Rename an official segment-anything ``Sam`` state dict into pixtok's three SAM parts.

    Args:
        state_dict: keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` as in the
            official checkpoints (``sam_vit_{b,l,h}_*.pth``); ``pixel_mean``/``pixel_std`` buffers
            are dropped (the processor owns normalization).

    Returns:
        ``{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}``, keys as in
        :class:`SamImageEncoder`, :class:`SamPromptEncoder`, :class:`SamMaskDecoder`.

    Raises:
        ValueError: when a key cannot be placed, or a part is absent.
    """
    rules = {
        "image_encoder": ("vision_encoder.", _IMAGE_ENCODER_RULES),
        "prompt_encoder": ("prompt_encoder.", _PROMPT_ENCODER_RULES),
        "mask_decoder": ("mask_decoder.", _MASK_DECODER_RULES),
    }
    out: dict[str, dict[str, Tensor]] = {part: {} for part in SAM_PARTS}
    decoder_keys = [key[len("mask_decoder.") :] for key in state_dict if key.startswith("mask_decoder.")]
    mlp_names = _convert_mlp_heads(decoder_keys)
    unknown = []
    for key, tensor in state_dict.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        part, _, rest = key.partition(".")
        if part not in rules:
            unknown.append(key)
            continue
        prefix, part_rules = rules[part]
        new = (
            mlp_names.get(rest) if part == "mask_decoder" and rest in mlp_names else _rename(rest, part_rules)
        )
        if new is None:
            unknown.append(key)
            continue
        out[part][prefix + new] = tensor
    if unknown:
        shown = ", ".join(unknown[:20]) + (f", ... and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise ValueError(
            f"not a segment-anything SAM checkpoint: {len(unknown)} unexpected keys ({shown}); expected keys under "
            "image_encoder., prompt_encoder., mask_decoder."
        )
    empty = [part for part in SAM_PARTS if not out[part]]
    if empty:
        raise ValueError(f"segment-anything checkpoint has no weights for {', '.join(empty)}")
    return out


def infer_sam_configs(
    parts: Mapping[str, Mapping[str, Tensor]],
) -> tuple[SamVisionConfig, SamPromptEncoderConfig, SamMaskDecoderConfig]:
    """Read the SAM sizes off converted weights (the output of any loader here).

    Everything is fixed by tensor shapes except the mask decoder's head count, which no weight
    reveals: it keeps segment-anything's value (8, every released SAM). Heads of the ViT follow from
    the relative-position tables (one row per head dimension); global-attention blocks are those whose
    tables span the whole grid.

    Args:
        parts: ``{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}`` state dicts.

    Returns:
        (vision, prompt encoder, mask decoder) configs that the weights load into.
    """
    missing = [part for part in SAM_PARTS if part not in parts]
    if missing:
        raise ValueError(f"cannot infer SAM configs: no weights for {', '.join(missing)}")
    image, prompt, decoder = (parts[part] for part in SAM_PARTS)
    patch = image["vision_encoder.patch_embed.projection.weight"]  # (hidden, channels, p, p)
    hidden, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    depth = 1 + max(int(key.split(".")[2]) for key in image if key.startswith("vision_encoder.layers."))
    pos = image.get("vision_encoder.pos_embed")
    grid = pos.shape[1] if pos is not None else None
    spans = [int(image[f"vision_encoder.layers.{i}.attn.rel_pos_h"].shape[0] + 1) // 2 for i in range(depth)]
    head_dim = int(image["vision_encoder.layers.0.attn.rel_pos_h"].shape[1])
    grid = grid if grid is not None else max(spans)
    global_indexes = [i for i, span in enumerate(spans) if span == grid]
    windows = {span for span in spans if span != grid}
    if len(windows) > 1:
        raise ValueError(f"SAM image encoder mixes window sizes {sorted(windows)}; expected one")
    output_channels = int(image["vision_encoder.neck.conv1.weight"].shape[0])
    vision = SamVisionConfig(
        hidden_size=int(hidden),
        num_channels=int(channels),
        num_hidden_layers=depth,
        num_attention_heads=int(hidden) // head_dim,
        image_size=int(grid) * int(patch_size),
        patch_size=int(patch_size),
        window_size=windows.pop() if windows else 0,
        global_attn_indexes=global_indexes,
        output_channels=output_channels,
        num_pos_feats=int(prompt["prompt_encoder.shared_embedding.positional_embedding"].shape[1]),
        mlp_dim=int(image["vision_encoder.layers.0.mlp.lin1.weight"].shape[0]),
        use_abs_pos=pos is not None,
    )
    prompt_config = SamPromptEncoderConfig(
        hidden_size=int(prompt["prompt_encoder.no_mask_embed.weight"].shape[1]),
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        mask_input_channels=int(prompt["prompt_encoder.mask_embed.conv2.weight"].shape[0]),
        num_point_embeddings=sum(1 for key in prompt if key.startswith("prompt_encoder.point_embed.")),
    )
    iou_layers = sum(
        1 for key in decoder if re.fullmatch(r"mask_decoder\.iou_prediction_head\.layers\.\d+\.weight", key)
    )
    decoder_config = SamMaskDecoderConfig(
        hidden_size=int(decoder["mask_decoder.iou_token.weight"].shape[1]),
        mlp_dim=int(decoder["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        num_hidden_layers=1
        + max(
            int(key.split(".")[3]) for key in decoder if key.startswith("mask_decoder.transformer.layers.")
        ),
        num_multimask_outputs=int(decoder["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=iou_layers + 2,
        iou_head_hidden_dim=int(decoder["mask_decoder.iou_prediction_head.proj_in.weight"].shape[0]),
        attention_downsample_rate=int(decoder["mask_decoder.iou_token.weight"].shape[1])
        // int(decoder["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]),
    )
    return vision, prompt_config, decoder_config


def load_segment_anything_checkpoint(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """Read an official segment-anything checkpoint (``.pth``) into pixtok's three SAM parts.

    Args:
        path: e.g. ``sam_vit_h_4b8939.pth``. Read with ``torch.load(weights_only=True)``.

    Returns:
        ``{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}`` state dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segment-anything checkpoint not found: {path}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, expected a state dict (a mapping of tensors)"
        )
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    return convert_segment_anything_state_dict(state_dict)


def _split_transformers_state_dict(
    state_dict: Mapping[str, Tensor], source: str
) -> dict[str, dict[str, Tensor]]:
    """Split a transformers ``SamModel`` state dict into the three parts (names are already ours)."""
    out: dict[str, dict[str, Tensor]] = {part: {} for part in SAM_PARTS}
    prefixes = {
        "vision_encoder.": "image_encoder",
        "prompt_encoder.": "prompt_encoder",
        "mask_decoder.": "mask_decoder",
    }
    shared = None
    unknown = []
    for key, tensor in state_dict.items():
        if key == "shared_image_embedding.positional_embedding":
            shared = tensor
            continue
        part = next((p for prefix, p in prefixes.items() if key.startswith(prefix)), None)
        if part is None:
            unknown.append(key)
        else:
            out[part][key] = tensor
    if unknown:
        raise ValueError(
            f"{source} is not a transformers SamModel checkpoint: unexpected keys {', '.join(sorted(unknown)[:20])}"
        )
    # SamModel ties prompt_encoder.shared_embedding to shared_image_embedding; files keep one or both.
    tied = "prompt_encoder.shared_embedding.positional_embedding"
    if tied not in out["prompt_encoder"] and shared is not None:
        out["prompt_encoder"][tied] = shared
    empty = [part for part in SAM_PARTS if not out[part]]
    if empty:
        raise ValueError(f"{source} has no weights for {', '.join(empty)}")
    return out


def _read_safetensors_folder(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors (or sharded index) in {folder}")
    state_dict: dict[str, Tensor] = {}
    for name in files:
        state_dict.update(load_file(str(folder / name), device="cpu"))
    return state_dict


def load_transformers_sam(name_or_path: str | Path) -> dict[str, dict[str, Tensor]]:
    """Read a transformers SAM checkpoint (``SamModel.save_pretrained`` layout, safetensors).

    Args:
        name_or_path: a local folder, or a hub id such as ``"facebook/sam-vit-huge"`` (downloaded
            with ``huggingface_hub``; only ``*.safetensors`` and ``*.json`` files are fetched).

    Returns:
        ``{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}`` state dicts.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        if folder.exists() or str(name_or_path).endswith((".pth", ".pt", ".bin", ".safetensors")):
            raise ValueError(f"{name_or_path} is not a transformers SAM folder or hub id")
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(name_or_path), allow_patterns=["*.safetensors", "*.json"]))
    return _split_transformers_state_dict(_read_safetensors_folder(folder), str(name_or_path))


def convert_segment_anything_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Convert an official segment-anything ``.pth`` into one safetensors file of pixtok's SAM parts.

    Args:
        path: the segment-anything checkpoint.
        out_dir: folder to write into (created if needed).

    Returns:
        Path of the written file, ``out_dir/sam_towers.safetensors``; its keys are
        ``"<part>.<key>"`` for each part in :data:`SAM_PARTS`. Read it back with :func:`load_sam_weights`.
        Beside it, ``sam_config.json`` holds the sizes (a transformers ``SamConfig``, from
        :func:`infer_sam_configs`).
    """
    from safetensors.torch import save_file

    parts = load_segment_anything_checkpoint(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {
        f"{part}.{key}": tensor.contiguous()
        for part, tensors in parts.items()
        for key, tensor in tensors.items()
    }
    target = out / _CONVERTED_FILENAME
    save_file(flat, str(target), metadata={"format": "pt", "pixtok": "sam_towers", "source": Path(path).name})
    vision, prompt, decoder = infer_sam_configs(parts)
    SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder).to_json_file(
        str(out / _CONVERTED_CONFIG)
    )
    return target


def load_sam_weights(name_or_path: str | Path) -> dict[str, dict[str, Tensor]]:
    """Read SAM weights from any supported source into pixtok's three SAM parts.

    Args:
        name_or_path: an official segment-anything ``.pth``; a file (or a folder holding
            ``sam_towers.safetensors``) written by :func:`convert_segment_anything_checkpoint`; a
            transformers SAM folder; or a hub id.

    Returns:
        ``{"image_encoder": ..., "prompt_encoder": ..., "mask_decoder": ...}`` state dicts.
    """
    path = Path(name_or_path)
    if path.is_dir() and (path / _CONVERTED_FILENAME).is_file():
        path = path / _CONVERTED_FILENAME
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path), device="cpu")
        out: dict[str, dict[str, Tensor]] = {part: {} for part in SAM_PARTS}
        for key, tensor in flat.items():
            part, _, rest = key.partition(".")
            if part not in out:
                raise ValueError(
                    f"{path} is not a pixtok SAM file: key {key!r} is outside {', '.join(SAM_PARTS)}"
                )
            out[part][rest] = tensor
        return out
    if path.is_file():
        return load_segment_anything_checkpoint(path)
    return load_transformers_sam(name_or_path)


BOX_LABELS: tuple[int, int] = (2, 3)
"""SAM prompt labels of a box's top-left and bottom-right corners."""


__all__ = [
    "BOX_LABELS",
    "PROMPT_LABELS",
    "SAM_PARTS",
    "SamImageEncoder",
    "SamMaskDecoder",
    "SamPromptEncoder",
    "SamPositionalEmbedding",
    "convert_segment_anything_checkpoint",
    "convert_segment_anything_state_dict",
    "fused_rel_pos_attention",
    "fused_rel_pos_qk",
    "infer_sam_configs",
    "load_sam_weights",
    "load_segment_anything_checkpoint",
    "load_state_dict_checked",
    "reset_positional_encoding",
    "load_transformers_sam",
]
