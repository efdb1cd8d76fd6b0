"""Where a referring row misses: P@0.5 and the miss bands by kind of expression and target.

Reads the per-expression rows a referring run writes (``val_referring_records.jsonl`` in the run
folder; ``run.py`` copies it to ``benchmarks/results/learning_<name>_referring_records.jsonl``) and
prints one markdown table: for each group of expressions, how many, P@0.5, and the near (IoU
0.25–0.5: the right object, loosely boxed) and far (under 0.25: another object) miss rates.

Groups: relational or attribute-only; the attribute words the subject needs (1 "the square", 2 "the
red square", 3 "the small red square"); the size word; the shape; the target box's area (thirds of
the records); whether the decoder's own tokens hit where the box head missed.

Usage::

    PYTHONPATH=src python benchmarks/learning/misses.py benchmarks/results/learning_referring_referring_records.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from pixtok.data.synthetic import SHAPES as SHAPE_WORDS
from pixtok.data.synthetic import SIZES

SIZE_WORDS = tuple(SIZES)


def read_records(path: str | Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"error: {path} has no records")
    for row in rows:
        if "iou" not in row or "expression" not in row:
            raise SystemExit(f"error: {path}: a record without 'iou' / 'expression': {row}")
    return rows


def subject_words(expression: str) -> list[str]:
    """The attribute words before the first relation ("the small red circle left of …" → 3 words)."""
    words = expression.lower().replace("the ", " ", 1).split()
    out = []
    for word in words:
        out.append(word)
        if word in SHAPE_WORDS:
            break
    return out


def _area(row: dict) -> float:
    x0, y0, x1, y1 = row["box"]
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def summarize(rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    hits = sum(r["iou"] >= 0.5 for r in rows)
    near = sum(0.25 <= r["iou"] < 0.5 for r in rows)
    far = sum(r["iou"] < 0.25 for r in rows)
    return {"count": n, "P@0.5": hits / n, "near_miss": near / n, "far_miss": far / n}


def groups(rows: list[dict]) -> Iterable[tuple[str, str, list[dict]]]:
    """``(group, value, rows)`` for every group with at least one row."""

    def by(name: str, key: Callable[[dict], str], order: Iterable[str] | None = None):
        values: dict[str, list[dict]] = {}
        for row in rows:
            values.setdefault(key(row), []).append(row)
        for value in order if order is not None else sorted(values):
            if value in values:
                yield name, value, values[value]

    yield "all", "", rows
    yield from by(
        "kind", lambda r: "relation" if r.get("relation") else "attribute", ("attribute", "relation")
    )
    yield from by("subject words", lambda r: str(len(subject_words(r["expression"]))))
    yield from by(
        "size word",
        lambda r: next((w for w in SIZE_WORDS if w in subject_words(r["expression"])), "none"),
        (*SIZE_WORDS, "none"),
    )
    yield from by(
        "shape",
        lambda r: next((w for w in SHAPE_WORDS if w in subject_words(r["expression"])), "?"),
        SHAPE_WORDS,
    )
    areas = sorted(_area(r) for r in rows)
    cut1, cut2 = areas[len(areas) // 3], areas[2 * len(areas) // 3]
    yield from by(
        "box area",
        lambda r: (
            f"small (< {cut1:.0f} px²)"
            if _area(r) < cut1
            else (f"middle (< {cut2:.0f} px²)" if _area(r) < cut2 else f"large (≥ {cut2:.0f} px²)")
        ),
        (f"small (< {cut1:.0f} px²)", f"middle (< {cut2:.0f} px²)", f"large (≥ {cut2:.0f} px²)"),
    )
    if all("token_iou" in r for r in rows):
        missed = [r for r in rows if r["iou"] < 0.5]
        if missed:
            yield from by(
                "box head missed; tokens",
                lambda r: "hit" if r["token_iou"] >= 0.5 else "missed too",
                ("hit", "missed too"),
            )


def table(rows: list[dict]) -> str:
    lines = [
        "| group | value | expressions | P@0.5 | near miss | far miss |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, value, members in groups(rows):
        s = summarize(members)
        lines.append(
            f"| {name} | {value} | {s['count']} | {s['P@0.5']:.3f} | {s['near_miss']:.3f} | {s['far_miss']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", help="a referring run's val_referring_records.jsonl")
    args = parser.parse_args(argv)
    print(table(read_records(args.records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
