"""Configuration of the PixelLLM-shaped pixtok model.

:class:`PixtokConfig` is a composite config: the SAM image encoder, SAM prompt encoder and SAM mask
decoder keep transformers' own SAM configs, the EVA02 tower its :class:`PixtokEva02Config`, the
language model a plain :class:`~transformers.T5Config`, and the prompt feature extractor the small
:class:`PixtokPromptExtractorConfig` below. Numbers that one part dictates to another are derived
here, never repeated: the T5 vocabulary size is ``vocab_from_config(config).size`` (rounded up to
``pad_vocab_to_multiple_of``), the prompt encoder's image and patch size are the SAM tower's, and
its width is the SAM neck's.
"""

from __future__ import annotations

import numbers
from typing import Any

from transformers import PretrainedConfig, T5Config

from .configuration_towers import (
    PixtokEva02Config,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from .presets import COCO_CLASSES, preset_kwargs
from .vocab import DECODER_START_ID, EOS_ID, PAD_ID, PixtokVocab, vocab_from_config


class PixtokPromptExtractorConfig(PretrainedConfig):
    r"""Configuration of the prompt feature extractor (a two-way transformer with learnable tokens).

    Args:
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the two-way transformer; image features and prompt embeddings are projected to it.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of two-way attention blocks (the extractor's depth).
        num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads per block.
        mlp_dim (`int`, *optional*, defaults to 2048):
            Hidden width of each block's MLP.
        num_tokens (`int`, *optional*, defaults to 32):
            Learnable output tokens; they become the T5 encoder's visual prefix.
        attention_downsample_rate (`int`, *optional*, defaults to 2):
            Token-to-image / image-to-token attention runs at ``hidden_size // rate`` channels.
        hidden_act (`str`, *optional*, defaults to `"relu"`):
            Activation of the MLPs.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            LayerNorm epsilon.
        grid_tokens (`int`, *optional*, defaults to 0):
            Side of an extra grid of image tokens handed to the language model after the learnable
            tokens, with their positional encoding, average-pooled to ``grid_tokens x grid_tokens``
            (0: none, PixelLLM's prefix). They let the T5 cross-attend image positions directly,
            as Pix2Seq's decoder does.
        grid_source (`str`, *optional*, defaults to `"transformer"`):
            What the grid tokens are made of: ``"transformer"``, the two-way transformer's output
            image tokens, or ``"features"``, its input ones (projected fused features plus the
            dense prompt embedding, before any prompt token has been read).
        position_in_values (`bool`, *optional*, defaults to `False`):
            Add the image positional encoding to the image tokens themselves before the two-way
            transformer, so that attention reads position in its values, not only in its weights
            (SAM adds it to queries and keys only).
    """

    model_type = "pixtok_prompt_extractor"

    def __init__(
        self,
        hidden_size: int = 256,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 8,
        mlp_dim: int = 2048,
        num_tokens: int = 32,
        attention_downsample_rate: int = 2,
        hidden_act: str = "relu",
        layer_norm_eps: float = 1e-6,
        grid_tokens: int = 0,
        grid_source: str = "transformer",
        position_in_values: bool = False,
        **kwargs: Any,
    ) -> None:
        if hidden_size % (num_attention_heads * attention_downsample_rate) != 0:
            raise ValueError(
                f"extractor hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                f"({num_attention_heads}) x attention_downsample_rate ({attention_downsample_rate})"
            )
        if num_tokens < 1:
            raise ValueError(f"extractor num_tokens must be positive, got {num_tokens}")
        if grid_tokens < 0:
            raise ValueError(f"extractor grid_tokens must be >= 0 (0: no grid tokens), got {grid_tokens}")
        if grid_source not in ("features", "transformer"):
            raise ValueError(
                f"extractor grid_source must be 'features' or 'transformer', got {grid_source!r}"
            )
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_dim = mlp_dim
        self.num_tokens = num_tokens
        self.attention_downsample_rate = attention_downsample_rate
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.grid_tokens = grid_tokens
        self.grid_source = grid_source
        self.position_in_values = position_in_values
        super().__init__(**kwargs)

    @property
    def prefix_length(self) -> int:
        """Tokens the extractor hands to the language model: learnable tokens + grid tokens."""
        return self.num_tokens + self.grid_tokens**2

    def two_way_config(self) -> SamMaskDecoderConfig:
        """The :class:`SamMaskDecoderConfig` that sizes transformers' ``SamTwoWayTransformer`` for us."""
        return SamMaskDecoderConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            mlp_dim=self.mlp_dim,
            attention_downsample_rate=self.attention_downsample_rate,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )


