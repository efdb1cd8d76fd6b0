"""Configuration of the Pix2Seq-D panoptic sibling (:class:`PixtokForPanopticSegmentation`).

The model has three parts, each with its own config: the two image towers of pixtok (SAM vision
tower, :class:`~.configuration_towers.PixtokEva02Config`) as the conditioning encoder, and the
bit-diffusion mask decoder (:class:`PixtokPanopticDecoderConfig`). The composite
:class:`PixtokPanopticConfig` adds the label space and the diffusion settings.

Sizes live only in :data:`PANOPTIC_PRESETS` (plain dicts, timm style); the tower sizes of each
preset are those of the pixtok preset of the same name (:mod:`.presets`), so both model families
share one definition of ``tiny`` and ``base`` towers.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

from .configuration_towers import PixtokEva02Config, SamVisionConfig
from .presets import PRESETS as PIXTOK_PRESETS


class PixtokPanopticDecoderConfig(PretrainedConfig):
    r"""Configuration of the bit-diffusion mask decoder.

    The decoder patchifies the noisy and self-conditioning analog bits (``2 * num_bits`` channels at
    mask resolution) down to the image feature grid, adds the projected image features and a time
    embedding, runs ``num_hidden_layers`` transformer blocks (self-attention, cross-attention to the
    image features, MLP), then upsamples back to mask resolution (one 2x stage per factor of two,
    with a full-resolution skip from the bit input) and predicts the clean analog bits ``x_0``.

    Args:
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the decoder tokens.
        num_hidden_layers (`int`, *optional*, defaults to 6):
            Transformer blocks over the feature-grid tokens.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the self- and cross-attention.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP hidden width relative to ``hidden_size``.
        upsample_channels (`int`, *optional*, defaults to 64):
            Channels of the upsampling decoder (every stage).
        skip_channels (`int`, *optional*, defaults to 32):
            Channels of the full-resolution skip branch (reads the image at mask resolution and the
            self-conditioning estimate).
        skip_noisy_bits (`bool`, *optional*, defaults to `False`):
            Whether the skip branch also reads the noisy bits ``x_t`` pixel by pixel. Off by default:
            then every pixel's choice of instance id goes through the token grid, where attention
            keeps it consistent over an object (on 8 synthetic scenes, 12k steps: instance purity
            0.86 with the noisy bits in the skip, 0.997 without; PQ 0.83 -> 0.91).
        time_embedding_dim (`int`, *optional*, defaults to 128):
            Sinusoidal features of ``t`` before the time MLP.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout in attention and MLP.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            LayerNorm epsilon.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the truncated-normal init of linear layers.
    """

    model_type = "pixtok_panoptic_decoder"

    def __init__(
        self,
        hidden_size: int = 256,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        mlp_ratio: float = 4.0,
        upsample_channels: int = 64,
        skip_channels: int = 32,
        skip_noisy_bits: bool = False,
        time_embedding_dim: int = 128,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"decoder hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
            )
        if time_embedding_dim % 2 != 0:
            raise ValueError(f"time_embedding_dim must be even, got {time_embedding_dim}")
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.upsample_channels = upsample_channels
        self.skip_channels = skip_channels
        self.skip_noisy_bits = skip_noisy_bits
        self.time_embedding_dim = time_embedding_dim
        self.dropout = dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


def _sub_config(
    cls: type[PretrainedConfig], value: PretrainedConfig | dict[str, Any] | None
) -> PretrainedConfig:
    """A sub-config from an instance, a dict of its kwargs, or ``None`` (defaults)."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__}, a dict or None, got {type(value).__name__}")


