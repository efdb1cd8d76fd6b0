"""Auto* resolution after registration, and loading a saved folder where pixtok is not importable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from pixtok.auto import register_auto_classes
from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration, PixtokModel
from tests.model.test_modeling import full_batch

torch.set_num_threads(1)

BLOCK_PIXTOK = """
import importlib.abc, sys

class _NoPixtok(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pixtok" or name.startswith("pixtok."):
            raise ImportError(f"pixtok is blocked in this interpreter ({name})")
        return None

sys.meta_path.insert(0, _NoPixtok())
"""


def saved_model(tmp_path):
    register_auto_classes()
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny")).eval()
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    return model, folder


def test_auto_classes_resolve_a_pixtok_folder(tmp_path) -> None:
    model, folder = saved_model(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(folder), PixtokConfig)
    loaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(loaded) is PixtokForConditionalGeneration
    backbone = AutoModel.from_pretrained(folder)
    assert type(backbone) is PixtokModel
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_pixtok.PixtokConfig"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_pixtok.PixtokForConditionalGeneration"


def test_saved_folder_carries_its_code(tmp_path) -> None:
    _, folder = saved_model(tmp_path)
    code = {p.name for p in folder.glob("*.py")}
    needed = {"configuration_pixtok.py", "modeling_pixtok.py", "vocab.py", "sam.py", "eva02.py", "towers.py"}
    needed |= {
        "prompt_extractor.py",
        "heads.py",
        "lora.py",
        "decoding.py",
        "presets.py",
        "configuration_towers.py",
    }
    assert needed <= code, needed - code
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "import pixtok" not in text and "from pixtok" not in text, path.name


def test_loads_with_trust_remote_code_without_pixtok(tmp_path) -> None:
    model, folder = saved_model(tmp_path)
    hub_copy = tmp_path / "hub_copy"  # what a user downloads from the Hub
    shutil.copytree(folder, hub_copy)
    batch = {k: v for k, v in full_batch(model.config).items()}
    save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / "batch.safetensors"))
    with torch.no_grad():
        expected = model(**batch)
    save_file(
        {
            "logits": expected.logits,
            "pred_masks": expected.pred_masks.contiguous(),
            "loss": expected.loss.reshape(1),
        },
        str(tmp_path / "expected.safetensors"),
    )
    script = BLOCK_PIXTOK + textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForImageTextToText
        try:
            import pixtok
        except ImportError:
            pass
        else:
            raise SystemExit("pixtok should not be importable here")
        model = AutoModelForImageTextToText.from_pretrained({str(hub_copy)!r}, trust_remote_code=True).eval()
        assert "pixtok" not in type(model).__module__.split(".")[0], type(model).__module__
        batch = load_file({str(tmp_path / "batch.safetensors")!r})
        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        with torch.no_grad():
            out = model(**batch)
        assert torch.equal(out.logits, expected["logits"])
        assert torch.equal(out.pred_masks, expected["pred_masks"])
        assert torch.equal(out.loss.reshape(1), expected["loss"])
        images = {{k: batch[k] for k in ("pixel_values", "eva_pixel_values")}}
        gen = model.generate(**images, task_ids=torch.tensor([1, 1]), max_new_tokens=5)
        assert gen.sequences.shape[0] == 2
        print("REMOTE_OK", type(model).__module__)
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "REMOTE_OK transformers_modules." in result.stdout


def test_model_card_is_written_locally(tmp_path) -> None:
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny"))
    path = model.write_model_card(
        tmp_path,
        model_name="someone/pixtok-tiny",
        base_models={"t5": "google/flan-t5-small"},
        datasets=["coco"],
        tags=["demo"],
    )
    text = path.read_text()
    assert path.name == "README.md"
    front, body = text.split("---\n")[1], text.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "pipeline_tag: image-text-to-text" in front
    assert "- demo" in front and "- google/flan-t5-small" in front and "- coco" in front
    counts = model.parameter_counts()
    assert "# someone/pixtok-tiny" in body
    assert f"{counts['total'] / 1e6:.2f} M" in body
    assert f"Vocabulary: {model.config.vocab.size} ids" in body
    # the tiny preset pads the LM head to a multiple of 64 (3135 ids -> 3136 rows); the card says so
    assert f"LM head have {model.config.text_config.vocab_size} rows" in body
    assert 'from_pretrained("someone/pixtok-tiny", trust_remote_code=True)' in body


def test_auto_processor_resolves_a_saved_model_folder(tmp_path) -> None:
    from transformers import AutoImageProcessor, AutoProcessor

    from pixtok.model.image_processing_pixtok import PixtokImageProcessor
    from pixtok.model.processing_pixtok import PixtokProcessor

    register_auto_classes()
    _, folder = saved_model(tmp_path)
    PixtokProcessor.from_preset("tiny").save_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is PixtokProcessor
    assert processor.vocab == PixtokConfig.from_preset("tiny").vocab
    assert type(AutoImageProcessor.from_pretrained(folder)) is PixtokImageProcessor


def test_processor_loads_with_trust_remote_code_without_pixtok(tmp_path) -> None:
    """A Hub user without pixtok gets the processor (inputs, post-processing) through AutoProcessor."""
    import numpy as np

    from pixtok.model.processing_pixtok import PixtokProcessor

    register_auto_classes()
    processor = PixtokProcessor.from_preset("tiny")
    folder = tmp_path / "proc"
    processor.save_pretrained(folder)
    settings = json.loads((folder / "processor_config.json").read_text())
    assert settings["auto_map"]["AutoProcessor"] == "processing_pixtok.PixtokProcessor"
    assert (folder / "processing_pixtok.py").is_file() and (folder / "box_codec.py").is_file()
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    expected = processor(images=[image], task="detection", return_tensors="pt")
    ids = processor.encode_detection([[4.0, 6.0, 40.0, 30.0]], [3], (48, 80))
    expected_boxes = processor.post_process_object_detection(ids[None], target_sizes=[(48, 80)])[0]["boxes"]
    save_file(
        {"pixel_values": expected["pixel_values"], "ids": ids, "boxes": expected_boxes.float()},
        str(tmp_path / "expected.safetensors"),
    )
    script = BLOCK_PIXTOK + textwrap.dedent(
        f"""
        import numpy as np, torch
        from safetensors.torch import load_file
        from transformers import AutoProcessor
        proc = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(proc).__module__.startswith("transformers_modules."), type(proc).__module__
        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        batch = proc(images=[np.load({str(tmp_path / "image.npy")!r})], task="detection", return_tensors="pt")
        assert torch.equal(batch["pixel_values"], expected["pixel_values"])
        boxes = proc.post_process_object_detection(expected["ids"][None], target_sizes=[(48, 80)])[0]["boxes"]
        assert torch.allclose(boxes.float(), expected["boxes"])
        print("PROC_OK")
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PROC_OK" in result.stdout


def test_processor_from_a_hub_id_downloads_the_repo(tmp_path, monkeypatch) -> None:
    from pixtok.model.processing_pixtok import PixtokProcessor

    folder = tmp_path / "snapshot"
    PixtokProcessor.from_preset("tiny").save_pretrained(folder)
    asked = {}

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.update(repo_id=repo_id, patterns=allow_patterns, **kwargs)
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    processor = PixtokProcessor.from_pretrained("someone/pixtok-tiny", revision="v1")
    assert asked["repo_id"] == "someone/pixtok-tiny" and asked["revision"] == "v1"
    assert "*.json" in asked["patterns"] and processor.num_bins == 1000
