"""One model, several tasks mixed by sampling weights (config: tasks.<name>.weight).

Run on the embedded default (the tiny preset on synthetic data in the real formats)::

    accelerate launch recipes/multitask.py

or give a recipe file and overrides::

    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/multitask.py \
        --config recipes/configs/multitask.yaml --output-dir outputs/multitask --max-steps 1000
"""

from pathlib import Path

from pixtok.training.recipe import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "multitask.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
