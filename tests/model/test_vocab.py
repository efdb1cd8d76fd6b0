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
