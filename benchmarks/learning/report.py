"""The learning table and loss curves of ``benchmarks/RESULTS.md`` from ``results/learning_*.json``.

Usage::

    python benchmarks/learning/report.py            # rewrites the table between the markers, draws the curves

Reads every ``benchmarks/results/learning_<row>.json`` written by ``run.py`` (and ``multigpu.py``),
draws each row's training loss against the step into ``benchmarks/results/learning_curves.png`` and
replaces the text between ``<!-- learning-table:start -->`` and ``<!-- learning-table:end -->`` in
``benchmarks/RESULTS.md`` with one line per headline figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- learning-table:start -->", "<!-- learning-table:end -->"


def load_rows(results: Path) -> dict[str, dict[str, Any]]:
    """``{row: payload}`` of every learning JSON except the multi-GPU one (it has no task metrics)."""
    out = {}
    for path in sorted(results.glob("learning_*.json")):
        payload = json.loads(path.read_text())
        out[payload["benchmark"].removeprefix("learning_")] = payload
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: row, metric, value, target, met, steps, minutes, device, date."""
    lines = [
        "| row | metric | value | target | met | steps | train min | device | date |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | --- | --- |",
    ]
    for row, payload in rows.items():
        metrics = payload.get("metrics", {})
        targets = payload.get("targets", {})
        minutes = payload.get("train_seconds")
        minutes = f"{minutes / 60:.1f}" if isinstance(minutes, (int, float)) else ""
        for key, value in metrics.items():
            check = targets.get(key, {})
            met = "" if not check else ("yes" if check.get("met") else "**no**")
            shown = f"{value:.3f}" if isinstance(value, (int, float)) else str(value)
            lines.append(
                f"| {row} | {key} | {shown} | {check.get('target', '')} | {met} | {payload.get('steps', '')} "
                f"| {minutes} | {payload.get('device', '')} | {payload.get('date', '')} |"
            )
    return "\n".join(lines)


def draw_curves(rows: dict[str, dict[str, Any]], path: Path) -> bool:
    """Training loss (log scale) against step, one panel per row; False without matplotlib or data."""
    curves = {r: p["history"] for r, p in rows.items() if p.get("history")}
    if not curves:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = len(curves)
    cols = min(3, n)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.0 * ((n + cols - 1) // cols))
    )
    axes = [axes] if n == 1 else list(getattr(axes, "flat", axes))
    for ax, (row, history) in zip(axes, curves.items()):
        steps = [h["step"] for h in history if "train/loss" in h]
        for key in ("train/loss", "train/lm_loss", "train/trace_loss", "train/mask_loss", "train/box_loss"):
            values = [h[key] for h in history if key in h]
            if values and len(values) == len(steps):
                ax.plot(steps, values, label=key.split("/")[1], linewidth=1)
        ax.set_title(row, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def update_results_md(md: Path, text: str) -> None:
    """Replace the marked block of ``md`` (append one with a heading if the markers are missing)."""
    body = md.read_text() if md.exists() else ""
    block = f"{START}\n{text}\n{END}"
    if START in body and END in body:
        head, rest = body.split(START, 1)
        body = head + block + rest.split(END, 1)[1]
    else:
        body = body.rstrip() + "\n\n## Proof of learning (issue 9)\n\n" + block + "\n"
    md.write_text(body)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--markdown", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    rows = load_rows(Path(args.results))
    text = table(rows)
    if draw_curves(rows, Path(args.results) / "learning_curves.png"):
        text += "\n\n![training loss of each row](results/learning_curves.png)"
    update_results_md(Path(args.markdown), text)
    print(text)
    return text


if __name__ == "__main__":
    main()
