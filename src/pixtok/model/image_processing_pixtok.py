"""Image processor: one geometry for both towers.

Each image is resized so that its long side is the tower's input size and padded bottom/right to a
square (SAM's convention), once for the SAM tower (side ``S``, SAM's ImageNet statistics) and once
for the EVA02 tower (side ``E``, CLIP statistics). Padding is 0 *after* normalization (the mean
colour), as SAM does. Because both towers see the same content in the same corner, a coordinate
normalized by the image's long side (model space, docs/ARCHITECTURE.md) means the same place in
both inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

ImageLike = Image.Image | np.ndarray | torch.Tensor


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any supported image → (H, W, 3) float32 RGB in [0, 1].

    Accepted: PIL images of any mode (converted to RGB; alpha dropped), numpy arrays / torch tensors
    (H, W), (H, W, 1|3|4) or channels-first (1|3|4, H, W); ``uint8`` is divided by 255, floats must
    already lie in [0, 1]. Grayscale is repeated to three channels, RGBA loses its alpha.

    Raises:
        ValueError: another shape (batches must be lists), an empty image, or out-of-range floats.
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        if array.size == 0:
            raise ValueError(f"empty image of size {image.size}")
        return array
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    array = image
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first → last
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; got {image.shape} "
            "(pass a batch as a list of images)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        array = array.astype(np.float32)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low < 0.0 or high > 1.0 or not np.isfinite(array).all():
            raise ValueError(
                f"float images must lie in [0, 1]; got values in [{low}, {high}] (uint8 for 0-255)"
            )
    else:
        raise ValueError(f"unsupported image dtype {array.dtype} (use uint8 or float in [0, 1])")
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:
        array = array[..., :3]
    return np.ascontiguousarray(array)


def resized_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) after scaling the long side to ``side`` (each at least 1 px)."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_pad_square(array: torch.Tensor, side: int, mode: str = "bilinear") -> torch.Tensor:
    """(C, H, W) float → (C, side, side): long side scaled to ``side``, zero-padded bottom/right."""
    c, h, w = array.shape
    nh, nw = resized_shape(h, w, side)
    if (nh, nw) != (h, w):
        kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        array = F.interpolate(array[None], size=(nh, nw), mode=mode, **kwargs)[0]
    out = array.new_zeros((c, side, side))
    out[:, :nh, :nw] = array
    return out


class PixtokImageProcessor(BaseImageProcessor):
    r"""Resize (long side), normalize and pad to a square, for the SAM and the EVA02 tower.

    Args:
        sam_size (`int`, *optional*, defaults to 1024): ``S``, side of ``pixel_values``.
        eva_size (`int`, *optional*, defaults to 448): ``E``, side of ``eva_pixel_values``.
        sam_image_mean (`list[float]`, *optional*, defaults to ImageNet's): SAM's pixel mean / 255.
        sam_image_std (`list[float]`, *optional*, defaults to ImageNet's): SAM's pixel std / 255.
        eva_image_mean (`list[float]`, *optional*, defaults to CLIP's): EVA02's mean.
        eva_image_std (`list[float]`, *optional*, defaults to CLIP's): EVA02's std.
        mask_size (`int`, *optional*): side of referring-mask targets (the mask decoder's output,
            ``S / 4`` for 16 px patches); defaults to ``sam_size // 4``.
    """

    model_input_names = ["pixel_values", "eva_pixel_values"]

    def __init__(
        self,
        sam_size: int = 1024,
        eva_size: int = 448,
        sam_image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        sam_image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        eva_image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        eva_image_std: Sequence[float] = OPENAI_CLIP_STD,
        mask_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("sam_size", sam_size), ("eva_size", eva_size), ("mask_size", mask_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.sam_size = sam_size
        self.eva_size = eva_size
        self.sam_image_mean = [float(v) for v in sam_image_mean]
        self.sam_image_std = [float(v) for v in sam_image_std]
        self.eva_image_mean = [float(v) for v in eva_image_mean]
        self.eva_image_std = [float(v) for v in eva_image_std]
        self.mask_size = mask_size if mask_size is not None else sam_size // 4

    @classmethod
    def from_pixtok_config(cls, config: Any) -> PixtokImageProcessor:
        """Sizes and statistics from a :class:`PixtokConfig` (``S``, ``E``, EVA mean/std, mask size)."""
        eva = config.eva_config
        return cls(
            sam_size=int(config.vision_config.image_size),
            eva_size=int(eva.img_size),
            eva_image_mean=getattr(eva, "image_mean", OPENAI_CLIP_MEAN),
            eva_image_std=getattr(eva, "image_std", OPENAI_CLIP_STD),
            mask_size=int(config.mask_size) if hasattr(config, "mask_size") else None,
        )

    @staticmethod
    def _tower(rgb: torch.Tensor, side: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """(3, H, W) in [0, 1] → normalized (3, side, side), padding 0 (= the mean colour)."""
        mean_t = torch.tensor(mean, dtype=rgb.dtype)[:, None, None]
        std_t = torch.tensor(std, dtype=rgb.dtype)[:, None, None]
        return resize_pad_square((rgb - mean_t) / std_t, side)

    def preprocess(
        self, images: ImageLike | Sequence[ImageLike], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Images → ``pixel_values`` (B, 3, S, S), ``eva_pixel_values`` (B, 3, E, E), ``image_sizes`` (B, 2).

        Args:
            images: one image or a list (see :func:`to_rgb_array` for what is accepted).
            return_tensors: ``"pt"`` (default) or ``None``/``"np"`` for numpy arrays.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)) and not (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        ):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        sam, eva, sizes = [], [], []
        for index, image in enumerate(images):
            try:
                rgb = torch.from_numpy(to_rgb_array(image)).permute(2, 0, 1)
            except ValueError as err:
                raise ValueError(f"image {index}: {err}") from None
            sizes.append(rgb.shape[1:])
            sam.append(self._tower(rgb, self.sam_size, self.sam_image_mean, self.sam_image_std))
            eva.append(self._tower(rgb, self.eva_size, self.eva_image_mean, self.eva_image_std))
        data = {
            "pixel_values": torch.stack(sam),
            "eva_pixel_values": torch.stack(eva),
            "image_sizes": torch.tensor([tuple(s) for s in sizes], dtype=torch.long),
        }
        if return_tensors in (None, "np"):
            data = {k: v.numpy() for k, v in data.items()}
            return BatchFeature(data=data, tensor_type=return_tensors)
        return BatchFeature(data=data, tensor_type=None)

    def __call__(self, images: ImageLike | Sequence[ImageLike], **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def mask_to_target(self, mask: np.ndarray | torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """A (H, W) mask in original pixels → (mask_size, mask_size) float in the padded frame.

        Resized like the image (long side → ``mask_size``, bilinear, so edges become fractional) and
        zero-padded bottom/right.
        """
        m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
        if m.ndim != 2 or tuple(m.shape) != tuple(image_size):
            raise ValueError(f"mask must be (H, W) = {tuple(image_size)}, got {tuple(m.shape)}")
        return resize_pad_square(m[None], self.mask_size)[0].clamp_(0.0, 1.0)


__all__ = ["PixtokImageProcessor", "resize_pad_square", "resized_shape", "to_rgb_array"]
