"""Localization probe: how fast does a from-scratch model learn to write one square's box?

The learning table's localization rows (detection, referring, traces) fail while the rows whose
position comes in another way pass (``benchmarks/RESULTS.md``). This probe strips the task to its
core on the CPU: a white square (16–48 px) at a random place on a black 128 px image, one object,
no augmentation, the ``tiny`` preset from scratch with every weight trained. It reports the
teacher-forced median error of the coordinate tokens, in bins of 1000, as training goes.

``--decoder t5`` trains pixtok as it is (towers → extractor → T5 encoder/decoder → LM head).
``--decoder plain`` keeps pixtok's towers and extractor and replaces the T5 by a plain pre-norm
transformer decoder of the same width and depth (learned absolute positions, scaled attention, its
own untied head, no label smoothing) that cross-attends the extractor's tokens — the shape of
Pix2Seq's decoder. The gap between the two is what the T5 path costs.

``--data synthetic`` runs the same comparison on the learning benchmark's detection row without
sequence augmentation (``detection_no_seq_aug``, its preset and data; ``--preset small`` on a GPU),
and scores the coordinate error on a fixed batch of ``val`` images instead of the training batch.

Usage::

    PYTHONPATH=src python benchmarks/learning/localization_probe.py --decoder t5 --out t5.json
    PYTHONPATH=src python benchmarks/learning/localization_probe.py --decoder plain --out plain.json
    PYTHONPATH=src python benchmarks/learning/localization_probe.py --data synthetic --device cuda \
        --bf16 --batch-size 128 --lr 5e-4 --warmup 200 --steps 1500 --workers 5 --decoder plain
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent


class PlainDecoder(nn.Module):
    """Pre-norm transformer decoder with learned absolute positions and its own head."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, max_length: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, memory: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from pixtok.model.modeling_pixtok import shift_right

        inputs = shift_right(labels)
        x = self.embed(inputs) + self.position[: inputs.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(inputs.shape[1])
        return self.head(self.norm(self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True)))


def squares(rng: np.random.Generator, n: int) -> tuple[list[Image.Image], list[dict]]:
    images, targets = [], []
    for _ in range(n):
        pixels = np.zeros((128, 128, 3), np.uint8)
        side = int(rng.integers(16, 48))
        x, y = (int(v) for v in rng.integers(0, 128 - side, 2))
        pixels[y : y + side, x : x + side] = 255
        images.append(Image.fromarray(pixels))
        targets.append({"boxes": np.array([[x, y, x + side, y + side]], float), "labels": np.array([0])})
    return images, targets


def square_data(args: argparse.Namespace):
    """The toy: ``tiny`` model and processor, an endless stream of one-square batches, no val set."""
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
    from pixtok.model.processing_pixtok import PixtokProcessor

    config = PixtokConfig.from_preset(
        "tiny",
        freeze_towers=False,
        lora_r=0,
        freeze_text_model=False,
        max_objects=1,
        extractor_config={"grid_tokens": 8, "position_in_values": True},
        text_config={"initializer_factor": args.t5_init},
        label_smoothing=args.label_smoothing,
    )
    model = PixtokForConditionalGeneration(config)
    processor = PixtokProcessor.from_config(config)
    rng = np.random.default_rng(0)

    def batches():
        while True:
            images, targets = squares(rng, args.batch_size)
            yield dict(processor(images=images, task="detection", targets=targets, return_tensors="pt"))

    return model, batches(), None


