"""Regional ``torch.compile`` for training: every repeated block compiled in place.

The training step of a pixtok model is a few hundred small matrix products and thousands of
element-wise kernels (norms, casts, activations, residuals, attention biases); compiled, a block's
element-wise work becomes a handful of fused kernels. Compiling each *repeated block* (the children
of a ``ModuleList`` that are all of one class: T5 blocks, SAM and EVA02 layers, the extractor's
layers) rather than the whole model keeps the compile time to one compile per block kind, as
PyTorch's regional-compilation recipe and accelerate's ``compile_regions`` do. Unlike
``compile_regions`` it compiles in place (``nn.Module.compile``), so parameter names, checkpoints,
``save_pretrained`` and the optimizer's parameter groups are unchanged.

With ``mode="reduce-overhead"`` each compiled block's forward and backward are also CUDA graphs:
the step is then launched as a few dozen graph replays instead of thousands of kernels, which is
what a small model's step needs (it is host-bound otherwise). Call :func:`step_begin` at the start
of every micro-batch so that the graphs' output memory can be reused.

A module whose class sets ``compile_alone = True`` (the LM loss, ``pixtok.model.heads.LMLoss``) is
compiled by itself as well, never with CUDA graphs: its input is a large activation made outside
any graph, which a graph would first copy into its own memory.

Use :func:`eager` around code that should not run compiled (evaluation's decode loop, whose shapes
change every step).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes; any other string given to :func:`compile_options` is a backend."""


def compile_options(value: bool | str) -> dict[str, str]:
    """``torch.compile`` keyword arguments for ``train.compile``: ``True`` → inductor's default mode,
    a mode name (:data:`MODES`) → that mode, any other string → that backend (``aot_eager``, …)."""
    if value is True:
        return {}
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected true, a torch.compile mode or a backend name, got {value!r}")
    return {"mode": value} if value in MODES else {"backend": value}


def step_begin(options: dict[str, str]) -> None:
    """Mark a new training step for CUDA-graph trees (``reduce-overhead``); a no-op otherwise."""
    if options.get("mode") == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def _block_lists(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.ModuleList]]:
    """``(owner, list)`` for every ``ModuleList`` of ≥ 2 modules that are all of one class and have
    submodules of their own (layers, not a list of ``Linear``), outermost first (a list inside a block
    of a list already found is left out); ``owner`` is the module holding the list."""
    found: list[tuple[torch.nn.Module, torch.nn.ModuleList]] = []
    inside: set[int] = set()
    for owner in model.modules():
        for module in owner.children():
            if id(module) in inside or not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
                continue
            kinds = {type(child) for child in module}
            if len(kinds) != 1 or not any(True for _ in module[0].children()):
                continue
            found.append((owner, module))
            inside.update(id(m) for m in module.modules())  # the list itself too: held twice, found once
    return found


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The children of every ``ModuleList`` of ≥ 2 modules that are all of one class and have
    submodules of their own (layers, not a list of ``Linear``), outermost first (a block inside a
    block already listed is not listed again)."""
    return [child for _, blocks in _block_lists(model) for child in blocks]


def block_stacks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that hold the :func:`repeated_blocks` lists (a T5 stack, a tower's encoder), each
    once, outermost first, ``model`` itself left out: compiled whole, a stack's forward is one graph
    (with ``reduce-overhead`` one CUDA graph) instead of one per block."""
    stacks: list[torch.nn.Module] = []
    inside: set[int] = set()
    for owner, _ in _block_lists(model):
        if owner is model or id(owner) in inside:
            continue
        stacks.append(owner)
        inside.update(id(m) for m in owner.modules())
    return stacks


def standalone_regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` whose class asks to be compiled by itself (``compile_alone``)."""
    return [m for m in model.modules() if getattr(type(m), "compile_alone", False)]


def _without_graphs(compile_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``compile_kwargs`` with a CUDA-graph mode swapped for its graph-free equivalent."""
    mode = compile_kwargs.get("mode")
    out = {k: v for k, v in compile_kwargs.items() if k != "mode"}
    if mode == "max-autotune":
        out["mode"] = "max-autotune-no-cudagraphs"
    elif mode not in (None, "reduce-overhead"):
        out["mode"] = mode
    return out


REGIONS = ("blocks", "stacks")
"""What :func:`compile_repeated_blocks` compiles as one region: each repeated block, or each stack."""


def compile_repeated_blocks(
    model: torch.nn.Module, regions: str = "blocks", no_graphs: str | None = None, **compile_kwargs: Any
) -> int:
    """``torch.compile`` every repeated block of ``model`` in place (``regions="stacks"``: every module
    holding a list of them, :func:`block_stacks`, whole), and every :func:`standalone_regions` module
    without CUDA graphs; returns how many modules were compiled.

    Blocks of one class share their compiled code (one compile per distinct graph: e.g. T5's first
    layer, which owns the relative-position bias, and the rest). The dynamo cache is widened so that
    every block kind keeps its compiled code across the batches' varying sequence lengths. Stacks
    compile once each (longer: every block is traced) and run as one graph (with ``reduce-overhead``
    one CUDA-graph replay) instead of one per block; on the ``base`` training step that was no
    faster: a whole stack's guard checks and replay cost the host as much as its blocks' did
    (``benchmarks/RESULTS.md``).

    ``no_graphs``: a regular expression over the modules' qualified names (``re.search``); the
    blocks it matches are compiled without CUDA graphs (meant for blocks whose kernels take less time
    than a graph replay costs the host; on the ``base`` step with cached features the T5 encoder's
    blocks ran slower so, 69.7 → 77.5 ms per step: launching Inductor's kernels one by one cost the
    host more, ``benchmarks/RESULTS.md``).
    """
    if regions not in REGIONS:
        raise ValueError(f"regions must be one of {REGIONS}, got {regions!r}")
    blocks = repeated_blocks(model) if regions == "blocks" else block_stacks(model)
    alone = [m for m in standalone_regions(model) if not any(m is b for b in blocks)]
    if not blocks and not alone:
        return 0
    limit = 8 * len({type(b) for b in blocks})
    config = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))
    plain = set()
    if no_graphs:
        pattern = re.compile(no_graphs)
        plain = {id(m) for name, m in model.named_modules() if pattern.search(name)}
    for block in blocks:
        block.compile(**(_without_graphs(compile_kwargs) if id(block) in plain else compile_kwargs))
    for module in alone:
        module.compile(**_without_graphs(compile_kwargs))
    return len(blocks) + len(alone)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside this block (``torch.compiler.set_stance``; a no-op on
    torch versions without it)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


__all__ = [
    "MODES",
    "REGIONS",
    "block_stacks",
    "compile_options",
    "compile_repeated_blocks",
    "eager",
    "repeated_blocks",
    "standalone_regions",
    "step_begin",
]
