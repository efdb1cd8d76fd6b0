"""Training-step throughput: samples/s, MFU and peak memory for 500-token detection targets.

For pixtok ``base`` (LoRA, frozen towers — the paper's setting) one optimizer step (forward,
backward, AdamW) on random 1024² images with 500-token detection targets is timed with CUDA events
(median after warm-up), under bf16 autocast with fp32 master weights (what accelerate's
``mixed_precision: bf16`` does):

* with the towers run online, and with their features cached (``train.cache_features``: the
  towers' output passed as ``image_embeddings`` / ``fused_features``) — the ratio is the cache's
  speed-up;
* ``pixelllm-xl`` at batch 8 with gradient checkpointing: step time and peak memory;
* with ``--compile MODE`` (``default``, ``reduce-overhead``, …), also each base arm with the
  model's repeated blocks compiled in place as ``train.compile: MODE`` does
  (:mod:`pixtok.training.compilation`; FLOPs counted on the eager path), and with
  ``--compile-regions blocks,stacks`` also with every stack of blocks (a T5 stack, a tower's encoder)
  compiled whole; the headline MFU is the best online arm's, the cache speed-up the best cached
  arm's over the best online arm's.

MFU counts what the step really computes: the FLOPs are measured by
``torch.utils.flop_counter.FlopCounterMode`` on one step (frozen weights get no weight gradients,
so they are not counted; SAM's attention counted in its bias-tensor form, so the fused form's extra
query/key columns are not counted as useful work), divided by the step time and the datasheet dense bf16 rate (989.4 TFLOP/s
for H100 SXM / H200, the same figure ``towers.py`` uses).

    PYTHONPATH=src python3 benchmarks/train_step.py [--batch 8] [--compile reduce-overhead] [--out DIR]
    PYTHONPATH=src python3 benchmarks/train_step.py --device cpu --preset tiny --skip-xl   # smoke

``--reduced-math-sdp`` lets SDPA's math fallback run bf16 inputs in bf16: since torch 2.5 it upcasts
them to fp32 by default, and on CPU the ``base`` cached step's T5 attention takes that fallback (a
dispatch trace of one step shows its ``bmm`` calls in fp32, 12 per shape: one per decoder layer);
whether the GPU step's fp32 SIMT GEMMs are the same calls is what the flag times (fourteenth session:
they were; the compiled step did not get faster, benchmarks/RESULTS.md).

``--sam-padded-value`` runs every arm with SAM's fused attention padding the value to the widened
query's width (``SamRelPosAttention.narrow_value=False``, the form before the seventeenth session;
compare against a run without it).

``--conv-patch-embedding`` runs every arm with the towers' patch embeddings as convolutions (cuDNN),
the form before the twenty-first session's ``PatchConv2d`` (one matrix product); compare against a
run without it.

Each arm is timed over ``--steps-per-timing`` (default 4) consecutive steps per CUDA-event pair,
median of five such timings: the training loop does not wait for the device between steps (a
non-finite loss's step is skipped on the device, ``pixtok.training.nonfinite``), so one step's host
work overlaps the previous step's kernels. ``isolated_step_s`` is the same arm timed one step per
pair (the figure before the twenty-second session), measured in the same run.

``--no-graphs REGEX`` compiles the repeated blocks whose qualified names match without CUDA graphs
(``compile_repeated_blocks(no_graphs=…)``): for blocks whose kernels take less time than their
graph replay costs the host.

``--pad-to-multiple-of N`` pads the 501-token targets with ignored positions to a multiple of N, as
``train.pad_to_multiple_of`` does in training: T5 attention's batched GEMMs over a 501-long axis run
on cuBLAS's unaligned (``align1``) kernels. The FLOPs stay those of the unpadded step (the padding is
not useful work), so MFU only rises if the step gets faster.

The step runs as the training loop runs it: the all-ones prompt mask is dropped and the forward
skips the input checks that read the device (``checked_on_host``: the loop checks each batch on the
CPU); ``--forward-checks`` times the step with both, as it was before the nineteenth session.

``--profile`` prints each base arm's top kernels and their total against the step's wall time;
``--trace DIR`` also writes one step of each arm as a Chrome trace (``DIR/<arm>.json.gz``, host and
device activity) to see which host work leaves the GPU idle. ``--skip-eager`` (with ``--compile``)
times only the compiled arms.

Writes ``benchmarks/results/train.json`` (``base_mfu``, ``cache_speedup``, ``xl_peak_gb``, …).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixtok.model.configuration_pixtok import PixtokConfig  # noqa: E402
from pixtok.model.input_checks import checked_on_host  # noqa: E402
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration  # noqa: E402
from pixtok.model.patch_embedding import use_patch_matmul  # noqa: E402
from pixtok.training.compilation import (  # noqa: E402
    compile_options,
    compile_repeated_blocks,
    eager,
    step_begin,
)
from pixtok.training.nonfinite import NonFiniteGuard  # noqa: E402
from timing import RESULTS_DIR, command_line, device_description, kernel_times, median, write_result  # noqa: E402

PEAK_BF16_FLOPS = 989.4e12
TOKENS = 501  # 100 objects x 5 + EOS


def make_batch(config: PixtokConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random images and random (grammatical) detection targets of TOKENS tokens."""
    vocab = config.vocab
    s, e = config.image_size, config.eva_image_size
    objects = (TOKENS - 1) // 5
    coords = torch.randint(vocab.coord_offset, vocab.coord_offset + vocab.num_bins, (batch, objects, 4))
    classes = torch.randint(
        vocab.class_offset, vocab.class_offset + max(vocab.num_classes, 1), (batch, objects, 1)
    )
    labels = torch.cat(
        [torch.cat([coords, classes], -1).reshape(batch, -1), torch.full((batch, 1), vocab.eos_id)], 1
    )
    return {
        "pixel_values": torch.randn(batch, 3, s, s, device=device),
        "eva_pixel_values": torch.randn(batch, 3, e, e, device=device),
        "input_ids": torch.full((batch, 1), vocab.task_id("detection"), device=device),
        "attention_mask": torch.ones(batch, 1, dtype=torch.long, device=device),
        "labels": labels.to(device),
        "label_weights": torch.ones(batch, TOKENS, device=device),
    }


