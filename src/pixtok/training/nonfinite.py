"""Skipping the optimizer step of a non-finite loss without reading the device every step.

The loop must never train on a non-finite loss. Deciding that on the host means reading the loss's
finiteness every step (``float(finite)``): the host waits for the step's backward to finish, and the
GPU then idles while the host prepares the next step (the data's move, eager code, the first graph
replays) — on one H100 the ``base`` step with cached tower features left the GPU idle for ~14 ms of
its first 20 (``benchmarks/RESULTS.md``, twenty-first session).

PyTorch's fused AdamW already takes that decision on the device: ``GradScaler`` hands it a
``found_inf`` tensor (the optimizer's ``found_inf`` attribute), and where it is 1 the fused kernel
leaves parameters and moments as they were and the step count is put back. :class:`NonFiniteGuard`
feeds it the loss's finiteness instead, accumulated over a step's micro-batches, and counts the
skipped steps on the device; the host reads the count only when it logs, saves or ends.

It applies when the optimizer is a fused Adam/AdamW and nothing else sets ``found_inf`` (no fp16
``GradScaler``) and the parameters are plain tensors (not FSDP's sharded ones);
:func:`skips_on_device` says so, and the loop keeps its host read otherwise.
"""

from __future__ import annotations

from typing import Any

import torch


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (or ``optimizer`` itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` applies a ``found_inf`` tensor itself: a torch Adam/AdamW with every
    parameter group fused."""
    inner = _inner(optimizer)
    return (
        isinstance(inner, torch.optim.Adam | torch.optim.AdamW)
        and bool(inner.param_groups)
        and all(group.get("fused") for group in inner.param_groups)
    )


class NonFiniteGuard:
    """A step's "every micro-batch's loss was finite" flag and the count of skipped steps, on the device.

    Per micro-batch call :meth:`observe` with a boolean tensor (all processes' losses finite); around
    the optimizer step call :meth:`before_step` (hands the optimizer ``found_inf``) and
    :meth:`after_step` (counts a skipped step and starts the next). :attr:`taken` is the step's flag
    as a float tensor (1.0: the step is taken), for anything else that must only follow taken steps
    (the weight average).
    """

    def __init__(self, optimizer: Any, device: torch.device) -> None:
        if not skips_on_device(optimizer):
            raise ValueError(
                "NonFiniteGuard needs a fused torch Adam/AdamW (found_inf is applied by its kernel)"
            )
        self.optimizer = _inner(optimizer)
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)

    def observe(self, finite: torch.Tensor) -> None:
        """Fold one micro-batch's finiteness (a boolean tensor) into the step's flag."""
        self.ok &= finite.reshape(())

    @property
    def taken(self) -> torch.Tensor:
        """1.0 if the step is taken (every loss finite so far), else 0.0."""
        return self.ok.float()

    def before_step(self) -> None:
        """Hand the optimizer ``found_inf`` (1.0 for a step with a non-finite loss)."""
        self.optimizer.found_inf = (~self.ok).float()

    def discard(self) -> None:
        """Start the next step's flag without counting this step (one the loop skipped itself)."""
        self.ok.fill_(True)

    def after_step(self) -> None:
        """Count the step if it was skipped, withdraw ``found_inf`` and start the next step's flag."""
        self.skipped += (~self.ok).long()
        self.discard()
        if hasattr(self.optimizer, "found_inf"):
            del self.optimizer.found_inf


__all__ = ["NonFiniteGuard", "skips_on_device"]
