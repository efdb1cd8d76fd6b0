"""Print the statistics of a dataset as pixtok reads it.

``python -m pixtok.data.stats SOURCE --annotations FILE [--images DIR] …`` loads ``SOURCE`` through
:func:`pixtok.data.load` and prints rows, annotation counts per kind, class counts and the load
report (what was skipped / repaired). Every path keyword of ``load`` is an option here
(``--image-data`` for ``image_data=``).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import datasets

from .load import SOURCES, load
from .schema import categories, load_report

_PATH_OPTIONS = (
    "annotations",
    "images",
    "masks",
    "refs",
    "instances",
    "regions",
    "image_data",
    "root",
    "split",
    "kind",
)


def dataset_statistics(dataset: datasets.Dataset) -> dict[str, int | float]:
    """Counts over a loaded dataset: rows and, by schema, objects / crowd / segments / words / points
    with a trace / sentences / expressions / regions, plus mean annotations per row."""
    stats: dict[str, int | float] = {"rows": len(dataset)}
    columns = set(dataset.column_names)
    if "objects" in columns:
        objects = dataset["objects"]
        stats["objects"] = sum(len(o["boxes"]) for o in objects)
        stats["iscrowd"] = sum(sum(o["iscrowd"]) for o in objects)
    if "segments_info" in columns:
        segments = dataset["segments_info"]
        stats["segments"] = sum(len(s) for s in segments)
        stats["thing_segments"] = sum(sum(x["isthing"] for x in s) for s in segments)
    if "words" in columns:
        stats["words"] = sum(len(w) for w in dataset["words"])
        stats["words_with_point"] = sum(sum(not math.isnan(p[0]) for p in ps) for ps in dataset["points"])
        stats["sentences"] = sum(len(set(s)) for s in dataset["sentence_ids"])
    if "expressions" in columns:
        stats["expressions"] = sum(len(e) for e in dataset["expressions"])
    if "regions" in columns:
        stats["regions"] = sum(len(r["boxes"]) for r in dataset["regions"])
    if "image" in columns:
        undecoded = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
        stats["rows_without_image"] = sum(v is None for v in undecoded["image"])
    return stats


def class_histogram(dataset: datasets.Dataset) -> Counter:
    """Instances per class name (detection, refcoco and panoptic datasets)."""
    names = [c["name"] for c in categories(dataset)]
    counts: Counter = Counter()
    if "objects" in dataset.column_names:
        for objects in dataset["objects"]:
            counts.update(names[label] for label in objects["labels"])
    elif "label" in dataset.column_names:
        counts.update(names[label] for label in dataset["label"])
    elif "segments_info" in dataset.column_names:
        for segments in dataset["segments_info"]:
            counts.update(names[s["label"]] for s in segments)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=SOURCES)
    for name in _PATH_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    parser.add_argument(
        "--check-images", default="header", help="decode | header | exists | none (default header)"
    )
    parser.add_argument("--top", type=int, default=10, help="classes to list (default 10)")
    args = parser.parse_args(argv)
    paths = {name: getattr(args, name) for name in _PATH_OPTIONS if getattr(args, name) is not None}
    dataset = load(args.source, check_images=args.check_images, **paths)
    for key, value in dataset_statistics(dataset).items():
        print(f"{key}: {value}")
    cats = categories(dataset)
    if cats:
        print(f"classes: {len(cats)}")
        for name, count in class_histogram(dataset).most_common(args.top):
            print(f"  {name}: {count}")
    print(load_report(dataset).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["class_histogram", "dataset_statistics", "main"]
