"""Localization probe: how fast does a from-scratch model learn to write one square's box?

The learning table's localization rows (detection, referring, traces) fail while the rows whose
position comes in another way pass (``benchmarks/RESULTS.md``). This probe strips the task to its
core on the CPU: a white square (16–48 px) at a random place on a black 128 px image, one object,
no augmentation, the ``tiny`` preset from scratch with every weight trained. It reports the
teacher-forced median error of the coordinate tokens, in bins of 1000, as training goes.

``--decoder t5`` trains pixtok as it is (towers → extractor → T5 encoder/decoder → LM head).
``--decoder plain`` replaces the T5 by a plain pre-norm transformer decoder of the same width and
depth (learned absolute positions, scaled attention, its own untied head, no label smoothing) that
cross-attends the prefix tokens — the shape of Pix2Seq's decoder.

``--encoder`` picks what makes the prefix: ``pixtok`` (the towers and the prompt extractor),
``grid`` (the towers, then every cell of the fused grid as a token with SAM's positional encoding
added, no extractor) or ``vit`` (Pix2Seq's encoder in place of the towers: patches on SAM's grid,
learned positions, pre-norm layers of the T5's width and depth; every cell a token). Crossing the
two arms says which part of the path is slow to learn where. ``--coord-init sinusoid`` starts the
coordinate rows of the input embedding and of the LM head as a sinusoidal code of the bin centre
instead of independent random rows. ``--decoder-positions N`` gives the T5 decoder pixtok's learned
absolute position table (``config.decoder_position_embeddings``; the ``small`` preset has 512).
``--t5-init 1.0 --scaled-outputs`` trains the T5 as T5 v1.0 does (its own init, the last decoder
state scaled by ``d_model**-0.5`` before the LM head; the ``small`` preset's ``initializer_factor``
0.1 also shrinks every RMSNorm weight), and ``--grid-source`` picks what the extractor's grid
tokens are made of. ``--t5-init 1.0 --embedding-std D**-0.5 --query-lr-scale d_kv**-0.5`` trains the
T5 as a standard transformer (the recipe of the detection row's config, whose init and
``train.lr_scales`` the synthetic probe takes by default).

``--data synthetic`` runs the same comparison on the learning benchmark's detection row without
sequence augmentation (``detection_no_seq_aug``, its preset and data; ``--preset small`` on a GPU),
and scores the coordinate error on a fixed batch of ``val`` images instead of the training batch.
The error is the median distance between the wanted bin and the bin the logits rank first among the
``num_bins`` coordinate tokens, at every coordinate position of the teacher-forced sequence.

Usage::

    PYTHONPATH=src python benchmarks/learning/localization_probe.py --decoder t5 --out t5.json
    PYTHONPATH=src python benchmarks/learning/localization_probe.py --decoder plain --out plain.json
    PYTHONPATH=src python benchmarks/learning/localization_probe.py --data synthetic --device cuda \
        --bf16 --batch-size 128 --lr 5e-4 --warmup 200 --steps 1500 --workers 5 --decoder plain \
        --encoder vit --time-limit 400
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


class PlainEncoder(nn.Module):
    """Pix2Seq's encoder in place of pixtok's towers: patches, learned positions, pre-norm layers.

    It reads the SAM-normalized pixels and returns its tokens on SAM's grid as both feature maps.
    """

    def __init__(self, image_size: int, grid: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        patch = image_size // grid
        self.grid = grid
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, pixel_values: torch.Tensor, eva_pixel_values: torch.Tensor):
        from pixtok.model.towers import VisionFeatures

        x = self.patch(pixel_values).flatten(2).transpose(1, 2) + self.position
        x = self.norm(self.encoder(x)).transpose(1, 2).unflatten(2, (self.grid, self.grid))
        return VisionFeatures(sam=x, fused=x)


class GridTokens(nn.Module):
    """In place of the extractor: every cell of the fused grid as a prefix token, plus SAM's PE."""

    def __init__(self, channels: int, pe_channels: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, width)
        self.pe = nn.Linear(pe_channels, width, bias=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, image_features, image_pe, sparse_embeddings, dense_embeddings) -> torch.Tensor:
        pe = self.pe(image_pe.to(image_features.dtype).flatten(2).transpose(1, 2))
        return self.norm(self.proj(image_features.flatten(2).transpose(1, 2)) + pe)


