"""Location-conditioned captioning: a box or point prompt → a caption of that region.

Run on the embedded default (the tiny preset on synthetic data in the real formats)::

    accelerate launch recipes/region_caption.py

or give a recipe file and overrides::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/region_caption.py \
        --config recipes/configs/region_caption.yaml --output-dir outputs/region_caption --max-steps 1000
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "region_caption.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
