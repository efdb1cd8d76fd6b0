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