def sinusoid_coordinate_rows(weights: list[torch.Tensor], vocab) -> None:
    """Overwrite the coordinate rows of each (V, D) matrix by a sinusoidal code of the bin centre.

    Frequencies are geometric from 1 to ``num_bins / 2`` cycles per image side, sine and cosine
    halves; each matrix keeps the root-mean-square its coordinate rows had.
    """
    ids = torch.arange(vocab.coord_offset, vocab.coord_offset + vocab.num_bins)
    for weight in {id(w): w for w in weights}.values():
        half = weight.shape[1] // 2
        centres = (torch.arange(vocab.num_bins, dtype=torch.float64) + 0.5) / vocab.num_bins
        freqs = torch.exp(torch.linspace(0.0, np.log(vocab.num_bins / 2), half, dtype=torch.float64))
        angles = 2 * np.pi * centres[:, None] * freqs[None]
        code = torch.cat([angles.sin(), angles.cos()], dim=1)
        code = torch.nn.functional.pad(code, (0, weight.shape[1] - code.shape[1])).float()
        with torch.no_grad():
            scale = weight[ids].pow(2).mean().sqrt() / code.pow(2).mean().sqrt()
            weight[ids] = (code * scale).to(weight.dtype)


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
    """The toy: ``tiny`` model, an endless stream of one-square batches, no val set, no lr scales."""
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
    from pixtok.model.processing_pixtok import PixtokProcessor

    config = PixtokConfig.from_preset(
        "tiny",
        freeze_towers=False,
        lora_r=0,
        freeze_text_model=False,
        max_objects=1,
        extractor_config={
            "grid_tokens": 8,
            "position_in_values": True,
            **({"grid_source": args.grid_source} if args.grid_source else {}),
        },
        text_config={
            "tie_word_embeddings": args.scaled_outputs,
            **({"initializer_factor": args.t5_init} if args.t5_init is not None else {}),
        },
        label_smoothing=args.label_smoothing,
        decoder_position_embeddings=args.decoder_positions or 0,
        text_embedding_init_std=args.embedding_std,
    )
    model = PixtokForConditionalGeneration(config)
    processor = PixtokProcessor.from_config(config)
    rng = np.random.default_rng(0)

    def batches():
        while True:
            images, targets = squares(rng, args.batch_size)
            yield dict(processor(images=images, task="detection", targets=targets, return_tensors="pt"))

    return model, batches(), None, {}


