"""The PixelLLM-shaped pixtok model.

Reading order (one batch, shapes as in ``docs/ARCHITECTURE.md``)::

    pixel_values (B,3,S,S), eva_pixel_values (B,3,E,E)
        -> DualTower -> sam (B,C,g,g), fused (B,C+D_eva,g,g)
    prompt_coords (B,2,2), prompt_labels (B,2)  (none: the whole-image box)
        -> SAM prompt encoder -> sparse (B,2,C), dense (B,C,g,g), image_pe (1,C,g,g)
        -> prompt feature extractor (two-way transformer, 32 learnable tokens) -> prefix (B,32,d_model)
           (+ grid_tokens**2 pooled, position-encoded image tokens when the extractor config asks)
    input_ids (B,Lp) -> T5 token embeddings; encoder input = prefix ++ text  (PrefixLM)
        -> T5 encoder -> T5 decoder (labels shifted right) -> logits (B,T,V), states (B,T,d_model)
    heads: LM (label-smoothed, weighted CE) | trace MLP per state -> points (B,T,2)
           | box MLP at the first output state -> pred_boxes (B,4) | SAM mask decoder prompted with the box
           (+ a learnable embedding) -> pred_masks (B,1,4g,4g) | proposal head on fused -> boxes

Every coordinate is in model space (normalized to the padded square), boxes ``xyxy``.

:class:`PixtokModel` is the backbone (towers, prompt path, T5 with its LM head);
:class:`PixtokForConditionalGeneration` adds the heads, the losses and :meth:`generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from .configuration_pixtok import PixtokConfig
from .eva02 import load_timm_eva02
from .generation_pixtok import PixtokGenerateOutput, PixtokGenerationMixin
from .heads import (
    GROUNDING_MOMENTS,
    BoxHead,
    GroundingHead,
    LMLoss,
    ProposalHead,
    TraceHead,
    box_regression_loss,
    grounding_moments,
    mask_losses,
    masked_l1,
)
from .input_checks import check_prompt, check_token_ids, should_check
from .lora import AddedTokenRows, apply_lora, lm_head_input_scale, merge_lora, reset_lora, unmerge_lora
from .model_card import PixtokHubMixin
from .prompt_extractor import PixtokPromptExtractor
from .sam import (
    BOX_LABELS,
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPromptEncoder,
    load_sam_weights,
    load_state_dict_checked,
    reset_positional_encoding,
)
from .t5_attention import use_contiguous_position_bias
from .towers import DualTower, VisionFeatures
from .vocab import DECODER_START_ID, EOS_ID, PAD_ID


@dataclass
class PixtokModelOutput(ModelOutput):
    """Output of :class:`PixtokModel`.

    Attributes:
        logits: (B, T, V) LM logits, or `None` when no decoder input was given; V is
            ``text_config.vocab_size``, so with ``pad_vocab_to_multiple_of`` the columns past
            ``config.vocab.size`` are padding, never a token.
        decoder_hidden_states: (B, T, d_model) last decoder states (after T5's final norm).
        encoder_last_hidden_state: (B, P + Lp, d_model), P = extractor_config.prefix_length.
        encoder_attention_mask: (B, P + Lp) long.
        image_embeddings: (B, C, g, g) SAM features (mask decoder input).
        fused_features: (B, C + D_eva, g, g) both towers on one grid.
        prompt_tokens: (B, P, d_model) the extractor's visual prefix (learnable tokens, then grid tokens).
        past_key_values: the decoder cache when ``use_cache``.
    """

    logits: torch.Tensor | None = None
    decoder_hidden_states: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_attention_mask: torch.Tensor | None = None
    image_embeddings: torch.Tensor | None = None
    fused_features: torch.Tensor | None = None
    prompt_tokens: torch.Tensor | None = None
    past_key_values: Any = None


@dataclass
class PixtokOutput(ModelOutput):
    """Output of :meth:`PixtokForConditionalGeneration.forward`.

    Each ``*_loss`` is `None` when its head had no (unmasked) targets; ``loss`` is their weighted sum.

    Attributes:
        loss: scalar total.
        lm_loss, trace_loss, box_loss, mask_loss, proposal_loss, grounding_loss, class_map_loss:
            scalars or `None`.
        logits: (B, T, V), V = ``text_config.vocab_size`` (padding columns past ``vocab.size``).
        points: (B, T, 2) xy model space, one per decoder position.
        pred_boxes: (B, 4) xyxy model space, from the first output step's state.
        pred_masks: (B, 1, 4g, 4g) mask logits (only when mask targets were given).
        proposal_logits: (B, g*g) objectness logits (only with proposal targets).
        proposal_boxes: (B, g*g, 4) xyxy model space (only with proposal targets).
        grounding_logits: (B, s, s) per grid cell, s = extractor_config.grid_tokens (only with
            mask targets and ``config.grounding_loss_weight > 0``).
        class_map_logits: (B, num_classes, s, s) (only with object boxes and
            ``config.class_map_loss_weight > 0``).
        encoder_last_hidden_state: (B, P + Lp, d_model), P = extractor_config.prefix_length.
    """

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    trace_loss: torch.Tensor | None = None
    box_loss: torch.Tensor | None = None
    mask_loss: torch.Tensor | None = None
    proposal_loss: torch.Tensor | None = None
    grounding_loss: torch.Tensor | None = None
    class_map_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    points: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    proposal_logits: torch.Tensor | None = None
    proposal_boxes: torch.Tensor | None = None
    grounding_logits: torch.Tensor | None = None
    class_map_logits: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


class PixtokPreTrainedModel(PreTrainedModel):
    """Shared capabilities and weight initialization of the pixtok models."""

    config_class = PixtokConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["T5Block", "SamVisionLayer", "EvaBlock", "SamTwoWayAttentionBlock"]

    def apply_freeze_policy(self) -> None:
        """Set ``requires_grad`` from the config's freeze fields (see the subclasses)."""

    @classmethod
    def from_pretrained(cls, *args: Any, strict: bool = True, **kwargs: Any):
        """``PreTrainedModel.from_pretrained``, strict by default, then what loading does not restore.

        transformers builds the model on the meta device and fills it from the checkpoint, so
        buffers that checkpoints do not hold (EVA02's rotary tables) are recomputed here, and the
        config's freeze policy is applied again (loaded parameters come back trainable).

        Args:
            *args, **kwargs: as ``PreTrainedModel.from_pretrained``.
            strict: raise a ValueError naming every missing / unexpected / mis-shaped key instead
                of transformers' default (warn and initialize the missing ones).
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {
            kind: sorted(map(str, info.get(kind) or ()))
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        if strict and any(problems.values()):
            listing = "; ".join(
                f"{kind.replace('_', ' ')} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                for kind, keys in problems.items()
                if keys
            )
            raise ValueError(
                f"checkpoint does not match {cls.__name__} built from its config.json: {listing}. "
                "Pass strict=False to load anyway (missing weights are then freshly initialized)."
            )
        for module in model.modules():
            if module is not model and hasattr(module, "reset_non_persistent_buffers"):
                module.reset_non_persistent_buffers()
        model.apply_freeze_policy()
        return (model, info) if want_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Init pixtok's own layers; T5 initializes itself (it is a ``PreTrainedModel`` child)."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, PixtokPromptExtractor):
            nn.init.normal_(module.tokens, std=0.02)
        elif isinstance(module, SamPositionalEmbedding):
            reset_positional_encoding(module)
        elif isinstance(module, DecoderPositions):
            nn.init.normal_(module.weight, std=module.init_std)
        elif isinstance(module, ProposalHead):
            nn.init.constant_(module.objectness.bias, -4.6)  # objectness prior 0.01
        elif isinstance(module, AddedTokenRows):
            nn.init.zeros_(module.embedding_delta)
            nn.init.zeros_(module.head_delta)
        elif isinstance(module, PixtokForConditionalGeneration):
            nn.init.zeros_(module.mask_prompt_embed)


class DecoderPositions(nn.Module):
    """A learned absolute position table for the T5 decoder's input embeddings (Pix2Seq's decoder).

    Args:
        num_positions: rows; decoding and training sequences may not be longer.
        hidden_size: T5 ``d_model``.
        init_std: std of the initial rows (the T5 embedding's init std, so that positions and
            tokens start at the same scale).
    """

    def __init__(self, num_positions: int, hidden_size: int, init_std: float) -> None:
        super().__init__()
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(num_positions, hidden_size))
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, embeddings: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, T, D) decoder input embeddings of positions ``start .. start + T - 1``, positions added.

        Raises:
            ValueError: the positions run past the table.
        """
        end = start + embeddings.shape[1]
        if end > self.weight.shape[0]:
            raise ValueError(
                f"decoder position {end - 1} is past the {self.weight.shape[0]}-row position table "
                "(config.decoder_position_embeddings): shorten the sequence (max_objects, "
                "max_new_tokens) or build the model with a longer table"
            )
        return embeddings + self.weight[start:end].to(embeddings.dtype)


