"""The prompt feature extractor: learnable tokens that read prompt-specific image features.

PixelLLM's extractor is a two-way transformer (SAM's mask-decoder transformer) whose queries are a
fixed set of learnable tokens followed by the SAM prompt encoder's sparse embeddings, and whose keys
are the fused (SAM ++ EVA02) image features plus the dense prompt embedding, with SAM's image
positional encoding. The learnable tokens' outputs are the visual prefix of the T5 encoder.

The transformer itself is transformers' ``SamTwoWayTransformer``, sized by
:meth:`PixtokPromptExtractorConfig.two_way_config`; this module only adds the projections into its
width, the learnable tokens and the projection out to the language model's width.

Two options go beyond the paper, for models that learn localization from scratch (the learning
benchmarks): ``grid_tokens`` appends a pooled grid of image tokens, each with its positional
encoding, to the prefix, so the language model can attend image positions directly as Pix2Seq's
decoder does (``grid_source``: the transformer's output image tokens, or its input ones);
``position_in_values`` adds the positional encoding to the image tokens before the transformer, so
that what attention reads (its values) carries position too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamTwoWayTransformer

from .configuration_pixtok import PixtokPromptExtractorConfig


class PixtokPromptExtractor(nn.Module):
    """Two-way transformer with ``num_tokens`` learnable output tokens.

    Args:
        config: extractor sizes (width, depth, heads, MLP width, number of tokens).
        image_channels: channels of the fused image features (SAM neck + EVA02 width).
        prompt_channels: channels of the SAM prompt embeddings and image positional encoding.
        output_size: width of the tokens handed to the language model (T5 ``d_model``).
    """

    def __init__(
        self,
        config: PixtokPromptExtractorConfig,
        image_channels: int,
        prompt_channels: int,
        output_size: int,
    ) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.tokens = nn.Parameter(torch.randn(config.num_tokens, width) * 0.02)
        self.image_proj = nn.Conv2d(image_channels, width, kernel_size=1)
        self.dense_proj = nn.Conv2d(prompt_channels, width, kernel_size=1)
        self.pe_proj = nn.Conv2d(prompt_channels, width, kernel_size=1, bias=False)
        self.sparse_proj = nn.Linear(prompt_channels, width)
        self.two_way_config = config.two_way_config()
        self.transformer = SamTwoWayTransformer(self.two_way_config)
        self.output_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(width, output_size)
        if config.grid_tokens:
            self.grid_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
            self.grid_proj = nn.Linear(width, output_size)

    def forward(
        self,
        image_features: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """Pull prompt-specific features out of the image.

        Args:
            image_features: (B, C_img, g, g) fused tower features.
            image_pe: (1, C_p, g, g) SAM positional encoding of the grid.
            sparse_embeddings: (B, N, C_p) SAM sparse prompt embeddings (points / box corners).
            dense_embeddings: (B, C_p, g, g) SAM dense prompt embedding.

        Returns:
            (B, num_tokens + grid_tokens**2, output_size) prefix tokens for the language model: the
            learnable tokens' outputs, then the pooled grid tokens row-major (when configured:
            ``grid_source`` picks the transformer's output or input image tokens).
        """
        if image_features.shape[-2:] != dense_embeddings.shape[-2:]:
            raise ValueError(
                f"image features grid {tuple(image_features.shape[-2:])} differs from the prompt "
                f"encoder's dense grid {tuple(dense_embeddings.shape[-2:])}"
            )
        # transformers' SAM attention reads the implementation from its own config object
        self.two_way_config._attn_implementation = (
            getattr(self.config, "_attn_implementation", None) or "sdpa"
        )
        batch = image_features.shape[0]
        side = self.config.grid_tokens
        if side > image_features.shape[-1]:
            raise ValueError(
                f"extractor grid_tokens ({side}) exceeds the image feature grid ({image_features.shape[-1]})"
            )
        image = self.image_proj(image_features) + self.dense_proj(dense_embeddings)
        pe = self.pe_proj(image_pe.to(image.dtype))
        keys = image + pe if self.config.position_in_values else image
        tokens = self.tokens.to(keys.dtype).unsqueeze(0).expand(batch, -1, -1)
        queries = torch.cat([tokens, self.sparse_proj(sparse_embeddings)], dim=1).unsqueeze(1)
        queries, image_tokens = self.transformer(queries, keys, pe, None)[:2]
        prefix = self.output_proj(self.output_norm(queries.squeeze(1)[:, : self.config.num_tokens]))
        if not side:
            return prefix
        if self.config.grid_source == "features":
            grid = image
        else:
            g = image_features.shape[-1]
            grid = image_tokens.squeeze(1).transpose(1, 2).reshape(batch, -1, g, g)
        grid = F.adaptive_avg_pool2d(grid + pe, side).flatten(2).transpose(1, 2)  # (B, side*side, width)
        return torch.cat([prefix, self.grid_proj(self.grid_norm(grid))], dim=1)


__all__ = ["PixtokPromptExtractor"]
