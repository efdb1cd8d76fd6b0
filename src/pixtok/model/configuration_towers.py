"""Configurations of the two image towers.

The SAM tower reuses transformers' own SAM configs unchanged (re-exported here so that the rest of
the model folder imports every tower config from one place). The EVA02 tower is timm's ``Eva``;
:class:`PixtokEva02Config` holds the subset of timm's ``Eva`` keyword arguments that the EVA02
variants use, so that a config round-trips through ``config.json`` and rebuilds the same network.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of EVA02 / CLIP inputs, images scaled to [0, 1]."""
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel std of EVA02 / CLIP inputs, images scaled to [0, 1]."""


class PixtokEva02Config(PretrainedConfig):
    r"""Configuration of the EVA02 image tower (timm's ``Eva`` without a classifier).

    The defaults describe EVA02-L/14 at 448 px (``eva02_large_patch14_448``).

    Args:
        img_size (`int`, *optional*, defaults to 448):
            Side of the square input image in pixels (the processor's ``E``).
        patch_size (`int`, *optional*, defaults to 14):
            Side of a patch in pixels; the output grid is ``img_size // patch_size`` on each side.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        embed_dim (`int`, *optional*, defaults to 1024):
            Width of the transformer (and the number of output channels of the tower).
        depth (`int`, *optional*, defaults to 24):
            Number of transformer blocks.
        num_heads (`int`, *optional*, defaults to 16):
            Attention heads per block.
        mlp_ratio (`float`, *optional*, defaults to 4 * 2 / 3):
            Hidden width of the MLP relative to ``embed_dim`` (EVA02's SwiGLU keeps the parameter
            count of a 4x GELU MLP with 2/3 of the width).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query/key/value projections have a bias.
        qkv_fused (`bool`, *optional*, defaults to `False`):
            One fused qkv projection (`True`) or three separate ones (EVA02 checkpoints: `False`).
        swiglu_mlp (`bool`, *optional*, defaults to `True`):
            SwiGLU MLP instead of a GELU MLP.
        scale_mlp (`bool`, *optional*, defaults to `True`):
            LayerNorm inside the MLP before its output projection (normformer style).
        scale_attn_inner (`bool`, *optional*, defaults to `False`):
            LayerNorm inside attention before its output projection.
        use_abs_pos_emb (`bool`, *optional*, defaults to `True`):
            Learned absolute position embeddings.
        use_rot_pos_emb (`bool`, *optional*, defaults to `True`):
            2-D rotary position embeddings in every block.
        ref_feat_shape (`list[int]`, *optional*, defaults to `[16, 16]`):
            Grid (rows, columns) that the rotary frequencies were trained on (224 / 14 for EVA02);
            `None` uses the input grid.
        class_token (`bool`, *optional*, defaults to `True`):
            Whether the network carries a class token (dropped from the output).
        global_pool (`str`, *optional*, defaults to `"avg"`):
            timm's pooling mode. It fixes where the final LayerNorm sits in the checkpoint: `"avg"`
            (EVA02 classification checkpoints) keeps it as ``fc_norm``, `""`/`"token"` as ``norm``.
            Either way the tower applies that final LayerNorm to every patch token.
        init_values (`float`, *optional*):
            Layer-scale initial value; `None` disables layer scale (EVA02).
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate.
        image_mean (`list[float]`, *optional*, defaults to the CLIP mean):
            Per-channel mean used by the processor for this tower (images in [0, 1]).
        image_std (`list[float]`, *optional*, defaults to the CLIP std):
            Per-channel std used by the processor for this tower.
        timm_name (`str`, *optional*):
            timm architecture whose pretrained weights match this config, e.g.
            ``"eva02_large_patch14_448"`` (optionally with a ``.tag``); `None` for custom sizes.
    """

    model_type = "pixtok_eva02"

    def __init__(
        self,
        img_size: int = 448,
        patch_size: int = 14,
        num_channels: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4 * 2 / 3,
        qkv_bias: bool = True,
        qkv_fused: bool = False,
        swiglu_mlp: bool = True,
        scale_mlp: bool = True,
        scale_attn_inner: bool = False,
        use_abs_pos_emb: bool = True,
        use_rot_pos_emb: bool = True,
        ref_feat_shape: list[int] | tuple[int, int] | int | None = (16, 16),
        class_token: bool = True,
        global_pool: str = "avg",
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
        image_mean: list[float] | tuple[float, ...] = CLIP_MEAN,
        image_std: list[float] | tuple[float, ...] = CLIP_STD,
        timm_name: str | None = "eva02_large_patch14_448",
        **kwargs: Any,
    ) -> None:
        if img_size % patch_size != 0:
            raise ValueError(f"img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"global_pool must be one of '', 'avg', 'token', got {global_pool!r}")
        if isinstance(ref_feat_shape, int):
            ref_feat_shape = (ref_feat_shape, ref_feat_shape)
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.qkv_fused = qkv_fused
        self.swiglu_mlp = swiglu_mlp
        self.scale_mlp = scale_mlp
        self.scale_attn_inner = scale_attn_inner
        self.use_abs_pos_emb = use_abs_pos_emb
        self.use_rot_pos_emb = use_rot_pos_emb
        self.ref_feat_shape = list(ref_feat_shape) if ref_feat_shape is not None else None
        self.class_token = class_token
        self.global_pool = global_pool
        self.init_values = init_values
        self.drop_path_rate = drop_path_rate
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.timm_name = timm_name
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patches per side of the output feature map (``img_size // patch_size``)."""
        return self.img_size // self.patch_size

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.models.eva.Eva`` that build this tower (no classifier)."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.num_channels,
            "num_classes": 0,
            "global_pool": self.global_pool,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "qkv_fused": self.qkv_fused,
            "swiglu_mlp": self.swiglu_mlp,
            "scale_mlp": self.scale_mlp,
            "scale_attn_inner": self.scale_attn_inner,
            "use_abs_pos_emb": self.use_abs_pos_emb,
            "use_rot_pos_emb": self.use_rot_pos_emb,
            "ref_feat_shape": tuple(self.ref_feat_shape) if self.ref_feat_shape is not None else None,
            "class_token": self.class_token,
            "init_values": self.init_values,
            "drop_path_rate": self.drop_path_rate,
        }


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PixtokEva02Config",
    "SamMaskDecoderConfig",
    "SamPromptEncoderConfig",
    "SamVisionConfig",
]
