"""Pix2Seq-D panoptic segmentation by bit diffusion: :class:`PixtokForPanopticSegmentation`.

The model writes a whole panoptic mask as a grid of (class, instance) integers at mask resolution
``Hm = Wm = config.mask_size`` covering the padded square model input. Each pixel's integers are
``num_bits`` analog bits (:mod:`.bit_diffusion`); a conditional diffusion model denoises them:

- **conditioning encoder**: pixtok's :class:`~.towers.DualTower` (SAM + EVA02 features on one
  ``g x g`` grid), frozen by default (``config.freeze_towers``);
- **mask decoder** (:class:`PanopticMaskDecoder`): the noisy bits ``x_t`` and the
  self-conditioning estimate (``2K`` channels at ``Hm``) are patchified down to ``g x g`` and added
  to the projected image features and a time embedding; transformer blocks (self-attention,
  cross-attention to the image features, MLP) mix them; an upsampling decoder brings the tokens
  back to ``Hm`` with a full-resolution skip that reads the image (RGB resized to ``Hm``), the
  self-conditioning estimate and optionally ``x_t`` (``decoder_config.skip_noisy_bits``), and predicts the clean analog bits ``x_0`` (x0-parameterization, as Pix2Seq-D).

Training (:meth:`PixtokForPanopticSegmentation.forward`): ``t ~ U(0, 1)``; ``x_t`` from the cosine
schedule; with probability ``self_condition_rate`` a first pass without gradient gives the
self-conditioning estimate; loss = per-pixel re-weighted squared error of ``x_0`` in units of
``b**2`` (so 1.0 at a zero prediction). Sampling (:meth:`generate`): DDIM with ``num_steps`` steps
and time difference ``td``, image features computed once.

Batch format (what a recipe feeds to ``model(**batch)``):

| name | shape, dtype | meaning |
| --- | --- | --- |
| ``pixel_values`` | (B, 3, S, S) float | SAM tower input (the processor's, padded square) |
| ``eva_pixel_values`` | (B, 3, E, E) float | EVA02 tower input, same images |
| ``panoptic_ids`` | (B, Hm, Wm) long | ``class_value * 2**instance_bits + instance_id`` per pixel, \
model frame (see :meth:`~.bit_diffusion.PanopticBitCodec.pack`); class value 0 = void, label + 1 \
otherwise; instance 0 = none. Build with :func:`~.panoptic_postprocess.panoptic_maps_from_coco` \
then ``codec.pack``. |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .bit_diffusion import (
    PanopticBitCodec,
    area_loss_weights,
    ddim_sample,
    get_schedule,
    q_sample,
    randomize_instance_ids,
)
from .configuration_pixtok_panoptic import PixtokPanopticConfig, PixtokPanopticDecoderConfig
from .patch_embedding import PatchConv2d
from .towers import DualTower

# --- outputs -------------------------------------------------------------------------------------


@dataclass
class PixtokPanopticOutput(ModelOutput):
    """Output of :meth:`PixtokForPanopticSegmentation.forward`.

    Attributes:
        loss: scalar re-weighted x0 loss (in units of ``b**2``), when ``panoptic_ids`` were given.
        pred_bits: (B, K, Hm, Wm) predicted clean analog bits ``x_0``.
        noisy_bits: (B, K, Hm, Wm) the ``x_t`` the decoder saw.
        timesteps: (B,) the diffusion times ``t`` in ``[0, 1]``.
    """

    loss: Tensor | None = None
    pred_bits: Tensor | None = None
    noisy_bits: Tensor | None = None
    timesteps: Tensor | None = None


@dataclass
class PixtokPanopticGenerateOutput(ModelOutput):
    """Output of :meth:`PixtokForPanopticSegmentation.generate` (input of post-processing).

    Attributes:
        class_ids: (B, Hm, Wm) long, 0 = void, ``label_id + 1`` otherwise; sampled bit patterns
            beyond the last label are void.
        instance_ids: (B, Hm, Wm) long, 0 = no instance (always 0 on void pixels).
        pixel_scores: (B, Hm, Wm) float in [0, 1]: the least confident bit of each pixel,
            ``min_k |x0_k| / b``.
        bits: (B, K, Hm, Wm) the final ``x_0`` estimate, clipped to ``[-b, b]``.
        image_sizes: (B, 2) long original (h, w) when given to ``generate``, else ``None``.
        thing_label_ids: (T,) long, the config's thing labels (post-processing fuses the others).
    """

    class_ids: Tensor | None = None
    instance_ids: Tensor | None = None
    pixel_scores: Tensor | None = None
    bits: Tensor | None = None
    image_sizes: Tensor | None = None
    thing_label_ids: Tensor | None = None


# --- decoder parts -------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of continuous times.

    Args:
        t: (B,) times in ``[0, 1]`` (scaled by 1000 inside, the DDPM step range).
        dim: even feature count.
        max_period: lowest frequency's period.

    Returns:
        (B, dim) float: ``[cos(1000 t w_i), sin(1000 t w_i)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PanopticDecoderBlock(nn.Module):
    """Pre-norm block: time shift, self-attention, cross-attention to image tokens, MLP.

    Args:
        config: decoder config (width, heads, MLP ratio, dropout).
    """

    def __init__(self, config: PixtokPanopticDecoderConfig) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.time_shift = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = nn.MultiheadAttention(
            d, config.num_attention_heads, dropout=config.dropout, batch_first=True
        )
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.norm_memory = nn.LayerNorm(d, eps=eps)
        self.cross_attn = nn.MultiheadAttention(
            d, config.num_attention_heads, dropout=config.dropout, batch_first=True
        )
        self.norm3 = nn.LayerNorm(d, eps=eps)
        hidden = int(d * config.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, d)
        )

    def forward(self, x: Tensor, memory: Tensor, time: Tensor) -> Tensor:
        """Mix tokens.

        Args:
            x: (B, N, D) mask tokens (N = g * g, row-major).
            memory: (B, N, D) image feature tokens with position embeddings.
            time: (B, D) time embedding.

        Returns:
            (B, N, D).
        """
        x = x + self.time_shift(time)[:, None]
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        m = self.norm_memory(memory)
        x = x + self.cross_attn(self.norm2(x), m, m, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class _UpStage(nn.Module):
    """2x upsampling: transposed conv, then a 3x3 conv, GroupNorm + GELU after each."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = math.gcd(8, out_channels)
        self.body = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2),
            nn.GroupNorm(groups, out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.GELU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, C_out, 2h, 2w)."""
        return self.body(x)


class PanopticMaskDecoder(nn.Module):
    """Predicts clean analog bits from noisy ones, the self-conditioning estimate, time and image.

    Args:
        config: decoder config.
        num_bits: K, analog bit channels.
        feature_channels: channels of the fused image features (SAM + EVA02).
        grid_size: g, side of the image feature grid.
        mask_size: Hm, side of the bit maps; ``Hm / g`` is a power of two.
    """

    def __init__(
        self,
        config: PixtokPanopticDecoderConfig,
        num_bits: int,
        feature_channels: int,
        grid_size: int,
        mask_size: int,
    ) -> None:
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.num_bits = num_bits
        self.grid_size = grid_size
        self.mask_size = mask_size
        ratio = mask_size // grid_size
        # bits -> tokens: one patch of ratio x ratio mask pixels per feature cell
        self.bit_patch = PatchConv2d(2 * num_bits, d, kernel_size=ratio, stride=ratio)
        self.feature_proj = nn.Conv2d(feature_channels, d, kernel_size=1)
        self.memory_proj = nn.Conv2d(feature_channels, d, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size * grid_size, d))
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embedding_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(PanopticDecoderBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        c = config.upsample_channels
        stages = int(math.log2(ratio))
        self.up = nn.ModuleList(_UpStage(d if i == 0 else c, c) for i in range(stages))
        up_out = c if stages else d
        # full-resolution skip: the bits and the image at mask resolution
        s = config.skip_channels
        skip_in = (2 if config.skip_noisy_bits else 1) * num_bits + 3
        self.skip = nn.Sequential(nn.Conv2d(skip_in, s, kernel_size=3, padding=1), nn.GELU())
        self.head = nn.Sequential(
            nn.Conv2d(up_out + s, c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(c, num_bits, kernel_size=1),
        )

    def forward(
        self, noisy_bits: Tensor, self_cond: Tensor, t: Tensor, features: Tensor, image: Tensor
    ) -> Tensor:
        """Denoise.

        Args:
            noisy_bits: (B, K, Hm, Wm) ``x_t``.
            self_cond: (B, K, Hm, Wm) previous ``x_0`` estimate divided by ``b`` (zeros if none).
            t: (B,) times in [0, 1].
            features: (B, C, g, g) fused image features.
            image: (B, 3, Hm, Wm) the normalized image resized to mask resolution.

        Returns:
            (B, K, Hm, Wm) predicted ``x_0`` (unbounded; ``{-b, +b}`` at the optimum).
        """
        bits_in = torch.cat([noisy_bits, self_cond], dim=1)
        x = self.bit_patch(bits_in) + self.feature_proj(features)  # (B, D, g, g)
        b, d, g, _ = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        memory = self.memory_proj(features).flatten(2).transpose(1, 2) + self.pos_embed
        time = self.time_mlp(timestep_embedding(t, self.config.time_embedding_dim).to(x.dtype))
        for block in self.blocks:
            x = block(x, memory, time)
        y = self.norm(x).transpose(1, 2).reshape(b, d, g, g)
        for stage in self.up:
            y = stage(y)
        skip_bits = bits_in if self.config.skip_noisy_bits else self_cond
        skip = self.skip(torch.cat([skip_bits, image.to(bits_in.dtype)], dim=1))
        return self.head(torch.cat([y, skip], dim=1))


# --- the model -----------------------------------------------------------------------------------


class PixtokPanopticPreTrainedModel(PreTrainedModel):
    """Weight init and capabilities shared by the panoptic model classes."""

    config_class = PixtokPanopticConfig
    base_model_prefix = "pixtok_panoptic"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    _no_split_modules = ["PanopticDecoderBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linear/conv weights (std ``config.initializer_range``), zero biases."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm | nn.GroupNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                nn.init.trunc_normal_(module.in_proj_weight, std=std)
            if module.in_proj_bias is not None:
                nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, PanopticMaskDecoder):
            nn.init.trunc_normal_(module.pos_embed, std=std)


class PixtokForPanopticSegmentation(PixtokPanopticPreTrainedModel):
    """Pix2Seq-D: panoptic segmentation as conditional bit diffusion over a (class, instance) grid.

    Args:
        config: :class:`PixtokPanopticConfig`.
    """

    def __init__(self, config: PixtokPanopticConfig) -> None:
        super().__init__(config)
        self.codec = PanopticBitCodec(config.class_bits, config.instance_bits, config.bit_scale)
        self.towers = DualTower(config.vision_config, config.eva_config)
        if self.towers.grid_size != config.feature_grid_size:
            raise ValueError(f"tower grid {self.towers.grid_size} != config grid {config.feature_grid_size}")
        self.decoder = PanopticMaskDecoder(
            config.decoder_config,
            num_bits=config.num_bits,
            feature_channels=self.towers.fused_channels,
            grid_size=self.towers.grid_size,
            mask_size=config.mask_size,
        )
        self.schedule = get_schedule(config.noise_schedule)
        self.post_init()
        if config.freeze_towers:
            self.towers.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args: object, **kwargs: object) -> PixtokForPanopticSegmentation:
        """``PreTrainedModel.from_pretrained``, then recompute buffers that the state dict lacks.

        transformers builds the model on the meta device and fills it from the checkpoint; buffers
        registered ``persistent=False`` (timm EVA02's rotary tables) are not in the checkpoint and
        would stay uninitialized; they are recomputed from the config
        (:meth:`restore_non_persistent_buffers`).
        """
        model = super().from_pretrained(*args, **kwargs)
        model.restore_non_persistent_buffers()
        return model

    def restore_non_persistent_buffers(self) -> None:
        """Recompute buffers that checkpoints do not hold, through each module's own
        ``reset_non_persistent_buffers`` (the EVA02 tower's rotary tables)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_non_persistent_buffers"):
                module.reset_non_persistent_buffers()

    # --- conditioning ----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PixtokForPanopticSegmentation:
        """Like ``nn.Module.train``, but frozen towers stay in eval mode (no dropout / drop-path)."""
        super().train(mode)
        if self.config.freeze_towers:
            self.towers.eval()
        return self

    def get_image_features(self, pixel_values: Tensor, eva_pixel_values: Tensor) -> Tensor:
        """Fused image features, the decoder's condition (cacheable: frozen towers are deterministic).

        Args:
            pixel_values: (B, 3, S, S) SAM input.
            eva_pixel_values: (B, 3, E, E) EVA02 input.

        Returns:
            (B, C_sam + C_eva, g, g) float32.
        """
        if self.config.freeze_towers:
            with torch.no_grad():
                return self.towers(pixel_values, eva_pixel_values).fused.float()
        return self.towers(pixel_values, eva_pixel_values).fused.float()

    def _condition(
        self, pixel_values: Tensor, eva_pixel_values: Tensor | None, image_features: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(features (B, C, g, g), image at mask resolution (B, 3, Hm, Wm))."""
        if pixel_values is None or pixel_values.dim() != 4:
            raise ValueError("pixel_values (B, 3, S, S) are required (the decoder's skip reads the image)")
        if image_features is None:
            if eva_pixel_values is None:
                raise ValueError(
                    "give eva_pixel_values (B, 3, E, E) or precomputed image_features (B, C, g, g)"
                )
            image_features = self.get_image_features(pixel_values, eva_pixel_values)
        g = self.decoder.grid_size
        if image_features.shape[1:] != (self.towers.fused_channels, g, g):
            raise ValueError(
                f"image_features must be (B, {self.towers.fused_channels}, {g}, {g}), got {tuple(image_features.shape)}"
            )
        size = self.config.mask_size
        image = F.interpolate(
            pixel_values.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        return image_features.float(), image

    def _denoise(self, x_t: Tensor, self_cond: Tensor, t: Tensor, features: Tensor, image: Tensor) -> Tensor:
        """``x_0`` estimate (float32); ``self_cond`` is an ``x_0`` estimate in analog units (scaled to [-1, 1]).

        Inputs are cast to the decoder's dtype, so a model cast to bf16 works without autocast.
        """
        dtype = self.decoder.bit_patch.weight.dtype
        cond = self_cond / self.config.bit_scale
        return self.decoder(x_t.to(dtype), cond.to(dtype), t, features.to(dtype), image.to(dtype)).float()

    # --- training --------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: Tensor,
        eva_pixel_values: Tensor | None = None,
        panoptic_ids: Tensor | None = None,
        image_features: Tensor | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
        use_self_condition: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> PixtokPanopticOutput | tuple:
        """One denoising pass; with ``panoptic_ids``, the training loss.

        Args:
            pixel_values: (B, 3, S, S) SAM input.
            eva_pixel_values: (B, 3, E, E) EVA02 input (optional when ``image_features`` are given).
            panoptic_ids: (B, Hm, Wm) long packed (class, instance) targets (module docstring).
                Without them the decoder denoises pure noise at ``t = 1`` and no loss is computed.
            image_features: (B, C, g, g) cached output of :meth:`get_image_features`.
            timesteps: (B,) diffusion times; ``U(0, 1)`` when omitted.
            noise: (B, K, Hm, Wm) standard normal noise; drawn when omitted.
            use_self_condition: force the self-conditioning pass on/off; default: with probability
                ``config.self_condition_rate`` when ``config.self_condition``.
            return_dict: return a tuple when `False`.
            **kwargs: other batch entries (e.g. ``image_sizes``) are accepted and ignored.

        Returns:
            :class:`PixtokPanopticOutput`.
        """
        features, image = self._condition(pixel_values, eva_pixel_values, image_features)
        batch, size, k = features.shape[0], self.config.mask_size, self.config.num_bits
        device = features.device
        if panoptic_ids is not None:
            if panoptic_ids.shape != (batch, size, size):
                raise ValueError(
                    f"panoptic_ids must be (B, mask_size, mask_size) = ({batch}, {size}, {size}), "
                    f"got {tuple(panoptic_ids.shape)}"
                )
            class_map, instance_map = self.codec.unpack(panoptic_ids.long())
            if self.training and self.config.randomize_instance_ids:
                instance_map = randomize_instance_ids(instance_map, self.codec.max_instance_id)
            x0 = self.codec.encode(class_map, instance_map).to(device)
        else:
            x0 = torch.zeros(batch, k, size, size, device=device)
        if timesteps is None:
            timesteps = (
                torch.rand(batch, device=device)
                if panoptic_ids is not None
                else torch.ones(batch, device=device)
            )
        gamma = self.schedule(timesteps)
        x_t = q_sample(x0, gamma, noise)

        self_cond = torch.zeros_like(x_t)
        if use_self_condition is None:
            use_self_condition = (
                self.config.self_condition and float(torch.rand(())) < self.config.self_condition_rate
            )
        if use_self_condition:
            with torch.no_grad():
                b = self.config.bit_scale
                self_cond = self._denoise(x_t, self_cond, timesteps, features, image).clamp(-b, b).detach()
        pred = self._denoise(x_t, self_cond, timesteps, features, image)

        loss = None
        if panoptic_ids is not None:
            weights = area_loss_weights(class_map, instance_map, self.config.loss_weight_power).to(device)
            per_pixel = (pred.float() - x0).pow(2).mean(dim=1) / self.config.bit_scale**2
            loss = (per_pixel * weights).mean()
        if return_dict is False:
            return tuple(v for v in (loss, pred, x_t, timesteps) if v is not None)
        return PixtokPanopticOutput(loss=loss, pred_bits=pred, noisy_bits=x_t, timesteps=timesteps)

    # --- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        eva_pixel_values: Tensor | None = None,
        num_steps: int | None = None,
        td: float | None = None,
        image_features: Tensor | None = None,
        image_sizes: Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: object,
    ) -> PixtokPanopticGenerateOutput:
        """Sample panoptic maps by DDIM.

        Args:
            pixel_values: (B, 3, S, S) SAM input.
            eva_pixel_values: (B, 3, E, E) EVA02 input (optional with ``image_features``).
            num_steps: DDIM steps (default ``config.num_sampling_steps``).
            td: time difference, ``< num_steps`` (default ``config.sampling_td``, capped at
                ``num_steps - 1``).
            image_features: (B, C, g, g) cached features.
            image_sizes: (B, 2) original (h, w), passed through for post-processing.
            generator: RNG of the initial noise (on the model's device).
            **kwargs: other processor outputs, ignored.

        Returns:
            :class:`PixtokPanopticGenerateOutput`.
        """
        features, image = self._condition(pixel_values, eva_pixel_values, image_features)
        steps = self.config.num_sampling_steps if num_steps is None else int(num_steps)
        td = min(self.config.sampling_td, steps - 1) if td is None else float(td)
        size, b = self.config.mask_size, self.config.bit_scale

        def denoise(x_t: Tensor, cond: Tensor, t: Tensor) -> Tensor:
            return self._denoise(x_t, cond, t, features, image)

        x0 = ddim_sample(
            denoise,
            (features.shape[0], self.config.num_bits, size, size),
            num_steps=steps,
            td=td,
            scale=b,
            self_condition=self.config.self_condition,
            schedule=self.schedule,
            generator=generator,
            device=features.device,
        )
        class_ids, instance_ids = self.codec.decode(x0)
        class_ids = class_ids.masked_fill(class_ids > len(self.config.id2label), 0)  # names no label: void
        instance_ids = instance_ids.masked_fill(class_ids == 0, 0)  # void pixels carry no instance
        scores = (x0.abs().amin(dim=1) / b).clamp(0, 1)
        things = torch.tensor(self.config.thing_label_ids, dtype=torch.long)
        return PixtokPanopticGenerateOutput(
            class_ids=class_ids,
            instance_ids=instance_ids,
            pixel_scores=scores,
            bits=x0,
            image_sizes=image_sizes,
            thing_label_ids=things,
        )


__all__ = [
    "PanopticDecoderBlock",
    "PanopticMaskDecoder",
    "PixtokForPanopticSegmentation",
    "PixtokPanopticGenerateOutput",
    "PixtokPanopticOutput",
    "PixtokPanopticPreTrainedModel",
    "timestep_embedding",
]
