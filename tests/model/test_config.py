"""PixtokConfig: derived numbers, serialization, presets' validation."""

from __future__ import annotations

import pytest

from pixtok.model.configuration_pixtok import PixtokConfig, PixtokPromptExtractorConfig
from pixtok.model.presets import COCO_CLASSES
from pixtok.model.vocab import TASKS, vocab_from_config


def test_text_vocab_is_derived_from_the_token_space() -> None:
    config = PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=1)
    vocab = vocab_from_config(config)
    assert config.text_config.vocab_size == vocab.size == 2048 + 1000 + 80 + 1 + len(TASKS)
    assert (config.text_config.pad_token_id, config.text_config.eos_token_id) == (0, 1)
    assert config.text_config.decoder_start_token_id == 0
    # a user-supplied vocab_size cannot break the one source of truth
    other = PixtokConfig.from_preset("tiny", text_config={"vocab_size": 7}, num_bins=500)
    size = vocab_from_config(other).size
    assert size == 2048 + 500 + 80 + 1 + len(TASKS)
    assert other.text_config.vocab_size == -(-size // 64) * 64  # the preset pads to a multiple of 64


def test_open_vocabulary_drops_class_tokens() -> None:
    config = PixtokConfig.from_preset("tiny", open_vocabulary=True)
    assert config.vocab.size == 2048 + 1000 + 1 + len(TASKS)
    assert config.text_config.vocab_size == 3072  # padded to a multiple of 64


def test_prompt_encoder_follows_the_sam_tower() -> None:
    config = PixtokConfig.from_preset("tiny", prompt_encoder_config={"image_size": 999, "hidden_size": 3})
    assert config.prompt_encoder_config.image_size == config.vision_config.image_size == config.image_size
    assert config.prompt_encoder_config.patch_size == config.vision_config.patch_size
    assert config.prompt_encoder_config.hidden_size == config.vision_config.output_channels
    assert (
        config.mask_size == 4 * config.image_size // config.vision_config.patch_size == config.image_size // 4
    )


def test_round_trip_through_json(tmp_path) -> None:
    config = PixtokConfig.from_preset("tiny", lora_r=0, label_smoothing=0.2)
    config.save_pretrained(tmp_path)
    loaded = PixtokConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.extractor_config, PixtokPromptExtractorConfig)
    assert loaded.extractor_config.num_tokens == 32
    assert loaded.freeze_text_model is False and loaded.label_smoothing == 0.2
    assert loaded.text_config.vocab_size == config.text_config.vocab_size


def test_defaults_follow_the_paper() -> None:
    config = PixtokConfig.from_preset("pixelllm-xl")
    assert config.lora_r == 32 and config.lora_target_modules == ["q", "v"]
    assert config.freeze_towers and config.freeze_text_model
    assert config.label_smoothing == 0.1 and config.eos_weight == 0.1 and config.num_bins == 1000
    assert [config.id2label[i] for i in range(80)] == list(COCO_CLASSES)
    assert config.tokenizer_name_or_path == "google/flan-t5-xl"
    assert PixtokConfig.from_preset("tiny").tokenizer_name_or_path == "pixtok-tiny"


def test_freeze_text_model_defaults_to_lora() -> None:
    assert PixtokConfig.from_preset("tiny", lora_r=0).freeze_text_model is False
    assert PixtokConfig.from_preset("tiny", lora_r=4).freeze_text_model is True
    assert PixtokConfig.from_preset("tiny", lora_r=4, freeze_text_model=False).freeze_text_model is False


def test_inconsistent_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="mask_decoder_config.hidden_size"):
        PixtokConfig.from_preset("tiny", mask_decoder_config={"hidden_size": 64})
    with pytest.raises(ValueError, match="divisible"):
        PixtokPromptExtractorConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="lora_r"):
        PixtokConfig.from_preset("tiny", lora_r=-1)
