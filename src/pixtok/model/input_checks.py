"""The forward's input checks, and a switch for callers that ran them while the batch was on the CPU.

A check of an accelerator tensor is a device-to-host read: the host waits for every kernel queued
so far, then the device waits while the host queues the next ones. A training step whose forward
reads the device leaves the GPU idle each time, and the step cannot be queued while the previous one
is still running. The training loop therefore runs these checks on each batch while it is still on
the CPU (:func:`check_batch`, microseconds) and calls the model inside :func:`checked_on_host`,
where the forward skips the checks of tensors that are not on the CPU. Outside it (a user calling
the model) every check runs, so bad input still gets its clear error rather than a device-side
assert.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import torch

COORD_TOLERANCE = 1e-4  # rounding room on [0, 1] for prompt coordinates
_LABEL_NAMES = "-1 padding, 0 background, 1 foreground, 2/3 box corners"

_HOST_DEVICES = ("cpu",)  # device types whose tensors are checked without a device read
_CHECKED_ON_HOST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pixtok_checked_on_host", default=False
)


@contextlib.contextmanager
def checked_on_host() -> Iterator[None]:
    """Inside, the model trusts that :func:`check_batch` validated its inputs on the CPU and skips
    the checks that would read them back from an accelerator (the checks of CPU tensors still run)."""
    token = _CHECKED_ON_HOST.set(True)
    try:
        yield
    finally:
        _CHECKED_ON_HOST.reset(token)


def should_check(tensor: torch.Tensor) -> bool:
    """Whether the forward checks ``tensor``: always on the CPU (no device read), and on an
    accelerator unless the caller validated the batch on the host (:func:`checked_on_host`)."""
    return tensor.device.type in _HOST_DEVICES or not _CHECKED_ON_HOST.get()


def check_token_ids(ids: torch.Tensor, vocab_size: int, ignore: int | None = None) -> None:
    """Raise a ValueError unless every id (other than ``ignore``) is in ``[0, vocab_size)``: ids
    past the real vocabulary (the rows ``pad_vocab_to_multiple_of`` adds) are no tokens."""
    if ignore is not None:
        ids = ids[ids != ignore]
    if not ids.numel():
        return
    low, high = torch.stack([ids.min(), ids.max()]).tolist()  # one device read
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"token ids must be in [0, {vocab_size}) (the pixtok vocabulary), got range [{low}, {high}]"
        )


def check_prompt(coords: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise a ValueError unless every label is a known SAM label and every real prompt point
    (label != -1) lies in model space ``[0, 1]``; one device read when they are valid."""
    known = (labels >= -1) & (labels <= 3)
    inside = (coords >= -COORD_TOLERANCE) & (coords <= 1 + COORD_TOLERANCE)
    if bool((known.all() & (inside | (labels == -1).unsqueeze(-1)).all()).item()):
        return
    if not bool(known.all()):
        raise ValueError(
            f"prompt labels must be in {{-1, 0, 1, 2, 3}} ({_LABEL_NAMES}), got {labels.unique().tolist()}"
        )
    values = coords[labels != -1]
    raise ValueError(
        "prompt_coords must lie in model space [0, 1] (pixels / max(h, w) of the original image); "
        f"got values in [{values.min().item():.4g}, {values.max().item():.4g}] — is the prompt box "
        "outside the image, or given in pixels?"
    )


def check_batch(batch: Mapping[str, Any], vocab_size: int) -> None:
    """Run, on a batch's CPU tensors, the checks the forward skips inside :func:`checked_on_host`:
    the token ids of ``input_ids`` / ``decoder_input_ids`` / ``labels`` (-100 ignored) and the
    prompt. Tensors already on an accelerator are left to the forward's own checks."""
    for key, ignore in (("input_ids", None), ("decoder_input_ids", None), ("labels", -100)):
        ids = batch.get(key)
        if torch.is_tensor(ids) and ids.device.type in _HOST_DEVICES:
            check_token_ids(ids, vocab_size, ignore)
    coords, labels = batch.get("prompt_coords"), batch.get("prompt_labels")
    if torch.is_tensor(coords) and torch.is_tensor(labels) and coords.device.type in _HOST_DEVICES:
        check_prompt(coords, labels)


__all__ = ["check_batch", "check_prompt", "check_token_ids", "checked_on_host", "should_check"]
