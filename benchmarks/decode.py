"""Decode speed: stock Hugging Face ``generate`` against pixtok's decode engine, same process.

GPU (default): T5-base-size and T5-XL-size decoders (the ``base`` and ``pixelllm-xl`` presets' text
configs), random weights, bf16, batch 1, one detection sequence of 100 objects = 501 tokens
(500 forced + EOS) over a 64-position encoder output. Stock: ``model.generate`` with
``min_new_tokens = max_new_tokens`` (dynamic cache; the static-cache + compile route fails on T5 in
transformers 5.17). Engine: :class:`pixtok.model.decode_engine.StaticT5Decoder` with
``min_objects=100``. Timed with CUDA events after warm-up, median of repeats; the bound is the
bytes one step must read (decoder weights + the grammar's LM-head rows) over the copy bandwidth
measured in the same run. Before timing, correctness on the GPU: greedy tokens of the engine and of
stock ``generate`` with the same grammar (bf16, and fp32 for base), and teacher-forced logits.

CPU (``--cpu``): the ``tiny`` preset's text config, eager engine vs stock ``generate``.

    PYTHONPATH=src python3 benchmarks/decode.py [--out DIR] [--sizes base,xl]
    PYTHONPATH=src python3 benchmarks/decode.py --cpu
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from pixtok.model.decode_engine import TOKENS_PER_OBJECT, DetectionRows, StaticT5Decoder
from pixtok.model.vocab import EOS_ID, PixtokVocab
from timing import (
    RESULTS_DIR,
    command_line,
    copy_bandwidth_gb_s,
    device_description,
    median,
    spread,
    time_cpu_ms,
    time_cuda_ms,
    write_result,
)

OBJECTS = 100
TOKENS = TOKENS_PER_OBJECT * OBJECTS + 1  # 500 forced + EOS: the detection budget of 100 objects
ENCODER_LENGTH = 64
# Text configs of the presets (pixtok.model.presets is the source of truth; these are the fallback).
_FALLBACK_TEXT = {
    "tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 relative_attention_num_buckets=16, relative_attention_max_distance=32),
    "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
                 feed_forward_proj="relu", tie_word_embeddings=True),
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}  # fmt: skip
_PRESET_NAME = {"tiny": "tiny", "base": "base", "xl": "pixelllm-xl"}


def text_config(size: str, vocab: PixtokVocab) -> T5Config:
    kwargs: dict[str, Any] = dict(_FALLBACK_TEXT[size])
    try:
        from pixtok.model.presets import PRESETS

        kwargs = dict(PRESETS[_PRESET_NAME[size]]["text_config"])
    except Exception as exc:  # presets not importable: use the copy above and say so
        print(f"[decode] presets unavailable ({exc!r}); using the benchmark's copy of the {size} config")
    kwargs.update(
        vocab_size=vocab.size, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1
    )
    return T5Config(**kwargs)


def detection_vocab() -> PixtokVocab:
    return PixtokVocab(
        base_vocab_size=32100, num_bins=1000, class_names=tuple(f"class_{i}" for i in range(80))
    )


class DetectionGrammarProcessor(LogitsProcessor):
    """The detection grammar for stock ``generate`` (written from vocab arithmetic, not the engine).

    EOS only between objects and not before ``min_objects``; an object only if it and its EOS fit
    in ``budget``; coordinates at positions 0–3, ``<cls_c>`` at 4.
    """

    def __init__(self, vocab: PixtokVocab, budget: int, min_objects: int, device: torch.device) -> None:
        v, inf = vocab.size, float("-inf")
        coords = torch.full((v,), inf, device=device)
        coords[vocab.coord_offset : vocab.class_offset] = 0.0
        classes = torch.full((v,), inf, device=device)
        classes[vocab.class_offset : vocab.noise_id] = 0.0
        eos = torch.full((v,), inf, device=device)
        eos[EOS_ID] = 0.0
        self.coords, self.classes, self.eos = coords, classes, eos
        self.both = torch.maximum(coords, eos)
        self.budget, self.min_objects = budget, min_objects

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - 1
        if step % TOKENS_PER_OBJECT == 4:
            return scores + self.classes
        if step % TOKENS_PER_OBJECT:
            return scores + self.coords
        fits = step + TOKENS_PER_OBJECT <= self.budget - 1
        if not fits:
            return scores + self.eos
        return scores + (self.both if step // TOKENS_PER_OBJECT >= self.min_objects else self.coords)


def build_model(
    size: str, vocab: PixtokVocab, device: torch.device, dtype: torch.dtype
) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    with torch.device(device):
        model = T5ForConditionalGeneration(text_config(size, vocab))
    if device.type == "cpu":
        torch.set_num_threads(1)
    return model.to(dtype).eval()


def stock_generate(model, enc, mask, tokens: int, processor: LogitsProcessor | None = None) -> torch.Tensor:
    """Stock greedy ``generate``; forced length when no grammar is given. Returns (B, tokens) ids."""
    kwargs: dict[str, Any] = {"min_new_tokens": tokens} if processor is None else {}
    out = model.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=enc),
        attention_mask=mask,
        max_new_tokens=tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([processor] if processor is not None else []),
        **kwargs,
    )
    return out[:, 1:]


def engine_generate(engine: StaticT5Decoder, rows: DetectionRows, enc, mask) -> torch.Tensor:
    engine.prefill(enc, mask)
    return engine.generate_detection(rows, max_new_tokens=TOKENS, min_objects=OBJECTS).sequences


def step_bytes(engine: StaticT5Decoder, rows: DetectionRows) -> dict[str, float]:
    """Bytes one decode step must read: every per-step decoder weight and the grammar's head rows.

    The cross-attention K/V projections run once per image (prefill) and are not counted; the
    self-attention KV cache is reported apart (the engine reads its whole static length each step).
    """
    per_layer = 0
    for layer in engine.layers:
        for name in ("ln_self", "qkv", "o", "ln_cross", "q_cross", "o_cross", "ln_ff", "wi", "wo"):
            t = getattr(layer, name)
            per_layer += t.numel() * t.element_size()
    item = engine.lm_head.element_size()
    head_rows = sum(len(rows.allowed(p)) for p in range(TOKENS_PER_OBJECT)) / TOKENS_PER_OBJECT
    head = head_rows * engine.d_model * item
    full_head = engine.lm_head.numel() * item
    kv = engine.kv_cache[:, :, :1].numel() * engine.kv_cache.element_size()
    mean_kv_needed = kv * (TOKENS / 2) / engine.max_length
    return {
        "weights": per_layer + engine.final_ln.numel() * item + head,
        "weights_full_head": per_layer + full_head,
        "kv_cache_read_static": kv,
        "kv_cache_needed_mean": mean_kv_needed,
    }


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Fraction of equal tokens and the first index where they differ (-1: identical)."""
    n = min(a.shape[-1], b.shape[-1])
    eq = (a[..., :n] == b[..., :n]).reshape(-1)
    first = int((~eq).nonzero()[0]) if not bool(eq.all()) else -1
    return float(eq.float().mean()), first


