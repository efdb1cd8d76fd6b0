"""pixtok: one Hugging Face–native model family that reads images and writes tokens.

Public names are imported lazily (``pixtok.PixtokConfig`` loads the model code on first use), but
the Auto* registration runs on ``import pixtok`` so that ``AutoConfig``/``AutoModel*``/
``AutoProcessor`` resolve pixtok folders afterwards.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "PixtokConfig": "pixtok.model.configuration_pixtok",
    "PixtokModel": "pixtok.model.modeling_pixtok",
    "PixtokForConditionalGeneration": "pixtok.model.modeling_pixtok",
    "PixtokProcessor": "pixtok.model.processing_pixtok",
    "PixtokImageProcessor": "pixtok.model.image_processing_pixtok",
    "PixtokPanopticConfig": "pixtok.model.configuration_pixtok_panoptic",
    "PixtokForPanopticSegmentation": "pixtok.model.modeling_pixtok_panoptic",
    "PixtokVocab": "pixtok.model.vocab",
    "TASKS": "pixtok.model.vocab",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pixtok' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


from .auto import register_auto_classes as _register_auto_classes  # noqa: E402

_register_auto_classes()

__all__ = list(_EXPORTS) + ["__version__"]
