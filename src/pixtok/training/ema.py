"""An exponential moving average of the trainable weights (``train.ema_decay``).

After every optimizer step the average moves toward the weights:
``shadow = d * shadow + (1 - d) * weight`` with ``d = min(decay, (1 + n) / (10 + n))`` at the n-th
update, so the first updates follow the weights closely instead of dragging the random
initialisation along. Evaluation and the saved model use the averaged weights; checkpoints carry the
average (through ``accelerator.register_for_checkpointing``) beside the raw weights, so a resumed run
continues both exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


class WeightEMA:
    """The moving average of ``params`` (the live tensors the optimizer updates).

    Args:
        params: the trainable parameters, in a fixed order (the checkpoint stores the average in it).
        decay: the average's decay per update, in (0, 1).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params = list(params)
        self.decay = float(decay)
        self.updates = 0
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self) -> float:
        """The decay the next update uses (the warm-up's, until it reaches ``decay``)."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, taken: torch.Tensor | None = None) -> None:
        """Move the average toward the weights (call after each optimizer step that was taken).

        ``taken``: a float tensor, 1.0 if the step was taken and 0.0 if it was skipped on the device
        (:class:`~pixtok.training.nonfinite.NonFiniteGuard`): a skipped step leaves the average as
        it was, without the host reading the flag (its warm-up still counts the step)."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        weights: float | list[torch.Tensor] = weight
        if taken is not None:
            flag = taken * weight
            weights = [flag.to(s.dtype) for s in self.shadow]
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weights)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the weights with the average, in place (storages kept: CUDA graphs stay valid)."""
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the ``with`` block, the trained ones back after."""
        with torch.no_grad():
            backup = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ValueError(
                "the checkpoint's weight average does not match the model's trainable parameters"
            )
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        with torch.no_grad():
            for s, saved in zip(self.shadow, shadow):
                s.copy_(saved)


__all__ = ["WeightEMA"]
