"""Collation pads to the longest sequence in the batch, with the right pad per tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixtok.data.collate import IGNORE_INDEX, collate_batches, collate_rows, pad_and_stack
from pixtok.model.vocab import PAD_ID


def test_pads_to_batch_longest_with_named_pad_values() -> None:
    first = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "labels": torch.tensor([[8, 1]]),
        "point_mask": torch.tensor([[True, True]]),
        "pixel_values": torch.zeros(1, 3, 4, 4),
        "words": [["a", "b"]],
    }
    second = {
        "input_ids": torch.tensor([[9]]),
        "labels": torch.tensor([[3, 4, 5, 1]]),
        "point_mask": np.array([[True, False, True, True]]),
        "pixel_values": torch.ones(1, 3, 4, 4),
        "words": [["c"]],
    }
    batch = collate_batches([first, second])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, PAD_ID, PAD_ID]]
    assert batch["labels"].tolist() == [[8, 1, IGNORE_INDEX, IGNORE_INDEX], [3, 4, 5, 1]]
    assert batch["point_mask"].dtype == torch.bool
    assert batch["point_mask"].tolist() == [[True, True, False, False], [True, False, True, True]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["pixel_values"][1].eq(1).all()
    assert batch["words"] == [["a", "b"], ["c"]]
    assert batch["labels"].shape[1] == 4  # the longest in this batch, not a fixed maximum


def test_errors_and_rows() -> None:
    with pytest.raises(ValueError, match="keys"):
        collate_batches([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
    with pytest.raises(ValueError, match="ranks"):
        pad_and_stack([torch.zeros(1, 2), torch.zeros(1, 2, 3)])
    assert collate_rows([{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]) == {"x": [1, 2], "y": ["a", "b"]}
