"""COCO detection as language (Pix2Seq): sequence augmentation, large-scale jitter, AdamW β2 0.95.

Run on the embedded default (the tiny preset on synthetic data in the real formats)::

    accelerate launch recipes/coco_detection.py

or give a recipe file and overrides::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/coco_detection.py \
        --config recipes/configs/coco_detection.yaml --output-dir outputs/coco_detection --max-steps 1000
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "coco_detection.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
