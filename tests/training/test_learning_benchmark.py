"""The proof-of-learning runner (benchmarks/learning/run.py) and its report, on the tiny preset."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.tasks import build_task
from pixtok.training.config import ConfigError, load_config, task_options

ROOT = Path(__file__).resolve().parents[2]
LEARNING = ROOT / "benchmarks" / "learning"


def _module(name):
    spec = importlib.util.spec_from_file_location(f"learning_{name}", LEARNING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("row", _module("run").rows())
def test_every_row_config_is_valid_and_names_its_headlines(row):
    run = _module("run")
    recipe = run.row_config(row)
    assert recipe.train.time_limit_minutes and recipe.train.time_limit_minutes <= 10
    base = run.base_row(row)
    assert base in run.HEADLINES, "a row without headline keys would write an empty result"
    # every headline task is trained; a row trains only those, a variant may add an auxiliary task
    assert set(run.HEADLINES[base]) <= set(recipe.tasks)
    assert row != base or set(recipe.tasks) == set(run.HEADLINES[base])
    assert recipe.train.output_dir == f"outputs/learning/{row}"  # rows never share a run folder
    for name, options in recipe.tasks.items():  # task options (generate, augmentation) are valid
        build_task(name, **task_options(options))
    # the model's overrides make a valid config (a variant that turns off the grid tokens must also
    # turn off the grounding head that reads them)
    PixtokConfig.from_preset(recipe.model.preset, **recipe.model.overrides)


def test_augmentation_variants_reach_the_task():
    run = _module("run")
    recipe = run.row_config("referring_no_crop")
    task = build_task("referring", **recipe.tasks["referring"])
    assert task.augmentation == {"scale_range": (0.6, 1.0)}
    row = build_task("referring", **run.row_config("referring").tasks["referring"])
    assert row.augmentation == {"scale_range": (1.0, 1.0)}  # the row: no large-scale jitter
    assert build_task("referring", **run.row_config("referring_jitter").tasks["referring"]).augmentation == {
        "scale_range": (0.3, 2.0)
    }


def test_variant_rows_are_their_file_with_overrides():
    run = _module("run")
    assert {"detection_no_seq_aug", "detection_no_grid", "coco_tiny_overfit_no_seq_aug"} <= set(run.rows())
    base, ablation = run.row_config("detection"), run.row_config("detection_no_seq_aug")
    assert base.tasks["detection"]["sequence_augmentation"] is True
    assert ablation.tasks["detection"]["sequence_augmentation"] is False
    assert ablation.model == base.model and ablation.train.max_steps == base.train.max_steps
    no_grid = run.row_config("detection_no_grid", {"train.max_steps": 7})
    assert no_grid.model.overrides["extractor_config"] == {"grid_tokens": 0}
    assert no_grid.train.max_steps == 7  # --set overrides come last
    # a variant (or --set) may turn a setting off with null
    assert base.train.ema_decay and run.row_config("detection_no_ema").train.ema_decay is None
    assert run.row_config("detection", {"train.ema_decay": None}).train.ema_decay is None
    assert run.base_row("coco_tiny_overfit_no_seq_aug") == "coco_tiny_overfit"
    assert run.headline_metrics("detection_no_seq_aug", {"detection": {"AP": 0.5}}) == {"AP": 0.5}
    assert run.check_targets("detection_no_seq_aug", {"AP": 0.5}) == {}  # targets are the base row's
    with pytest.raises(ValueError, match="unknown row"):
        run.base_row("detection_no_such_thing")


def test_run_writes_result_json_and_picture_and_report_tables_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXTOK_CACHE", str(tmp_path / "cache"))
    run, report = _module("run"), _module("report")
    results = tmp_path / "results"
    payload = run.main(
        [
            "caption",
            "--output-dir",
            str(tmp_path / "out"),
            "--results",
            str(results),
            "--set",
            "model.preset=tiny",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.batch_size=2",
            "--set",
            "train.num_workers=0",
            "--set",
            "train.mixed_precision=no",
            "--set",
            "train.log_every=1",
            "--set",
            "data.num_val=2",
            "--set",
            "data.synthetic.num_images=20",
        ]
    )
    written = json.loads((results / "learning_caption.json").read_text())
    assert written["benchmark"] == "learning_caption"
    assert set(written["metrics"]) == {"trace_l1", "CIDEr"}
    assert written["steps"] == 2 and len(written["history"]) == 2
    assert written["targets"]["trace_l1"]["target"] == "<= 0.1"
    assert written["parameters"] == payload["parameters"] > 0
    assert (results / "learning_caption.png").stat().st_size > 0
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nbefore\n")
    text = report.main(["--results", str(results), "--markdown", str(md)])
    assert "| caption | trace_l1 |" in text
    body = md.read_text()
    assert body.startswith("# Results\n\nbefore\n") and report.START in body
    report.main(["--results", str(results), "--markdown", str(md)])  # idempotent: one block
    assert md.read_text().count(report.START) == 1


def test_headline_targets_check_both_directions():
    run = _module("run")
    checks = run.check_targets("caption", {"trace_l1": 0.09, "CIDEr": 0.5})
    assert checks["trace_l1"]["met"] and not checks["CIDEr"]["met"]
    assert not run.check_targets("detection", {})["AP"]["met"]  # a missing figure is not met


def test_caption_units_option():
    from pixtok.tasks import build_task

    rows = {"sentence_ids": [[0, 0, 1, 1, 1], [0, 0], []]}
    assert build_task("caption").items(rows) == [(0, 0), (0, 1), (1, 0)]
    whole = build_task("caption", units="narrative")
    assert whole.items(rows) == [(0, -1), (1, -1)]  # the empty narrative is not a unit
    row = {
        "sentence_ids": [0, 0, 1],
        "words": ["a", "b", "c"],
        "points": [[0, 0], [1, 1], [2, 2]],
        "image": None,
    }
    assert whole.example(row, -1, None).reference["text"] == "a b c"
    with pytest.raises(ValueError, match="units"):
        build_task("caption", units="paragraph").items(rows)


def test_time_limit_must_be_a_number():
    with pytest.raises(ConfigError, match="time_limit_minutes"):
        load_config(None, {"train.time_limit_minutes": "soon"})
    assert load_config(None, {"train.mixed_precision": False}).train.mixed_precision == "no"


def test_exponent_without_a_dot_is_a_number():
    """YAML 1.1 reads ``2e-3`` as a string; a numeric field takes it as the number it means."""
    assert load_config(None, {"train.learning_rate": "2e-3"}).train.learning_rate == 2e-3
    assert load_config(None, {"train.max_steps": "40"}).train.max_steps == 40


@pytest.mark.parametrize("decoder", ["t5", "plain"])
def test_localization_probe_trains_and_writes_its_result(tmp_path, decoder):
    probe = _module("localization_probe")
    out = tmp_path / "probe.json"
    result = probe.main(
        ["--decoder", decoder, "--steps", "2", "--batch-size", "2", "--log-every", "1", "--out", str(out)]
    )
    written = json.loads(out.read_text())
    assert written == result and written["benchmark"] == f"localization_probe_{decoder}"
    assert [h["step"] for h in written["history"]] == [1, 2]
    assert 0 <= written["metrics"]["final_median_coord_error_bins"] < 1000


@pytest.mark.parametrize("encoder", ["grid", "vit"])
def test_localization_probe_swaps_the_prefix(encoder):
    """The grid and vit arms replace the extractor (and for vit the towers) and still train the T5."""
    probe = _module("localization_probe")
    result = probe.main(
        ["--encoder", encoder, "--decoder", "t5", "--decoder-positions", "8", "--coord-init", "sinusoid"]
        + ["--steps", "2", "--batch-size", "2", "--log-every", "2"]
    )
    assert result["benchmark"] == f"localization_probe_t5_{encoder}_sinusoid_pos8"
    assert result["settings"]["decoder_positions"] == 8 and result["metrics"]["steps"] == 2


def test_sinusoid_coordinate_rows_keep_the_scale_and_order_the_bins():
    probe = _module("localization_probe")
    vocab = type("V", (), {"coord_offset": 3, "num_bins": 50})()
    weight = torch.randn(60, 16)
    before = weight[3:53].pow(2).mean()
    probe.sinusoid_coordinate_rows([weight], vocab)
    torch.testing.assert_close(weight[3:53].pow(2).mean(), before)
    rows = weight[3:53]
    near = torch.cosine_similarity(rows[:-1], rows[1:], dim=1).mean()  # neighbouring bins
    far = torch.cosine_similarity(rows[:-25], rows[25:], dim=1).mean()  # half the range apart
    assert near > 0.3 and near > far + 0.15  # random rows give ~0 for both


def test_localization_probe_on_the_synthetic_detection_row(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXTOK_CACHE", str(tmp_path / "cache"))
    probe = _module("localization_probe")
    result = probe.main(
        [
            "--data",
            "synthetic",
            "--preset",
            "tiny",
            "--grid-tokens",
            "8",
            "--num-images",
            "40",
            "--val-size",
            "3",
        ]
        + ["--steps", "2", "--batch-size", "2", "--log-every", "2", "--decoder", "plain"]
    )
    (entry,) = result["history"]
    assert entry["step"] == 2 and entry["val_loss"] > 0
    assert result["metrics"]["final_median_coord_error_bins"] == entry["val_median_coord_error_bins"]


def test_run_name_option_names_the_result_and_keeps_the_row(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXTOK_CACHE", str(tmp_path / "cache"))
    run = _module("run")
    results = tmp_path / "results"
    small = ["model.preset=tiny", "train.max_steps=1", "train.batch_size=2", "train.num_workers=0"]
    small += ["train.mixed_precision=no", "data.num_val=2", "data.synthetic.num_images=20", "train.seed=1"]
    argv = [
        "caption",
        "--name",
        "caption_seed1",
        "--output-dir",
        str(tmp_path / "out"),
        "--results",
        str(results),
    ]
    run.main(argv + [a for s in small for a in ("--set", s)])
    written = json.loads((results / "learning_caption_seed1.json").read_text())
    assert written["benchmark"] == "learning_caption_seed1"
    assert written["command"].startswith(
        "PYTHONPATH=src python benchmarks/learning/run.py caption --name caption_seed1"
    )
    assert written["config"]["train"]["seed"] == 1
    assert set(written["targets"]) == {"trace_l1", "CIDEr"}  # still the caption row's targets
    assert (results / "learning_caption_seed1.png").exists() and not (
        results / "learning_caption.json"
    ).exists()
    with pytest.raises(SystemExit):
        run.main(["caption", "--name", "../elsewhere"])


def test_gpu_rows_entries_parse_steps_seed_and_gpu():
    import subprocess

    script = (LEARNING / "gpu_rows.sh").read_text()
    parse = script[script.index("parse() {") : script.index("\n}\n", script.index("parse() {")) + 3]
    probe = parse + 'for e in "$@"; do gpu=-; parse "$e"; echo "$row|$name|$gpu|${extra[*]}"; done'
    out = subprocess.run(
        ["bash", "-c", probe, "bash", "referring", "referring:1500%3@1", "detection@2", "caption%0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [
        "referring|referring|-|",
        "referring|referring_seed3|1|--set train.seed=3 --name referring_seed3 --set train.max_steps=1500",
        "detection|detection|2|",
        "caption|caption_seed0|-|--set train.seed=0 --name caption_seed0",
    ]


def test_compile_cache_round_trips_the_compilers_artifacts(tmp_path, monkeypatch):
    """--compile-cache writes torch's cache artifacts gzip'd and a later process can hot-load them."""
    import gzip

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    run = _module("run")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: (x * 2).sin() + 1, backend="inductor")
    x = torch.randn(8)
    torch.testing.assert_close(compiled(x), (x * 2).sin() + 1)
    path = tmp_path / "sub" / "cache.gz"
    run.save_compile_cache(path)
    blob = gzip.decompress(path.read_bytes())
    assert len(blob) > 0 and not path.with_name("cache.gz.tmp").exists()
    run.load_compile_cache(path)  # a fresh process does this before training


def test_referring_run_keeps_per_expression_records_and_misses_reads_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXTOK_CACHE", str(tmp_path / "cache"))
    run, misses = _module("run"), _module("misses")
    results = tmp_path / "results"
    sets = ["model.preset=tiny", "model.overrides.extractor_config.grid_tokens=8", "train.max_steps=1"]
    sets += ["train.batch_size=2", "train.num_workers=0"]
    sets += [
        "train.mixed_precision=no",
        "train.compile=false",
        "data.num_val=3",
        "data.synthetic.num_images=20",
    ]
    payload = run.main(
        ["referring", "--output-dir", str(tmp_path / "out"), "--results", str(results)]
        + [a for s in sets for a in ("--set", s)]
    )
    path = results / "learning_referring_referring_records.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3
    assert {"expression", "box", "predicted_box", "iou", "relation", "token_iou"} <= set(rows[0])
    # the records are the scores' own: their hit rate is the row's P@0.5
    hits = sum(r["iou"] >= 0.5 for r in rows) / len(rows)
    assert hits == pytest.approx(payload["all_metrics"]["referring"]["precision@0.5"])
    assert misses.main([str(path)]) == 0
    assert "| all |  | 3 |" in capsys.readouterr().out


def test_misses_groups_and_bands():
    misses = _module("misses")
    rows = [
        {"expression": "the square", "iou": 0.9, "box": [0, 0, 10, 10], "relation": False},
        {"expression": "the red square", "iou": 0.3, "box": [0, 0, 20, 20], "relation": False},
        {
            "expression": "the small red circle left of the blue star",
            "iou": 0.1,
            "box": [0, 0, 4, 4],
            "relation": True,
        },
    ]
    assert misses.subject_words(rows[2]["expression"]) == ["small", "red", "circle"]
    summary = misses.summarize(rows)
    assert summary["count"] == 3 and summary["P@0.5"] == pytest.approx(1 / 3)
    assert summary["near_miss"] == pytest.approx(1 / 3) and summary["far_miss"] == pytest.approx(1 / 3)
    text = misses.table(rows)
    assert "| kind | relation | 1 | 0.000 | 0.000 | 1.000 |" in text
    assert "| subject words | 1 | 1 | 1.000 |" in text
    assert "| size word | small | 1 |" in text and "| shape | square | 2 | 0.500 |" in text


def test_step_rate_reads_the_steady_window_and_the_rerecording_reasons():
    step_rate = _module("step_rate")
    history = [{"step": s, "seconds": t} for s, t in [(25, 150.0), (50, 160.0), (100, 170.0), (150, 180.0)]]
    assert step_rate.steady_rate(history, 100) == pytest.approx(50 / 10.0)  # compiling (before 100) left out
    assert step_rate.steady_rate(history, 40) == pytest.approx(100 / 20.0)
    with pytest.raises(ValueError, match="two logged steps"):
        step_rate.steady_rate(history, 150)
    log = (
        "[0/1] Re-recording function=forward, mode=FORWARD, reason=CheckInvariantStatus.StaticInputIdxMismatch.\n"
        "input name: primals_3. data pointer changed\n"
        "[0/1] Re-recording function=forward, mode=FORWARD, reason=CheckInvariantStatus.StaticInputIdxMismatch.\n"
        "input name: primals_3. data pointer changed\n"
        "[1/0] Re-recording function=backward, mode=BACKWARD, reason=CheckInvariantStatus.ExpectedDeadIndicesBeforeGraphMismatch\n"
    )
    reasons = step_rate.rerecord_reasons(log)
    assert reasons == {
        "forward CheckInvariantStatus.StaticInputIdxMismatch. input name: primals_3.": 2,
        "backward CheckInvariantStatus.ExpectedDeadIndicesBeforeGraphMismatch": 1,
    }