def pad_targets(batch: dict[str, torch.Tensor], multiple: int) -> dict[str, torch.Tensor]:
    """``labels`` padded with -100 and ``label_weights`` with 0 up to a multiple of ``multiple``."""
    length = batch["labels"].shape[1]
    extra = -length % max(multiple, 1)
    if not extra:
        return batch
    padded = dict(batch)
    padded["labels"] = torch.nn.functional.pad(batch["labels"], (0, extra), value=-100)
    padded["label_weights"] = torch.nn.functional.pad(batch["label_weights"], (0, extra), value=0.0)
    return padded


@contextlib.contextmanager
def model_flops_form(model):
    """Count the model's FLOPs, not the fused SAM attention's padding: while counting, its attention
    layers run transformers' bias-tensor form (same math; the fused form adds query/key columns)."""
    from transformers.models.sam.modeling_sam import SamVisionSdpaAttention

    from pixtok.model.sam import SamRelPosAttention

    swapped = [m for m in model.modules() if type(m) is SamRelPosAttention]
    for module in swapped:
        module.__class__ = SamVisionSdpaAttention
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = SamRelPosAttention


def timed(fn, device: torch.device, warmup: int = 2, repeats: int = 5, calls: int = 1) -> float:
    """Median seconds per call, over ``repeats`` timings of ``calls`` consecutive calls each (with
    ``calls > 1`` one call's host work overlaps the previous call's kernels, as in a training loop
    that does not wait for the device between steps)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls)
    return median(times)


def step_fn(
    model, optimizer, batch, device, compiling: dict[str, str] | None = None, host_checked: bool = True
):
    """One training step as the loop runs it: a non-finite loss's step is skipped on the device
    (``NonFiniteGuard``: the fused AdamW reads ``found_inf``), so the step never reads the device."""
    checks = checked_on_host if host_checked else contextlib.nullcontext
    guard = NonFiniteGuard(optimizer, device)

    def step():
        step_begin(compiling or {})
        with torch.autocast(device.type, dtype=torch.bfloat16), checks():
            loss = model(**batch).loss
        loss.backward()
        guard.observe(torch.isfinite(loss.detach()))
        guard.before_step()
        optimizer.step()
        guard.after_step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(
    preset: str,
    batch_size: int,
    device: torch.device,
    checkpointing: bool,
    cached: bool,
    compile_towers: bool = False,
    profile: bool = False,
    compile_mode: str | None = None,
    pad_to_multiple_of: int = 1,
    trace: Path | None = None,
    regions: str = "blocks",
    sam_padded_value: bool = False,
    host_checked: bool = True,
    conv_patch_embedding: bool = False,
    steps_per_timing: int = 4,
    no_graphs: str | None = None,
) -> dict:
    torch.manual_seed(0)
    config = PixtokConfig.from_preset(preset)
    with torch.device(device):
        model = PixtokForConditionalGeneration(config)
    model.train()
    if sam_padded_value:
        from pixtok.model.sam import SamRelPosAttention

        for module in model.modules():
            if isinstance(module, SamRelPosAttention):
                module.narrow_value = False
    if conv_patch_embedding:
        use_patch_matmul(model, enable=False)
    if compile_towers:  # frozen towers: forward only, compiled in place (parameter names unchanged)
        model.model.towers.compile()
    if checkpointing:
        model.gradient_checkpointing_enable()
    compiling = compile_options(compile_mode) if compile_mode else None
    compile_s = 0.0
    if compiling is not None:
        compile_repeated_blocks(model, regions=regions, no_graphs=no_graphs, **compiling)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as the training loop's
    batch = make_batch(config, batch_size, device)
    if host_checked:  # as the training loop: the all-ones prompt mask dropped, the checks done on the CPU
        batch.pop("attention_mask")
    if cached:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            features = model.model.encode_images(batch.pop("pixel_values"), batch.pop("eva_pixel_values"))
        batch["image_embeddings"], batch["fused_features"] = features.sam.float(), features.fused.float()
    step = step_fn(model, optimizer, pad_targets(batch, pad_to_multiple_of), device, compiling, host_checked)
    if compiling is not None:  # the first compiled steps compile (and record CUDA graphs)
        started = time.perf_counter()
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
    step()  # allocate optimizer state before counting
    # the useful work: the unpadded targets' step
    with FlopCounterMode(display=False) as counter, model_flops_form(model), eager():
        step_fn(model, optimizer, batch, device, compiling, host_checked)()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, calls=steps_per_timing)
    isolated = timed(step, device, warmup=0) if steps_per_timing > 1 else seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if profile and device.type == "cuda":
        print_profile(step, seconds)
    if trace is not None:
        write_trace(step, trace)
    trainable = sum(p.numel() for p in params)
    result = {
        "samples_per_s": batch_size / seconds,
        "step_s": seconds,
        "isolated_step_s": isolated,
        "tflop_per_step": flops / 1e12,
        "mfu": flops / seconds / PEAK_BF16_FLOPS,
        "peak_gb": peak,
        "trainable_m": trainable / 1e6,
    }
    if compiling is not None:
        result["compile_s"] = compile_s
    del model, optimizer, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def print_profile(step, seconds: float, top: int = 12) -> None:
    """Device time of one step by kernel, against the step's wall time (the rest is host-side gaps)."""
    rows = kernel_times(step)
    busy = sum(r[1] for r in rows)
    launches = sum(r[2] for r in rows)
    print(f"    profile: {busy:.1f} ms of kernels in {launches} launches; step {seconds * 1e3:.1f} ms")
    for name, ms, count in rows[:top]:
        print(f"    {ms:8.2f} ms {count:6d}x  {name}")


