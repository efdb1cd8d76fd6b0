"""Encode once, ask many: one image's tower features serve several prompts in one batch."""

import numpy as np
import torch
from PIL import Image

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.processing_pixtok import PixtokProcessor


def test_one_encoding_many_region_prompts_equals_separate_calls():
    torch.manual_seed(0)
    config = PixtokConfig.from_preset("tiny")
    model = PixtokForConditionalGeneration(config).eval()
    processor = PixtokProcessor.from_config(config)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    boxes = [[4, 4, 60, 50], [50, 30, 120, 90], [10, 60, 40, 95]]
    batch = processor(images=[image] * 3, task="region_caption", boxes=boxes, return_tensors="pt")

    calls = []
    hook = model.model.towers.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        features = model.model.encode_images(batch["pixel_values"][:1], batch["eva_pixel_values"][:1])
    prompts = {k: v for k, v in batch.items() if k not in ("pixel_values", "eva_pixel_values")}
    many = model.generate(
        **prompts,
        image_embeddings=features.sam.expand(3, -1, -1, -1),
        fused_features=features.fused.expand(3, -1, -1, -1),
        max_new_tokens=8,
        do_sample=False,
    )
    assert len(calls) == 1  # the towers ran once for three prompts
    hook.remove()
    for i in range(3):
        single = model.generate(
            **{k: v[i : i + 1] for k, v in batch.items()}, max_new_tokens=8, do_sample=False
        )
        length = single.sequences.shape[1]
        assert torch.equal(many.sequences[i, :length], single.sequences[0])
        torch.testing.assert_close(many.points[i, :length], single.points[0], atol=1e-5, rtol=1e-5)
