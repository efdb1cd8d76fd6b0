"""`pixtok` command line, in-process through main([...])."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixtok import cli
from pixtok.model.vocab import TASKS

COCO = "/work/shared/data/coco_tiny_train"
IMAGE = f"{COCO}/train2017/000000229378.jpg"


@pytest.fixture(scope="module")
def cached_models():
    return {}


@pytest.fixture(autouse=True)
def reuse_models(monkeypatch, cached_models):
    """Build each preset once per module (CPU time is scarce); behaviour is load_model's."""
    original = cli.load_model

    def load(spec, device="cpu", seed=0):
        if spec not in cached_models:
            cached_models[spec] = original(spec, device=device, seed=seed)
        return cached_models[spec]

    monkeypatch.setattr(cli, "load_model", load)


def test_task_choices_match_the_vocabulary():
    assert set(cli.TASK_CHOICES) == set(TASKS)


@pytest.mark.parametrize("command", [[], ["predict"], ["evaluate"], ["synth"], ["convert-sam"]])
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: pixtok" in text
    if command == ["predict"]:
        assert "--attention" in text and "IMAGE" in text
    if command == ["synth"]:
        assert "--num-images" in text


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_user_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert cli.main(["predict", "--model", "tiny", "--task", "segm", IMAGE, "--out", str(tmp_path)]) == 2
    assert "unknown task 'segm'" in _one_line_error(capsys)
    assert (
        cli.main(
            ["predict", "--model", "tiny", "--task", "detection", "/no/such.jpg", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "image file not found" in _one_line_error(capsys)
    assert (
        cli.main(
            ["predict", "--model", "no-such-model", "--task", "detection", IMAGE, "--out", str(tmp_path)]
        )
        == 2
    )
    assert "neither a folder nor a preset" in _one_line_error(capsys)
    assert cli.main(["predict", "--model", "tiny", "--task", "referring", IMAGE, "--out", str(tmp_path)]) == 2
    assert "--text" in _one_line_error(capsys)
    assert cli.main(["convert-sam", str(tmp_path / "missing.pth"), "--out", str(tmp_path)]) == 2
    assert "SAM checkpoint not found" in _one_line_error(capsys)
    bad = [
        "evaluate",
        "--model",
        "tiny",
        "--task",
        "detection",
        "--source",
        "coco",
        "--annotations",
        str(tmp_path / "a.json"),
        "--images",
        COCO,
    ]
    assert cli.main(bad) == 2
    assert "--annotations not found" in _one_line_error(capsys)


def test_model_without_the_task_head(tmp_path, capsys):
    assert cli.main(["predict", "--model", "tiny", "--task", "panoptic", IMAGE, "--out", str(tmp_path)]) == 2
    assert "no panoptic head" in _one_line_error(capsys)


def test_predict_detection_writes_coco_results_and_png_and_skips_bad_images(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    rc = cli.main(
        [
            "predict",
            "--model",
            "tiny",
            "--task",
            "detection",
            IMAGE,
            str(broken),
            "--out",
            str(out),
            "--max-new-tokens",
            "20",
            "--attention",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipping" in err and "broken.jpg" in err and "1 of 2 images skipped" in err
    results = json.loads((out / "000000229378.json").read_text())
    assert isinstance(results, list)
    for r in results:
        assert set(r) >= {"image_id", "category_id", "bbox", "score", "label"} and r["image_id"] == 229378
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
    picture = Image.open(out / "000000229378.png")
    assert picture.size == Image.open(IMAGE).size
    assert not (out / "broken.json").exists()
    assert Image.open(out / "000000229378_attention.png").width > 0


def test_attention_maps_are_distributions_over_the_image_content():
    loaded = cli.load_model("tiny")
    predictor = cli.ModelPredictor(loaded, max_new_tokens=10)
    image = Image.open(IMAGE).convert("RGB")  # 480 x 640 (w x h): content is 3/4 of the grid's width
    predictor.predict("caption", [image], [{}])
    maps, titles = cli.attention_maps(predictor, "caption", num_objects=3)
    assert len(maps) == len(titles) == 3
    grid = loaded.model.config.vision_config.image_size // loaded.model.config.vision_config.patch_size
    assert maps[0].shape == (grid, round(grid * 480 / 640))
    for m in maps:
        assert (
            m >= 0
        ).all() and 0.5 < m.sum() <= 1.0 + 1e-5  # a distribution over the padded square, cropped
    captured = cli._capture_token_to_image_attention(loaded.model.model, predictor.last_inputs)
    rows = captured["attention"][0]
    assert torch.allclose(rows.sum(dim=-1), torch.ones(rows.shape[0]), atol=1e-5)
    assert rows.shape[0] == loaded.model.config.extractor_config.num_tokens  # one row per learnable token


def test_attention_maps_with_grid_tokens(tmp_path):
    """Grid tokens map onto the block of the grid they pooled; the maps stay distributions."""
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

    torch.manual_seed(0)
    config = PixtokConfig.from_preset("tiny", extractor_config={"grid_tokens": 3})
    PixtokForConditionalGeneration(config).save_pretrained(tmp_path)
    loaded = cli.load_model(str(tmp_path))
    predictor = cli.ModelPredictor(loaded, max_new_tokens=10)
    predictor.predict("caption", [Image.open(IMAGE).convert("RGB")], [{}])
    maps, _ = cli.attention_maps(predictor, "caption", num_objects=2)
    for m in maps:
        assert (m >= 0).all() and 0.5 < m.sum() <= 1.0 + 1e-5
    pooling = cli._pooling_maps(8, 3)  # the tiny grid is 8 x 8
    assert pooling.shape == (9, 64)
    torch.testing.assert_close(pooling.sum(dim=1), torch.ones(9))
    # the first grid token pooled the top-left 3 x 3 block (adaptive pooling of 8 into 3 bins)
    top_left = torch.zeros(8, 8)
    top_left[:3, :3] = 1 / 9
    torch.testing.assert_close(pooling[0].reshape(8, 8), top_left)


def test_predict_referring_and_caption(tmp_path):
    out = tmp_path / "ref"
    rc = cli.main(
        [
            "predict",
            "--model",
            "tiny",
            "--task",
            "referring",
            IMAGE,
            "--text",
            "the bed",
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
        ]
    )
    assert rc == 0
    payload = json.loads((out / "000000229378.json").read_text())
    assert len(payload["box"]) == 4 and set(payload["mask"]) == {"size", "counts"}
    assert payload["mask"]["size"] == [Image.open(IMAGE).height, Image.open(IMAGE).width]
    out = tmp_path / "cap"
    assert (
        cli.main(
            [
                "predict",
                "--model",
                "tiny",
                "--task",
                "caption",
                IMAGE,
                "--out",
                str(out),
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    caption = json.loads((out / "000000229378.json").read_text())
    assert len(caption["words"]) == len(caption["points"])
    assert Image.open(out / "000000229378.png").height > Image.open(IMAGE).height  # caption panel


def test_predict_panoptic_with_the_panoptic_preset(tmp_path):
    out = tmp_path / "pan"
    assert (
        cli.main(["predict", "--model", "panoptic-tiny", "--task", "panoptic", IMAGE, "--out", str(out)]) == 0
    )
    payload = json.loads((out / "000000229378.json").read_text())
    assert "segments_info" in payload and "segmentation_rle" in payload


def test_evaluate_detection_on_real_coco(tmp_path, capsys):
    metrics_file = tmp_path / "m" / "metrics.json"
    argv = [
        "evaluate", "--model", "tiny", "--task", "detection", "--source", "coco",
        "--annotations", f"{COCO}/annotations/instances_train2017.json", "--images", f"{COCO}/train2017",
        "--limit", "2", "--max-new-tokens", "15", "--out", str(metrics_file), "--no-progress",
        "--save-predictions", str(tmp_path / "preds"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    payload = json.loads(metrics_file.read_text())
    assert payload["num_images"] == 2 and payload["num_skipped"] == 0
    assert list(payload["metrics"])[:3] == ["AP", "AP50", "AP75"] and len(payload["metrics"]) == 12
    assert all(-1.0 <= v <= 1.0 for v in payload["metrics"].values())
    table = capsys.readouterr().out
    assert "detection: 2 images" in table and "AR100" in table
    assert len(list((tmp_path / "preds").glob("*.json"))) == 2


def test_synth_is_mounted(tmp_path):
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--num-images", "3", "--image-size", "48"]) == 0
    assert (tmp_path / "s" / "annotations" / "instances_train.json").is_file()


def test_convert_sam_official_checkpoint(tmp_path, capsys):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    size, channels = 64, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=size,
            patch_size=16,
            embed_dim=16,
            depth=1,
            num_heads=2,
            out_chans=channels,
            use_rel_pos=True,
            global_attn_indexes=(0,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=channels, image_embedding_size=(4, 4), input_image_size=(size, size), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=channels,
            transformer=TwoWayTransformer(depth=1, embedding_dim=channels, mlp_dim=32, num_heads=2),
        ),
    )
    checkpoint = tmp_path / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), checkpoint)
    assert cli.main(["convert-sam", str(checkpoint), "--out", str(tmp_path / "converted")]) == 0
    written = list((tmp_path / "converted").glob("*.safetensors"))
    assert len(written) == 1 and "wrote" in capsys.readouterr().out
    from safetensors.torch import load_file

    keys = load_file(str(written[0]))
    assert any(k.startswith("image_encoder.") for k in keys) and any(
        k.startswith("mask_decoder.") for k in keys
    )


def test_prediction_to_json_handles_nan_points_and_category_ids():
    payload = cli.prediction_to_json(
        "caption",
        {"text": "a b", "words": ["a", "b"], "points": torch.tensor([[1.0, 2.0], [float("nan")] * 2])},
        "x",
    )
    assert payload["points"] == [[1.0, 2.0], [None, None]]
    det = cli.prediction_to_json(
        "detection",
        {"boxes": np.array([[0, 0, 2, 3]]), "scores": [0.5], "labels": [1]},
        "42",
        {1: "cat"},
        [5, 17],
    )
    assert det == [
        {"image_id": 42, "category_id": 17, "bbox": [0.0, 0.0, 2.0, 3.0], "score": 0.5, "label": "cat"}
    ]


def test_predict_from_a_saved_folder_matches_the_preset_model(tmp_path, cached_models):
    loaded = cli.load_model("tiny")
    folder = tmp_path / "model"
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    argv = ["--task", "detection", IMAGE, "--max-new-tokens", "10"]
    assert cli.main(["predict", "--model", "tiny", *argv, "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["predict", "--model", str(folder), *argv, "--out", str(tmp_path / "b")]) == 0
    same = [json.loads((tmp_path / d / "000000229378.json").read_text()) for d in ("a", "b")]
    # same weights, same seed: same detections (scores equal up to float rounding: the loaded
    # tensors may sit differently in memory and take another matmul path)
    assert [{k: v for k, v in d.items() if k != "score"} for d in same[0]] == [
        {k: v for k, v in d.items() if k != "score"} for d in same[1]
    ]
    assert [d["score"] for d in same[0]] == pytest.approx([d["score"] for d in same[1]], abs=1e-5)
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", "--model", str(tmp_path / "empty"), *argv, "--out", str(tmp_path / "c")]) == 2


def test_open_vocabulary_detections_keep_their_names():
    pred = {"boxes": [[1, 2, 3, 4]], "scores": [0.7], "labels": [-1], "names": ["zebra crossing"]}
    det = cli.prediction_to_json("detection", pred, "7", {0: "cat"}, [5])
    assert det == [
        {
            "image_id": 7,
            "category_id": -1,
            "bbox": [1.0, 2.0, 2.0, 2.0],
            "score": 0.7,
            "label": "zebra crossing",
        }
    ]


def test_help_imports_no_model_code():
    """`pixtok --help` loads no model, data or evaluation code beyond what `import pixtok` does."""
    import subprocess
    import sys

    code = (
        "import sys, pixtok; before = set(sys.modules); "
        "from pixtok.cli import build_parser; build_parser(['--help']); "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.startswith(('pixtok.model.modeling', 'pixtok.data', 'pixtok.evaluation', 'datasets', 'evaluate'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_trace_gives_one_point_per_given_word():
    loaded = cli.load_model("tiny")
    predictor = cli.ModelPredictor(loaded)
    image = Image.open(IMAGE).convert("RGB")
    words = ["a", "bed", "with", "supercalifragilistic", "pillows"]  # one word of many pieces
    (points,) = predictor.trace([image], [words])
    assert points.shape == (5, 2) and np.isfinite(points).all()
    assert (
        (points >= 0).all() and (points[:, 0] <= image.width).all() and (points[:, 1] <= image.height).all()
    )
    # the same caption again: teacher forcing is deterministic
    np.testing.assert_allclose(predictor.trace([image], [words])[0], points)
