"""Draw benchmarks/results/speed.png from decode.json, towers.json and detect_e2e.json.

    python benchmarks/plot_speed.py

Each panel puts the stock Hugging Face figure beside pixtok's, measured in the same run, with the
target of issue 8 as a dashed line; lower is better for latencies, higher for throughput.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _metrics(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())["metrics"]


def main() -> Path:
    decode, towers, e2e = _metrics("decode"), _metrics("towers"), _metrics("detect_e2e")
    panels = [
        ("decode T5-base, ms/token", decode["stock_base_ms_per_token"], decode["base_ms_per_token"], 0.5),
        ("decode T5-XL, ms/token", decode["stock_xl_ms_per_token"], decode["xl_ms_per_token"], 1.5),
        ("detection e2e, s/image", e2e["florence2_s_per_image"], e2e["base_s_per_image"], 0.35),
        ("SAM ViT-B 1024², img/s", towers["sam_b_stock_sdpa_img_per_s"], towers["sam_b_img_per_s"], 250),
        ("EVA02-L 448², img/s", towers["eva02_l_stock_timm_img_per_s"], towers["eva02_l_img_per_s"], 400),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    for ax, (title, stock, ours, target) in zip(axes, panels):
        baseline = "Florence-2" if "e2e" in title else "stock HF"
        bars = ax.bar([baseline, "pixtok"], [stock, ours], color=["#9aa5b1", "#2a7de1"])
        ax.axhline(target, color="#d9480f", linestyle="--", linewidth=1, label="target")
        for bar, value in zip(bars, [stock, ours]):
            ax.annotate(
                f"{value:.3g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    device = json.loads((RESULTS / "decode.json").read_text())["device"].split(" (")[0]
    fig.suptitle(
        f"pixtok vs. stock Hugging Face, one {device}, bf16 (benchmarks/results/*.json)", fontsize=10
    )
    fig.tight_layout()
    out = RESULTS / "speed.png"
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main())
