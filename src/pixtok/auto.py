"""Registration of pixtok's classes with transformers' Auto* factories.

:func:`register_auto_classes` is called once by ``pixtok/__init__.py``. It does two things:

1. ``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageTextToText`` (and the panoptic sibling with
   ``AutoModelForUniversalSegmentation``, as Mask2Former) resolve pixtok folders in this process;
2. ``register_for_auto_class`` marks the classes so that ``save_pretrained`` copies their code into
   the folder and writes ``auto_map`` into ``config.json`` — a saved folder then loads with
   ``trust_remote_code=True`` where pixtok is not installed (the Hub case).

Calling it again is harmless.
"""

from __future__ import annotations


def register_auto_classes() -> None:
    """Register pixtok's configs, models and processor with the transformers Auto* classes."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageTextToText,
        AutoModelForUniversalSegmentation,
        AutoProcessor,
    )

    from .model.configuration_pixtok import PixtokConfig
    from .model.configuration_pixtok_panoptic import PixtokPanopticConfig
    from .model.image_processing_pixtok import PixtokImageProcessor
    from .model.modeling_pixtok import PixtokForConditionalGeneration, PixtokModel
    from .model.modeling_pixtok_panoptic import PixtokForPanopticSegmentation
    from .model.processing_pixtok import PixtokProcessor

    AutoConfig.register(PixtokConfig.model_type, PixtokConfig, exist_ok=True)
    AutoModel.register(PixtokConfig, PixtokModel, exist_ok=True)
    AutoModelForImageTextToText.register(PixtokConfig, PixtokForConditionalGeneration, exist_ok=True)
    PixtokConfig.register_for_auto_class("AutoConfig")
    PixtokModel.register_for_auto_class("AutoModel")
    PixtokForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

    AutoConfig.register(PixtokPanopticConfig.model_type, PixtokPanopticConfig, exist_ok=True)
    AutoModelForUniversalSegmentation.register(
        PixtokPanopticConfig, PixtokForPanopticSegmentation, exist_ok=True
    )
    PixtokPanopticConfig.register_for_auto_class("AutoConfig")
    PixtokForPanopticSegmentation.register_for_auto_class("AutoModelForUniversalSegmentation")

    AutoImageProcessor.register(PixtokConfig, slow_image_processor_class=PixtokImageProcessor, exist_ok=True)
    AutoProcessor.register(PixtokConfig, PixtokProcessor, exist_ok=True)
    PixtokProcessor.register_for_auto_class("AutoProcessor")


__all__ = ["register_auto_classes"]
