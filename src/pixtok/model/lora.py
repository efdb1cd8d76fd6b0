"""Parameter-efficient tuning of the T5: LoRA through peft, and trainable rows for pixtok's tokens.

PixelLLM tunes Flan-T5 with LoRA (rank 32 on the ``q`` and ``v`` projections) and keeps every other
T5 weight frozen. pixtok also appends its own tokens (coordinates, classes, noise, tasks) to the
vocabulary; their embedding rows and LM-head rows start random and must learn even when the T5 is
frozen. :class:`AddedTokenRows` holds a zero-initialized delta for exactly those rows, so the
trainable parameter count stays a few percent of the model instead of two full vocabulary matrices.

Merging for inference: :func:`merge_lora` folds ``B @ A * scale`` into every adapted Linear's weight
(the adapters stay attached but are skipped), :func:`unmerge_lora` subtracts it again. Merged and
unmerged outputs agree to float rounding. Merge before benchmarking or exporting; unmerge before
training again.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

ADAPTER_NAME = "default"


def apply_lora(
    text_model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]
) -> nn.Module:
    """Inject LoRA adapters into the T5 (in place) and return it.

    Only ``text_model`` is walked, so the image towers can never be hit whatever the target names.

    Args:
        text_model: the ``T5ForConditionalGeneration``.
        r: LoRA rank (> 0).
        alpha: LoRA alpha (update scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: names of the T5 Linear layers to adapt (``["q", "v"]``).

    Raises:
        ValueError: ``r`` is not positive, or no Linear layer matches ``target_modules``.
    """
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in text_model.named_modules()
        if isinstance(module, nn.Linear)
    }
    if not names.intersection(target_modules):
        raise ValueError(
            f"no T5 Linear layer is named like {target_modules}; T5 Linear names: {sorted(names)}"
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none"
    )
    return inject_adapter_in_model(config, text_model, adapter_name=ADAPTER_NAME)


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    """Every peft LoRA layer inside ``model``."""
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def reset_lora(model: nn.Module) -> int:
    """Re-initialize every adapter as peft does (``A`` random, ``B`` zero: the adapter starts as a no-op).

    Needed after a parent ``PreTrainedModel.post_init`` re-initializes every Linear it contains,
    adapters included. Returns the number of layers reset.
    """
    layers = lora_layers(model)
    for layer in layers:
        layer.reset_lora_parameters(ADAPTER_NAME, True)
    return len(layers)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight (idempotent); returns the number of layers merged."""
    count = 0
    for layer in lora_layers(model):
        if not layer.merged:
            layer.merge()
            count += 1
    return count


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns the number of layers unmerged."""
    count = 0
    for layer in lora_layers(model):
        if layer.merged:
            layer.unmerge()
            count += 1
    return count


def lm_head_input_scale(text_config) -> float:
    """Factor T5 applies to the last decoder state before its LM head (``d_model ** -0.5`` or 1).

    transformers >= 5 reads ``scale_decoder_outputs``; older T5 configs tie it to
    ``tie_word_embeddings``.
    """
    scaled = getattr(text_config, "scale_decoder_outputs", text_config.tie_word_embeddings)
    return text_config.d_model**-0.5 if scaled else 1.0


class AddedTokenRows(nn.Module):
    """Trainable deltas for the embedding and LM-head rows of the tokens pixtok appends.

    The frozen T5 holds all ``vocab_size`` rows; ids ``>= base_vocab_size`` get
    ``embedding_delta[id - base_vocab_size]`` added to their embedding and ``head_delta[…]`` added to
    their LM-head row (:meth:`logits`, :meth:`head_rows`). Both deltas start at zero.

    Args:
        base_vocab_size: first id pixtok adds.
        vocab_size: total ids (the T5's ``vocab_size``: with ``pad_vocab_to_multiple_of`` it counts the
            padding rows past the last real id, whose deltas get no gradient).
        hidden_size: T5 ``d_model``.
    """

    def __init__(self, base_vocab_size: int, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.base_vocab_size = base_vocab_size
        num_added = vocab_size - base_vocab_size
        self.embedding_delta = nn.Parameter(torch.zeros(num_added, hidden_size))
        self.head_delta = nn.Parameter(torch.zeros(num_added, hidden_size))

    def embed(self, input_ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and their (B, L, D) base embeddings -> embeddings with the deltas added."""
        offset = input_ids - self.base_vocab_size
        added = offset >= 0
        delta = self.embedding_delta.to(embeddings.dtype)[offset.clamp(min=0)]
        return embeddings + delta * added.unsqueeze(-1).to(embeddings.dtype)

    def head_rows(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(K,) ids and their (K, D) LM-head rows -> the rows with the deltas of added ids added."""
        offset = ids - self.base_vocab_size
        delta = self.head_delta.to(rows.dtype)[offset.clamp(min=0)]
        return rows + delta * (offset >= 0).unsqueeze(-1).to(rows.dtype)

    def logits(self, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(..., D) LM-head inputs and the T5's (V, D) head weight → (..., V) logits of the head with
        the added rows' deltas, as one matrix product (:class:`_AddedRowsHead`)."""
        return _AddedRowsHead.apply(inputs, weight, self.head_delta, self.base_vocab_size)


class _AddedRowsHead(torch.autograd.Function):
    """``inputs @ W'.T`` with ``W' = weight`` plus ``delta`` on the rows from ``base`` on.

    One product over the whole vocabulary (adding the deltas' logits to the base head's afterwards
    writes, and copies, the (B, T, V) logits twice over), and a backward that computes only the
    gradients that exist: the inputs', the deltas' (``grad[..., base:].T @ inputs``, a few thousand
    rows) and the base weight's only when it trains — plain autograd of ``inputs @ W'.T`` would
    compute the whole (V, D) weight gradient to keep its last rows. Under autocast the product runs
    in the autocast dtype, as ``F.linear`` would.
    """

    @staticmethod
    def forward(ctx, inputs, weight, delta, base):  # noqa: ANN001, ANN205 (autograd.Function)
        device = inputs.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else inputs.dtype
        full = torch.cat([weight[:base], weight[base:] + delta.to(weight.dtype)]).to(dtype)
        x = inputs.to(dtype)
        ctx.save_for_backward(x, full)
        ctx.base = base
        ctx.dtypes = (inputs.dtype, weight.dtype, delta.dtype)
        with torch.autocast(device, enabled=False):
            return x @ full.T

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, full = ctx.saved_tensors
        grad = grad.to(full.dtype)
        grad_inputs = grad_weight = grad_delta = None
        if ctx.needs_input_grad[0]:
            grad_inputs = (grad @ full).to(ctx.dtypes[0])
        flat_x = x.reshape(-1, x.shape[-1])
        flat_grad = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = (flat_grad.T @ flat_x).to(ctx.dtypes[1])
        if ctx.needs_input_grad[2]:
            grad_delta = (flat_grad[:, ctx.base :].T @ flat_x).to(ctx.dtypes[2])
        return grad_inputs, grad_weight, grad_delta, None


__all__ = [
    "ADAPTER_NAME",
    "AddedTokenRows",
    "apply_lora",
    "lm_head_input_scale",
    "lora_layers",
    "merge_lora",
    "reset_lora",
    "unmerge_lora",
]
