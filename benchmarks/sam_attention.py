"""SAM ViT-B's global attention with its decomposed relative-position terms: which kernel, which form.

``SamRelPosAttention`` folds the terms into one fused attention call: the query gets the per-row and
per-column terms as extra columns, each key a one-hot of its row and column. At SAM-B's global
layers (64 x 64 tokens, head dim 64) that makes the query/key width 64 + 64 + 64 = 192; zero-padded
to the same width so that every fused kernel accepts it, the value would be 192 wide as well: three
times the attention FLOPs of the 64-wide attention the model defines. This benchmark times, on one
global layer's shapes, forward and forward + backward:

- ``padded_v``: the value padded to the query's width (the module before the seventeenth session,
  ``narrow_value=False``), under each SDPA backend;
- ``narrow_v``: the same query/key, the value left 64 wide (the module's default since; kernels that
  accept a value width other than the query's: cuDNN's and the memory-efficient one);
- ``plain``: attention without the terms (the bound the terms' form is measured against).

Each time includes building the terms and the widened tensors (``pixtok.model.sam.fused_rel_pos_attention``,
the module's own). Ratios are against ``padded_v``
under the backend PyTorch picks by default, in the same run; TFLOP/s counts the model's own
attention (``4 B heads N^2 d``, d = 64), so the wider forms' extra work does not count.

    PYTHONPATH=src python3 benchmarks/sam_attention.py [--batch 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pixtok.model.sam import fused_rel_pos_attention
from timing import RESULTS_DIR, command_line, device_description, median, spread, time_cuda_ms, write_result

BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def variant(form: str, side: int, scale: float) -> Callable:
    def run(q, k, v, rel_h, rel_w):
        if form == "plain":
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        return fused_rel_pos_attention(q, k, v, rel_h, rel_w, side, side, scale, form == "narrow_v")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=64, help="tokens per side of the global grid")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS_DIR / "sam_attention.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    b, heads, side, d = args.batch, args.heads, args.side, args.head_dim
    n = side * side
    scale = d**-0.5
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=gen)

    q, k, v = rand(b, heads, n, d), rand(b, heads, n, d), rand(b, heads, n, d)
    rel_h, rel_w = rand(side, side, d) * 0.1, rand(side, side, d) * 0.1
    flop = 4 * b * heads * n * n * d  # the model's attention: QK^T and PV at head dim d
    metrics: dict[str, float | str] = {"batch": b, "heads": heads, "tokens": n, "head_dim": d}
    reference = variant("padded_v", side, scale)(q, k, v, rel_h, rel_w).float()

    def measure(fn: Callable) -> tuple[torch.Tensor, list[float], list[float]]:
        with torch.no_grad():
            out = fn(q, k, v, rel_h, rel_w)
            fwd = time_cuda_ms(lambda: fn(q, k, v, rel_h, rel_w), 3, args.repeats)
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        grad = torch.randn_like(out)
        both = time_cuda_ms(lambda: fn(qg, kg, vg, rel_h, rel_w).backward(grad), 3, args.repeats)
        return out, fwd, both

    for form in ("padded_v", "narrow_v", "plain"):
        for backend_name, backend in BACKENDS.items():
            key = f"{form}_{backend_name}"
            try:
                with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                    out, fwd, both = measure(variant(form, side, scale))
            except Exception as exc:  # a backend that refuses these shapes
                print(f"[sam_attention] {key:22s} refused: {str(exc).splitlines()[0][:150]}", flush=True)
                metrics[f"{key}_error"] = str(exc).splitlines()[0][:200]
                continue
            if form != "plain":
                metrics[f"{key}_rel_err"] = float((out.float() - reference).norm() / reference.norm())
            metrics[f"{key}_fwd_ms"] = round(median(fwd), 4)
            metrics[f"{key}_fwd_bwd_ms"] = round(median(both), 4)
            metrics[f"{key}_fwd_tflops"] = round(flop / median(fwd) / 1e9, 1)
            print(
                f"[sam_attention] {key:22s} fwd {median(fwd):7.3f} ms ({flop / median(fwd) / 1e9:5.0f} TFLOP/s,"
                f" spread {spread(fwd):.3f})  fwd+bwd {median(both):7.3f} ms",
                flush=True,
            )
    base = metrics.get("padded_v_default_fwd_ms")
    if base:
        for key in list(metrics):
            if key.endswith("_fwd_ms") and key != "padded_v_default_fwd_ms":
                metrics[key.replace("_fwd_ms", "_fwd_speedup")] = round(base / metrics[key], 3)
        best = min(
            (key for key in metrics if key.startswith("narrow_v") and key.endswith("_fwd_ms")),
            key=lambda key: metrics[key],
            default=None,
        )
        if best:
            print(
                f"[sam_attention] best narrow-value form {best}: {metrics[best.replace('_fwd_ms', '_fwd_speedup')]}x",
                flush=True,
            )
    write_result(Path(args.out), "sam_attention", device_description(device), command_line(), metrics)


if __name__ == "__main__":
    main()
