"""Dense captioning on Visual Genome: the proposal head detects, each box is captioned.

Run on the embedded default (the tiny preset on synthetic data in the real formats)::

    accelerate launch recipes/dense_caption.py

or give a recipe file and overrides::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/dense_caption.py \
        --config recipes/configs/dense_caption.yaml --output-dir outputs/dense_caption --max-steps 1000
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dense_caption.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