def _parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class PixtokModel(PixtokPreTrainedModel):
    """Towers, prompt path and the T5 (with its LM head): everything but the task heads.

    Args:
        config: a :class:`PixtokConfig`.
    """

    # the task heads of PixtokForConditionalGeneration, when loading the backbone from its folder
    _keys_to_ignore_on_load_unexpected = [
        r"^(trace_head|box_head|grounding_head|class_map_head|mask_decoder|mask_prompt_embed|proposal_head)\b"
    ]

    def __init__(self, config: PixtokConfig) -> None:
        super().__init__(config)
        self.towers = DualTower(config.vision_config, config.eva_config)
        self.prompt_encoder = SamPromptEncoder(config.prompt_encoder_config, config.vision_config)
        text_config = config.text_config
        self.extractor = PixtokPromptExtractor(
            config.extractor_config,
            image_channels=self.towers.fused_channels,
            prompt_channels=self.prompt_encoder.hidden_size,
            output_size=text_config.d_model,
        )
        self.text_model = T5ForConditionalGeneration(text_config)
        use_contiguous_position_bias(self.text_model)  # SDPA's fused kernels, not its math path
        self.added_tokens = (
            AddedTokenRows(config.base_vocab_size, text_config.vocab_size, text_config.d_model)
            if config.freeze_text_model
            else None
        )
        embedding_std = config.text_embedding_init_std
        self.decoder_positions = (
            DecoderPositions(
                config.decoder_position_embeddings,
                text_config.d_model,
                text_config.initializer_factor if embedding_std is None else embedding_std,
            )
            if config.decoder_position_embeddings
            else None
        )
        self.post_init()
        if embedding_std is not None:
            # after T5's own init; from_pretrained loads over it (and skips init altogether)
            with torch.no_grad():
                nn.init.normal_(self.text_model.shared.weight, std=embedding_std)
        if config.lora_r > 0:
            apply_lora(
                self.text_model,
                config.lora_r,
                config.lora_alpha,
                config.lora_dropout,
                config.lora_target_modules,
            )
        self.apply_freeze_policy()

    # --- parameters -------------------------------------------------------------------------------
    def apply_freeze_policy(self) -> None:
        """Set ``requires_grad`` from the config: towers frozen when ``freeze_towers``; the T5 frozen
        when ``freeze_text_model`` except its LoRA adapters; everything else trainable."""
        for p in self.parameters():
            p.requires_grad_(True)
        if self.config.freeze_towers:
            self.towers.requires_grad_(False)
        # pixtok never prompts SAM with a mask: its mask embedding gets no gradient
        self.prompt_encoder.prompt_encoder.mask_embed.requires_grad_(False)
        # SAM's random Fourier features are fixed (a buffer in segment-anything)
        self.prompt_encoder.prompt_encoder.shared_embedding.requires_grad_(False)
        if self.config.freeze_text_model:
            for name, p in self.text_model.named_parameters():
                p.requires_grad_("lora_" in name)

    # --- inputs -----------------------------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor, check: bool = True) -> torch.Tensor:
        """(B, L) ids -> (B, L, d_model) T5 embeddings (with the added-token deltas when frozen).

        ``check`` validates the id range (one host sync; skipped on an accelerator inside
        :func:`~pixtok.model.input_checks.checked_on_host`); the decode loop's grammar-chosen ids skip it.
        """
        if check and should_check(input_ids):
            check_token_ids(input_ids, self.config.vocab.size)
        embeddings = self.text_model.get_input_embeddings()(input_ids)
        if self.added_tokens is not None:
            embeddings = self.added_tokens.embed(input_ids, embeddings)
        return embeddings

    def decoder_inputs(
        self, decoder_input_ids: torch.Tensor, start: int = 0, check: bool = True
    ) -> torch.Tensor:
        """(B, T) ids at decoder steps ``start …`` -> (B, T, d_model) T5 decoder input embeddings:
        the token rows plus the position table's rows (``decoder_position_embeddings``), times
        ``config.text_input_scale``. The decode engine builds the same from scaled weight copies."""
        embeds = self.embed_tokens(decoder_input_ids, check=check)
        if self.decoder_positions is not None:
            embeds = self.decoder_positions(embeds, start)
        scale = self.config.text_input_scale
        return embeds if scale == 1.0 else embeds * scale

    def default_prompt(
        self, batch_size: int, image_sizes: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole-image box prompt: (B, 2, 2) corners of the unpadded content, (B, 2) labels (2, 3).

        Args:
            batch_size: B.
            image_sizes: optional (B, 2) original (h, w); without it the whole padded square.
        """
        coords = torch.zeros(batch_size, 2, 2, device=device)
        if image_sizes is not None:
            sizes = image_sizes.to(device=device, dtype=torch.float32)
            long_side = sizes.max(dim=1).values.clamp(min=1)
            coords[:, 1, 0] = sizes[:, 1] / long_side
            coords[:, 1, 1] = sizes[:, 0] / long_side
        else:
            coords[:, 1] = 1.0
        labels = torch.tensor(BOX_LABELS, device=device).expand(batch_size, 2).clone()
        return coords, labels

    @staticmethod
    def check_prompt(prompt_coords: torch.Tensor, prompt_labels: torch.Tensor) -> None:
        """Raise a ValueError unless the prompt's shape is (B, N, 2), its labels are SAM's and every
        real prompt point lies in model space ``[0, 1]`` (skipped on an accelerator inside
        :func:`~pixtok.model.input_checks.checked_on_host`)."""
        if prompt_coords.ndim != 3 or prompt_coords.shape[-1] != 2:
            raise ValueError(
                f"prompt_coords must have shape (batch, 2, 2) xy in model space, got {tuple(prompt_coords.shape)}"
            )
        if should_check(prompt_coords):
            check_prompt(prompt_coords, prompt_labels)

    def cached_features(
        self, image_embeddings: torch.Tensor | None, fused_features: torch.Tensor | None
    ) -> VisionFeatures | None:
        """Tower outputs computed earlier (frozen towers: once per image), or `None` when not given.

        Args:
            image_embeddings: (B, C, g, g) SAM features (``VisionFeatures.sam``).
            fused_features: (B, C + D_eva, g, g) fused features (``VisionFeatures.fused``).
        """
        if image_embeddings is None and fused_features is None:
            return None
        g, c, fused = self.config.grid_size, self.towers.sam_channels, self.towers.fused_channels
        if image_embeddings is None or fused_features is None:
            raise ValueError("cached tower features need both image_embeddings and fused_features")
        if image_embeddings.ndim != 4 or tuple(image_embeddings.shape[1:]) != (c, g, g):
            raise ValueError(
                f"image_embeddings must be (B, {c}, {g}, {g}), got {tuple(image_embeddings.shape)}"
            )
        if tuple(fused_features.shape) != (image_embeddings.shape[0], fused, g, g):
            raise ValueError(
                f"fused_features must be ({image_embeddings.shape[0]}, {fused}, {g}, {g}), got {tuple(fused_features.shape)}"
            )
        return VisionFeatures(sam=image_embeddings, fused=fused_features)

    def encode_images(self, pixel_values: torch.Tensor, eva_pixel_values: torch.Tensor) -> VisionFeatures:
        """Both towers (without autograd when they are frozen).

        Args:
            pixel_values: (B, 3, S, S) SAM-normalized.
            eva_pixel_values: (B, 3, E, E) CLIP-normalized.
        """
        if pixel_values is None or eva_pixel_values is None:
            raise ValueError(
                "pixtok needs both pixel_values (B, 3, S, S) and eva_pixel_values (B, 3, E, E), as "
                "PixtokProcessor returns them"
            )
        trainable = any(p.requires_grad for p in self.towers.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self.towers(pixel_values, eva_pixel_values)

    def encode(
        self,
        pixel_values: torch.Tensor,
        eva_pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_coords: torch.Tensor | None = None,
        prompt_labels: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        features: VisionFeatures | None = None,
    ) -> tuple[BaseModelOutput, torch.Tensor, VisionFeatures, torch.Tensor]:
        """Images + prompt + text prompt -> T5 encoder states.

        Args:
            pixel_values, eva_pixel_values: tower inputs (ignored when ``features`` is given).
            input_ids: (B, Lp) encoder text prompt (task token + text), optional.
            attention_mask: (B, Lp) for ``input_ids``; `None`: all attended (T5 then gets no mask,
                which saves the device reads transformers makes to inspect one).
            prompt_coords: (B, N, 2) xy model space; `None` -> the whole-image box.
            prompt_labels: (B, N) SAM labels (box: 2, 3; point: 1, -1 padding).
            image_sizes: (B, 2) original (h, w), used for the default prompt.
            features: precomputed tower features (e.g. cached, or repeated per proposal).

        Returns:
            (encoder output, encoder attention mask (B, P + Lp), tower features,
            prefix tokens (B, P, d_model), P = extractor_config.prefix_length).
        """
        if features is None:
            features = self.encode_images(pixel_values, eva_pixel_values)
        batch, device = features.fused.shape[0], features.fused.device
        if prompt_coords is None:
            # built inside [0, 1]; the prompt encoder still checks it, as it checks every prompt
            prompt_coords, prompt_labels = self.default_prompt(batch, image_sizes, device)
        elif prompt_labels is None:
            raise ValueError("prompt_coords was given without prompt_labels (box: (2, 3); point: (1, -1))")
        else:
            if prompt_coords.shape[0] != batch:
                raise ValueError(f"prompt_coords holds {prompt_coords.shape[0]} prompts for {batch} images")
            self.check_prompt(prompt_coords, prompt_labels)
        sparse, dense = self.prompt_encoder(prompt_coords.to(device), prompt_labels.to(device))
        image_pe = self.prompt_encoder.image_pe()
        prefix = self.extractor(features.fused, image_pe, sparse, dense)
        prefix_mask = torch.ones(batch, prefix.shape[1], dtype=torch.long, device=device)
        if input_ids is not None:
            if input_ids.shape[0] != batch:
                raise ValueError(f"input_ids holds {input_ids.shape[0]} rows for {batch} images")
            text = (self.embed_tokens(input_ids.to(device)) * self.config.text_input_scale).to(prefix.dtype)
            text_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            inputs_embeds = torch.cat([prefix, text], dim=1)
            mask = torch.cat([prefix_mask, text_mask.to(device=device, dtype=torch.long)], dim=1)
        else:
            inputs_embeds, mask = prefix, prefix_mask
        encoder = self.text_model.get_encoder()
        # no attention_mask: every position is attended, and T5 gets no mask to inspect (transformers
        # reads a given one back from the device to see whether it can drop it)
        encoder_outputs = encoder(
            inputs_embeds=inputs_embeds,
            attention_mask=None if attention_mask is None else mask,
            return_dict=True,
        )
        return encoder_outputs, mask, features, prefix

    def decode(
        self,
        encoder_outputs: BaseModelOutput,
        encoder_attention_mask: torch.Tensor | None,
        decoder_input_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Run the T5 decoder and its LM head.

        Args:
            encoder_outputs: from :meth:`encode`.
            encoder_attention_mask: (B, Le), or `None` when every encoder position is attended.
            decoder_input_ids: (B, T) (T = 1 per step when decoding with a cache).
            past_key_values: the cache of previous steps, or `None`.
            use_cache: return the updated cache.

        Returns:
            logits (B, T, V), last decoder states (B, T, d_model), cache.
        """
        start = 0 if past_key_values is None else past_key_values.get_seq_length()
        embeds = self.decoder_inputs(decoder_input_ids, start, check=past_key_values is None)
        memory = encoder_outputs.last_hidden_state
        out = self.text_model.get_decoder()(
            inputs_embeds=embeds.to(memory.dtype),
            encoder_hidden_states=memory,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
        )
        states = out.last_hidden_state
        return self.lm_logits(states), states, out.past_key_values

    def lm_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(..., d_model) last decoder states → (..., V) logits: T5's LM head (its input scaled as
        T5 scales it), with the added tokens' row deltas when the T5 is frozen, in one product."""
        head = self.text_model.get_output_embeddings()
        scale = lm_head_input_scale(self.config.text_config)
        inputs = states * scale if scale != 1.0 else states
        if self.added_tokens is None:
            return head(inputs)
        return self.added_tokens.logits(inputs, head.weight)

    def token_logits(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The logits :meth:`decode` gives the token ids ``ids`` (K,), from its decoder states
        (..., d_model) → (..., K): only those LM-head rows are read (e.g. the coordinate bins)."""
        head = self.text_model.get_output_embeddings().weight
        rows = head[ids]
        if self.added_tokens is not None:
            rows = self.added_tokens.head_rows(ids, rows)
        scale = lm_head_input_scale(self.config.text_config)
        return (states.to(rows.dtype) * scale) @ rows.T

    def load_t5(self, name_or_path: str | Path) -> None:
        """Copy a pretrained T5 into ``self.text_model`` (LoRA adapters keep their init).

        The pretrained embedding / LM head rows ``[0, base_vocab_size)`` are copied; pixtok's added rows
        keep their random init (the T5 checkpoint may have more padding rows than the tokenizer: those
        are dropped).
        """
        source = T5ForConditionalGeneration.from_pretrained(str(name_or_path), dtype=torch.float32)
        own = self.text_model.state_dict()
        base = self.config.base_vocab_size
        mapped: dict[str, torch.Tensor] = {}
        unexpected = []
        by_plain_name = {key.replace(".base_layer", ""): key for key in own if "lora_" not in key}
        for key, tensor in source.state_dict().items():
            target = by_plain_name.get(key)
            if target is None:
                unexpected.append(key)
                continue
            if key in (
                "shared.weight",
                "lm_head.weight",
                "encoder.embed_tokens.weight",
                "decoder.embed_tokens.weight",
            ):
                if tensor.shape[0] < base:
                    raise ValueError(
                        f"T5 checkpoint {name_or_path} has {tensor.shape[0]} vocabulary rows, fewer than the "
                        f"config's base_vocab_size {base}"
                    )
                tensor = extend_vocabulary_rows(tensor[:base].float(), own[target].shape[0]).to(
                    own[target].dtype
                )
            mapped[target] = tensor
        wanted = {key for key in own if "lora_" not in key}
        missing = sorted(wanted - set(mapped))
        shapes = [
            f"{key}: expected {tuple(own[key].shape)}, got {tuple(t.shape)}"
            for key, t in mapped.items()
            if tuple(own[key].shape) != tuple(t.shape)
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"T5 checkpoint {name_or_path} does not match the config's text_config: missing keys {missing[:20]}, "
                f"unexpected keys {sorted(unexpected)[:20]}, shape mismatches {shapes[:20]}"
            )
        self.text_model.load_state_dict(mapped, strict=False)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        eva_pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_coords: torch.Tensor | None = None,
        prompt_labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        fused_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> PixtokModelOutput:
        """Encode and (when ``labels`` or ``decoder_input_ids`` are given) decode.

        Args:
            pixel_values: (B, 3, S, S); eva_pixel_values: (B, 3, E, E).
            input_ids, attention_mask: (B, Lp) encoder text prompt.
            prompt_coords: (B, 2, 2) xy model space; prompt_labels: (B, 2).
            decoder_input_ids: (B, T); defaults to ``labels`` shifted right (start id 0).
            labels: (B, T) decoder targets, -100 on padding.
            image_sizes: (B, 2) original (h, w); task_ids: (B,) — accepted, unused here.
            image_embeddings, fused_features: cached tower outputs (:meth:`encode_images`), used
                instead of the pixels: (B, C, g, g) and (B, C + D_eva, g, g).
        """
        encoder_outputs, mask, features, prefix = self.encode(
            pixel_values,
            eva_pixel_values,
            input_ids,
            attention_mask,
            prompt_coords,
            prompt_labels,
            image_sizes,
            features=self.cached_features(image_embeddings, fused_features),
        )
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = shift_right(labels)
        logits = states = None
        if decoder_input_ids is not None:
            cross_mask = None if attention_mask is None else mask  # None: all attended (see encode)
            logits, states, _ = self.decode(encoder_outputs, cross_mask, decoder_input_ids)
        return PixtokModelOutput(
            logits=logits,
            decoder_hidden_states=states,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_attention_mask=mask,
            image_embeddings=features.sam,
            fused_features=features.fused,
            prompt_tokens=prefix,
        )


def extend_vocabulary_rows(
    rows: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Append ``size - len(rows)`` rows drawn from a normal with the rows' per-dimension mean and std.

    New tokens then start at the scale of the pretrained ones (as ``resize_token_embeddings`` does
    with the full covariance), not at an arbitrary init scale.

    Args:
        rows: (N, D) pretrained embedding or LM-head rows.
        size: total rows wanted (>= N).
    """
    extra = size - rows.shape[0]
    if extra <= 0:
        return rows[:size].clone()
    mean, std = rows.mean(0), rows.std(0)
    noise = torch.randn(extra, rows.shape[1], generator=generator, dtype=rows.dtype, device=rows.device)
    return torch.cat([rows, mean + noise * std], dim=0)


def shift_right(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> decoder inputs: start id prepended, last dropped, -100 -> pad."""
    start = torch.full_like(labels[:, :1], DECODER_START_ID)
    shifted = torch.cat([start, labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == -100, PAD_ID)


class PixtokForConditionalGeneration(PixtokGenerationMixin, PixtokHubMixin, PixtokPreTrainedModel):
    """:class:`PixtokModel` plus PixelLLM's heads, their losses and grammar-constrained generation.

    Args:
        config: a :class:`PixtokConfig`.
    """

    _checkpoint_conversion_mapping: dict[str, str] = {}

    def __init__(self, config: PixtokConfig) -> None:
        super().__init__(config)
        self.model = PixtokModel(config)
        d_model = config.text_config.d_model
        self.lm_loss = LMLoss()  # no parameters: a module so that training can compile it alone
        self.trace_head = TraceHead(d_model, config.trace_head_hidden_size, config.trace_head_num_layers)
        self.box_head = BoxHead(
            d_model,
            config.box_head_hidden_size,
            config.box_head_num_layers,
            GROUNDING_MOMENTS if config.box_head_grounding else 0,
        )
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        self.mask_prompt_embed = nn.Parameter(torch.zeros(1, 1, config.mask_decoder_config.hidden_size))
        self.proposal_head = ProposalHead(self.model.towers.fused_channels, config.proposal_head_hidden_size)
        extractor = config.extractor_config
        self.grounding_head = (
            GroundingHead(d_model, extractor.num_tokens, extractor.grid_tokens)
            if config.grounding_loss_weight > 0
            else None
        )
        self.class_map_head = (
            GroundingHead(d_model, extractor.num_tokens, extractor.grid_tokens, config.vocab.num_classes)
            if config.class_map_loss_weight > 0
            else None
        )
        self.post_init()
        reset_lora(self.model.text_model)  # post_init re-initialized the adapters' Linear layers
        self.apply_freeze_policy()

    def apply_freeze_policy(self) -> None:
        """The backbone's policy (:meth:`PixtokModel.apply_freeze_policy`); heads trainable, except
        the mask decoder's IoU head, which pixtok never reads."""
        for p in self.parameters():
            p.requires_grad_(True)
        self.model.apply_freeze_policy()
        self.mask_decoder.mask_decoder.iou_prediction_head.requires_grad_(False)

    # --- conveniences -----------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.model.text_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.text_model.get_output_embeddings()

    def merge_lora(self) -> int:
        """Fold LoRA into the T5 weights for inference (see ``lora.py``); returns layers merged."""
        return merge_lora(self.model.text_model)

    def unmerge_lora(self) -> int:
        """Undo :meth:`merge_lora` before training again; returns layers unmerged."""
        return unmerge_lora(self.model.text_model)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (``sam``, ``eva02``, ``text``, ``lora``, ``other``, ``total``, ``trainable``)."""
        text = self.model.text_model
        lora = sum(p.numel() for n, p in text.named_parameters() if "lora_" in n)
        counts = {
            "sam": _parameter_count(self.model.towers.sam),
            "eva02": _parameter_count(self.model.towers.eva),
            "text": _parameter_count(text) - lora,
            "lora": lora,
            "total": _parameter_count(self),
            "trainable": _parameter_count(self, trainable_only=True),
        }
        counts["other"] = counts["total"] - counts["sam"] - counts["eva02"] - counts["text"] - lora
        return counts

    def print_trainable_parameters(self) -> str:
        """Print (and return) ``trainable params: N || all params: M || trainable%: P`` as peft does."""
        counts = self.parameter_counts()
        line = (
            f"trainable params: {counts['trainable']:,d} || all params: {counts['total']:,d} || "
            f"trainable%: {100 * counts['trainable'] / max(counts['total'], 1):.4f}"
        )
        print(line)
        return line

    # --- heads --------------------------------------------------------------------------------------
    def predict_masks(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """SAM's mask decoder prompted with boxes (+ the learnable prompt embedding).

        Args:
            image_embeddings: (B, C, g, g) SAM features.
            boxes: (B, 4) xyxy model space (clamped to [0, 1]).

        Returns:
            (B, 1, 4g, 4g) mask logits over the padded square.
        """
        corners = boxes.detach().float().clamp(0, 1).view(-1, 2, 2)
        labels = torch.tensor(BOX_LABELS, device=boxes.device).expand(boxes.shape[0], 2)
        sparse, dense = self.model.prompt_encoder(corners, labels)
        sparse = sparse + self.mask_prompt_embed.to(sparse.dtype)
        masks, _ = self.mask_decoder(image_embeddings, self.model.prompt_encoder.image_pe(), sparse, dense)
        return masks

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        eva_pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_coords: torch.Tensor | None = None,
        prompt_labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_weights: torch.Tensor | None = None,
        point_targets: torch.Tensor | None = None,
        point_mask: torch.Tensor | None = None,
        box_targets: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        mask_targets: torch.Tensor | None = None,
        mask_valid: torch.Tensor | None = None,
        proposal_boxes: torch.Tensor | None = None,
        proposal_mask: torch.Tensor | None = None,
        object_boxes: torch.Tensor | None = None,
        object_classes: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        fused_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> PixtokOutput:
        """Run the model and, for every head whose targets are given, its loss.

        Args:
            pixel_values: (B, 3, S, S); eva_pixel_values: (B, 3, E, E).
            input_ids, attention_mask: (B, Lp) encoder text prompt.
            prompt_coords: (B, 2, 2) xy model space; prompt_labels: (B, 2).
            decoder_input_ids: (B, T), defaults to ``labels`` shifted right.
            labels: (B, T) long targets, -100 on padding.
            label_weights: (B, T) per-token weights; default 1, ``config.eos_weight`` on EOS.
            point_targets, point_mask: (B, T, 2) xy model space, (B, T) bool — trace head.
            box_targets, box_mask: (B, 4) xyxy model space, (B,) bool — box head (first output state).
            mask_targets, mask_valid: (B, 4g, 4g) in [0, 1], (B,) bool — mask decoder, prompted
                with ``box_targets`` on rows with ``box_mask`` (teacher forcing), else the predicted box.
            proposal_boxes, proposal_mask: (B, N, 4) xyxy model space, (B, N) bool — proposal head.
            object_boxes, object_classes: (B, N, 4) xyxy model space, (B, N) long class ids, -1 on
                padding — the detection ground truth, for the class-map head.
            task_ids, image_sizes: accepted for the processor's batches (``image_sizes`` sizes the
                default prompt).
            image_embeddings, fused_features: cached tower features instead of the pixels
                (``model.model.encode_images``; the towers are frozen by default).

        Returns:
            :class:`PixtokOutput`.
        """
        config = self.config
        base = self.model(
            pixel_values=pixel_values,
            eva_pixel_values=eva_pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            prompt_coords=prompt_coords,
            prompt_labels=prompt_labels,
            decoder_input_ids=decoder_input_ids,
            labels=labels,
            image_sizes=image_sizes,
            image_embeddings=image_embeddings,
            fused_features=fused_features,
        )
        logits, states = base.logits, base.decoder_hidden_states
        losses: dict[str, torch.Tensor] = {}
        points = pred_boxes = pred_masks = proposal_logits = proposal_pred = None
        grounding_logits = class_map_logits = None

        if states is not None:
            points = self.trace_head(states)
            # the first output step's state: it has read the image and the prompt but no coordinate
            # token, so teacher forcing cannot hand the box head the target box (see BoxHead)
            pred_boxes = self.referred_boxes(states[:, 0], base.encoder_last_hidden_state)
        if labels is not None and logits is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels {tuple(labels.shape)} do not match the decoder length {tuple(logits.shape[:2])}"
                )
            if label_weights is None:
                label_weights = torch.where(labels == EOS_ID, config.eos_weight, 1.0).to(logits.dtype)
            # 0 when no token has a target (no device read to find out)
            losses["lm_loss"] = config.lm_loss_weight * self.lm_loss(
                logits,
                labels,
                label_weights,
                config.label_smoothing,
                num_classes=config.vocab.size,
                coordinate_bins=(config.vocab.coord_offset, config.vocab.num_bins),
                coordinate_sigma=config.coordinate_label_sigma,
            )
        if point_targets is not None and points is not None:
            mask = point_mask.bool() if point_mask is not None else torch.isfinite(point_targets).all(-1)
            mask = mask & torch.isfinite(point_targets).all(-1)  # 0 when no word has a point
            losses["trace_loss"] = config.trace_loss_weight * masked_l1(points, point_targets, mask)
        if box_targets is not None and pred_boxes is not None:
            rows = (
                box_mask.bool()
                if box_mask is not None
                else torch.ones(box_targets.shape[0], dtype=torch.bool, device=box_targets.device)
            )
            if bool(rows.any()):
                losses["box_loss"] = box_regression_loss(
                    pred_boxes[rows],
                    box_targets[rows].to(pred_boxes.dtype),
                    config.box_l1_weight,
                    config.box_giou_weight,
                )
        if mask_targets is not None:
            valid = (
                mask_valid.bool()
                if mask_valid is not None
                else torch.ones(mask_targets.shape[0], dtype=torch.bool, device=mask_targets.device)
            )
            if bool(valid.any()):
                prompt_boxes = self._mask_prompt_boxes(
                    pred_boxes, box_targets, box_mask, mask_targets.shape[0]
                )
                pred_masks = self.predict_masks(base.image_embeddings, prompt_boxes)
                logits_m = pred_masks[:, 0]
                if logits_m.shape[-2:] != mask_targets.shape[-2:]:
                    raise ValueError(
                        f"mask_targets must be (B, {logits_m.shape[-2]}, {logits_m.shape[-1]}) (the mask decoder's "
                        f"resolution), got {tuple(mask_targets.shape)}"
                    )
                losses["mask_loss"] = self._weighted_mask_loss(logits_m[valid], mask_targets[valid])
                if self.grounding_head is not None:
                    grounding_logits = self.grounding_head(base.encoder_last_hidden_state)[:, 0]
                    losses["grounding_loss"] = config.grounding_loss_weight * self._weighted_mask_loss(
                        grounding_logits[valid], self.grounding_head.targets(mask_targets[valid])
                    )
        if (
            self.class_map_head is not None
            and object_classes is not None
            and bool((object_classes >= 0).any())
        ):
            class_map_logits = self.class_map_head(base.encoder_last_hidden_state)
            losses["class_map_loss"] = config.class_map_loss_weight * self._class_map_loss(
                class_map_logits,
                self.class_map_head.box_targets(object_boxes, object_classes),
                object_classes,
            )
        if proposal_boxes is not None:
            valid = (
                proposal_mask.bool()
                if proposal_mask is not None
                else torch.ones(proposal_boxes.shape[:2], dtype=torch.bool, device=proposal_boxes.device)
            )
            if bool(valid.any()):
                proposal_logits, proposal_pred = self.proposal_head(base.fused_features)
                losses["proposal_loss"] = self.proposal_head.loss(
                    proposal_logits,
                    proposal_pred,
                    proposal_boxes.to(proposal_pred.dtype),
                    valid,
                    config.proposal_objectness_weight,
                    config.proposal_l1_weight,
                    config.proposal_giou_weight,
                )
        loss = sum(losses.values()) if losses else None
        return PixtokOutput(
            loss=loss,
            lm_loss=losses.get("lm_loss"),
            trace_loss=losses.get("trace_loss"),
            box_loss=losses.get("box_loss"),
            mask_loss=losses.get("mask_loss"),
            proposal_loss=losses.get("proposal_loss"),
            grounding_loss=losses.get("grounding_loss"),
            class_map_loss=losses.get("class_map_loss"),
            logits=logits,
            points=points,
            pred_boxes=pred_boxes,
            pred_masks=pred_masks,
            proposal_logits=proposal_logits,
            proposal_boxes=proposal_pred,
            grounding_logits=grounding_logits,
            class_map_logits=class_map_logits,
            encoder_last_hidden_state=base.encoder_last_hidden_state,
        )

    def referred_boxes(self, first_state: torch.Tensor, encoder_states: torch.Tensor | None) -> torch.Tensor:
        """The box head on the first output step's state (see :class:`BoxHead`), with the grounding
        map's summary beside it when ``config.box_head_grounding`` is set.

        Args:
            first_state: (B, D) decoder state of the first output step.
            encoder_states: (B, L, D) T5 encoder output (read only with ``box_head_grounding``).

        Returns:
            (B, 4) xyxy model space.
        """
        if not self.config.box_head_grounding:
            return self.box_head(first_state)
        if encoder_states is None:
            raise ValueError("box_head_grounding needs the T5 encoder's output")
        with torch.no_grad():
            moments = grounding_moments(self.grounding_head(encoder_states)[:, 0])
        return self.box_head(first_state, moments)

    def _weighted_mask_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, dice_rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mask decoder's loss form (also the grounding and class-map heads'): focal and dice
        (:func:`heads.mask_losses`), weighted by ``config.mask_focal_weight`` and ``config.mask_dice_weight``."""
        focal, dice = mask_losses(logits, targets, dice_rows)
        return self.config.mask_focal_weight * focal + self.config.mask_dice_weight * dice

    def _class_map_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """The mask loss's form on per-class grid maps: focal over every cell of every class map of
        the images with objects, dice over the (image, class) maps whose class is present."""
        rows = (classes >= 0).any(1)
        logits, targets, classes = logits[rows], targets[rows], classes[rows]
        valid = classes >= 0
        one_hot = nn.functional.one_hot(classes.clamp(min=0), targets.shape[1]).bool() & valid[..., None]
        present = one_hot.any(1)  # (images, classes): which classes each image has
        return self._weighted_mask_loss(logits.flatten(0, 1), targets.flatten(0, 1), present.flatten())

    @staticmethod
    def _mask_prompt_boxes(
        pred_boxes: torch.Tensor | None,
        box_targets: torch.Tensor | None,
        box_mask: torch.Tensor | None,
        batch: int,
    ) -> torch.Tensor:
        """Ground-truth boxes where known (teacher forcing), else the box head's prediction."""
        if box_targets is None:
            if pred_boxes is None:
                raise ValueError(
                    "mask_targets need box_targets or decoder labels (the box prompt comes from one of them)"
                )
            return pred_boxes
        known = (
            box_mask.bool()
            if box_mask is not None
            else torch.ones(batch, dtype=torch.bool, device=box_targets.device)
        )
        if pred_boxes is None:
            if not bool(known.all()):
                raise ValueError(
                    "mask_targets without decoder labels need a valid box_targets row for every image"
                )
            return box_targets
        return torch.where(known[:, None], box_targets.to(pred_boxes.dtype), pred_boxes)

    # --- real weights -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained_backbones(
        cls,
        config: PixtokConfig,
        sam: str | Path | None = None,
        eva02: str | Path | None = None,
        t5: str | Path | None = None,
    ) -> PixtokForConditionalGeneration:
        """Build a model whose towers and T5 come from their own pretrained checkpoints.

        Args:
            config: the sizes; each checkpoint must match its sub-config.
            sam: an official segment-anything ``.pth``, a transformers SAM folder or hub id, or a
                file written by ``pixtok convert-sam``: fills the SAM image encoder, the prompt
                encoder and the mask decoder.
            eva02: a timm model name (``eva02_large_patch14_448...``) or a local weights file.
            t5: any T5 / Flan-T5 folder or hub id (``T5ForConditionalGeneration.from_pretrained``);
                its embedding and LM head rows are copied into the pixtok vocabulary's first rows.

        Raises:
            ValueError: a checkpoint's keys or shapes do not match (every mismatch is named).
        """
        model = cls(config)
        if sam is not None:
            parts = load_sam_weights(sam)
            load_state_dict_checked(
                model.model.towers.sam, parts["image_encoder"], f"{sam} (SAM image encoder)"
            )
            load_state_dict_checked(
                model.model.prompt_encoder, parts["prompt_encoder"], f"{sam} (SAM prompt encoder)"
            )
            load_state_dict_checked(model.mask_decoder, parts["mask_decoder"], f"{sam} (SAM mask decoder)")
        if eva02 is not None:
            load_state_dict_checked(model.model.towers.eva, load_timm_eva02(eva02), f"{eva02} (EVA02)")
        if t5 is not None:
            model.model.load_t5(t5)
        model.apply_freeze_policy()
        return model


__all__ = [
    "PixtokForConditionalGeneration",
    "PixtokGenerateOutput",
    "PixtokModel",
    "PixtokModelOutput",
    "PixtokOutput",
    "PixtokPreTrainedModel",
    "extend_vocabulary_rows",
    "shift_right",
]