def teacher_forced_rel_err(model, engine: StaticT5Decoder, enc, mask, seq: torch.Tensor) -> float:
    """‖engine − stock‖ / ‖stock‖ of full-vocabulary logits along ``seq`` (fed to both)."""
    inputs = torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], dim=1)
    with torch.no_grad():
        ref = model(encoder_outputs=(enc,), attention_mask=mask, decoder_input_ids=inputs).logits.float()
    engine.prefill(enc, mask)
    step = engine.step_fn()
    got = torch.stack([step(inputs[:, t : t + 1])[0] for t in range(inputs.shape[1])], dim=1)
    return float((got - ref).norm() / ref.norm())


def run_gpu(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dry = device.type != "cuda"  # --device cpu: the same code path on tiny sizes, for checking the script
    timer = time_cpu_ms if dry else time_cuda_ms
    torch.backends.cuda.matmul.allow_tf32 = False
    started = time.time()
    vocab = detection_vocab()
    rows = DetectionRows.from_vocab(vocab)
    out_path = Path(args.out) / "decode.json"
    device_name = device_description(device)
    bandwidth = 10.0 if dry else copy_bandwidth_gb_s(device)
    metrics: dict[str, Any] = {"copy_bandwidth_gb_s": round(bandwidth, 1), "tokens": TOKENS, "batch": 1}
    print(f"[decode] {device_name}; copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    table = []
    g = torch.Generator(device="cpu").manual_seed(1)
    for size in args.sizes.split(","):
        model = build_model(size, vocab, device, torch.bfloat16)
        d = model.config.d_model
        enc = torch.randn(1, ENCODER_LENGTH, d, generator=g).to(device, torch.bfloat16)
        mask = torch.ones(1, ENCODER_LENGTH, dtype=torch.long, device=device)
        grammar = DetectionGrammarProcessor(vocab, TOKENS, OBJECTS, device)
        # --- correctness on the GPU ---
        engine = StaticT5Decoder(model, 1, TOKENS, ENCODER_LENGTH, torch.bfloat16, device, kernels="torch")
        fast = engine_generate(engine, rows, enc, mask)
        with torch.no_grad():
            ref = stock_generate(model, enc, mask, TOKENS, grammar)
        frac, first = agreement(fast, ref)
        metrics[f"{size}_bf16_greedy_token_agreement"] = round(frac, 4)
        metrics[f"{size}_bf16_first_divergence"] = first
        metrics[f"{size}_bf16_teacher_forced_logits_rel_err"] = teacher_forced_rel_err(
            model, engine, enc, mask, fast
        )
        print(f"[decode] {size} bf16: greedy agreement {frac:.4f} (first divergence {first}), "
              f"teacher-forced logits rel err {metrics[f'{size}_bf16_teacher_forced_logits_rel_err']:.2e}", flush=True)  # fmt: skip
        if size in ("base", "tiny"):
            model32 = copy.deepcopy(model).float()
            engine32 = StaticT5Decoder(
                model32, 1, TOKENS, ENCODER_LENGTH, torch.float32, device, kernels="torch"
            )
            enc32 = enc.float()
            fast32 = engine_generate(engine32, rows, enc32, mask)
            with torch.no_grad():
                ref32 = stock_generate(model32, enc32, mask, TOKENS, grammar)
            frac32, first32 = agreement(fast32, ref32)
            metrics[f"{size}_fp32_greedy_token_agreement"] = round(frac32, 4)
            metrics[f"{size}_fp32_first_divergence"] = first32
            err32 = teacher_forced_rel_err(model32, engine32, enc32, mask, fast32)
            metrics[f"{size}_fp32_teacher_forced_logits_rel_err"] = err32
            print(f"[decode] {size} fp32: greedy agreement {frac32:.4f} (first divergence {first32}), "
                  f"logits rel err {err32:.2e}", flush=True)  # fmt: skip
            if not dry:
                try:
                    tri32 = StaticT5Decoder(
                        model32, 1, TOKENS, ENCODER_LENGTH, torch.float32, device, kernels="triton"
                    )
                    fast_tri = engine_generate(tri32, rows, enc32, mask)
                    frac_t, first_t = agreement(fast_tri, ref32)
                    metrics[f"{size}_fp32_triton_greedy_token_agreement"] = round(frac_t, 4)
                    metrics[f"{size}_fp32_triton_first_divergence"] = first_t
                    err_t = teacher_forced_rel_err(model32, tri32, enc32, mask, fast_tri)
                    metrics[f"{size}_fp32_triton_teacher_forced_logits_rel_err"] = err_t
                    print(f"[decode] {size} fp32 triton: greedy agreement {frac_t:.4f} (first divergence "
                          f"{first_t}), logits rel err {err_t:.2e}", flush=True)  # fmt: skip
                    del tri32
                except Exception as exc:
                    print(f"[decode] {size} fp32 triton check FAILED: {exc!r}"[:600], flush=True)
            del model32, engine32
        # --- bound ---
        nbytes = step_bytes(engine, rows)
        bound_ms = nbytes["weights"] / (bandwidth * 1e9) * 1e3
        metrics[f"{size}_step_weight_mb"] = round(nbytes["weights"] / 1e6, 1)
        metrics[f"{size}_bound_ms_per_token"] = round(bound_ms, 4)
        metrics[f"{size}_bound_full_head_ms_per_token"] = round(
            nbytes["weights_full_head"] / (bandwidth * 1e9) * 1e3, 4
        )
        metrics[f"{size}_kv_cache_read_static_mb"] = round(nbytes["kv_cache_read_static"] / 1e6, 1)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
        # --- timing: stock ---
        with torch.no_grad():
            stock_generate(model, enc, mask, 16)  # warm-up
            stock_ms = timer(
                lambda m=model, x=enc, a=mask: stock_generate(m, x, a, TOKENS),
                warmup=0,
                repeats=args.stock_repeats,
            )
        stock = median(stock_ms) / TOKENS
        metrics[f"stock_{size}_ms_per_token"] = round(stock, 4)
        metrics[f"stock_{size}_spread"] = round(spread(stock_ms), 3)
        table.append((size, "stock generate (dynamic cache)", stock, stock / stock))
        print(f"[decode] {size} stock generate: {stock:.3f} ms/token", flush=True)
        # --- timing: engine variants ---
        best = float("inf")
        for name, kwargs in [
            ("engine triton + PDL + CUDA graph", dict(kernels="triton")),
            ("engine triton no PDL + CUDA graph", dict(kernels="triton", pdl=False)),
            ("engine sdpa + CUDA graph", dict(kernels="torch", attention="sdpa")),
            ("engine bmm + CUDA graph", dict(kernels="torch", attention="bmm")),
            (
                "engine sdpa compiled + CUDA graph",
                dict(kernels="torch", attention="sdpa", compile_layers=True),
            ),
            ("engine sdpa eager (no graph)", dict(kernels="torch", attention="sdpa", use_cuda_graph=False)),
        ]:
            if (dry and "triton" in name) or not any(v in name for v in args.variants.split(",")):
                continue
            if "compiled" in name and (
                not args.with_compile or time.time() - started > args.compile_deadline_s
            ):
                print(
                    f"[decode] {size} {name}: skipped (no --with-compile, or past --compile-deadline-s)",
                    flush=True,
                )
                continue
            if dry and "graph" in name and "no graph" not in name:
                kwargs = {**kwargs, "use_cuda_graph": False}
            eager = "eager" in name
            try:
                engine = StaticT5Decoder(model, 1, TOKENS, ENCODER_LENGTH, torch.bfloat16, device, **kwargs)
                times = timer(lambda e=engine, x=enc, a=mask: engine_generate(e, rows, x, a),
                                     warmup=1 if eager else 2, repeats=2 if eager else args.repeats)  # fmt: skip
            except Exception as exc:  # one failing variant must not cost the run
                print(f"[decode] {size} {name} FAILED: {exc!r}", flush=True)
                metrics[f"{size}_{name.replace(' ', '_')}_error"] = repr(exc)[:300]
                continue
            ms = median(times) / TOKENS
            key = name.replace(" + ", "_").replace(" ", "_").replace("(", "").replace(")", "")
            metrics[f"{size}_{key}_ms_per_token"] = round(ms, 4)
            metrics[f"{size}_{key}_spread"] = round(spread(times), 3)
            if not eager:
                best = min(best, ms)
            if name.startswith(
                "engine triton + PDL"
            ):  # the fused kernels against stock, bf16, teacher-forced
                err = teacher_forced_rel_err(
                    model, engine, enc, mask, engine_generate(engine, rows, enc, mask)
                )
                metrics[f"{size}_bf16_triton_teacher_forced_logits_rel_err"] = err
                print(f"[decode] {size} triton bf16 teacher-forced logits rel err {err:.2e}", flush=True)
            table.append((size, name, ms, stock / ms))
            print(f"[decode] {size} {name}: {ms:.4f} ms/token ({stock / ms:.1f}x stock)", flush=True)
            if size in ("base", "tiny") and name.startswith("engine sdpa + CUDA"):
                table.append(plain_loop(size, engine, vocab, enc, mask, stock, metrics, timer))
            del engine
            gc.collect()
            torch.cuda.empty_cache()
        metrics[f"{size}_ms_per_token"] = round(best, 4)
        metrics[f"{size}_speedup_vs_stock"] = round(stock / best, 1)
        metrics[f"{size}_pct_of_bound"] = round(100 * bound_ms / best, 1)
        table.append((size, "hardware bound (weights+head rows / copy bw)", bound_ms, stock / bound_ms))
        del model
        gc.collect()
        torch.cuda.empty_cache()
        metrics["elapsed_s"] = round(time.time() - started, 1)
        write_result(out_path, "decode", device_name, command_line(), metrics)
    print_table(table, metrics)


def plain_loop(size: str, engine, vocab, enc, mask, stock: float, metrics: dict[str, Any], timer) -> tuple:
    """decoding.decode over the engine's graph-captured step_fn: full-vocabulary logits, Python loop."""
    from pixtok.model.decoding import GenerationOptions, decode, grammar_for

    grammar = grammar_for("detection", vocab)
    options = GenerationOptions(
        max_new_tokens=TOKENS, do_sample=False, min_objects=OBJECTS, max_objects=OBJECTS
    )

    def run() -> None:
        engine.prefill(enc, mask)
        decode(engine.step_fn(), grammar, 1, options, enc.device)

    try:
        ms = median(timer(run, warmup=1, repeats=2)) / TOKENS
    except Exception as exc:
        print(f"[decode] plain loop FAILED: {exc!r}", flush=True)
        return (size, "decoding.decode over step_fn FAILED", float("nan"), float("nan"))
    metrics[f"{size}_plain_loop_step_fn_graph_ms_per_token"] = round(ms, 4)
    print(f"[decode] {size} decoding.decode over step_fn (graph): {ms:.4f} ms/token", flush=True)
    return (size, "decoding.decode over engine.step_fn (graph, full vocab)", ms, stock / ms)


def print_table(table: list[tuple], metrics: dict[str, Any]) -> None:
    print("\n| size | path | ms/token | x stock |\n| --- | --- | --- | --- |")
    for size, name, ms, ratio in table:
        print(f"| {size} | {name} | {ms:.4f} | {ratio:.1f} |")
    keys = [k for k in metrics if "agreement" in k or "divergence" in k or "rel_err" in k or "pct" in k]
    print("\n" + "\n".join(f"{k}: {metrics[k]}" for k in keys))


def run_cpu(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    vocab = detection_vocab()
    rows = DetectionRows.from_vocab(vocab)
    model = build_model("tiny", vocab, device, torch.float32)
    enc = torch.randn(1, ENCODER_LENGTH, model.config.d_model)
    mask = torch.ones(1, ENCODER_LENGTH, dtype=torch.long)
    engine = StaticT5Decoder(model, 1, TOKENS, ENCODER_LENGTH, torch.float32, device)
    with torch.no_grad():
        fast = engine_generate(engine, rows, enc, mask)
        ref = stock_generate(
            model, enc, mask, TOKENS, DetectionGrammarProcessor(vocab, TOKENS, OBJECTS, device)
        )
        frac, first = agreement(fast, ref)
        stock_ms = time_cpu_ms(
            lambda: stock_generate(model, enc, mask, TOKENS), warmup=1, repeats=args.stock_repeats
        )
        fast_ms = time_cpu_ms(
            lambda: engine_generate(engine, rows, enc, mask), warmup=1, repeats=args.repeats
        )
    stock, ms = median(stock_ms) / TOKENS, median(fast_ms) / TOKENS
    metrics = {
        "cpu_tiny_ms_per_token": round(ms, 4),
        "cpu_stock_tiny_ms_per_token": round(stock, 4),
        "cpu_tiny_speedup_vs_stock": round(stock / ms, 1),
        "cpu_tiny_fp32_greedy_token_agreement": round(frac, 4),
        "cpu_tiny_first_divergence": first,
        "cpu_threads": args.threads,
    }
    print(f"[decode] CPU tiny ({args.threads} thread): engine {ms:.3f} ms/token, stock {stock:.3f} ms/token "
          f"({stock / ms:.1f}x); greedy agreement {frac:.4f}")  # fmt: skip
    out_path = Path(args.out) / "decode.json"
    gpu_run = json.loads(out_path.read_text()) if out_path.exists() else {}  # keep the GPU run's header
    record = write_result(
        out_path,
        "decode",
        gpu_run.get("device", device_description(device)),
        gpu_run.get("command", command_line()),
        metrics,
        cpu_device=device_description(device),
        cpu_command=command_line(),
    )
    print(f"[decode] wrote {out_path} ({len(record['metrics'])} metrics)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu", action="store_true", help="the tiny model on the CPU instead of the GPU sizes"
    )
    parser.add_argument("--sizes", default="base,xl", help="comma-separated GPU sizes (base, xl)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for decode.json")
    parser.add_argument("--repeats", type=int, default=10, help="timed engine runs (median reported)")
    parser.add_argument("--stock-repeats", type=int, default=3, help="timed stock generate runs")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (--cpu)")
    parser.add_argument(
        "--variants",
        default="triton,sdpa,bmm,compiled",
        help="engine variants to time (substrings of their names)",
    )
    parser.add_argument("--with-compile", action="store_true", help="also time the torch.compile variant")
    parser.add_argument(
        "--compile-deadline-s", type=float, default=150.0, help="no compiled variant after this"
    )
    parser.add_argument(
        "--device", default="cuda", help="cuda; 'cpu' dry-runs the GPU code path (--sizes tiny)"
    )
    args = parser.parse_args()
    run_cpu(args) if args.cpu else run_gpu(args)


if __name__ == "__main__":
    main()