def synthetic_data(args: argparse.Namespace):
    """The ``detection_no_seq_aug`` row: its model, a training loader, a val batch, its lr_scales."""
    sys.path.insert(0, str(HERE))
    from run import row_config

    from pixtok.training.loop import BatchMaker
    from pixtok.training.recipe import prepare
    from pixtok.training.sampling import SampleStream, TaskMixture

    overrides = {"model.preset": args.preset, "model.overrides.label_smoothing": args.label_smoothing}
    if args.t5_init is not None:
        overrides["model.overrides.text_config.initializer_factor"] = args.t5_init
    if args.scaled_outputs:
        overrides["model.overrides.text_config.tie_word_embeddings"] = True
    if args.grid_source:
        overrides["model.overrides.extractor_config.grid_source"] = args.grid_source
    if args.grid_tokens is not None:
        overrides["model.overrides.extractor_config.grid_tokens"] = args.grid_tokens
    if args.decoder_positions is not None:
        overrides["model.overrides.decoder_position_embeddings"] = args.decoder_positions
    if args.embedding_std is not None:
        overrides["model.overrides.text_embedding_init_std"] = args.embedding_std
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

    return model, batches(), val_batch, recipe.train.lr_scales


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", choices=("t5", "plain"), default="t5")
    parser.add_argument(
        "--encoder",
        choices=("pixtok", "grid", "vit"),
        default="pixtok",
        help="pixtok: towers + extractor; grid: towers, every grid cell a token; vit: a plain ViT, every cell a token",
    )
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
        "--t5-init", type=float, help="T5 initializer_factor (default: the preset's; `small` 0.1, `tiny` 1.0)"
    )
    parser.add_argument(
        "--scaled-outputs",
        action="store_true",
        help="scale the last T5 decoder state by d_model**-0.5 before the LM head (T5 v1.0; "
        "text_config tie_word_embeddings=True); the presets do not",
    )
    parser.add_argument(
        "--embedding-std",
        type=float,
        help="std of the T5's initial embedding / tied head rows and decoder positions "
        "(config.text_embedding_init_std; default: T5's initializer_factor)",
    )
    parser.add_argument(
        "--query-lr-scale",
        type=float,
        help="learning-rate factor of the T5 attention queries (train.lr_scales; d_kv**-0.5 trains "
        "them as a scaled attention's; default: the row's train.lr_scales on synthetic, 1 on squares)",
    )
    parser.add_argument(
        "--grid-source",
        choices=("transformer", "features"),
        help="the extractor's grid tokens: its transformer's output or input image tokens (default: the preset's)",
    )
    parser.add_argument(
        "--grid-tokens",
        type=int,
        help="the extractor's grid tokens per side (--data synthetic; default: the row's)",
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=0.1, help="pixtok's LM loss smoothing (t5 decoder)"
    )
    parser.add_argument(
        "--coord-init",
        choices=("random", "sinusoid"),
        default="random",
        help="sinusoid: coordinate rows of the embedding and LM head start as a sinusoidal code of the bin",
    )
    parser.add_argument(
        "--decoder-positions",
        type=int,
        help="the T5 decoder's absolute position table (config.decoder_position_embeddings; "
        "default: none on squares, the preset's on synthetic)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=0.0, help="stop after this many seconds (0: none)"
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", help="write the result JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    # lr_scales: the row's own optimizer groups (none on squares) unless --query-lr-scale is given
    model, batches, val_batch, lr_scales = (square_data if args.data == "squares" else synthetic_data)(args)
    device = torch.device(args.device)
    config = model.config
    text = config.text_config
    inner = model.model
    if args.encoder == "vit":
        vision = config.vision_config
        grid = vision.image_size // vision.patch_size
        inner.towers = PlainEncoder(vision.image_size, grid, text.d_model, text.num_layers, text.num_heads)
    if args.encoder != "pixtok":
        channels = text.d_model if args.encoder == "vit" else inner.extractor.image_proj.in_channels
        inner.extractor = GridTokens(channels, inner.extractor.pe_proj.in_channels, text.d_model)
    max_length = 16 if args.data == "squares" else 5 * config.max_objects + 16
    plain = PlainDecoder(text.vocab_size, text.d_model, text.num_decoder_layers, text.num_heads, max_length)
    if args.coord_init == "sinusoid":
        rows = [
            inner.text_model.get_input_embeddings().weight,
            inner.text_model.get_output_embeddings().weight,
            plain.embed.weight,
            plain.head.weight,
        ]
        sinusoid_coordinate_rows(rows, config.vocab)
    model.to(device).train()
    plain.to(device).train()
    from pixtok.training.loop import QUERY_LR_PATTERN, _param_groups

    if args.query_lr_scale is not None:
        lr_scales = {QUERY_LR_PATTERN: args.query_lr_scale} if args.query_lr_scale != 1.0 else {}
    groups = _param_groups(model, args.lr, 0.0, lr_scales)
    if args.decoder == "plain":
        groups.append({"params": list(plain.parameters()), "lr": args.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
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
        """Median |bin chosen - bin wanted| over the coordinate positions, choosing among bins only."""
        coord = (labels >= vocab.coord_offset) & (labels < vocab.coord_offset + vocab.num_bins)
        bins = logits.detach()[..., vocab.coord_offset : vocab.coord_offset + vocab.num_bins].argmax(-1)
        return (bins[coord] - (labels[coord] - vocab.coord_offset)).abs().float().median().item()

    history = []
    started = time.time()
    for step, batch in enumerate(batches, start=1):
        loss, logits, labels = run(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        stop = step >= args.steps or (args.time_limit and time.time() - started > args.time_limit)
        if step % args.log_every == 0 or stop:
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
                f"{args.encoder}/{args.decoder} step {step}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "step")
                + f" (bins of {vocab.num_bins}; {time.time() - started:.0f} s)",
                flush=True,
            )
        if stop:
            break
    final = history[-1]
    result = {
        "benchmark": f"localization_probe_{args.decoder}"
        + ("" if args.encoder == "pixtok" else f"_{args.encoder}")
        + ("" if args.coord_init == "random" else f"_{args.coord_init}")
        + (
            f"_pos{config.decoder_position_embeddings}"
            if args.decoder == "t5" and config.decoder_position_embeddings
            else ""
        ),
        "settings": {
            "data": args.data,
            "encoder": args.encoder,
            "t5_init": text.initializer_factor,
            "t5_scaled_outputs": args.scaled_outputs,
            "embedding_std": config.text_embedding_init_std,
            "lr_scales": lr_scales,
            "grid_source": config.extractor_config.grid_source,
            "label_smoothing": args.label_smoothing,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "coord_init": args.coord_init,
            "decoder_positions": config.decoder_position_embeddings,
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
            "steps": final["step"],
            "seconds": round(time.time() - started, 1),
        },
        "history": history,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
