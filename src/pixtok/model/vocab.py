"""The pixtok token space, documented once.

Every pixtok sequence lives in one vocabulary: the base T5 sentencepiece vocabulary followed by the
tokens pixtok adds, always appended in this order::

    [0, base)                               base T5 pieces (pad=0, eos=1, unk=2, words; T5's last 100
                                            are the ``<extra_id_*>`` sentinels, never generated)
    [coord_offset, coord_offset + num_bins) coordinate tokens ``<loc_0>`` … ``<loc_{num_bins-1}>``
    [class_offset, class_offset + C)        closed-set class tokens ``<cls_0>`` … (absent when
                                            ``open_vocabulary``: the class is then written as text)
    noise_id                                the ``<noise>`` class of Pix2Seq sequence augmentation
    [task_offset, task_offset + len(TASKS)) task tokens ``<task_detection>`` … (encoder prompts)

``coord_offset = base_vocab_size``; everything else is derived, so a config holding
``base_vocab_size``, ``num_bins`` and ``id2label`` fixes every id. The same strings are added to the
tokenizer (as special added tokens, so the fast tokenizer never splits them) and
:meth:`PixtokVocab.check_tokenizer` asserts that the tokenizer agrees with the arithmetic here.

Coordinates: a value ``v`` in ``[0, 1]`` (normalized to the padded square model input) is token
``coord_offset + min(floor(v * num_bins), num_bins - 1)`` and decodes to the bin centre
``(bin + 0.5) / num_bins``, so the round-trip error is at most half a bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TASKS: tuple[str, ...] = (
    "detection",
    "caption",
    "referring",
    "region_caption",
    "dense_caption",
    "panoptic",
)
"""Every task pixtok knows; ``task_ids`` tensors index into this tuple."""

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
DECODER_START_ID = PAD_ID  # T5 convention


def task_index(task: str) -> int:
    """Index of ``task`` in :data:`TASKS`, with a clear error for unknown names."""
    try:
        return TASKS.index(task)
    except ValueError:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class PixtokVocab:
    """Arithmetic of the pixtok token space (see the module docstring).

    Args:
        base_vocab_size (`int`): number of entries of the base tokenizer (T5: 32100 with the extra ids).
        num_bins (`int`, *optional*, defaults to 1000): coordinate quantization bins.
        class_names (`Sequence[str]`, *optional*): closed-set class names, index = label id.
        open_vocabulary (`bool`, *optional*, defaults to `False`): write classes as text, not tokens.
        num_sentinel_tokens (`int`, *optional*, defaults to 0): how many base ids at the end of the
            base vocabulary are T5's ``<extra_id_*>`` span sentinels (100 for T5's 32100 entries);
            text decoding never emits them.
    """

    base_vocab_size: int
    num_bins: int = 1000
    class_names: tuple[str, ...] = field(default_factory=tuple)
    open_vocabulary: bool = False
    num_sentinel_tokens: int = 0

    def __post_init__(self) -> None:
        if self.base_vocab_size <= UNK_ID:
            raise ValueError(f"base_vocab_size must exceed {UNK_ID}, got {self.base_vocab_size}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {self.num_bins}")
        object.__setattr__(self, "class_names", tuple(self.class_names))

    # --- offsets ---------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def decoder_start_id(self) -> int:
        return DECODER_START_ID

    @property
    def coord_offset(self) -> int:
        return self.base_vocab_size

    @property
    def num_classes(self) -> int:
        return 0 if self.open_vocabulary else len(self.class_names)

    @property
    def class_offset(self) -> int:
        return self.coord_offset + self.num_bins

    @property
    def noise_id(self) -> int:
        return self.class_offset + self.num_classes

    @property
    def task_offset(self) -> int:
        return self.noise_id + 1

    @property
    def size(self) -> int:
        """Total number of token ids (the LM head's output size)."""
        return self.task_offset + len(TASKS)

    @property
    def sentinel_ids(self) -> tuple[int, ...]:
        """Ids of T5's ``<extra_id_*>`` sentinels (pre-training span markers, never output text)."""
        return tuple(range(self.base_vocab_size - self.num_sentinel_tokens, self.base_vocab_size))

    def task_id(self, task: str) -> int:
        return self.task_offset + task_index(task)

    # --- strings ---------------------------------------------------------------------------------
    def added_tokens(self) -> list[str]:
        """The strings pixtok adds to the base tokenizer, in id order."""
        tokens = [f"<loc_{i}>" for i in range(self.num_bins)]
        tokens += [f"<cls_{i}>" for i in range(self.num_classes)]
        tokens.append("<noise>")
        tokens += [f"<task_{t}>" for t in TASKS]
        return tokens

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise if ``tokenizer`` does not map the added tokens to the ids computed here."""
        if len(tokenizer) != self.size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the pixtok vocabulary needs {self.size} "
                f"(base {self.base_vocab_size} + {self.num_bins} bins + {self.num_classes} classes "
                f"+ noise + {len(TASKS)} tasks)"
            )
        for expected, token in enumerate(self.added_tokens(), start=self.coord_offset):
            got = tokenizer.convert_tokens_to_ids(token)
            if got != expected:
                raise ValueError(f"tokenizer maps {token} to {got}, expected {expected}")

    # --- kinds of ids ----------------------------------------------------------------------------
    def is_coord(self, token_id: int) -> bool:
        return self.coord_offset <= token_id < self.class_offset

    def is_class(self, token_id: int) -> bool:
        return self.class_offset <= token_id < self.noise_id

    def is_text(self, token_id: int) -> bool:
        return UNK_ID < token_id < self.base_vocab_size

    def task_from_id(self, token_id: int) -> str:
        """Name of the task whose token is ``token_id`` (raises for non-task ids)."""
        index = token_id - self.task_offset
        if not 0 <= index < len(TASKS):
            raise ValueError(f"token {token_id} is not a task token ([{self.task_offset}, {self.size}))")
        return TASKS[index]

    # --- coordinates (the one place the bin arithmetic lives) -------------------------------------
    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Coordinates in model space → bin indices.

        Args:
            values: any shape, floats normalized to the padded square (``[0, 1]``); values outside
                are clamped to the first/last bin, NaN maps to bin 0.

        Returns:
            ``int64`` array of the same shape, in ``[0, num_bins)`` (add :attr:`coord_offset` for ids).
        """
        scaled = np.asarray(values, dtype=np.float64) * self.num_bins
        np.floor(scaled, out=scaled)
        np.fmax(scaled, 0.0, out=scaled)  # fmax/fmin drop NaN in favour of the bound: NaN -> bin 0
        np.fmin(scaled, self.num_bins - 1, out=scaled)
        return scaled.astype(np.int64)

    def dequantize(self, bins: np.ndarray) -> np.ndarray:
        """Bin indices → bin centres ``(bin + 0.5) / num_bins`` in model space (``float64``).

        Bins outside ``[0, num_bins)`` are clamped first, so the result always lies in ``(0, 1)``.
        """
        bins = np.clip(np.asarray(bins, dtype=np.int64), 0, self.num_bins - 1)
        return (bins + 0.5) / self.num_bins

    def class_token(self, label: int) -> int:
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        return self.class_offset + label


def vocab_from_config(config: Any) -> PixtokVocab:
    """Build the vocabulary a :class:`PixtokConfig` (or anything with the same fields) describes."""
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    names: Sequence[str] = [id2label[i] for i in sorted(id2label)]
    return PixtokVocab(
        base_vocab_size=config.base_vocab_size,
        num_bins=config.num_bins,
        class_names=tuple(names),
        open_vocabulary=getattr(config, "open_vocabulary", False),
        num_sentinel_tokens=getattr(config, "num_sentinel_tokens", 0) or 0,
    )


__all__ = [
    "DECODER_START_ID",
    "EOS_ID",
    "PAD_ID",
    "TASKS",
    "UNK_ID",
    "PixtokVocab",
    "task_index",
    "vocab_from_config",
]
