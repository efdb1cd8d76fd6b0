"""Vision-tower throughput: SAM ViT-B at 1024² (batch 8) and EVA02-L/14 at 448² (batch 16), bf16.

Baselines are the stock modules — transformers' ``SamVisionModel`` with SDPA attention and timm's
``eva02_large_patch14_448`` — in bf16, eager. "Ours" are pixtok's towers (``model/sam.py``'s
``SamImageEncoder``, ``model/eva02.py``'s ``Eva02Encoder``), eager and under ``torch.compile``;
for EVA02 also with the q/k/v projections fused into one matrix (``qkv_fused=True``), and that fused
tower with its SwiGLU hidden width zero-padded from 2730 to 2736 (``pad_mlp_hidden``: aligned bf16
GEMMs, same output) under ``torch.compile``; for SAM also, compiled, transformers' attention with its
bias tensor and the fused attention with the value zero-padded to the query's width (the form before
``narrow_value``, the default since the seventeenth session); for both, compiled, the patch embedding
as cuDNN's convolution (``*_conv_patch_compile``, the form before ``PatchConv2d``). Random
weights and inputs, ``torch.inference_mode``; CUDA events after warm-up, median of repeats.

FLOPs per image are counted analytically from the configs (matrix products and attention, with
SAM's window padding) and cross-checked against ``torch.utils.flop_counter``; MFU is achieved
FLOP/s over the H100 SXM dense-bf16 datasheet rate (989 TFLOP/s) and over the bf16 matmul rate
measured in the same run.

    PYTHONPATH=src python3 benchmarks/towers.py [--out DIR] [--no-compile]
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from timing import (
    RESULTS_DIR,
    bf16_matmul_tflops,
    command_line,
    device_description,
    kernel_times,
    median,
    spread,
    time_cuda_ms,
    write_result,
)

DATASHEET_BF16_TFLOPS = 989.4  # H100 SXM, dense
SAM_BATCH, EVA_BATCH = 8, 16


def sam_vit_flops(cfg: Any) -> float:
    """FLOPs of one SAM ViT image-encoder forward (patch embed, blocks with window padding, neck)."""
    d, p, s = cfg.hidden_size, cfg.patch_size, cfg.image_size
    g = s // p
    n = g * g
    total = 2 * n * 3 * p * p * d  # patch embedding
    for i in range(cfg.num_hidden_layers):
        if i in cfg.global_attn_indexes or cfg.window_size == 0:
            tokens, groups, size = n, 1, g
        else:
            w = cfg.window_size
            gp = math.ceil(g / w) * w
            tokens, groups, size = gp * gp, (gp // w) ** 2, w
        per_group = tokens // groups
        total += 2 * tokens * 4 * d * d  # qkv + output projection
        total += groups * 4 * per_group * per_group * d  # q k^T and attn v
        total += 2 * tokens * 2 * size * d  # decomposed relative position (q . R_h, q . R_w)
        total += 2 * n * 2 * d * cfg.mlp_dim  # MLP
    c = cfg.output_channels
    total += 2 * n * d * c + 2 * n * 9 * c * c  # neck: 1x1 conv, 3x3 conv
    return float(total)


def eva_flops(eva: nn.Module, image_size: int) -> float:
    """FLOPs of one timm EVA02 ``forward_features`` (patch embed, attention, SwiGLU MLP)."""
    d = eva.embed_dim
    p = eva.patch_embed.patch_size[0]
    patches = (image_size // p) ** 2
    n = patches + eva.num_prefix_tokens
    hidden = eva.blocks[0].mlp.fc2.in_features
    mlp_mats = 3 if hasattr(eva.blocks[0].mlp, "fc1_g") else 2
    per_block = 2 * n * 4 * d * d + 4 * n * n * d + 2 * n * mlp_mats * d * hidden
    return float(2 * patches * 3 * p * p * d + len(eva.blocks) * per_block)


def counted_flops(module: nn.Module, example: torch.Tensor, fn: Callable | None = None) -> float:
    """FLOPs torch's flop counter sees for one forward of ``module`` on ``example`` (batch 1)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        (fn or module)(example)
    return float(counter.get_total_flops())


