"""Batching: processor outputs padded to the longest sequence in the batch, rows kept as lists.

:func:`collate_batches` joins per-example processor outputs (each a mapping of tensors with a
leading batch dimension, e.g. one ``PixtokProcessor(...)`` call per row) into one batch: every
non-batch dimension is padded to the largest size present **in this batch** (never to a fixed
maximum), with the pad value of the tensor's name (:data:`PAD_VALUES`: ``labels`` -100,
``input_ids`` the pad id, masks ``False``/0, …). :func:`collate_rows` is the collate for raw
dataset rows (images stay PIL, nothing is padded), used when the processor runs later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..model.vocab import PAD_ID

IGNORE_INDEX = -100
"""Label value the loss ignores (torch's ``CrossEntropyLoss`` default)."""

PAD_VALUES: dict[str, float | int | bool] = {
    "input_ids": PAD_ID,
    "attention_mask": 0,
    "labels": IGNORE_INDEX,
    "decoder_input_ids": PAD_ID,
    "decoder_attention_mask": 0,
    "label_weights": 0.0,
    "point_targets": 0.0,
    "point_mask": False,
    "proposal_boxes": 0.0,
    "proposal_mask": False,
    "prompt_labels": -1,
    "object_classes": -1,
}
"""Pad value per tensor name; names not listed pad with 0."""


def pad_and_stack(tensors: Sequence[torch.Tensor], pad_value: float | int | bool = 0) -> torch.Tensor:
    """Concatenate ``tensors`` (each ``(b_i, *dims)``) along dim 0, padding every other dim at its end
    to the largest size among them.

    Returns:
        ``(sum b_i, *max dims)`` tensor of the first tensor's dtype.
    """
    if not tensors:
        raise ValueError("pad_and_stack needs at least one tensor")
    ndim = tensors[0].dim()
    if any(t.dim() != ndim for t in tensors):
        raise ValueError(f"cannot batch tensors of different ranks: {[tuple(t.shape) for t in tensors]}")
    if ndim == 0:
        return torch.stack(list(tensors))
    sizes = [max(t.shape[d] for t in tensors) for d in range(1, ndim)]
    total = sum(t.shape[0] for t in tensors)
    out = torch.full((total, *sizes), pad_value, dtype=tensors[0].dtype)
    row = 0
    for t in tensors:
        index = (slice(row, row + t.shape[0]),) + tuple(slice(0, s) for s in t.shape[1:])
        out[index] = t.to(out.dtype)
        row += t.shape[0]
    return out


def collate_batches(
    outputs: Sequence[Mapping[str, Any]], pad_values: Mapping[str, float | int | bool] | None = None
) -> dict[str, Any]:
    """Join per-example processor outputs into one batch (the DataLoader ``collate_fn``).

    Args:
        outputs: mappings of name → tensor / numpy array with a leading batch dim (usually 1);
            non-array values (lists of strings, …) are concatenated as lists.
        pad_values: overrides of :data:`PAD_VALUES`.

    Returns:
        name → ``(B, *max dims)`` tensor padded per name, or a list for non-array values.

    Raises:
        ValueError: the outputs do not all have the same keys.
    """
    if not outputs:
        raise ValueError("collate_batches got an empty batch")
    keys = list(outputs[0].keys())
    for index, out in enumerate(outputs[1:], start=1):
        if set(out.keys()) != set(keys):
            raise ValueError(f"example {index} has keys {sorted(out.keys())}, example 0 has {sorted(keys)}")
    pads = {**PAD_VALUES, **(pad_values or {})}
    batch: dict[str, Any] = {}
    for key in keys:
        values = [out[key] for out in outputs]
        if all(isinstance(v, (torch.Tensor, np.ndarray)) for v in values):
            tensors = [torch.as_tensor(v) for v in values]
            batch[key] = pad_and_stack(tensors, pads.get(key, 0))
        elif all(v is None for v in values):
            batch[key] = None
        else:
            batch[key] = [item for v in values for item in (v if isinstance(v, list) else [v])]
    return batch


def collate_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Dataset rows → ``{column: [value per row]}`` (images stay PIL; nothing padded)."""
    if not rows:
        raise ValueError("collate_rows got an empty batch")
    return {key: [row[key] for row in rows] for key in rows[0]}


__all__ = ["IGNORE_INDEX", "PAD_VALUES", "collate_batches", "collate_rows", "pad_and_stack"]
