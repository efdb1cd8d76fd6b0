"""RefCOCO referring localization and segmentation: text → box (EOS regression) and mask (SAM decoder).

Run on the embedded default (the tiny preset on synthetic data in the real formats)::

    accelerate launch recipes/refcoco.py

or give a recipe file and overrides::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/refcoco.py \
        --config recipes/configs/refcoco.yaml --output-dir outputs/refcoco --max-steps 1000
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "refcoco.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
