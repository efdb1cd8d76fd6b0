"""Which trainable parameters a recipe's tasks reach, so that DDP can skip its unused-parameter search.

A pixtok model carries the heads of every task (trace, box, mask, proposal), and a micro-batch trains
one task's. DDP must either search every step for parameters that got no gradient
(``find_unused_parameters=True``: a traversal of the autograd graph on the host) or be sure that every
parameter it reduces gets one. :func:`probe` runs one real training micro-batch of each task, forward
and backward, and records what it reached; :func:`freeze` turns off the parameters no task reaches
(AdamW would never update them: they never get a gradient), and when every task reaches the same set
DDP needs no search (:attr:`Probe.static`).

The probe leaves no trace on the run: the caller makes its micro-batches with a mixture of their own,
and it restores torch's RNG (CPU and the device's), the model's buffers and train/eval mode, and clears
the gradients. (The data pipeline draws only from explicitly seeded generators, never from numpy's or
Python's global ones.)

A static set assumes that each task's micro-batches all compute the same losses (each loss trains
its heads). A task whose losses depend on the data (a referring batch without a mask target, a
dense-caption batch whose crops lost every box) breaks that; :meth:`Probe.check` stops the run on
the micro-batch where it happens, before DDP would apply a half-reduced gradient and fail a step
later, and ``train.ddp_find_unused: true`` trains such a task.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch


@dataclass
class Probe:
    """What one training micro-batch of each task reached.

    Attributes:
        tasks: the task names, in the recipe's order.
        trainable: the names of the model's trainable parameters, in model order.
        reached: per task, the trainable parameters that got a gradient; ``None`` for a task whose
            micro-batch had no loss (nothing is known of it).
        losses: per task, the names (of ``loss_names``) of the losses its micro-batch computed.
        loss_names: the model output's loss attributes.
    """

    tasks: list[str]
    trainable: list[str]
    reached: list[frozenset[str] | None]
    losses: list[frozenset[str]]
    loss_names: tuple[str, ...]

    @cached_property
    def unused(self) -> list[str]:
        """Trainable parameters no task reaches, in model order (none while a task is unknown)."""
        if None in self.reached:
            return []
        used = frozenset().union(*self.reached)
        return [name for name in self.trainable if name not in used]

    @cached_property
    def static(self) -> bool:
        """Every task reaches the same parameters: DDP can run with ``find_unused_parameters=False``."""
        return None not in self.reached and len(set(self.reached)) == 1

    @property
    def verdict(self) -> str:
        """Why DDP needs the search or not, in words."""
        if self.static:
            return "every task trains the same parameters"
        if None in self.reached:
            return "a task's micro-batch has no loss"
        return "the tasks train different parameters"

    def check(self, task: int, output: Any, step: int) -> None:
        """Raise if ``output``, of a micro-batch of task ``task``, trains heads the run cannot: with
        a static set, other heads than its task's probe (DDP without the unused-parameter search
        would apply a half-reduced gradient, then fail a step later); otherwise, heads that were
        frozen because no probe reached them (they would silently not learn)."""
        found = _losses(output, self.loss_names)
        if self.static:
            seen = self.losses[task]
            fine = found == seen
        else:
            seen = frozenset().union(*self.losses)
            fine = found <= seen or not self.unused
        if fine:
            return
        raise RuntimeError(
            f"step {step}: a micro-batch of task {self.tasks[task]} computed the losses {sorted(found)}, "
            f"the probe {sorted(seen)}: its heads change from batch to batch; set "
            "train.ddp_find_unused: true and resume"
        )


def probe(
    model: torch.nn.Module,
    batches: Sequence[tuple[str, dict[str, Any]]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    loss_names: Sequence[str],
) -> Probe:
    """Run ``model`` (already on ``device``) forward, in training mode under ``autocast()``, and
    backward on each ``(task name, micro-batch)`` and record which trainable parameters got a
    gradient. The model's buffers, mode and gradients and torch's RNG are as before on return."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    reached: list[frozenset[str] | None] = []
    losses: list[frozenset[str]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        try:
            for _, batch in batches:
                model.zero_grad(set_to_none=True)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with autocast():
                    out = model(**batch)
                losses.append(_losses(out, loss_names))
                if out.loss is None:
                    reached.append(None)
                    continue
                out.loss.backward()
                reached.append(frozenset(name for name, p in params if p.grad is not None))
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
    names = [name for name, _ in batches]
    return Probe(names, [name for name, _ in params], reached, losses, tuple(loss_names))


def _losses(output: Any, loss_names: Sequence[str]) -> frozenset[str]:
    """The names of the losses ``output`` has."""
    return frozenset(name for name in loss_names if getattr(output, name, None) is not None)


def freeze(model: torch.nn.Module, names: Sequence[str]) -> str:
    """``requires_grad_(False)`` on the parameters ``names``; returns a one-line summary naming the
    outermost modules (or parameters) none of whose trainable parameters is left trainable."""
    if not names:
        return "froze no parameters"
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    roots = _roots(names, trainable)
    chosen = set(names)
    numel = 0
    for name, p in model.named_parameters():
        if name in chosen:
            p.requires_grad_(False)
            numel += p.numel()
    return f"froze {len(chosen)} tensors ({numel:,} parameters) that no task trains: {', '.join(roots)}"


def _roots(names: Sequence[str], trainable: Sequence[str]) -> list[str]:
    """The outermost module paths whose trainable parameters are all in ``names``."""

    def prefixes(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[: i + 1]) for i in range(len(parts))]

    total = Counter(prefix for name in trainable for prefix in prefixes(name))
    chosen = Counter(prefix for name in names for prefix in prefixes(name))
    return sorted({next(p for p in prefixes(name) if chosen[p] == total[p]) for name in names})


__all__ = ["Probe", "freeze", "probe"]