def _as_config(value: Any, cls: type[PretrainedConfig]) -> PretrainedConfig:
    """A sub-config from `None` (defaults), a dict of keyword arguments, or an instance."""
    if value is None:
        return cls()
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "model_type"}
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__}, a dict or None, got {type(value).__name__}")


class PixtokConfig(PretrainedConfig):
    r"""Configuration of :class:`PixtokModel` / :class:`PixtokForConditionalGeneration`.

    Build named sizes with :meth:`from_preset` (``tiny``, ``small``, ``base``, ``large``, ``pixelllm-xl``); the
    bare defaults are a SAM ViT-B + EVA02-L + T5-small mix meant only as a starting point.

    Args:
        vision_config (`dict` or `SamVisionConfig`, *optional*):
            SAM image encoder. Its ``image_size`` is the processor's ``S`` (``pixel_values`` side);
            ``image_size / patch_size`` is the feature grid ``g``; masks come out at ``4 g``.
        prompt_encoder_config (`dict` or `SamPromptEncoderConfig`, *optional*):
            SAM prompt encoder. ``hidden_size``, ``image_size`` and ``patch_size`` are always taken
            from ``vision_config`` (``output_channels``, ``image_size``, ``patch_size``).
        mask_decoder_config (`dict` or `SamMaskDecoderConfig`, *optional*):
            SAM mask decoder used by the referring-segmentation head; its ``hidden_size`` must
            equal ``vision_config.output_channels``.
        eva_config (`dict` or `PixtokEva02Config`, *optional*):
            EVA02 tower. Its ``img_size`` is the processor's ``E`` (``eva_pixel_values`` side).
        text_config (`dict` or `T5Config`, *optional*):
            The T5 encoder-decoder. ``vocab_size``, ``pad_token_id``, ``eos_token_id`` and
            ``decoder_start_token_id`` are derived from the pixtok vocabulary and overwritten
            (``vocab_size`` is ``vocab.size`` rounded up to ``pad_vocab_to_multiple_of``).
        extractor_config (`dict` or `PixtokPromptExtractorConfig`, *optional*):
            Prompt feature extractor (depth, 32 learnable tokens, width, heads, MLP width).
        num_bins (`int`, *optional*, defaults to 1000):
            Coordinate quantization bins of the token space (see ``vocab.py``).
        base_vocab_size (`int`, *optional*, defaults to 32100):
            Entries of the base T5 tokenizer; pixtok's tokens are appended after them.
        num_sentinel_tokens (`int`, *optional*):
            How many ids at the end of the base vocabulary are T5's ``<extra_id_*>`` sentinels, which
            text decoding never emits; defaults to 100 when ``base_vocab_size`` is T5's 32100, else 0.
        open_vocabulary (`bool`, *optional*, defaults to `False`):
            Write detection classes as text instead of ``<cls_c>`` tokens.
        id2label (`dict[int, str]`, *optional*, defaults to the 80 COCO classes):
            Closed-set class names, one ``<cls_c>`` token each.
        pad_vocab_to_multiple_of (`int`, *optional*, defaults to 1):
            Round the T5's embedding / LM-head rows (``text_config.vocab_size``) up to a multiple of
            this, as ``resize_token_embeddings(pad_to_multiple_of=...)`` does: an LM-head GEMM whose
            width is a multiple of 64 runs on the GPU's fast kernels, an odd one (``base``'s 33187)
            on slow ones. The extra ids past ``vocab.size`` are never tokens: the tokenizer never
            produces them, decoding grammars never allow them and the LM loss leaves their logits
            out. 1: no padding (the T5 has exactly ``vocab.size`` rows).
        max_objects (`int`, *optional*, defaults to 100):
            Most objects a detection sequence holds (decode budget ``5 * max_objects + 1``).
        decoder_position_embeddings (`int`, *optional*, defaults to 0):
            Rows of a learned absolute position table added to the T5 decoder's input embeddings, as
            Pix2Seq's decoder has (0: none, the T5 as released, with relative positions only). With
            it, a T5 trained from scratch finds a token's place in the five-token object grammar far
            sooner (``benchmarks/learning/localization_probe.py``). Decoding stops at this many
            steps.
        text_embedding_init_std (`float`, *optional*):
            Std of the T5's initial embedding rows (shared with its LM head) and of the decoder
            position table, instead of T5's ``initializer_factor``. For training from scratch with
            T5's own init (factor 1.0) and unscaled decoder outputs, ``d_model ** -0.5`` starts the
            logits at unit std with the head of a plain transformer decoder. A fresh model only:
            loaded and pretrained weights are not touched. `None`: T5's init.
        text_input_scale (`float`, *optional*, defaults to 1.0):
            Multiplier of the T5's input embeddings: the encoder's text tokens and the decoder's
            input tokens with their position rows. T5 as released uses 1.0 (its rows are ~unit
            scale). A model trained from scratch with ``text_embedding_init_std = d_model ** -0.5``
            (the tied head's rows of a plain transformer) sets ``d_model ** 0.5``, the transformer's
            own input scaling: otherwise its text and decoder tokens enter at 1/20 of the image
            tokens' and attention outputs' scale and must first grow before they are heard.
        num_proposals (`int`, *optional*, defaults to 20):
            Boxes the proposal head keeps per image for dense captioning.
        trace_head_hidden_size (`int`, *optional*, defaults to 256):
            Hidden width of the trace MLP (decoder state -> (x, y)).
        trace_head_num_layers (`int`, *optional*, defaults to 3):
            Linear layers of the trace MLP.
        box_head_hidden_size (`int`, *optional*, defaults to 256):
            Hidden width of the box MLP (first output state -> box).
        box_head_num_layers (`int`, *optional*, defaults to 3):
            Linear layers of the box MLP.
        proposal_head_hidden_size (`int`, *optional*, defaults to 256):
            Channels of the proposal head's convolutions on the fused image features.
        label_smoothing (`float`, *optional*, defaults to 0.1):
            Label smoothing of the LM cross-entropy.
        coordinate_label_sigma (`float`, *optional*, defaults to 0.0):
            Std, in bins, of a Gaussian target over the coordinate bins around each coordinate
            token (cut at 3 std); 0 keeps the one-hot target. With many bins per pixel (1,000 over a
            128 px image is ~8) a prediction a few bins off then counts as nearly right, so
            positions are learned coarse-first; the target bin stays the optimum.
        eos_weight (`float`, *optional*, defaults to 0.1):
            Loss weight of EOS targets when ``label_weights`` is not given (Pix2Seq).
        lm_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the LM loss in the total.
        trace_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the trace L1 loss in the total.
        box_l1_weight (`float`, *optional*, defaults to 5.0):
            Weight of the box head's L1 term (DETR's ratio).
        box_giou_weight (`float`, *optional*, defaults to 2.0):
            Weight of the box head's GIoU term.
        mask_focal_weight (`float`, *optional*, defaults to 20.0):
            Weight of the mask focal term (SAM's 20 : 1 focal : dice).
        mask_dice_weight (`float`, *optional*, defaults to 1.0):
            Weight of the mask dice term.
        grounding_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the referring grounding loss (0: no grounding head). A linear head on the T5
            encoder's output at the extractor's grid tokens (``extractor_config.grid_tokens`` > 0)
            says which grid cells the referred object's mask covers: focal and dice terms (weighted
            as the mask loss's) against the mask target average-pooled to the grid. The encoder
            then has to mark the object the text names on the image tokens themselves, a dense
            signal for tying words to image regions that the box and coordinate losses give only
            through one decoder state. Training only, unless ``box_head_grounding`` is set.
        box_head_grounding (`bool`, *optional*, defaults to `False`):
            The box head also reads where the grounding head's map points (its centroid, spread,
            mass and peak cell: ``heads.grounding_moments``, detached), in training and generation.
            The map is the encoder's dense answer to "which cells does the text name"; the first
            decoder state alone carries it only through cross-attention. Needs
            ``grounding_loss_weight`` > 0.
        class_map_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the detection class-map loss (0: no class-map head). The grounding head's form
            with one channel per class (``id2label``): on detection examples it says, per grid cell,
            which classes' boxes cover it, against the ground-truth boxes rasterised to the grid
            (focal over every cell and class, dice over the classes present, the mask loss's
            weights). A dense signal on the encoder's image tokens, where the sequence loss reaches
            them only through cross-attention. Training only; needs ``extractor_config.grid_tokens`` > 0.
        proposal_objectness_weight (`float`, *optional*, defaults to 1.0):
            Weight of the proposal head's focal objectness term.
        proposal_l1_weight (`float`, *optional*, defaults to 5.0):
            Weight of the proposal head's box L1 term.
        proposal_giou_weight (`float`, *optional*, defaults to 2.0):
            Weight of the proposal head's GIoU term.
        lora_r (`int`, *optional*, defaults to 32):
            LoRA rank on the T5 (0 disables LoRA).
        lora_alpha (`int`, *optional*, defaults to 64):
            LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout (`float`, *optional*, defaults to 0.05):
            Dropout on the LoRA input.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q", "v"]`):
            Names of the T5 attention Linear layers that get LoRA adapters.
        freeze_towers (`bool`, *optional*, defaults to `True`):
            Freeze the SAM image encoder and the EVA02 tower.
        freeze_text_model (`bool`, *optional*):
            Freeze the T5 weights; defaults to ``lora_r > 0``. The rows of the tokens pixtok adds
            to the vocabulary stay trainable through small delta tables (see ``lora.py``).
        tokenizer_name_or_path (`str`, *optional*, defaults to `"google-t5/t5-small"`):
            Base tokenizer the processor loads: ``"pixtok-tiny"`` (shipped in ``model/assets``) or a
            hub id / path of a T5 tokenizer.
    """

    model_type = "pixtok"
    sub_configs = {
        "vision_config": SamVisionConfig,
        "prompt_encoder_config": SamPromptEncoderConfig,
        "mask_decoder_config": SamMaskDecoderConfig,
        "eva_config": PixtokEva02Config,
        "text_config": T5Config,
        "extractor_config": PixtokPromptExtractorConfig,
    }

    def __init__(
        self,
        vision_config: dict | SamVisionConfig | None = None,
        prompt_encoder_config: dict | SamPromptEncoderConfig | None = None,
        mask_decoder_config: dict | SamMaskDecoderConfig | None = None,
        eva_config: dict | PixtokEva02Config | None = None,
        text_config: dict | T5Config | None = None,
        extractor_config: dict | PixtokPromptExtractorConfig | None = None,
        num_bins: int = 1000,
        base_vocab_size: int = 32100,
        num_sentinel_tokens: int | None = None,
        open_vocabulary: bool = False,
        id2label: dict[int, str] | None = None,
        pad_vocab_to_multiple_of: int = 1,
        max_objects: int = 100,
        decoder_position_embeddings: int = 0,
        text_embedding_init_std: float | None = None,
        text_input_scale: float = 1.0,
        num_proposals: int = 20,
        trace_head_hidden_size: int = 256,
        trace_head_num_layers: int = 3,
        box_head_hidden_size: int = 256,
        box_head_num_layers: int = 3,
        proposal_head_hidden_size: int = 256,
        label_smoothing: float = 0.1,
        coordinate_label_sigma: float = 0.0,
        eos_weight: float = 0.1,
        lm_loss_weight: float = 1.0,
        trace_loss_weight: float = 1.0,
        box_l1_weight: float = 5.0,
        box_giou_weight: float = 2.0,
        mask_focal_weight: float = 20.0,
        mask_dice_weight: float = 1.0,
        grounding_loss_weight: float = 0.0,
        class_map_loss_weight: float = 0.0,
        box_head_grounding: bool = False,
        proposal_objectness_weight: float = 1.0,
        proposal_l1_weight: float = 5.0,
        proposal_giou_weight: float = 2.0,
        lora_r: int = 32,
        lora_alpha: int = 64,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | tuple[str, ...] = ("q", "v"),
        freeze_towers: bool = True,
        freeze_text_model: bool | None = None,
        tokenizer_name_or_path: str = "google-t5/t5-small",
        **kwargs: Any,
    ) -> None:
        if not isinstance(vision_config, SamVisionConfig):
            # transformers' SamVisionConfig initialises weights at std 1e-10 (it expects released
            # weights): a SAM tower trained from scratch would output ~0. Use the usual 0.02.
            vision_config = {"initializer_range": 0.02, **(vision_config or {})}
        self.vision_config = _as_config(vision_config, SamVisionConfig)
        self.eva_config = _as_config(eva_config, PixtokEva02Config)
        self.extractor_config = _as_config(extractor_config, PixtokPromptExtractorConfig)
        self.mask_decoder_config = _as_config(mask_decoder_config, SamMaskDecoderConfig)
        prompt = (
            prompt_encoder_config.to_dict()
            if isinstance(prompt_encoder_config, PretrainedConfig)
            else dict(prompt_encoder_config or {})
        )
        prompt.update(
            hidden_size=self.vision_config.output_channels,
            image_size=self.vision_config.image_size,
            patch_size=self.vision_config.patch_size,
        )
        self.prompt_encoder_config = _as_config(prompt, SamPromptEncoderConfig)
        if self.mask_decoder_config.hidden_size != self.vision_config.output_channels:
            raise ValueError(
                f"mask_decoder_config.hidden_size ({self.mask_decoder_config.hidden_size}) must equal "
                f"vision_config.output_channels ({self.vision_config.output_channels})"
            )
        if self.vision_config.image_size % self.vision_config.patch_size != 0:
            raise ValueError(
                f"vision_config.image_size ({self.vision_config.image_size}) must be a multiple of its "
                f"patch_size ({self.vision_config.patch_size})"
            )

        self.num_bins = num_bins
        self.base_vocab_size = base_vocab_size
        if num_sentinel_tokens is None:
            num_sentinel_tokens = 100 if base_vocab_size == 32100 else 0
        self.num_sentinel_tokens = num_sentinel_tokens
        self.open_vocabulary = open_vocabulary
        if (
            isinstance(pad_vocab_to_multiple_of, bool)
            or not isinstance(pad_vocab_to_multiple_of, numbers.Integral)
            or pad_vocab_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_vocab_to_multiple_of must be a positive int (1: no padding), got {pad_vocab_to_multiple_of!r}"
            )
        self.pad_vocab_to_multiple_of = int(pad_vocab_to_multiple_of)
        self.max_objects = max_objects
        if decoder_position_embeddings < 0:
            raise ValueError(f"decoder_position_embeddings must be >= 0, got {decoder_position_embeddings}")
        self.decoder_position_embeddings = decoder_position_embeddings
        if text_embedding_init_std is not None and not text_embedding_init_std > 0:
            raise ValueError(f"text_embedding_init_std must be > 0 or None, got {text_embedding_init_std}")
        self.text_embedding_init_std = text_embedding_init_std
        if not text_input_scale > 0:
            raise ValueError(f"text_input_scale must be > 0, got {text_input_scale}")
        self.text_input_scale = float(text_input_scale)
        self.num_proposals = num_proposals
        self.trace_head_hidden_size = trace_head_hidden_size
        self.trace_head_num_layers = trace_head_num_layers
        self.box_head_hidden_size = box_head_hidden_size
        self.box_head_num_layers = box_head_num_layers
        self.proposal_head_hidden_size = proposal_head_hidden_size
        self.label_smoothing = label_smoothing
        if coordinate_label_sigma < 0:
            raise ValueError(f"coordinate_label_sigma must be >= 0, got {coordinate_label_sigma}")
        self.coordinate_label_sigma = float(coordinate_label_sigma)
        self.eos_weight = eos_weight
        self.lm_loss_weight = lm_loss_weight
        self.trace_loss_weight = trace_loss_weight
        self.box_l1_weight = box_l1_weight
        self.box_giou_weight = box_giou_weight
        self.mask_focal_weight = mask_focal_weight
        self.mask_dice_weight = mask_dice_weight
        for name, weight in (("grounding", grounding_loss_weight), ("class_map", class_map_loss_weight)):
            if weight < 0:
                raise ValueError(f"{name}_loss_weight must be >= 0, got {weight}")
            if weight > 0 and not self.extractor_config.grid_tokens:
                raise ValueError(
                    f"{name}_loss_weight > 0 needs the extractor's grid tokens (extractor_config.grid_tokens > 0): "
                    f"the {name} head reads the T5 encoder's output at them"
                )
        self.grounding_loss_weight = float(grounding_loss_weight)
        self.class_map_loss_weight = float(class_map_loss_weight)
        if box_head_grounding and not self.grounding_loss_weight:
            raise ValueError("box_head_grounding needs the grounding head (grounding_loss_weight > 0)")
        self.box_head_grounding = bool(box_head_grounding)
        self.proposal_objectness_weight = proposal_objectness_weight
        self.proposal_l1_weight = proposal_l1_weight
        self.proposal_giou_weight = proposal_giou_weight
        if lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, got {lora_r}")
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = list(lora_target_modules)
        self.freeze_towers = freeze_towers
        self.freeze_text_model = lora_r > 0 if freeze_text_model is None else freeze_text_model
        self.tokenizer_name_or_path = tokenizer_name_or_path
        if id2label is None and "label2id" not in kwargs:
            id2label = dict(enumerate(COCO_CLASSES))
        if id2label is not None:
            id2label = {int(k): v for k, v in id2label.items()}
        # Derived before the base class runs, so that it reaches every sub-config (attention
        # implementation, dtype): the text vocabulary is the pixtok token space's size, padded.
        self.id2label = id2label
        vocab = vocab_from_config(self)
        text = self.text_config_dict(text_config)
        multiple = self.pad_vocab_to_multiple_of
        text.update(
            vocab_size=-(-vocab.size // multiple) * multiple,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=DECODER_START_ID,
        )
        self.text_config = _as_config(text, T5Config)
        super().__init__(id2label=id2label, **kwargs)

    @staticmethod
    def text_config_dict(text_config: dict | T5Config | None) -> dict[str, Any]:
        """``text_config`` as keyword arguments (``{}`` for T5's defaults)."""
        if isinstance(text_config, PretrainedConfig):
            return text_config.to_dict()
        return dict(text_config or {})

    # --- derived sizes (one source of truth: the sub-configs) -------------------------------------
    @property
    def vocab(self) -> PixtokVocab:
        """The token space this config describes."""
        return vocab_from_config(self)

    @property
    def image_size(self) -> int:
        """``S``: side of ``pixel_values`` (the SAM tower input), pixels."""
        return int(self.vision_config.image_size)

    @property
    def eva_image_size(self) -> int:
        """``E``: side of ``eva_pixel_values`` (the EVA02 tower input), pixels."""
        return int(self.eva_config.img_size)

    @property
    def grid_size(self) -> int:
        """``g``: side of the shared feature grid (SAM patches per side)."""
        return int(self.vision_config.image_size // self.vision_config.patch_size)

    @property
    def mask_size(self) -> int:
        """Side of the referring masks the mask decoder predicts (``4 g``; ``S / 4`` for 16 px patches)."""
        return 4 * self.grid_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PixtokConfig:
        """Build a named size; keyword ``overrides`` replace preset fields.

        A dict override of a sub-config (``text_config={"num_layers": 4}``) updates the preset's
        dict instead of replacing it.

        Args:
            name: ``tiny``, ``small``, ``base``, ``large`` or ``pixelllm-xl``.
            **overrides: any :class:`PixtokConfig` argument.

        Raises:
            ValueError: unknown ``name`` (the message lists the presets).
        """
        kwargs = preset_kwargs(name)
        for key, value in overrides.items():
            if key in cls.sub_configs and isinstance(value, dict) and isinstance(kwargs.get(key), dict):
                kwargs[key] = {**kwargs[key], **value}
            else:
                kwargs[key] = value
        return cls(**kwargs)


__all__ = ["PixtokConfig", "PixtokPromptExtractorConfig"]
