"""Atomic checkpoints for accelerate runs.

A checkpoint is ``save_state`` written into ``checkpoint-<step>.tmp`` and renamed to
``checkpoint-<step>`` only when complete (``os.replace`` is atomic on one file system), with a
``trainer_state.json`` beside the accelerate files. A run killed mid-save leaves a ``.tmp`` folder
that resuming ignores, never a half-written checkpoint that looks whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of ``output_dir``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or the newest complete one of a run's output folder.

    Raises:
        FileNotFoundError: nothing resumable there (the message says what was looked for).
    """
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise FileNotFoundError(
        f"--resume-from {path}: expected a checkpoint folder holding {STATE_FILE} or a run folder with "
        f"checkpoints/checkpoint-<step>/; found neither"
    )


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_checkpoint(
    accelerator: Any, output_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 2
) -> Path:
    """``accelerator.save_state`` + ``trainer_state.json``, written atomically; keeps the newest ``keep``.

    Every process must call this (accelerate gathers sharded state); only the main process renames.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


__all__ = ["STATE_FILE", "list_checkpoints", "read_state", "resolve_checkpoint", "save_checkpoint"]
