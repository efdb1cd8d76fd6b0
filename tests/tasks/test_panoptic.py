"""The panoptic task's targets, the processor and post-processing agree on geometry: the real COCO
panoptic sample (non-square 640 px images, so the padded-square frame matters), packed into targets
and decoded back as if predicted perfectly, scores PQ near 1 (the remainder is the mask resolution)
with every segment recognized (RQ = 1). The fixture keeps the PNGs and JSON only; plain RGB images
of the right sizes stand in for the photographs, which play no part in the geometry."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pixtok import data
from pixtok.model.configuration_pixtok_panoptic import PixtokPanopticConfig
from pixtok.tasks.panoptic import PanopticProcessor, PanopticTask

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "coco_panoptic"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    annotations = json.loads((root / "panoptic_examples.json").read_text())
    (root / "images").mkdir()
    for image in annotations["images"]:
        Image.new("RGB", (image["width"], image["height"]), (120, 90, 60)).save(
            root / "images" / image["file_name"]
        )
    return data.load(
        "coco_panoptic",
        annotations=str(root / "panoptic_examples.json"),
        masks=str(root / "panoptic_examples"),
        images=str(root / "images"),
    )


@pytest.mark.parametrize("mask_size, min_pq", [(128, 0.85), (512, 0.95)])
def test_perfect_targets_round_trip_to_pq(dataset, mask_size, min_pq):
    names = data.class_names(dataset)
    things = [i for i, c in enumerate(data.categories(dataset)) if c.get("isthing")]
    config = PixtokPanopticConfig.from_preset(
        "tiny",
        id2label=dict(enumerate(names)),
        thing_label_ids=things,
        class_bits=8,
        instance_bits=6,
        mask_size=mask_size,
    )
    task = PanopticTask()
    task.bind(config)
    task.items(dataset)
    examples = [task.example(dataset[i], 0, None) for i in range(min(4, len(dataset)))]
    processor = PanopticProcessor(config)
    batch = task.collate(examples, processor)
    assert batch["panoptic_ids"].shape == (len(examples), mask_size, mask_size)
    classes, instances = task.codec.unpack(batch["panoptic_ids"])
    outputs = {"class_ids": classes, "instance_ids": instances, "image_sizes": batch["image_sizes"]}
    sizes = [(e.image.height, e.image.width) for e in examples]
    metrics = task.score(processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes), examples)
    assert metrics["RQ"] == 1.0
    assert metrics["PQ"] >= min_pq
