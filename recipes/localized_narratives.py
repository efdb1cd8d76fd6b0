"""Localized Narratives — captions with one trace point per word (PixelLLM). The main job.

Run on the embedded default (the tiny preset on synthetic data in the real formats)::

    accelerate launch recipes/localized_narratives.py

or give a recipe file and overrides::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/localized_narratives.py \
        --config recipes/configs/localized_narratives.yaml --output-dir outputs/localized_narratives --max-steps 1000
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "localized_narratives.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
