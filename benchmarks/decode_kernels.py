"""Where the decode engine's step time goes, and which launch shapes of its Triton kernels are fastest.

Three parts, each on the ``base`` (T5-base) and ``xl`` (Flan-T5-XL) decoder shapes, bf16, batch 1:

1. **Profile**: one object (5 steps) of the Triton engine run eagerly under ``torch.profiler``:
   device time per token by kernel, against the CUDA-graph time per token (the difference is the
   launch gaps a graph still has).
2. **Sweeps**: every matrix-vector product shape of a step (and the grammar head), timed as a
   CUDA graph of 32 back-to-back launches over rotating weight copies (more bytes than the L2
   holds), for block shapes x warps, without and with programmatic dependent launch (PDL); the
   one-query attention kernel the same way (self-attention at 250 and 500 cached keys, cross-
   attention over 64). Prints GB/s per launch and the best config per shape.
3. **Engine**: ms/token of ``generate_detection`` (100 objects forced) for the Triton engine with
   the old per-step tail, the fused tail, + PDL, + the sweep's best configs; greedy-token
   agreement of the fused + PDL path with the torch-op path in fp32 (base).

    PYTHONPATH=src python3 benchmarks/decode_kernels.py [--sizes base,xl] [--out DIR]

Writes ``DIR/decode_kernels.json`` (the chosen configs and every figure) when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from decode import ENCODER_LENGTH, OBJECTS, TOKENS, build_model, detection_vocab
from pixtok.model import decode_engine as de
from pixtok.model.decode_engine import DetectionRows, StaticT5Decoder
from timing import copy_bandwidth_gb_s, device_description, kernel_times

CHAIN = 32  # launches per captured graph


def graph_us_per_launch(launch, rotations: int, repeats: int = 10) -> float:
    """Capture CHAIN launches (launch(i) uses weight copy i % rotations) and time the replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(CHAIN):
            launch(i % rotations)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CHAIN):
            launch(i % rotations)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CHAIN)
    del graph
    return statistics.median(times)


def gemv_configs(k_in: int) -> list[tuple[int, int, int]]:
    out = []
    for bn, bk in itertools.product((1, 2, 4, 8, 16), (128, 256, 512, 1024, 2048)):
        if not 512 <= bn * bk <= 8192 or bk > 2 * de.triton.next_power_of_2(k_in):
            continue
        for warps in (2, 4) if bn * bk <= 2048 else (4, 8):
            out.append((bn, bk, warps))
    return out


def gemv_shapes(size: str) -> dict[str, dict]:
    """name -> (n_out, k_in, norm, act, gated, residual, out fp32) of one step's products."""
    if size == "base":
        d, ff, inner, act, gated = 768, 3072, 768, 1, False
    else:
        d, ff, inner, act, gated = 2048, 5120, 2048, 2, True
    return {
        "qkv": dict(n=3 * inner, k=d, norm=True),
        "o": dict(n=d, k=inner, residual=True),
        "q_cross": dict(n=inner, k=d, norm=True),
        "wi": dict(n=ff, k=d, norm=True, act=act, gated=gated),
        "wo": dict(n=d, k=ff, residual=True),
        "head_coords": dict(n=1001, k=d, norm=True, fp32=True),
        "head_classes": dict(n=80, k=d, norm=True, fp32=True),
    }