class PixtokPanopticConfig(PretrainedConfig):
    r"""Configuration of :class:`PixtokForPanopticSegmentation` (Pix2Seq-D by bit diffusion).

    Label space: ``id2label`` maps contiguous label ids ``0 .. num_labels - 1`` to names; the bit
    codec stores a pixel's class as ``label_id + 1`` (``0`` = void, unlabelled pixels) and its
    instance as an id in ``[1, 2**instance_bits - 1]`` (``0`` = no instance: stuff or void).
    ``thing_label_ids`` says which labels are countable things; the others are stuff and are merged
    into one segment per label by post-processing.

    Args:
        vision_config (`SamVisionConfig` or `dict`, *optional*):
            SAM vision tower (transformers' ``SamVisionConfig``); defaults to the ``base`` preset's.
        eva_config (`PixtokEva02Config` or `dict`, *optional*):
            EVA02 tower; defaults to ``PixtokEva02Config()``.
        decoder_config (`PixtokPanopticDecoderConfig` or `dict`, *optional*):
            Bit-diffusion mask decoder.
        id2label (`dict[int, str]`, *optional*):
            Label names, contiguous ids from 0. Defaults to two labels ``thing``, ``stuff``.
        thing_label_ids (`list[int]`, *optional*):
            Label ids that are things (instances kept apart); defaults to none.
        class_bits (`int`, *optional*, defaults to 8):
            Bits for the class value; must hold ``num_labels + 1`` values (void included).
        instance_bits (`int`, *optional*, defaults to 8):
            Bits for the instance id; an image holds at most ``2**instance_bits - 1`` instances.
            Pix2Seq-D writes 16 bits per pixel in all: ``class_bits + instance_bits = 16`` by default.
            Ids are arbitrary labels (shuffled in training) and each object draws one at sampling:
            too few bits and two objects may draw the same id and merge; more bits are more random
            digits to denoise. Overfitting 8 synthetic scenes (up to 5 things) for 16k steps:
            3 bits -> things PQ 0.76 (merges the only failure), 8 bits -> 0.25 (fragments).
        bit_scale (`float`, *optional*, defaults to 0.1):
            Analog bit magnitude ``b``: bits are ``{-b, +b}`` (Pix2Seq-D's input scaling).
        mask_size (`int`, *optional*, defaults to 512):
            Side of the square (class, instance) map the model writes, covering the padded square
            model input; ``mask_size / feature grid`` must be a power of two. Post-processing
            upsamples it (nearest) to the image size.
        num_sampling_steps (`int`, *optional*, defaults to 20):
            DDIM steps of :meth:`generate` unless overridden.
        sampling_td (`float`, *optional*, defaults to 1.0):
            Time difference of the DDIM sampler (asymmetric time intervals; 0 = plain DDIM).
        self_condition (`bool`, *optional*, defaults to `True`):
            Condition the decoder on its own ``x_0`` estimate (training: half of the steps).
        self_condition_rate (`float`, *optional*, defaults to 0.5):
            Fraction of training steps that compute a self-conditioning estimate (without grad).
        noise_schedule (`str`, *optional*, defaults to `"cosine"`):
            Name in :data:`~.bit_diffusion.NOISE_SCHEDULES`.
        loss_weight_power (`float`, *optional*, defaults to 0.2):
            Mask-loss re-weighting: a pixel of a segment of ``n`` pixels weighs ``n ** -p``
            (normalized to mean 1 per image); 0 disables it.
        randomize_instance_ids (`bool`, *optional*, defaults to `True`):
            Relabel instances with random distinct ids at every training step (Pix2Seq-D).
        freeze_towers (`bool`, *optional*, defaults to `True`):
            Keep the image towers frozen (no grad, eval mode); `False` trains them too.
        min_segment_area (`int`, *optional*, defaults to 0):
            Default minimum pixel count (at output size) of a kept segment in post-processing.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the init of the decoder's linear layers.
    """

    model_type = "pixtok_panoptic"
    sub_configs = {
        "vision_config": SamVisionConfig,
        "eva_config": PixtokEva02Config,
        "decoder_config": PixtokPanopticDecoderConfig,
    }

    def __init__(
        self,
        vision_config: SamVisionConfig | dict[str, Any] | None = None,
        eva_config: PixtokEva02Config | dict[str, Any] | None = None,
        decoder_config: PixtokPanopticDecoderConfig | dict[str, Any] | None = None,
        thing_label_ids: list[int] | None = None,
        class_bits: int = 8,
        instance_bits: int = 8,
        bit_scale: float = 0.1,
        mask_size: int = 512,
        num_sampling_steps: int = 20,
        sampling_td: float = 1.0,
        self_condition: bool = True,
        self_condition_rate: float = 0.5,
        noise_schedule: str = "cosine",
        loss_weight_power: float = 0.2,
        randomize_instance_ids: bool = True,
        freeze_towers: bool = True,
        min_segment_area: int = 0,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if vision_config is None:
            vision_config = copy.deepcopy(PIXTOK_PRESETS["base"]["vision_config"])
        if not isinstance(vision_config, SamVisionConfig):
            # SamVisionConfig's own default init is std 1e-10 (it expects released weights): a tower
            # trained from scratch would output ~0. Use the usual 0.02 unless told otherwise.
            vision_config = {"initializer_range": 0.02, **vision_config}
        self.vision_config = _sub_config(SamVisionConfig, vision_config)
        self.eva_config = _sub_config(PixtokEva02Config, eva_config)
        self.decoder_config = _sub_config(PixtokPanopticDecoderConfig, decoder_config)
        self.thing_label_ids = sorted(int(i) for i in (thing_label_ids or []))
        self.class_bits = class_bits
        self.instance_bits = instance_bits
        self.bit_scale = bit_scale
        self.mask_size = mask_size
        self.num_sampling_steps = num_sampling_steps
        self.sampling_td = sampling_td
        self.self_condition = self_condition
        self.self_condition_rate = self_condition_rate
        self.noise_schedule = noise_schedule
        self.loss_weight_power = loss_weight_power
        self.randomize_instance_ids = randomize_instance_ids
        self.freeze_towers = freeze_towers
        self.min_segment_area = min_segment_area
        self.initializer_range = initializer_range
        if kwargs.get("id2label") is None:
            kwargs["id2label"] = {0: "thing", 1: "stuff"}
            if thing_label_ids is None:
                self.thing_label_ids = [0]
        super().__init__(**kwargs)
        self.validate_panoptic()

    def validate_panoptic(self) -> None:
        """Raise ``ValueError`` naming the field when the settings cannot work together."""
        labels = sorted(int(k) for k in self.id2label)
        if labels != list(range(len(labels))):
            raise ValueError(f"id2label keys must be contiguous from 0, got {labels[:10]}...")
        if len(labels) + 1 > 1 << self.class_bits:
            raise ValueError(
                f"class_bits={self.class_bits} holds {1 << self.class_bits} class values but "
                f"{len(labels)} labels + void need {len(labels) + 1}"
            )
        if self.instance_bits < 1 or self.class_bits < 1:
            raise ValueError("class_bits and instance_bits must be >= 1")
        bad = [i for i in self.thing_label_ids if i not in self.id2label]
        if bad:
            raise ValueError(f"thing_label_ids {bad} are not keys of id2label")
        if not self.bit_scale > 0:
            raise ValueError(f"bit_scale must be positive, got {self.bit_scale}")
        if not 0.0 <= self.self_condition_rate <= 1.0:
            raise ValueError(f"self_condition_rate must be in [0, 1], got {self.self_condition_rate}")
        if self.num_sampling_steps < 1:
            raise ValueError(f"num_sampling_steps must be >= 1, got {self.num_sampling_steps}")
        grid = self.feature_grid_size
        ratio = self.mask_size // grid
        if self.mask_size % grid != 0 or ratio & (ratio - 1) != 0:
            raise ValueError(
                f"mask_size ({self.mask_size}) must be the feature grid ({grid}) times a power of two"
            )
        from .bit_diffusion import NOISE_SCHEDULES

        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule {self.noise_schedule!r} not in {sorted(NOISE_SCHEDULES)}")

    @property
    def num_bits(self) -> int:
        """Analog bit channels per pixel, ``class_bits + instance_bits``."""
        return self.class_bits + self.instance_bits

    @property
    def feature_grid_size(self) -> int:
        """Side of the image feature grid (the SAM tower's patch grid)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def stuff_label_ids(self) -> list[int]:
        """Label ids that are not things, ascending."""
        things = set(self.thing_label_ids)
        return [i for i in sorted(int(k) for k in self.id2label) if i not in things]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PixtokPanopticConfig:
        """Config of preset ``name`` (see :data:`PANOPTIC_PRESETS`), top-level fields overridden.

        Raises:
            ValueError: unknown preset name (the message lists the known ones).
        """
        if name not in PANOPTIC_PRESETS:
            raise ValueError(
                f"unknown panoptic preset {name!r}; known presets: {', '.join(PANOPTIC_PRESETS)}"
            )
        kwargs = copy.deepcopy(PANOPTIC_PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)


PANOPTIC_PRESETS: dict[str, dict[str, Any]] = {
    # every part real but small: the 8 x 8 feature grid of pixtok's tiny towers, 32 x 32 masks,
    # 3 + 3 bits (7 labels, 7 instances), a 2-block decoder; trains a step on CPU in well under a second
    "tiny": {
        "vision_config": PIXTOK_PRESETS["tiny"]["vision_config"],
        "eva_config": PIXTOK_PRESETS["tiny"]["eva_config"],
        "decoder_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2.0,
            "upsample_channels": 16,
            "skip_channels": 8,
            "time_embedding_dim": 16,
        },
        "id2label": {0: "square", 1: "disc", 2: "background"},
        "thing_label_ids": [0, 1],
        "class_bits": 3,
        "instance_bits": 3,
        "mask_size": 32,
        "num_sampling_steps": 4,
    },
    # pixtok's small towers (16 x 16 grid at 128 px), 64 x 64 masks, a 4-block decoder of width
    # 256: the size the learning benchmark trains from scratch in minutes on one GPU
    "small": {
        "vision_config": PIXTOK_PRESETS["small"]["vision_config"],
        "eva_config": PIXTOK_PRESETS["small"]["eva_config"],
        "decoder_config": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8},
        "class_bits": 4,
        "instance_bits": 3,
        "mask_size": 64,
        "num_sampling_steps": 20,
        "sampling_td": 1.0,
    },
    # pixtok's base towers (SAM ViT-B at 1024 px: 64 x 64 grid, EVA02-B/14), 512 x 512 masks as
    # Pix2Seq-D for 1024 px inputs, 16 bits per pixel (8 class + 8 instance), 6-block decoder
    "base": {
        "vision_config": PIXTOK_PRESETS["base"]["vision_config"],
        "eva_config": PIXTOK_PRESETS["base"]["eva_config"],
        "decoder_config": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8},
        "class_bits": 8,
        "instance_bits": 8,
        "mask_size": 512,
        "num_sampling_steps": 20,
        "sampling_td": 1.0,
    },
}
"""Preset name -> :class:`PixtokPanopticConfig` keyword arguments (sub-configs as dicts)."""


__all__ = ["PANOPTIC_PRESETS", "PixtokPanopticConfig", "PixtokPanopticDecoderConfig"]