def throughput(fn: Callable[[], Any], batch: int, warmup: int, repeats: int) -> tuple[float, float, float]:
    """(images/s from the median, spread, seconds of the first call = compile time if any)."""
    start = time.time()
    with torch.inference_mode():
        fn()
        torch.cuda.synchronize()
        first = time.time() - start
        times = time_cuda_ms(fn, warmup=warmup, repeats=repeats)
    return batch / (median(times) * 1e-3), spread(times), first


def top_kernels(fn: Callable[[], Any], k: int = 8) -> list[tuple[str, float]]:
    """The k CUDA kernels with the most total time over one call (name, ms)."""
    with torch.inference_mode():
        return [(name, ms) for name, ms, _ in kernel_times(fn)[:k]]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖got − ref‖ / ‖ref‖ in float32."""
    got, ref = got.float(), ref.float()
    return float((got - ref).norm() / ref.norm())


class FlexRelPosAttention(nn.Module):
    """A global SAM attention layer that adds the decomposed relative-position bias inside
    FlexAttention instead of materializing the (B, heads, N, N) bias tensor that SDPA needs.

    score(q, k) = q·k * scale + rel_h[q, row(k)] + rel_w[q, col(k)]: the same function as
    transformers' ``SamVisionSdpaAttention`` (the bias uses the unscaled query, as there), over the
    wrapped layer's own parameters.
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, None]:
        from torch.nn.attention.flex_attention import flex_attention

        attn = self.attn
        b, h, w, _ = hidden_states.shape
        heads = attn.num_attention_heads
        qkv = attn.qkv(hidden_states).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, d)
        d = q.shape[-1]
        rel_pos_h = attn.get_rel_pos(h, h, attn.rel_pos_h)  # (h, h, d)
        rel_pos_w = attn.get_rel_pos(w, w, attn.rel_pos_w)
        grid_q = q.reshape(b, heads, h, w, d)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_pos_h).reshape(b, heads, h * w, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_pos_w).reshape(b, heads, h * w, w)

        def score_mod(score, bi, hi, qi, ki):
            return score + rel_h[bi, hi, qi, ki // w] + rel_w[bi, hi, qi, ki % w]

        out = flex_attention(q, k, v, score_mod=score_mod, scale=attn.scale)
        out = out.view(b, heads, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return attn.proj(out), None


def fuse_eva_qkv(src: nn.Module, dst: nn.Module) -> None:
    """Copy a timm Eva with separate q/k/v projections into one built with ``qkv_fused=True``."""
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    for i, block in enumerate(dst.blocks):
        prefix = f"blocks.{i}.attn."
        q, k, v = (state.pop(prefix + f"{n}_proj.weight") for n in "qkv")
        state[prefix + "qkv.weight"] = torch.cat([q, k, v], dim=0)
        state[prefix + "q_bias"] = state.pop(prefix + "q_proj.bias")
        state[prefix + "v_bias"] = state.pop(prefix + "v_proj.bias")
        block.attn.k_bias.zero_()
    missing, unexpected = dst.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.startswith("head")]:
        raise RuntimeError(f"EVA qkv fusion: missing {missing}, unexpected {unexpected}")


def run(args: argparse.Namespace) -> None:
    device = torch.device("cuda")
    deadline = time.time() + args.budget_s
    out_path = Path(args.out) / "towers.json"
    device_name = device_description(device)
    matmul = bf16_matmul_tflops(device)
    metrics: dict[str, Any] = {
        "bf16_matmul_tflops_measured": round(matmul, 1),
        "datasheet_bf16_tflops": DATASHEET_BF16_TFLOPS,
    }
    print(f"[towers] {device_name}; bf16 matmul {matmul:.0f} TFLOP/s", flush=True)
    table: list[tuple[str, str, float, float]] = []

    def record(
        tower: str, name: str, fn: Callable[[], Any], batch: int, flops: float, compiled: bool
    ) -> float:
        if compiled and (args.no_compile or time.time() > deadline):
            print(f"[towers] {tower} {name}: skipped (no compile / time budget)", flush=True)
            return 0.0
        try:
            ips, spr, first = throughput(fn, batch, warmup=3, repeats=args.repeats)
        except Exception as exc:  # one failing variant must not cost the run
            print(f"[towers] {tower} {name} FAILED: {exc!r}"[:600], flush=True)
            metrics[f"{tower}_{name}_error"] = repr(exc)[:300]
            return 0.0
        mfu = ips * flops / (DATASHEET_BF16_TFLOPS * 1e12)
        key = f"{tower}_{name}"
        metrics[f"{key}_img_per_s"] = round(ips, 1)
        metrics[f"{key}_mfu"] = round(mfu, 4)
        metrics[f"{key}_spread"] = round(spr, 3)
        if compiled:
            metrics[f"{key}_compile_s"] = round(first, 1)
        table.append((tower, name, ips, mfu))
        print(
            f"[towers] {tower} {name}: {ips:.1f} img/s, MFU {100 * mfu:.1f}% (first call {first:.1f} s)",
            flush=True,
        )
        return ips

    def sam_b() -> None:
        # --- SAM ViT-B ---
        from transformers import SamVisionConfig, SamVisionModel

        sam_cfg = SamVisionConfig()
        sam_cfg._attn_implementation = "sdpa"
        flops = sam_vit_flops(sam_cfg)
        with torch.device("meta"):
            counted = counted_flops(SamVisionModel(sam_cfg).eval(), torch.randn(1, 3, 1024, 1024))
        metrics["sam_b_gflop_per_img"] = round(flops / 1e9, 1)
        metrics["sam_b_gflop_per_img_flop_counter"] = round(counted / 1e9, 1)
        print(f"[towers] SAM-B {flops / 1e9:.0f} GFLOP/img (flop counter {counted / 1e9:.0f})", flush=True)
        x = torch.randn(SAM_BATCH, 3, 1024, 1024, device=device, dtype=torch.bfloat16)
        with torch.device(device):
            stock = SamVisionModel(sam_cfg).to(torch.bfloat16).eval()
        best = record("sam_b", "stock_sdpa", lambda m=stock: m(x), SAM_BATCH, flops, False)
        for name, ms in top_kernels(lambda m=stock: m(x)):
            print(f"[towers]   stock SAM kernel {ms:8.2f} ms  {name}", flush=True)
        ours_name = "pixtok.model.sam.SamImageEncoder"
        try:
            from pixtok.model.sam import SamImageEncoder

            with torch.device(device):
                ours = SamImageEncoder(sam_cfg).to(torch.bfloat16).eval()
        except Exception as exc:  # the tower file is someone else's: fall back to the module it wraps
            print(
                f"[towers] {ours_name} unavailable ({exc!r}); using transformers' SamVisionEncoder",
                flush=True,
            )
            from transformers.models.sam.modeling_sam import SamVisionEncoder

            ours_name = "transformers SamVisionEncoder"
            with torch.device(device):
                ours = SamVisionEncoder(sam_cfg).to(torch.bfloat16).eval()
        metrics["sam_b_ours_module"] = ours_name
        encoder = getattr(ours, "vision_encoder", ours)
        encoder.load_state_dict(stock.vision_encoder.state_dict())
        with torch.inference_mode():
            ref = stock(x[:2]).last_hidden_state
            got = ours(x[:2])
            metrics["sam_b_ours_rel_err_vs_stock"] = rel_err(getattr(got, "last_hidden_state", got), ref)
        best = max(best, record("sam_b", "ours_eager", lambda m=ours: m(x), SAM_BATCH, flops, False))
        compiled = torch.compile(ours)
        best = max(best, record("sam_b", "ours_compile", lambda m=compiled: m(x), SAM_BATCH, flops, True))
        alternatives = (  # A/B in the same run: other attention forms over the same weights
            # transformers' attention with the (B, heads, N, N) bias tensor
            ("ours_bias_tensor_compile", {"fused_rel_pos": False}, None),
            # the fused form with the value zero-padded to the widened query/key's width
            # (SamRelPosAttention.narrow_value=False, the form before)
            ("ours_padded_value_compile", {"narrow_value": False}, "sam_b_padded_value_rel_err_vs_stock"),
            # the patch embedding as cuDNN's convolution (before PatchConv2d's matrix product)
            ("ours_conv_patch_compile", {"conv_patch": True}, None),
        )
        for arm, options, err_key in alternatives:
            if args.no_compile or time.time() >= deadline or not ours_name.startswith("pixtok"):
                break
            options = dict(options)
            conv_patch = options.pop("conv_patch", False)
            with torch.device(device):
                other = SamImageEncoder(sam_cfg, **options).to(torch.bfloat16).eval()
            if conv_patch:
                from pixtok.model.patch_embedding import use_patch_matmul

                use_patch_matmul(other, enable=False)
            other.vision_encoder.load_state_dict(stock.vision_encoder.state_dict())
            if err_key:
                with torch.inference_mode():
                    metrics[err_key] = rel_err(other(x[:2]), ref)
            compiled_other = torch.compile(other)
            best = max(best, record("sam_b", arm, lambda m=compiled_other: m(x), SAM_BATCH, flops, True))
            del other, compiled_other
        if args.flex and not args.no_compile and time.time() < deadline:
            try:  # global-attention layers through FlexAttention (no materialized N x N bias)
                for index in sam_cfg.global_attn_indexes:
                    encoder.layers[index].attn = FlexRelPosAttention(encoder.layers[index].attn)
                flexed = torch.compile(ours)
                with torch.inference_mode():
                    got = flexed(x[:2])
                    metrics["sam_b_flex_rel_err_vs_stock"] = rel_err(
                        getattr(got, "last_hidden_state", got), ref
                    )
                print(
                    f"[towers] SAM flex rel err vs stock {metrics['sam_b_flex_rel_err_vs_stock']:.2e}",
                    flush=True,
                )
                best = max(
                    best,
                    record(
                        "sam_b", "ours_flex_global_compile", lambda m=flexed: m(x), SAM_BATCH, flops, True
                    ),
                )
            except Exception as exc:
                print(f"[towers] SAM flex variant FAILED: {exc!r}"[:600], flush=True)
                metrics["sam_b_flex_error"] = repr(exc)[:300]
        del stock
        metrics["sam_b_img_per_s"] = round(best, 1)
        metrics["sam_b_mfu"] = round(best * flops / (DATASHEET_BF16_TFLOPS * 1e12), 4)
        del ours, compiled
        gc.collect()
        torch.cuda.empty_cache()
        write_result(out_path, "towers", device_name, command_line(), metrics)

    def eva02_l() -> None:
        # --- EVA02-L/14 at 448 ---
        import timm

        x = torch.randn(EVA_BATCH, 3, 448, 448, device=device, dtype=torch.bfloat16)
        with torch.device(device):
            stock = timm.create_model("eva02_large_patch14_448", pretrained=False).to(torch.bfloat16).eval()
        flops = eva_flops(stock, 448)
        with torch.device("meta"):
            meta = timm.create_model("eva02_large_patch14_448", pretrained=False).eval()
            counted = counted_flops(meta, torch.randn(1, 3, 448, 448), meta.forward_features)
        metrics["eva02_l_gflop_per_img"] = round(flops / 1e9, 1)
        metrics["eva02_l_gflop_per_img_flop_counter"] = round(counted / 1e9, 1)
        print(f"[towers] EVA02-L {flops / 1e9:.0f} GFLOP/img (flop counter {counted / 1e9:.0f})", flush=True)
        best = record("eva02_l", "stock_timm", lambda m=stock: m.forward_features(x), EVA_BATCH, flops, False)
        for name, ms in top_kernels(lambda m=stock: m.forward_features(x)):
            print(f"[towers]   stock EVA kernel {ms:8.2f} ms  {name}", flush=True)
        variants: list[tuple[str, nn.Module]] = []
        padded: nn.Module | None = None
        try:
            from pixtok.model.configuration_towers import PixtokEva02Config
            from pixtok.model.eva02 import Eva02Encoder

            with torch.device(device):
                variants.append(("ours_eager", Eva02Encoder(PixtokEva02Config()).to(torch.bfloat16).eval()))
                fused = Eva02Encoder(PixtokEva02Config(qkv_fused=True)).to(torch.bfloat16).eval()
            variants += [("ours_qkv_fused_eager", fused), ("ours_qkv_fused_compile", fused)]
            with torch.device(device):
                padded = Eva02Encoder(PixtokEva02Config(qkv_fused=True)).to(torch.bfloat16).eval()
            metrics["eva02_l_ours_module"] = "pixtok.model.eva02.Eva02Encoder"
        except Exception as exc:
            print(f"[towers] pixtok Eva02Encoder unavailable ({exc!r}); using timm's Eva", flush=True)
            with torch.device(device):
                model = (
                    timm.create_model("eva02_large_patch14_448", pretrained=False).to(torch.bfloat16).eval()
                )
            variants = [("ours_eager", model), ("ours_compile", model)]
            metrics["eva02_l_ours_module"] = "timm eva02_large_patch14_448"
        with torch.inference_mode():
            ref = stock.forward_features(x[:2])
            for name, module in variants[:2]:
                eva = getattr(module, "eva", module)
                try:
                    if getattr(eva.blocks[0].attn, "qkv", None) is None:
                        eva.load_state_dict(stock.state_dict(), strict=False)
                    else:
                        fuse_eva_qkv(stock, eva)
                    metrics[f"eva02_l_{name}_rel_err_vs_stock"] = rel_err(eva.forward_features(x[:2]), ref)
                except Exception as exc:
                    print(f"[towers] EVA {name} weight copy FAILED: {exc!r}"[:400], flush=True)
        if padded is not None:
            try:  # SwiGLU hidden 2730 -> 2736: bf16 GEMMs on aligned cuBLAS kernels, same function
                from pixtok.model.eva02 import pad_mlp_hidden
                from pixtok.model.patch_embedding import use_patch_matmul

                fuse_eva_qkv(stock, padded.eva)
                replaced = pad_mlp_hidden(padded)
                hidden = padded.eva.blocks[0].mlp.fc2.in_features
                metrics["eva02_l_ours_qkv_fused_padded_mlp_hidden"] = hidden
                with torch.inference_mode():
                    metrics["eva02_l_ours_qkv_fused_padded_rel_err_vs_stock"] = rel_err(
                        padded.eva.forward_features(x[:2]), ref
                    )
                    padded(x)  # warm-up before the kernel profile
                print(f"[towers] EVA MLP hidden padded to {hidden} in {replaced} blocks", flush=True)
                for name, ms in top_kernels(lambda m=padded: m(x)):
                    print(f"[towers]   padded EVA kernel (eager) {ms:8.2f} ms  {name}", flush=True)
                variants.append(("ours_qkv_fused_padded_compile", padded))
                # the same module with its patch embedding as cuDNN's convolution (before PatchConv2d)
                with torch.device(device):
                    conv = Eva02Encoder(PixtokEva02Config(qkv_fused=True)).to(torch.bfloat16).eval()
                pad_mlp_hidden(conv)
                conv.load_state_dict(padded.state_dict())
                use_patch_matmul(conv, enable=False)
                variants.append(("ours_qkv_fused_padded_conv_patch_compile", conv))
            except Exception as exc:
                print(f"[towers] EVA padded variant FAILED: {exc!r}"[:400], flush=True)
                metrics["eva02_l_ours_qkv_fused_padded_error"] = repr(exc)[:300]
        del stock, ref
        for name, module in variants:
            forward = getattr(module, "forward_features", module)
            compiled = "compile" in name
            fn = torch.compile(forward) if compiled else forward
            best = max(best, record("eva02_l", name, lambda f=fn: f(x), EVA_BATCH, flops, compiled))
        metrics["eva02_l_img_per_s"] = round(best, 1)
        metrics["eva02_l_mfu"] = round(best * flops / (DATASHEET_BF16_TFLOPS * 1e12), 4)
        write_result(out_path, "towers", device_name, command_line(), metrics)

    for part in (eva02_l, sam_b) if args.eva_first else (sam_b, eva02_l):
        if part.__name__ not in args.towers.split(","):
            continue
        part()
    print("\n| tower | variant | img/s | MFU (989 TFLOP/s) |\n| --- | --- | --- | --- |")
    for tower, name, ips, mfu in table:
        print(f"| {tower} | {name} | {ips:.1f} | {100 * mfu:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for towers.json")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--eva-first", action="store_true", help="measure EVA02-L before SAM-B")
    parser.add_argument("--flex", action="store_true", help="also time SAM's global layers via FlexAttention")
    parser.add_argument("--towers", default="sam_b,eva02_l", help="which towers to measure")
    parser.add_argument("--budget-s", type=float, default=400.0, help="no new compile variant after this")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