def synthetic_data(args: argparse.Namespace):
    """The learning benchmark's ``detection_no_seq_aug`` row: its model, a training loader, a val batch."""
    sys.path.insert(0, str(HERE))
    from run import row_config

    from pixtok.training.loop import BatchMaker
    from pixtok.training.recipe import prepare
    from pixtok.training.sampling import SampleStream, TaskMixture

    overrides = {
        "model.preset": args.preset,
        "model.overrides.text_config.initializer_factor": args.t5_init,
        "model.overrides.label_smoothing": args.label_smoothing,
    }
    if args.num_images:
        overrides["data.synthetic.num_images"] = args.num_images
    recipe = row_config("detection_no_seq_aug", overrides)
    model, processor, tasks = prepare(recipe)
    data = tasks[0]
    mixture = TaskMixture([len(data.train_items)], [1.0], recipe.train.seed)
    stream = SampleStream(
        BatchMaker(tasks, processor, mixture), args.batch_size, rank=0, world_size=1, start=0
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers)
    val = [data.task.example(data.val[row], sub, None) for row, sub in data.val_items[: args.val_size]]
    val_batch = dict(data.task.collate(val, processor, rng=np.random.default_rng(0)))

    def batches():
        for _, batch in loader:
            batch.pop("_image_keys", None)
            yield batch

    return model, batches(), val_batch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", choices=("t5", "plain"), default="t5")
    parser.add_argument("--data", choices=("squares", "synthetic"), default="squares")
    parser.add_argument("--preset", default="small", help="model preset of --data synthetic")
    parser.add_argument("--num-images", type=int, help="synthetic benchmark size (default: the row's)")
    parser.add_argument("--val-size", type=int, default=128, help="val images scored (--data synthetic)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="data loader workers (--data synthetic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--t5-init", type=float, default=0.1, help="T5 initializer_factor (the `small` preset's 0.1)"
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=0.1, help="pixtok's LM loss smoothing (t5 decoder)"
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", help="write the result JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, batches, val_batch = (square_data if args.data == "squares" else synthetic_data)(args)
    device = torch.device(args.device)
    config = model.config
    text = config.text_config
    max_length = 16 if args.data == "squares" else 5 * config.max_objects + 16
    plain = PlainDecoder(text.vocab_size, text.d_model, text.num_decoder_layers, text.num_heads, max_length)
    model.to(device).train()
    plain.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if args.decoder == "plain":
        params += list(plain.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))
    vocab = config.vocab

    def run(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch["labels"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if args.decoder == "t5":
                out = model(**batch)
                return out.loss, out.logits, labels
            prefix = model.model.encode(
                batch["pixel_values"], batch["eva_pixel_values"], batch["input_ids"], batch["attention_mask"]
            )[3]
            logits = plain(prefix, labels)
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return loss, logits, labels

    def coordinate_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
        coord = (labels >= vocab.coord_offset) & (labels < vocab.coord_offset + vocab.num_bins)
        return (logits.detach().argmax(-1)[coord] - labels[coord]).abs().float().median().item()

    history = []
    started = time.time()
    for step, batch in enumerate(batches, start=1):
        loss, logits, labels = run(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.log_every == 0 or step == args.steps:
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                "median_coord_error_bins": coordinate_error(logits, labels),
            }
            if val_batch is not None:
                model.eval()
                plain.eval()
                with torch.no_grad():
                    val_loss, val_logits, val_labels = run(val_batch)
                model.train()
                plain.train()
                entry["val_loss"] = round(val_loss.item(), 4)
                entry["val_median_coord_error_bins"] = coordinate_error(val_logits, val_labels)
            history.append(entry)
            print(
                f"{args.decoder} step {step}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "step")
                + f" (bins of {vocab.num_bins}; {time.time() - started:.0f} s)",
                flush=True,
            )
        if step >= args.steps:
            break
    final = history[-1]
    result = {
        "benchmark": f"localization_probe_{args.decoder}",
        "settings": {
            "data": args.data,
            "t5_init": args.t5_init,
            "label_smoothing": args.label_smoothing,
            "lr": args.lr,
            "batch_size": args.batch_size,
        },
        "device": f"cpu ({os.cpu_count()} cores, {args.threads} thread(s))"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device),
        "date": dt.date.today().isoformat(),
        "command": "PYTHONPATH=src python benchmarks/learning/localization_probe.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "metrics": {
            "final_median_coord_error_bins": final.get(
                "val_median_coord_error_bins", final["median_coord_error_bins"]
            ),
            "steps": args.steps,
            "seconds": round(time.time() - started, 1),
        },
        "history": history,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
