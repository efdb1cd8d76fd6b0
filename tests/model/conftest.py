"""Fixtures shared by the model tests."""

import numpy as np
import pytest
import torch
from PIL import Image

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.processing_pixtok import PixtokProcessor


def make_trained_looking_tiny(**overrides):
    """The tiny preset (frozen T5 + LoRA + added-token delta rows) with non-zero LoRA updates and
    token deltas, as after training, in eval mode; its processor; two random images of other sizes.
    ``overrides`` go to the preset's config."""
    torch.manual_seed(0)
    config = PixtokConfig.from_preset("tiny", **overrides)
    model = PixtokForConditionalGeneration(config).eval()
    assert model.model.added_tokens is not None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "added_tokens" in name:
                p.normal_(0, 0.5)
    processor = PixtokProcessor.from_config(config)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (128, 64))
    ]
    return model, processor, images


@pytest.fixture(scope="module")
def trained_looking_tiny():
    """:func:`make_trained_looking_tiny` with the preset as it is."""
    return make_trained_looking_tiny()
