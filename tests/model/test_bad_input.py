"""Bad input gets a clear error that names what was expected."""

from __future__ import annotations

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from tests.model.test_modeling import full_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> PixtokForConditionalGeneration:
    torch.manual_seed(0)
    return PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny")).eval()


def test_wrong_image_size_names_the_expected_shape(model) -> None:
    batch = full_batch(model.config)
    batch["pixel_values"] = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\(batch, 3, 128, 128\).*spatial size \(64, 64\)"):
        model(**batch)


def test_wrong_channel_count_names_the_expected_shape(model) -> None:
    batch = full_batch(model.config)
    batch["eva_pixel_values"] = torch.randn(2, 1, 64, 64)
    with pytest.raises(ValueError, match=r"\(batch, 3, 64, 64\).*got 1 channels"):
        model(**batch)


def test_unbatched_image_is_rejected(model) -> None:
    batch = full_batch(model.config)
    batch["pixel_values"] = batch["pixel_values"][0]
    with pytest.raises(ValueError, match="3-d tensor"):
        model(**batch)


def test_missing_tower_input_is_named(model) -> None:
    batch = full_batch(model.config)
    del batch["eva_pixel_values"]
    with pytest.raises(ValueError, match="eva_pixel_values"):
        model(**batch)


def test_images_and_prompts_must_agree_in_number(model) -> None:
    batch = full_batch(model.config)
    batch["prompt_coords"] = batch["prompt_coords"][:1]
    batch["prompt_labels"] = batch["prompt_labels"][:1]
    with pytest.raises(ValueError, match="1 prompts for 2 images"):
        model(**batch)


@pytest.mark.parametrize("value", [1.5, -0.2, 300.0, float("nan")])
def test_prompt_box_outside_the_image_is_rejected(model, value: float) -> None:
    batch = full_batch(model.config)
    batch["prompt_coords"][0, 1, 0] = value
    with pytest.raises(ValueError, match=r"model space \[0, 1\]"):
        model(**batch)
    with pytest.raises(ValueError, match=r"model space \[0, 1\]"):
        model.generate(
            **{k: batch[k] for k in ("pixel_values", "eva_pixel_values", "prompt_coords", "prompt_labels")},
            task_ids=torch.tensor([3, 3]),
        )


def test_padding_points_may_hold_any_value(model) -> None:
    batch = full_batch(model.config)
    batch["prompt_coords"][1, 1] = -5.0  # label -1: a padding entry, ignored by SAM
    assert torch.isfinite(model(**batch).loss)


def test_token_ids_outside_the_vocabulary_are_rejected(model) -> None:
    batch = full_batch(model.config)
    # the first id past the real vocabulary: an embedding row of the padded head, still no token
    vocab_size = model.config.vocab.size
    assert vocab_size < model.config.text_config.vocab_size
    batch["input_ids"][0, 1] = vocab_size
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {vocab_size}\)"):
        model(**batch)


def test_mask_targets_at_the_wrong_resolution_are_named(model) -> None:
    batch = full_batch(model.config)
    batch["mask_targets"] = torch.zeros(2, 64, 64)
    with pytest.raises(ValueError, match=r"mask_targets must be \(B, 32, 32\)"):
        model(**batch)


def test_generate_without_a_task_says_how_to_give_one(model) -> None:
    batch = full_batch(model.config)
    with pytest.raises(ValueError, match="task_ids"):
        model.generate(pixel_values=batch["pixel_values"], eva_pixel_values=batch["eva_pixel_values"])
    with pytest.raises(ValueError, match="PixtokForPanopticSegmentation"):
        model.generate(
            pixel_values=batch["pixel_values"],
            eva_pixel_values=batch["eva_pixel_values"],
            task_ids=torch.tensor([5, 5]),
        )
