"""End-to-end detection latency: image -> 100 objects (500 tokens), pixtok `base` vs Florence-2.

What is timed (CUDA events, median of repeats after warm-up): the model part of detection for one
already-preprocessed image — both towers, the prompt extractor, the T5 encoder and 500 grammar-
constrained decoder steps with their heads (the CPU-side processor and box post-processing are
not in the figure) — for

* pixtok ``base`` (SAM ViT-B + EVA02-B + T5-base), bf16, random weights, with the decode engine
  (``generate(decode_engine=True)``: static cache, CUDA graphs, restricted heads) and without it;
* Florence-2 as transformers builds it from its default config (DaViT + BART-large-size; the
  text vocabulary widened to hold the default ``image_token_id``, as real checkpoints do), bf16,
  random weights, a 768² image (577 image tokens) and ``generate`` forced to the same 500 new
  tokens (``min_new_tokens``), measured in the same process;

then pixtok's images/s at larger batches. Random weights never stop on their own: pixtok's EOS
logit gets a large negative offset, so every image decodes the full 100 objects (5 x 100 + EOS).

    PYTHONPATH=src python3 benchmarks/detect_e2e.py [--batches 1,8,32] [--out DIR]

Writes ``benchmarks/results/detect_e2e.json`` (``base_s_per_image``, ``florence2_s_per_image``, …).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixtok.model.configuration_pixtok import PixtokConfig  # noqa: E402
from pixtok.model.image_processing_pixtok import PixtokImageProcessor  # noqa: E402
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration  # noqa: E402
from timing import RESULTS_DIR, command_line, device_description, median, time_cuda_ms, write_result  # noqa: E402

OBJECTS = 100
TOKENS = 5 * OBJECTS


def pixtok_inputs(config: PixtokConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A processor-equivalent detection batch (no tokenizer needed: the prompt is one task token)."""
    images = [torch.randint(0, 255, (480, 640, 3), dtype=torch.uint8).numpy() for _ in range(batch)]
    pixels = PixtokImageProcessor.from_pixtok_config(config)(images, return_tensors="pt")
    h, w = 480, 640
    box = torch.tensor([[0.0, 0.0], [w / max(h, w), h / max(h, w)]])  # whole-image box, model space
    vocab = config.vocab
    return {
        "pixel_values": pixels["pixel_values"].to(device, torch.bfloat16),
        "eva_pixel_values": pixels["eva_pixel_values"].to(device, torch.bfloat16),
        "input_ids": torch.full((batch, 1), vocab.task_id("detection"), device=device),
        "attention_mask": torch.ones(batch, 1, dtype=torch.long, device=device),
        "prompt_coords": box.expand(batch, 2, 2).contiguous().to(device),
        "prompt_labels": torch.tensor([[2, 3]], device=device).expand(batch, 2).contiguous(),
        "task_ids": torch.zeros(batch, dtype=torch.long, device=device),
        "image_sizes": torch.tensor([[h, w]], device=device).expand(batch, 2).contiguous(),
    }


