"""Every recipe runs a few real steps of the tiny model on its synthetic default, in-process."""

import json
import runpy
from pathlib import Path

import pytest

from pixtok.training.config import ConfigError, load_config
from pixtok.training.recipe import main, prepare

ROOT = Path(__file__).resolve().parents[2]
RECIPES = [
    "localized_narratives",
    "coco_detection",
    "refcoco",
    "region_caption",
    "dense_caption",
    "multitask",
]
MAIN_METRIC = {
    "caption": "CIDEr-D",
    "detection": "AP",
    "referring": "precision@0.5",
    "region_caption": "CIDEr-D",
    "dense_caption": "mAP",
    "panoptic": "PQ",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pixtok-cache"))


def _args(name, out, cache_dir, steps=2, *extra):
    return [
        "--config",
        str(ROOT / "recipes" / "configs" / f"{name}.yaml"),
        "--output-dir",
        str(out),
        "--max-steps",
        str(steps),
        "--set",
        "data.synthetic.num_images=24",
        "--set",
        f"data.cache_dir={cache_dir}",
        "--set",
        "data.num_val=2",
        "--set",
        "train.batch_size=2",
        *extra,
    ]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_and_leaves_model_metrics_picture_card(name, tmp_path, cache_dir, capsys):
    out = tmp_path / name
    result = main(_args(name, out, cache_dir))
    assert result["step"] == 2
    if name != "coco_panoptic":  # the sequence model logs its trainable share, as peft does
        assert "trainable params:" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for task, values in metrics["val"].items():
        assert MAIN_METRIC[task] in values, (task, sorted(values))
        assert (out / f"val_{task}.png").is_file()
        if task == "caption":  # the main job's promise: caption loss and trace point L1
            assert values["val_lm_loss"] > 0 and 0 <= values["trace_l1"] < 1
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "Validation metrics" in card and MAIN_METRIC[next(iter(metrics["val"]))] in card
    from transformers import AutoConfig

    import pixtok

    model_class = (
        pixtok.PixtokForPanopticSegmentation
        if AutoConfig.from_pretrained(out).model_type == "pixtok_panoptic"
        else pixtok.PixtokForConditionalGeneration
    )
    model_class.from_pretrained(out)  # loadable by from_pretrained


def test_recipe_script_runs_as_a_file(tmp_path, cache_dir, monkeypatch):
    """`python recipes/localized_narratives.py …` (what `accelerate launch` executes)."""
    out = tmp_path / "script"
    monkeypatch.setattr(
        "sys.argv", ["localized_narratives.py", *_args("localized_narratives", out, cache_dir, 1)]
    )
    runpy.run_path(str(ROOT / "recipes" / "localized_narratives.py"), run_name="__main__")
    assert (out / "metrics.json").is_file()


def test_resume_from_another_preset_fails_before_training(tmp_path, cache_dir):
    out = tmp_path / "a"
    main(_args("localized_narratives", out, cache_dir, 1, "--set", "train.save_every=1"))
    with pytest.raises(SystemExit) as err:
        main(
            _args(
                "localized_narratives",
                tmp_path / "b",
                cache_dir,
                3,
                "--resume-from",
                str(out),
                "--set",
                "model.overrides={extractor_config: {num_tokens: 8}}",
            )
        )
    assert "different model" in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.preset": "gigantic"}, "gigantic"),
        ({"tasks": {"segment_everything": {}}}, "segment_everything"),
        (
            {"data.source": "coco", "data.paths": {"annotations": "/nope.json", "images": "/nope"}},
            "not found",
        ),
        ({"data.source": "coco"}, "data.paths is empty"),
        ({"tasks": {"caption": {}, "panoptic": {}}}, "cannot share a recipe"),
    ],
)
def test_bad_recipe_input_is_a_clear_error_before_training(overrides, message, cache_dir):
    with pytest.raises((ConfigError, ValueError), match=message):  # when read, or when data is set up
        recipe = load_config(
            ROOT / "recipes" / "configs" / "localized_narratives.yaml",
            {**overrides, "data.cache_dir": cache_dir},
        )
        prepare(recipe)


def test_real_model_resume_ends_with_the_same_weights(tmp_path, cache_dir):
    """Uninterrupted 4 steps == 2 steps, stop, resume from the step-2 checkpoint to step 4."""
    from safetensors.torch import load_file

    full = tmp_path / "full"
    main(
        _args(
            "localized_narratives",
            full,
            cache_dir,
            4,
            "--set",
            "train.save_every=2",
            "--set",
            "train.warmup_steps=1",
        )
    )
    resumed = tmp_path / "resumed"
    main(
        _args(
            "localized_narratives",
            resumed,
            cache_dir,
            4,
            "--set",
            "train.save_every=2",
            "--set",
            "train.warmup_steps=1",
            "--resume-from",
            str(full / "checkpoints" / "checkpoint-2"),
        )
    )
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    changed = 0
    for name in a:
        assert (a[name] == b[name]).all(), name
    start = load_file(full / "checkpoints" / "checkpoint-2" / "model.safetensors")
    changed = sum(int(not (start[n] == a[n]).all()) for n in a if n in start)
    assert changed > 0  # steps 3-4 really trained


def test_push_to_hub_uploads_the_folder_with_its_card(tmp_path, cache_dir, monkeypatch):
    """Offline: HfApi is replaced by a recorder; what would be uploaded is checked."""
    calls = {}

    class RecordingApi:
        def create_repo(self, repo_id, exist_ok=False):
            calls["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, ignore_patterns, commit_message):
            calls.update(folder=folder_path, ignore=ignore_patterns)
            return "uploaded"

    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    out = tmp_path / "pushed"
    main(_args("localized_narratives", out, cache_dir, 1, "--push-to-hub", "me/pixtok-demo"))
    assert calls["repo"] == "me/pixtok-demo" and calls["folder"] == str(out)
    assert "checkpoints/*" in calls["ignore"]
    card = (out / "README.md").read_text()
    assert "me/pixtok-demo" in card and "trace_l1" in card and "max_steps: 1" in card
