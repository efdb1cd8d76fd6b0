"""COCO panoptic segmentation by bit diffusion (Pix2Seq-D): the sibling model, the same loop.

Run on the embedded default (the tiny panoptic preset on synthetic data in the COCO panoptic
format)::

    accelerate launch recipes/coco_panoptic.py

or the real dataset::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/coco_panoptic.py \\
        --config recipes/configs/coco_panoptic_base.yaml
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "coco_panoptic.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
