"""Both image towers on one grid: SAM features and EVA02 features, channel-concatenated.

The SAM tower sees the image at ``S`` px (grid ``g = S / p_sam``), the EVA02 tower at ``E`` px (grid
``E / p_eva``). Both inputs are the same padded square (``docs/ARCHITECTURE.md``, "Geometry"), so the
EVA02 feature map covers the same area and is resized bilinearly (``align_corners=False``, i.e.
cell centres aligned) onto SAM's ``g x g`` grid before concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_towers import PixtokEva02Config, SamVisionConfig
from .eva02 import Eva02Encoder
from .sam import SamImageEncoder, _check_pixels


@dataclass
class VisionFeatures:
    """Features of a batch of images on SAM's grid.

    Attributes:
        sam: (B, C_sam, g, g) SAM image embeddings (mask decoder input).
        fused: (B, C_sam + C_eva, g, g) SAM embeddings followed by EVA02 features resized to g x g.
    """

    sam: Tensor
    fused: Tensor


class DualTower(nn.Module):
    """SAM ViT and EVA02 ViT, features brought to SAM's grid and concatenated along channels.

    Args:
        sam_config: SAM vision config (``image_size`` S, ``output_channels`` C_sam).
        eva_config: EVA02 config (``img_size`` E, ``embed_dim`` C_eva).
    """

    def __init__(self, sam_config: SamVisionConfig, eva_config: PixtokEva02Config) -> None:
        super().__init__()
        self.sam = SamImageEncoder(sam_config)
        self.eva = Eva02Encoder(eva_config)

    @property
    def grid_size(self) -> int:
        """Side g of the fused feature map (SAM's grid)."""
        return self.sam.grid_size

    @property
    def sam_channels(self) -> int:
        """C_sam."""
        return self.sam.output_channels

    @property
    def eva_channels(self) -> int:
        """C_eva."""
        return self.eva.output_channels

    @property
    def fused_channels(self) -> int:
        """C_sam + C_eva, the channel count of :attr:`VisionFeatures.fused`."""
        return self.sam_channels + self.eva_channels

    def forward(self, pixel_values: Tensor, eva_pixel_values: Tensor) -> VisionFeatures:
        """Run both towers.

        Args:
            pixel_values: (B, 3, S, S) float, SAM-normalized.
            eva_pixel_values: (B, 3, E, E) float, CLIP-normalized, same images and padding.

        Returns:
            :class:`VisionFeatures` with ``sam`` (B, C_sam, g, g) and ``fused`` (B, C_sam + C_eva, g, g).
        """
        sam_config, eva_config = self.sam.config, self.eva.config
        _check_pixels(pixel_values, int(sam_config.num_channels), self.sam.image_size, "SAM pixel_values")
        _check_pixels(
            eva_pixel_values, int(eva_config.num_channels), self.eva.image_size, "EVA02 eva_pixel_values"
        )
        if pixel_values.shape[0] != eva_pixel_values.shape[0]:
            raise ValueError(
                f"pixel_values and eva_pixel_values must hold the same images: batch sizes "
                f"{pixel_values.shape[0]} and {eva_pixel_values.shape[0]} differ"
            )
        sam = self.sam(pixel_values)
        eva = self.eva(eva_pixel_values)
        g = self.grid_size
        if tuple(eva.shape[-2:]) != (g, g):
            eva = F.interpolate(eva.float(), size=(g, g), mode="bilinear", align_corners=False)
        fused = torch.cat([sam, eva.to(sam.dtype)], dim=1)
        return VisionFeatures(sam=sam, fused=fused)


__all__ = ["DualTower", "VisionFeatures"]
