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

Usage::

    PYTHONPATH=src python benchmarks/learning/localization_probe.py --decoder t5 --out t5.json
    PYTHONPATH=src python benchmarks/learning/localization_probe.py --decoder plain --out plain.json
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
        inputs = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1].clamp(min=0)], dim=1)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", choices=("t5", "plain"), default="t5")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--t5-init", type=float, default=0.1, help="T5 initializer_factor (the `small` preset's 0.1)"
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=0.1, help="pixtok's LM loss smoothing (t5 decoder)"
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", help="write the result JSON here")
    args = parser.parse_args(argv)

    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
    from pixtok.model.processing_pixtok import PixtokProcessor

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
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
    text = config.text_config
    plain = PlainDecoder(text.vocab_size, text.d_model, text.num_decoder_layers, text.num_heads, 16)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.decoder == "plain":
        params += list(plain.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    vocab = config.vocab
    rng = np.random.default_rng(0)
    history = []
    started = time.time()
    for step in range(1, args.steps + 1):
        images, targets = squares(rng, args.batch_size)
        batch = processor(images=images, task="detection", targets=targets, return_tensors="pt")
        labels = batch["labels"]
        if args.decoder == "t5":
            out = model(**batch)
            loss, logits = out.loss, out.logits
        else:
            prefix = model.model.encode(
                batch["pixel_values"], batch["eva_pixel_values"], batch["input_ids"], batch["attention_mask"]
            )[3]
            logits = plain(prefix, labels)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps:
            coord = (labels >= vocab.coord_offset) & (labels < vocab.coord_offset + vocab.num_bins)
            error = (logits.detach().argmax(-1)[coord] - labels[coord]).abs().float().median().item()
            history.append({"step": step, "loss": round(loss.item(), 4), "median_coord_error_bins": error})
            print(
                f"{args.decoder} step {step}: loss {loss.item():.3f}, median coordinate error {error:.0f} "
                f"bins of {vocab.num_bins} ({time.time() - started:.0f} s)",
                flush=True,
            )
    result = {
        "benchmark": f"localization_probe_{args.decoder}",
        "settings": {"t5_init": args.t5_init, "label_smoothing": args.label_smoothing, "lr": args.lr},
        "device": f"cpu ({os.cpu_count()} cores, {args.threads} thread(s))",
        "date": dt.date.today().isoformat(),
        "command": "PYTHONPATH=src python benchmarks/learning/localization_probe.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "metrics": {
            "final_median_coord_error_bins": history[-1]["median_coord_error_bins"],
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