def time_pixtok(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """pixtok's seconds per image (engine and plain loop) and images/s at larger batches."""
    config = PixtokConfig.from_preset(args.preset, lora_r=0)
    with torch.device(device):
        model = PixtokForConditionalGeneration(config)
    model = model.to(torch.bfloat16).eval()
    run = {"max_new_tokens": TOKENS + 1, "do_sample": False, "eos_logit_offset": -1e4}

    metrics: dict[str, float] = {}
    inputs = pixtok_inputs(config, 1, device)
    fast = model.generate(**inputs, decode_engine=True, **run)
    assert fast.sequences.shape[1] == TOKENS + 1, fast.sequences.shape  # 100 whole objects + EOS
    ms = time_cuda_ms(
        lambda: model.generate(**inputs, decode_engine=True, **run), warmup=1, repeats=args.repeats
    )
    metrics["base_s_per_image"] = median(ms) / 1000
    if not args.skip_plain:
        plain = model.generate(**inputs, decode_engine=False, **run)
        metrics["base_tokens_equal_plain"] = float(torch.equal(plain.sequences, fast.sequences))
        ms = time_cuda_ms(lambda: model.generate(**inputs, decode_engine=False, **run), warmup=0, repeats=2)
        metrics["base_plain_s_per_image"] = median(ms) / 1000
    print(f"pixtok base, batch 1: {metrics['base_s_per_image']:.3f} s/image (engine)", flush=True)

    for batch in [int(b) for b in args.batches.split(",") if int(b) > 1]:
        try:
            inputs_b = pixtok_inputs(config, batch, device)
            ms = time_cuda_ms(
                lambda inputs_b=inputs_b: model.generate(**inputs_b, decode_engine=True, **run),
                warmup=1,
                repeats=2,
            )
            metrics[f"base_img_per_s_batch{batch}"] = batch / (median(ms) / 1000)
            print(
                f"pixtok base, batch {batch}: {metrics[f'base_img_per_s_batch{batch}']:.1f} img/s", flush=True
            )
        except torch.OutOfMemoryError:
            print(f"batch {batch}: out of memory", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32", help="batch sizes for images/s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-plain", action="store_true", help="skip pixtok without the engine")
    parser.add_argument("--skip-florence", action="store_true")
    parser.add_argument("--preset", default="base", help="pixtok preset (tiny for a CPU smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", help="also write the JSON here (a folder)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type != "cuda":  # smoke run: same code, wall-clock timing, nothing written
        global time_cuda_ms
        from timing import time_cpu_ms as time_cuda_ms

    metrics = time_pixtok(args, device)
    if args.skip_florence:
        print(metrics)
        return
    torch.cuda.empty_cache()

    from transformers import Florence2Config, Florence2ForConditionalGeneration

    f_config = Florence2Config()
    f_config.text_config.vocab_size = max(f_config.text_config.vocab_size, f_config.image_token_id + 1)
    with torch.device(device):
        florence = Florence2ForConditionalGeneration(f_config)
    florence = florence.to(torch.bfloat16).eval()
    size = 768
    pixel_values = torch.randn(1, 3, size, size, device=device, dtype=torch.bfloat16)
    num_image_tokens = 577  # DaViT at 768²: 24 x 24 patches + 1 pooled token
    text = torch.tensor([[0, 100, 200, 300, 2]], device=device)  # a 5-token task prompt ("<OD>")
    prompt = torch.cat([torch.full((1, num_image_tokens), f_config.image_token_id, device=device), text], 1)
    gen = {"max_new_tokens": TOKENS, "min_new_tokens": TOKENS, "do_sample": False, "num_beams": 1}

    def florence_once():
        return florence.generate(input_ids=prompt, pixel_values=pixel_values, **gen)

    out = florence_once()
    ms = time_cuda_ms(florence_once, warmup=0, repeats=2)
    metrics["florence2_s_per_image"] = median(ms) / 1000
    metrics["florence2_new_tokens"] = float(out.shape[1] - 1)  # encoder-decoder: start token + new
    metrics["florence2_params_b"] = sum(p.numel() for p in florence.parameters()) / 1e9
    metrics["speedup_vs_florence2"] = metrics["florence2_s_per_image"] / metrics["base_s_per_image"]
    print(
        f"Florence-2 (default config), batch 1: {metrics['florence2_s_per_image']:.3f} s/image; "
        f"pixtok/engine is {metrics['speedup_vs_florence2']:.1f}x faster",
        flush=True,
    )
    record = write_result(
        RESULTS_DIR / "detect_e2e.json", "detect_e2e", device_description(device), command_line(), metrics
    )
    if args.out:
        write_result(
            Path(args.out) / "detect_e2e.json", "detect_e2e", record["device"], record["command"], metrics
        )
    for key, value in metrics.items():
        print(f"{key:32s} {value:10.4f}")


if __name__ == "__main__":
    main()
