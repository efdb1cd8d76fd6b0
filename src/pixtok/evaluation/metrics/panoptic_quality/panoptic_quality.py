"""`evaluate` module: panoptic quality (PQ, SQ, RQ; all / things / stuff) as panopticapi defines it."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from pixtok.evaluation.panoptic_quality import evaluate_panoptic

_DESCRIPTION = "PQ/SQ/RQ overall, things (_th) and stuff (_st); matching IoU > 0.5, VOID and crowd ignored."
_KWARGS = """
Args:
    predictions: per image `{"segmentation": (H, W) nested int lists, "segments_info": [{"id", "category_id"}]}`.
    references: per image `{"segmentation": (H, W) ids, "segments_info": [{"id", "category_id", "iscrowd"}]}`.
    categories (`list[dict]`): COCO panoptic categories with `id` and `isthing` (required).
Returns:
    `{"PQ", "SQ", "RQ", "n", "PQ_th", …, "PQ_st", …}` in [0, 1].
"""

_SEGMENTATION = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))


class PanopticQuality(evaluate.Metric):
    """Panoptic quality."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Kirillov et al., Panoptic Segmentation, CVPR 2019.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": {
                        "segmentation": _SEGMENTATION,
                        "segments_info": [
                            {"id": datasets.Value("int64"), "category_id": datasets.Value("int64")}
                        ],
                    },
                    "references": {
                        "segmentation": _SEGMENTATION,
                        "segments_info": [
                            {
                                "id": datasets.Value("int64"),
                                "category_id": datasets.Value("int64"),
                                "iscrowd": datasets.Value("int64"),
                            }
                        ],
                    },
                }
            ),
        )

    def _compute(
        self, predictions: list[dict], references: list[dict], categories: list[dict] | None = None
    ) -> dict:
        if categories is None:
            raise ValueError(
                "panoptic_quality needs categories=[{'id': …, 'isthing': 0/1}, …] at compute time"
            )

        def unpack(item: dict) -> dict:
            info = item["segments_info"]
            if isinstance(info, dict):  # datasets may hand a Sequence of dicts back as a dict of lists
                info = [dict(zip(info, values)) for values in zip(*info.values())]
            return {"segmentation": np.asarray(item["segmentation"], dtype=np.int64), "segments_info": info}

        return evaluate_panoptic(
            [unpack(p) for p in predictions], [unpack(r) for r in references], categories
        )


__all__ = ["PanopticQuality"]
