"""pixtok.evaluation: the numbers the papers print, computed from pixtok outputs.

Modules (import the one you need; nothing heavy is imported here):
- :mod:`.coco` — COCO box / mask AP and AR (pycocotools ``COCOeval``).
- :mod:`.referring` — RefCOCO P@0.5, cIoU, mIoU.
- :mod:`.captions` — BLEU-1…4, METEOR 1.5 (Java), ROUGE-L, CIDEr-D (coco-caption protocol).
- :mod:`.traces` — PixelLLM trace L1.
- :mod:`.dense_captions` — Visual Genome dense-captioning mAP.
- :mod:`.panoptic_quality` — PQ / SQ / RQ as panopticapi.
Each also exists as an ``evaluate`` module under ``metrics/<name>/<name>.py`` (load by path).
"""

from pathlib import Path

METRICS_DIR = Path(__file__).parent / "metrics"
"""Folder of the ``evaluate`` modules: ``evaluate.load(str(METRICS_DIR / "coco_detection"))``."""

__all__ = ["METRICS_DIR"]
