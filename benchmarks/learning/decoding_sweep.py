"""One trained detection row, scored under several decoding settings on the same val images.

``run.py`` scores a row with the model's default decoding. This loads the model the row saved
(``save_pretrained`` in its output folder) and scores the same val examples again under each
setting, so that decoding choices are compared on one set of weights in one process:

* ``nucleus``: the model's defaults — nucleus sampling at top-p 0.4 (Pix2Seq's), class scores
  ranked against ``<noise>`` (Pix2Seq's altered inference, ``GenerationOptions.rank_against_noise``);
* ``nucleus_renormalized``: the same with class scores renormalized over the real classes (pixtok's
  scoring until the tenth session: an object the model calls noise could rank high);
* ``greedy`` / ``greedy_renormalized``: argmax decoding with either score;
* ``greedy_window2`` … ``greedy_window24``: greedy, each box coordinate read between bins as its
  softmax's mean over the 2, 4, 8, 16 or 24 bins either side of the token
  (``GenerationOptions.coordinate_window``).

``--settings a,b`` scores only those settings.

Each setting names every option it sets, so the row's own ``generate`` task option does not apply.

Sampling draws from a fixed generator seed per setting, so a rerun scores the same.

    PYTHONPATH=src python benchmarks/learning/decoding_sweep.py detection --set data.num_val=500
    PYTHONPATH=src python benchmarks/learning/decoding_sweep.py detection --device cpu \
        --set model.preset=tiny --set data.num_val=8 --output-dir /tmp/row   # after a tiny run.py

Writes ``benchmarks/results/decoding_sweep_<row>.json`` (``{"benchmark", "device", "date",
"command", "metrics": {"<setting>/AP": …}}``). The tenth session's file names the first two settings
``default`` and ``renormalized``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from run import row_config, rows  # noqa: E402

from timing import RESULTS_DIR, command_line, device_description, write_result  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "nucleus": {"do_sample": True, "top_p": 0.4, "rank_against_noise": True, "coordinate_window": 0},
    "nucleus_renormalized": {
        "do_sample": True,
        "top_p": 0.4,
        "rank_against_noise": False,
        "coordinate_window": 0,
    },
    "greedy": {"do_sample": False, "rank_against_noise": True, "coordinate_window": 0},
    "greedy_renormalized": {"do_sample": False, "rank_against_noise": False, "coordinate_window": 0},
    # boxes read between bins: each coordinate's softmax mean over the 2w + 1 bins around its token
    **{
        f"greedy_window{w}": {"do_sample": False, "rank_against_noise": True, "coordinate_window": w}
        for w in (2, 4, 8, 16, 24)
    },
}
"""Each setting names every decoding option the rows' configs set (``coordinate_window`` included),
so that a row's own ``generate`` option never leaks into it (the fifteenth session's sweep file
read its "greedy" with the row's window 8)."""
KEYS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "AR100": "AR@100", "APs": "APs", "APm": "APm"}


def score(task_data: Any, model: Any, processor: Any, options: dict[str, Any], batch_size: int,
          max_new_tokens: int, num_val: int, seed: int) -> dict[str, float]:  # fmt: skip
    """The detection metrics of ``model`` on the row's first ``num_val`` val examples."""
    examples = task_data.val_examples(num_val)
    predictions: list[dict] = []
    torch.manual_seed(seed)  # nucleus sampling draws from the global generator
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        predictions += task_data.task.predict(model, processor, chunk, max_new_tokens, **options)
    return task_data.task.score(predictions, examples)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", help="a detection row: " + ", ".join(r for r in rows() if "detection" in r))
    parser.add_argument("--output-dir", help="the row's run folder (default: its train.output_dir)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--settings", help="comma-separated subset of: " + ", ".join(SETTINGS))
    args = parser.parse_args(argv)
    chosen = args.settings.split(",") if args.settings else list(SETTINGS)
    unknown = [name for name in chosen if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    settings = {name: SETTINGS[name] for name in chosen}

    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
    from pixtok.model.processing_pixtok import PixtokProcessor
    from pixtok.training.recipe import prepare

    overrides = {"train.output_dir": args.output_dir} if args.output_dir else {}
    overrides.update({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    recipe = row_config(args.row, overrides)
    if "detection" not in recipe.tasks:
        parser.error(f"row {args.row!r} has no detection task")
    out_dir = Path(recipe.train.output_dir)
    if not (out_dir / "config.json").is_file():
        parser.error(f"{out_dir} holds no saved model: run benchmarks/learning/run.py {args.row} first")
    _, _, tasks = prepare(recipe)  # the row's val split (its freshly built model is dropped)
    data = next(t for t in tasks if t.task.name == "detection")
    model = PixtokForConditionalGeneration.from_pretrained(out_dir).to(args.device).eval()
    processor = PixtokProcessor.from_pretrained(out_dir)
    metrics: dict[str, float] = {}
    for name, options in settings.items():
        found = score(
            data, model, processor, options, args.batch_size, recipe.train.max_new_tokens,
            recipe.data.num_val, recipe.train.seed,
        )  # fmt: skip
        for key, label in KEYS.items():
            if key in found:
                metrics[f"{name}/{label}"] = float(found[key])
        shown = (f"{label} {found[key]:.3f}" for key, label in KEYS.items() if key in found)
        print(f"{name:>20s}  " + "  ".join(shown))
    device = device_description(torch.device(args.device))
    return write_result(
        Path(args.results) / f"decoding_sweep_{args.row}.json",
        f"decoding_sweep_{args.row}",
        device,
        command_line(),
        metrics,
        settings=settings,
        num_val=recipe.data.num_val,
        model=str(out_dir),
    )


if __name__ == "__main__":
    main()
