"""Frozen-tower feature caching for training (``train.cache_features: true``).

PixelLLM freezes both image towers, so an image's SAM and fused SAM+EVA02 features are the same
every time it is seen: compute them once, keep them, and feed ``image_embeddings`` /
``fused_features`` to the model instead of running the towers again — across epochs and across
tasks that read the same images (the synthetic benchmark's tasks all do).

Valid only when the features really are a function of the image: frozen towers and no image
augmentation (a jittered, cropped or colour-shifted image has other features), which
:func:`check_cacheable` enforces before training starts. Images are identified by
``(source, image_id, width, height)``. Features are kept in host memory in the model's dtype, up
to ``max_images`` images (beyond that, new images are computed every time and counted as misses);
the per-image size is logged so the bound can be chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import ConfigError


def check_cacheable(model: Any, augment: bool) -> None:
    """Raise :class:`ConfigError` unless tower features can be cached for ``model``."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "encode_images"):
        raise ConfigError(f"train.cache_features: {type(model).__name__} has no cacheable tower features")
    if not getattr(model.config, "freeze_towers", False):
        raise ConfigError("train.cache_features needs frozen towers (model.overrides.freeze_towers: true)")
    if augment:
        raise ConfigError(
            "train.cache_features needs train.augment: false (augmented pixels have different features)"
        )


class FeatureCache:
    """Tower features by image key, filled on first sight.

    Args:
        model: the (unwrapped) :class:`~pixtok.model.modeling_pixtok.PixtokForConditionalGeneration`.
        max_images: how many images to keep.
    """

    def __init__(self, model: Any, max_images: int = 100_000) -> None:
        self.model = model
        self.max_images = max_images
        self.store: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def apply(self, batch: dict[str, Any], keys: Sequence[tuple]) -> dict[str, Any]:
        """Replace the batch's pixels by cached (or freshly computed) ``image_embeddings`` / ``fused_features``."""
        keys = [tuple(key) for key in keys]  # the DataLoader hands tuples over as lists
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if missing:
            index = torch.tensor(missing, device=batch["pixel_values"].device)
            features = self.model.model.encode_images(
                batch["pixel_values"].index_select(0, index), batch["eva_pixel_values"].index_select(0, index)
            )
            for j, i in enumerate(missing):
                pair = (features.sam[j].detach(), features.fused[j].detach())
                fresh[i] = pair
                if len(self.store) < self.max_images:
                    self.store[keys[i]] = (pair[0].cpu(), pair[1].cpu())
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        device = batch["pixel_values"].device
        sam, fused = [], []
        for i, key in enumerate(keys):
            pair = fresh.get(i) or self.store[key]
            sam.append(pair[0].to(device, non_blocking=True))
            fused.append(pair[1].to(device, non_blocking=True))
        out = {k: v for k, v in batch.items() if k not in ("pixel_values", "eva_pixel_values")}
        out["image_embeddings"] = torch.stack(sam)
        out["fused_features"] = torch.stack(fused)
        return out

    def bytes_per_image(self) -> int:
        if not self.store:
            return 0
        sam, fused = next(iter(self.store.values()))
        return sam.numel() * sam.element_size() + fused.numel() * fused.element_size()

    def summary(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {
            "cached_images": float(len(self.store)),
            "hit_rate": self.hits / total if total else 0.0,
            "mb_per_image": self.bytes_per_image() / 2**20,
        }


__all__ = ["FeatureCache", "check_cacheable"]
