"""Regenerate the README pictures from real sample data (ground truth drawn by pixtok.visualize).

HF_HUB_OFFLINE=1 python docs/images/make_examples.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import pixtok.data as D
from pixtok import visualize
from pixtok.data import synthetic

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="/work/shared/data", help="folder of the real samples")
    args = parser.parse_args()
    data = Path(args.data)

    coco = D.load(
        "coco",
        annotations=str(data / "coco_tiny_train/annotations/instances_train2017.json"),
        images=str(data / "coco_tiny_train/train2017"),
    )
    names = D.class_names(coco)
    row = next(r for r in coco if r["image_id"] == "229378")
    objects = row["objects"]
    prediction = {
        "boxes": np.asarray(objects["boxes"]),
        "scores": np.linspace(0.98, 0.6, len(objects["boxes"])),
        "labels": np.asarray(objects["labels"]),
    }
    visualize.save_png(
        visualize.draw_detections(row["image"], prediction, id2label=names), HERE / "detection.png"
    )

    pan = D.load(
        "coco_panoptic",
        annotations=str(data / "coco_panoptic_sample/panoptic_examples.json"),
        masks=str(data / "coco_panoptic_sample/panoptic_examples"),
        images=str(data / "coco_panoptic_sample/input_images"),
    )
    row = pan[0]
    segments = [{"id": s["id"], "label_id": s["label"]} for s in row["segments_info"]]
    panoptic = {"segmentation": D.panoptic_ids(row["panoptic"]), "segments_info": segments}
    visualize.save_png(
        visualize.draw_panoptic(row["image"], panoptic, id2label=D.class_names(pan)), HERE / "panoptic.png"
    )

    with tempfile.TemporaryDirectory() as root:
        synthetic.run(argparse.Namespace(out=root, seed=3, num_images=10, image_size=384, max_objects=5))
        narratives = D.load("synthetic", root=root, kind="localized_narratives")
        row = narratives[0]
        caption = {
            "text": row["caption"],
            "words": row["words"],
            "points": np.asarray(row["points"], dtype=np.float64),
        }
        visualize.save_png(
            visualize.draw_caption(row["image"], caption, title="caption + trace"), HERE / "caption.png"
        )


if __name__ == "__main__":
    main()
