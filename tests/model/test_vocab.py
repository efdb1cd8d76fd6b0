import pytest

from pixtok.model.vocab import TASKS, PixtokVocab, task_index


def test_offsets_are_contiguous_and_derived():
    v = PixtokVocab(base_vocab_size=100, num_bins=10, class_names=("a", "b", "c"))
    assert v.coord_offset == 100
    assert v.class_offset == 110
    assert v.noise_id == 113
    assert v.task_offset == 114
    assert v.size == 114 + len(TASKS)
    assert len(v.added_tokens()) == v.size - v.base_vocab_size
    assert v.added_tokens()[0] == "<loc_0>" and v.added_tokens()[v.num_bins] == "<cls_0>"


def test_open_vocabulary_has_no_class_tokens():
    v = PixtokVocab(base_vocab_size=100, num_bins=10, class_names=("a", "b"), open_vocabulary=True)
    assert v.num_classes == 0 and v.noise_id == v.class_offset


def test_unknown_task_and_bad_label_raise():
    with pytest.raises(ValueError, match="unknown task"):
        task_index("segmentation!")
    with pytest.raises(ValueError):
        PixtokVocab(base_vocab_size=100, num_bins=10, class_names=("a",)).class_token(1)


def test_quantize_and_dequantize_are_the_documented_arithmetic():
    import numpy as np

    v = PixtokVocab(base_vocab_size=100, num_bins=10)
    values = np.array([0.0, 0.05, 0.0999, 0.1, 0.55, 0.999, 1.0, 1.7, -0.3, np.nan])
    assert v.quantize(values).tolist() == [0, 0, 0, 1, 5, 9, 9, 9, 0, 0]
    assert v.dequantize(np.array([0, 5, 9, 42, -1])).tolist() == [0.05, 0.55, 0.95, 0.95, 0.05]
    grid = np.linspace(0, 1, 1001)
    assert np.abs(v.dequantize(v.quantize(grid)) - grid).max() <= 0.5 / v.num_bins + 1e-12


def test_task_from_id_inverts_task_id():
    v = PixtokVocab(base_vocab_size=100, num_bins=10, class_names=("a",))
    assert [v.task_from_id(v.task_id(t)) for t in TASKS] == list(TASKS)
    with pytest.raises(ValueError, match="not a task token"):
        v.task_from_id(v.noise_id)


def test_t5_sentinels_are_part_of_the_arithmetic():
    from pixtok.model.configuration_pixtok import PixtokConfig

    assert PixtokConfig.from_preset("tiny").vocab.sentinel_ids == ()
    real = PixtokConfig.from_preset("tiny", base_vocab_size=32100).vocab
    assert real.sentinel_ids == tuple(range(32000, 32100))


@pytest.mark.parametrize("engine", [False, True])
def test_text_decoding_never_emits_t5_sentinels(engine):
    """Sentinel rows of the LM head boosted so greedy decoding would pick them: the ban holds —
    and without it (num_sentinel_tokens=0) a sentinel does come out, so the test can fail."""
    import torch

    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

    def generate(num_sentinels):
        torch.manual_seed(0)
        config = PixtokConfig.from_preset(
            "tiny", base_vocab_size=32100, num_sentinel_tokens=num_sentinels, lora_r=0
        )
        model = PixtokForConditionalGeneration(config).eval()
        with torch.no_grad():
            head = model.model.text_model.lm_head.weight
            head[32000:32100] *= 1000.0
        s = config.image_size
        out = model.generate(
            pixel_values=torch.randn(1, 3, s, s),
            eva_pixel_values=torch.randn(1, 3, config.eva_image_size, config.eva_image_size),
            task_ids=torch.tensor([1]),  # caption
            max_new_tokens=6,
            do_sample=False,
            decode_engine=engine,
        )
        return out.sequences

    banned = generate(100)
    assert not ((banned >= 32000) & (banned < 32100)).any()
    unbanned = generate(0)
    assert ((unbanned >= 32000) & (unbanned < 32100)).any()