def sweep_gemv(size: str, budget_s: float, log: dict) -> dict[tuple[int, int, bool], tuple[int, int, int]]:
    best: dict[tuple[int, int, bool], tuple[int, int, int]] = {}
    started = time.time()
    for name, shape in gemv_shapes(size).items():
        n, k, gated = shape["n"], shape["k"], shape.get("gated", False)
        rows = 2 * n if gated else n
        nbytes = rows * k * 2
        rotations = max(2, min(64, (200 << 20) // nbytes))
        weights = [
            torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(rotations)
        ]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        res = torch.randn(1, n, device="cuda", dtype=torch.bfloat16) if shape.get("residual") else None
        results = []
        for pdl in (False, True):
            configs = gemv_configs(k) if not pdl else [c for _, c in sorted(results)[:4]]
            for config in configs:
                if time.time() - started > budget_s:
                    break
                de.GEMV_CONFIGS[(n, k, gated)] = config

                def launch(i, pdl=pdl, x=x, weights=weights, shape=shape, gated=gated, res=res):
                    de._triton_gemv(
                        x, weights[i], norm_eps=1e-6 if shape.get("norm") else None, act=shape.get("act", 0),
                        gated=gated, residual=res, pdl=pdl, out_dtype=torch.float32 if shape.get("fp32") else None,
                    )  # fmt: skip

                try:
                    us = graph_us_per_launch(launch, rotations)
                except Exception as exc:  # a config that does not compile or launch: say so, go on
                    print(f"  {size} {name} {config} pdl={pdl}: FAILED {exc!r}"[:300], flush=True)
                    continue
                if not pdl:
                    results.append((us, config))
                log.setdefault(f"{size}_{name}", []).append(
                    {
                        "config": list(config),
                        "pdl": pdl,
                        "us": round(us, 2),
                        "gb_s": round(nbytes / us / 1e3, 1),
                    }
                )
        de.GEMV_CONFIGS.pop((n, k, gated), None)
        entries = log.get(f"{size}_{name}", [])
        if not entries:
            continue
        default = de._gemv_config(n, k, gated)
        for pdl in (False, True):
            subset = [e for e in entries if e["pdl"] == pdl]
            if subset:
                top = min(subset, key=lambda e: e["us"])
                ref = [e for e in subset if tuple(e["config"]) == default]
                ref_txt = f"; default {default}: {ref[0]['us']:.2f} us" if ref else ""
                print(f"[kernels] {size} {name} ({n}x{k}{' gated' if gated else ''}, {nbytes / 1e6:.2f} MB) "
                      f"pdl={pdl}: best {tuple(top['config'])} {top['us']:.2f} us = {top['gb_s']:.0f} GB/s{ref_txt}",
                      flush=True)  # fmt: skip
        pdl_entries = [e for e in entries if e["pdl"]] or entries
        best[(n, k, gated)] = tuple(min(pdl_entries, key=lambda e: e["us"])["config"])
        del weights
    return best


def sweep_attention(size: str, log: dict) -> dict[str, tuple[int, int]]:
    heads = 12 if size == "base" else 32
    d, length, enc = 64, 560, 64
    layers = 24
    caches = torch.randn(layers, 2, 1, heads, length, d, device="cuda", dtype=torch.bfloat16)
    cross = torch.randn(layers, 2, 1, heads, enc, d, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(length, heads, length, device="cuda", dtype=torch.bfloat16)
    cross_mask = torch.zeros(1, 1, 1, enc, device="cuda", dtype=torch.bfloat16)
    qkv = torch.randn(1, 3 * heads * d, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(1, heads * d, device="cuda", dtype=torch.bfloat16)
    best: dict[str, tuple[int, int]] = {}
    for kind, position in (("self", 250), ("self", 500), ("cross", 0)):
        pos = torch.tensor([position], device="cuda")
        rows = []
        for block, warps, pdl in itertools.product((32, 64, 128, 256), (2, 4, 8), (False, True)):

            def launch(i, block=block, warps=warps, pdl=pdl, kind=kind, pos=pos):
                if kind == "self":
                    de._decode_attention_kernel[(heads,)](
                        qkv, 3 * heads * d, qkv[:, heads * d:], caches[i, 0], caches[i, 1], heads * length * d,
                        length * d, bias, 0, length, heads * length, pos, out, length, heads,
                        SELF=True, HEAD_DIM=d, BLOCK_T=block, PDL=pdl, num_warps=warps, launch_pdl=pdl,
                    )  # fmt: skip
                else:
                    de._decode_attention_kernel[(heads,)](
                        qkv, heads * d, qkv, cross[i, 0], cross[i, 1], heads * enc * d, enc * d,
                        cross_mask, enc, 0, 0, pos, out, enc, heads,
                        SELF=False, HEAD_DIM=d, BLOCK_T=block, PDL=pdl, num_warps=warps, launch_pdl=pdl,
                    )  # fmt: skip

            try:
                us = graph_us_per_launch(launch, layers)
            except Exception as exc:
                print(f"  attention {kind} {block},{warps} pdl={pdl}: FAILED {exc!r}"[:300], flush=True)
                continue
            rows.append({"block": block, "warps": warps, "pdl": pdl, "us": round(us, 2)})
        log[f"{size}_attention_{kind}_{position}"] = rows
        default = de.ATTENTION_CONFIGS[kind]
        for pdl in (False, True):
            subset = [r for r in rows if r["pdl"] == pdl]
            top = min(subset, key=lambda r: r["us"])
            ref = [r["us"] for r in subset if (r["block"], r["warps"]) == default]
            print(f"[kernels] {size} attention {kind} keys={position or enc} pdl={pdl}: best "
                  f"({top['block']}, {top['warps']}) {top['us']:.2f} us; default {default}: {ref[0] if ref else '-'} us",
                  flush=True)  # fmt: skip
    for kind in ("self", "cross"):
        # one config per kind: the lowest summed time over its measured key counts, with PDL
        totals: dict[tuple[int, int], float] = {}
        for key, rows in log.items():
            if key.startswith(f"{size}_attention_{kind}_"):
                for r in rows:
                    if r["pdl"]:
                        totals[(r["block"], r["warps"])] = totals.get((r["block"], r["warps"]), 0.0) + r["us"]
        best[kind] = min(totals, key=totals.get)
    return best


def profile_step(engine: StaticT5Decoder, rows: DetectionRows, fused: bool) -> list[tuple[str, float, float]]:
    """(kernel, us per token, launches per token) over 4 objects run eagerly."""
    engine.use_cuda_graph = False
    engine.generate_detection(rows, max_new_tokens=21)  # warm-up, compiles the kernels
    engine._fused_tail = fused
    tokens = 20
    table = kernel_times(lambda: engine.generate_detection(rows, max_new_tokens=21, min_objects=4))
    engine.use_cuda_graph = True
    return [(name, ms * 1e3 / tokens, count / tokens) for name, ms, count in table]


def engine_ms_per_token(engine: StaticT5Decoder, rows: DetectionRows, repeats: int = 5) -> float:
    engine.generate_detection(rows, max_new_tokens=TOKENS, min_objects=OBJECTS)  # capture + warm-up
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        engine.generate_detection(rows, max_new_tokens=TOKENS, min_objects=OBJECTS)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / TOKENS)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="base,xl")
    parser.add_argument("--sweep-budget-s", type=float, default=150.0, help="per size, for the GEMV sweep")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda")
    started = time.time()
    bandwidth = copy_bandwidth_gb_s(device)
    print(
        f"[kernels] {device_description(device)}; copy {bandwidth:.0f} GB/s; PDL {de.pdl_supported(device)}"
    )
    vocab = detection_vocab()
    rows = DetectionRows.from_vocab(vocab)
    log: dict = {"device": device_description(device), "copy_gb_s": bandwidth}
    g = torch.Generator().manual_seed(1)
    for size in args.sizes.split(","):
        model = build_model(size, vocab, device, torch.bfloat16)
        enc = torch.randn(1, ENCODER_LENGTH, model.config.d_model, generator=g).to(device, torch.bfloat16)
        mask = torch.ones(1, ENCODER_LENGTH, dtype=torch.long, device=device)
        # 1. profile (old tail and fused tail, no PDL: the profiler shows kernels one by one)
        engine = StaticT5Decoder(
            model, 1, TOKENS, ENCODER_LENGTH, torch.bfloat16, device, kernels="triton", pdl=False
        )
        engine.prefill(enc, mask)
        for fused in (False, True):
            table = profile_step(engine, rows, fused)
            total = sum(r[1] for r in table)
            launches = sum(r[2] for r in table)
            print(f"[kernels] {size} profile ({'fused' if fused else 'old'} tail, eager): {total:.1f} us of kernels "
                  f"per token in {launches:.0f} launches", flush=True)  # fmt: skip
            for name, us, count in table[:14]:
                print(f"    {us:8.1f} us {count:6.1f}x  {name}")
            log[f"{size}_profile_{'fused' if fused else 'old'}"] = [list(r) for r in table[:30]]
        # 2. sweeps
        best_gemv = sweep_gemv(size, args.sweep_budget_s, log)
        best_attn = sweep_attention(size, log)
        log[f"{size}_best_gemv"] = {
            f"{n}x{k}{'g' if gt else ''}": list(c) for (n, k, gt), c in best_gemv.items()
        }
        log[f"{size}_best_attention"] = {k: list(v) for k, v in best_attn.items()}
        print(f"[kernels] {size} best: gemv {log[f'{size}_best_gemv']} attention {best_attn}", flush=True)
        # 3. engine variants
        variants = [
            ("old tail", dict(pdl=False), False, False),
            ("fused tail", dict(pdl=False), True, False),
            ("fused tail + PDL", dict(pdl=True), True, False),
            ("fused tail + PDL + swept configs", dict(pdl=True), True, True),
        ]
        saved_attn = dict(de.ATTENTION_CONFIGS)
        for name, kwargs, fused, tuned in variants:
            de.GEMV_CONFIGS.clear()
            de.ATTENTION_CONFIGS.update(saved_attn)
            if tuned:
                de.GEMV_CONFIGS.update(best_gemv)
                de.ATTENTION_CONFIGS.update(best_attn)
            try:
                engine = StaticT5Decoder(
                    model, 1, TOKENS, ENCODER_LENGTH, torch.bfloat16, device, kernels="triton", **kwargs
                )
                engine._fused_tail = fused
                engine.prefill(enc, mask)
                ms = engine_ms_per_token(engine, rows)
            except Exception as exc:
                print(f"[kernels] {size} engine {name}: FAILED {exc!r}"[:600], flush=True)
                continue
            log[f"{size}_engine_{name.replace(' ', '_').replace('+', 'and')}_ms_per_token"] = round(ms, 4)
            print(f"[kernels] {size} engine {name}: {ms:.4f} ms/token", flush=True)
            del engine
        if size == "base":  # fp32 greedy agreement: fused + PDL + tuned against torch ops
            model32 = model.float()
            enc32 = enc.float()
            seqs = []
            for kwargs in (dict(kernels="torch"), dict(kernels="triton", pdl=de.pdl_supported(device))):
                engine = StaticT5Decoder(model32, 1, TOKENS, ENCODER_LENGTH, torch.float32, device, **kwargs)
                engine.prefill(enc32, mask)
                seqs.append(
                    engine.generate_detection(rows, max_new_tokens=TOKENS, min_objects=OBJECTS).sequences
                )
                del engine
            agree = (seqs[0] == seqs[1]).float().mean().item()
            log["base_fp32_fused_pdl_tuned_token_agreement"] = agree
            print(
                f"[kernels] base fp32: fused+PDL+tuned triton vs torch ops greedy agreement {agree:.4f}",
                flush=True,
            )
        de.GEMV_CONFIGS.clear()
        de.ATTENTION_CONFIGS.update(saved_attn)
        del model
        torch.cuda.empty_cache()
        print(f"[kernels] {size} done at {time.time() - started:.0f} s", flush=True)
        if args.out:  # after each size: a run cut short keeps what it measured
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "decode_kernels.json").write_text(json.dumps(log, indent=1, default=str))


if __name__ == "__main__":
    main()