def write_trace(step, path: Path) -> None:
    """One step under ``torch.profiler`` (host and device activity) as a gzip'd Chrome trace:
    the host-side gaps between kernels, which :func:`print_profile` only sums, by operator."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix("")
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    print(f"    trace: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", help="comma-separated base batch sizes (the first is the headline)")
    parser.add_argument("--compile-towers", action="store_true", help="also time online towers compiled")
    parser.add_argument(
        "--compile",
        help="also time each base arm with its repeated blocks compiled in this torch.compile mode",
    )
    parser.add_argument(
        "--compile-regions",
        default="blocks",
        help="with --compile: comma-separated regions to compile (blocks, stacks), one arm pair each",
    )
    parser.add_argument("--profile", action="store_true", help="print each base step's top kernels")
    parser.add_argument(
        "--trace", help="write one step of each base arm as a Chrome trace (.json.gz) to this folder"
    )
    parser.add_argument(
        "--skip-eager", action="store_true", help="with --compile, time only the compiled base arms"
    )
    parser.add_argument("--xl-batch", type=int, default=8)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-xl", action="store_true")
    parser.add_argument("--out", help="also write the JSON here (a folder)")
    parser.add_argument(
        "--pad-to-multiple-of",
        type=int,
        default=1,
        help="pad the 501-token targets (ignored positions) to a multiple of N, as train.pad_to_multiple_of",
    )
    parser.add_argument(
        "--sam-padded-value",
        action="store_true",
        help="SAM's fused attention pads the value to the query's width (SamRelPosAttention.narrow_value=False)",
    )
    parser.add_argument(
        "--no-graphs",
        help="with --compile reduce-overhead: the repeated blocks whose qualified names match this "
        "regular expression compile without CUDA graphs (e.g. 'text_model\\.encoder\\.')",
    )
    parser.add_argument(
        "--steps-per-timing",
        type=int,
        default=4,
        help="consecutive steps per CUDA-event pair (the loop does not wait for the device between "
        "steps); each arm also reports isolated_step_s, one step per pair",
    )
    parser.add_argument(
        "--conv-patch-embedding",
        action="store_true",
        help="the towers' patch embeddings run as convolutions (the form before PatchConv2d)",
    )
    parser.add_argument(
        "--forward-checks",
        action="store_true",
        help="the forward checks its inputs on the device and T5 gets the all-ones prompt mask "
        "(the step before the training loop checked batches on the CPU; compare against a run without)",
    )
    parser.add_argument(
        "--reduced-math-sdp",
        action="store_true",
        help="let SDPA's math fallback compute bf16 inputs in bf16 (torch's default upcasts them to fp32)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.reduced_math_sdp:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    metrics: dict[str, float] = {}
    batches = [int(b) for b in str(args.batches or args.batch).split(",")]
    mode = args.compile
    arms = [(False, False, None), (True, False, None), (False, True, None)]
    regions = args.compile_regions.split(",")
    if mode:
        arms = arms[2:] if args.skip_eager else arms
        arms += [(cached, False, (mode, r)) for r in regions for cached in (False, True)]
    elif args.skip_eager:
        parser.error("--skip-eager needs --compile")
    for batch in batches:
        for cached, compiled, compiled_as in arms:
            if compiled and not args.compile_towers:
                continue
            tag = "base_cached" if cached else "base_compiled_towers" if compiled else "base"
            mode_name, region = compiled_as or (None, "blocks")
            if compiled_as:
                tag += f"_{region}_" + mode_name.replace("-", "_")
            if batch != batches[0]:
                tag += f"_b{batch}"
            trace = Path(args.trace) / f"{tag}.json.gz" if args.trace else None
            r = measure(args.preset, batch, device, checkpointing=False, cached=cached,
                        compile_towers=compiled, profile=args.profile, compile_mode=mode_name,
                        pad_to_multiple_of=args.pad_to_multiple_of, trace=trace, regions=region,
                        sam_padded_value=args.sam_padded_value,
                        host_checked=not args.forward_checks,
                        conv_patch_embedding=args.conv_patch_embedding,
                        steps_per_timing=args.steps_per_timing,
                        no_graphs=args.no_graphs)  # fmt: skip
            for k, v in r.items():
                metrics[f"{tag}_{k}"] = v
            what = "cached" if cached else "online, compiled towers" if compiled else "online"
            what += f", {region} compiled ({mode_name})" if compiled_as else ""
            print(f"{args.preset} {what} batch {batch}: {r}", flush=True)
    if "base_samples_per_s" in metrics:
        metrics["cache_speedup_eager"] = metrics["base_cached_samples_per_s"] / metrics["base_samples_per_s"]
    headline = [k for k in metrics if k.endswith("samples_per_s") and not re.search(r"_b\d+_", k)]
    online = max(metrics[k] for k in headline if "cached" not in k)
    cached_best = max(metrics[k] for k in headline if "cached" in k)
    metrics["cache_speedup"] = cached_best / online
    isolated = {k: k[: -len("samples_per_s")] + "isolated_step_s" for k in headline}
    if all(v in metrics for v in isolated.values()):  # the same ratio, one step per timing
        online_s = min(metrics[v] for k, v in isolated.items() if "cached" not in k)
        cached_s = min(metrics[v] for k, v in isolated.items() if "cached" in k)
        metrics["cache_speedup_isolated_steps"] = online_s / cached_s
    if "base_compiled_towers_samples_per_s" in metrics:
        metrics["cache_speedup_vs_compiled_towers"] = (
            metrics["base_cached_samples_per_s"] / metrics["base_compiled_towers_samples_per_s"]
        )
    online_mfu = [v for k, v in metrics.items() if k.endswith("_mfu") and "cached" not in k]
    metrics["base_best_online_mfu"] = max(online_mfu)
    if "base_mfu" in metrics:
        metrics["base_mfu_eager"] = metrics["base_mfu"]
    metrics["base_mfu"] = metrics["base_best_online_mfu"]
    if not args.skip_xl:
        r = measure(
            "pixelllm-xl",
            args.xl_batch,
            device,
            checkpointing=True,
            cached=False,
            sam_padded_value=args.sam_padded_value,
            host_checked=not args.forward_checks,
            conv_patch_embedding=args.conv_patch_embedding,
            steps_per_timing=args.steps_per_timing,
        )
        for k, v in r.items():
            metrics[f"xl_{k}"] = v
        metrics["xl_batch"] = float(args.xl_batch)
        print(f"pixelllm-xl batch {args.xl_batch} (checkpointing): {r}", flush=True)
    for key, value in metrics.items():
        print(f"{key:32s} {value:12.4f}")
    if device.type != "cuda":
        return  # smoke run: nothing written
    record = write_result(
        RESULTS_DIR / "train.json", "train", device_description(device), command_line(), metrics
    )
    if args.out:
        write_result(Path(args.out) / "train.json", "train", record["device"], record["command"], metrics)


if __name__ == "__main__":
    main()
