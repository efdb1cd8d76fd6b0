from pathlib import Path

import pytest

from pixtok.training.config import ConfigError, load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "configs"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_config_validates(path):
    recipe = load_config(path)
    assert recipe.tasks and recipe.train.max_steps > 0


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_config(bad)


def test_unknown_section_and_bad_types(tmp_path):
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, {"trian.max_steps": 3})
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(None, {"train.max_steps": "many"})
    with pytest.raises(ConfigError, match="true/false"):
        load_config(None, {"train.augment": "yes please"})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/recipe.yaml")


def test_overrides_apply_and_xl_recipe_matches_paper():
    recipe = load_config(RECIPES / "localized_narratives_xl.yaml", {"train.max_steps": 7})
    assert recipe.train.max_steps == 7
    assert recipe.model.preset == "pixelllm-xl"
    t = recipe.train
    assert t.batch_size * t.gradient_accumulation_steps == 128
    assert t.learning_rate == 1e-4 and t.warmup_steps == 250


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({"referring": {"augmentation": {"scale": 2}}}, r"tasks\.referring: .*option 'augmentation'"),
        ({"detection": {"generate": {"beams": 4}}}, r"tasks\.detection: .*option 'generate'"),
        ({"segmentation": {}}, r"tasks\.segmentation: unknown task"),
    ],
)
def test_task_options_are_checked_when_the_config_is_read(tasks, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"tasks": tasks})
    good = load_config(None, {"tasks": {"referring": {"augmentation": {"scale_range": [0.6, 1.0]}}}})
    assert good.tasks["referring"]["augmentation"] == {"scale_range": [0.6, 1.0]}


def test_ema_decay_must_be_a_decay():
    assert load_config(None, {"train.ema_decay": "0.999"}).train.ema_decay == 0.999
    assert load_config(None, {}).train.ema_decay is None
    # a null override turns a file's average off (`--set train.ema_decay=null`)
    assert load_config({"train": {"ema_decay": 0.9}}, {"train.ema_decay": None}).train.ema_decay is None
    for bad in (0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="ema_decay"):
            load_config(None, {"train.ema_decay": bad})
