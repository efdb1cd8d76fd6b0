"""Gaussian coordinate targets (``coordinate_label_sigma``): the loss against an explicit soft target."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.heads import weighted_lm_loss
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

from .test_modeling import full_batch

FIRST, COUNT, VOCAB = 5, 12, 20  # ids 5..16 are the coordinate bins of a toy vocabulary


def explicit_loss(logits, labels, weights, smoothing, sigma):
    """The cross-entropy against the full target distribution, written out token by token."""
    total = weight_sum = 0.0
    log_p = F.log_softmax(logits.double(), -1)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            label = int(labels[b, t])
            if label == -100:
                continue
            target = torch.zeros(VOCAB, dtype=torch.double)
            if sigma > 0 and FIRST <= label < FIRST + COUNT:
                radius = max(1, math.ceil(3 * sigma))
                for k in range(-radius, radius + 1):
                    if 0 <= label - FIRST + k < COUNT:
                        target[label + k] = math.exp(-0.5 * (k / sigma) ** 2)
                target /= target.sum()
            else:
                target[label] = 1.0
            target = (1 - smoothing) * target + smoothing / VOCAB
            total += float(weights[b, t]) * float(-(target * log_p[b, t]).sum())
            weight_sum += float(weights[b, t])
    return total / weight_sum


@pytest.mark.parametrize("sigma", [0.0, 0.6, 1.5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_the_cross_entropy_against_a_gaussian_over_the_bins(sigma: float, smoothing: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, VOCAB, generator=g) * 3
    # a text token, coordinates mid-range and at both ends (the Gaussian cut and renormalized there),
    # an ignored position, a class-like id just past the bins (one-hot)
    labels = torch.tensor([[2, FIRST + 5, FIRST, FIRST + COUNT - 1, -100, FIRST + COUNT], [FIRST + 1] * 6])
    weights = torch.rand(2, 6, generator=g) + 0.1
    got = weighted_lm_loss(
        logits, labels, weights, smoothing, coordinate_bins=(FIRST, COUNT), coordinate_sigma=sigma
    )
    assert float(got) == pytest.approx(explicit_loss(logits, labels, weights, smoothing, sigma), rel=1e-5)


def test_a_near_miss_costs_less_than_a_far_one_only_with_sigma() -> None:
    labels = torch.tensor([[FIRST + 6]])
    weights = torch.ones(1, 1)

    def loss_when_predicting(bin_: int, sigma: float) -> float:
        logits = torch.zeros(1, 1, VOCAB)
        logits[0, 0, FIRST + bin_] = 8.0
        return float(
            weighted_lm_loss(
                logits, labels, weights, 0.0, coordinate_bins=(FIRST, COUNT), coordinate_sigma=sigma
            )
        )

    assert loss_when_predicting(7, 0.0) == pytest.approx(loss_when_predicting(11, 0.0))
    assert loss_when_predicting(7, 1.5) < loss_when_predicting(11, 1.5) - 1.0
    assert loss_when_predicting(6, 1.5) < loss_when_predicting(7, 1.5)  # the target bin stays the best


def test_sigma_needs_the_bin_range() -> None:
    with pytest.raises(ValueError, match="coordinate_bins"):
        weighted_lm_loss(
            torch.zeros(1, 1, VOCAB), torch.tensor([[FIRST]]), torch.ones(1, 1), 0.1, coordinate_sigma=2.0
        )


def test_the_model_reads_the_config_and_changes_only_coordinate_tokens(tmp_path) -> None:
    torch.manual_seed(0)
    one_hot = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny", lora_r=0)).eval()
    soft = PixtokForConditionalGeneration(
        PixtokConfig.from_preset("tiny", lora_r=0, coordinate_label_sigma=4.0)
    )
    soft.load_state_dict(one_hot.state_dict())
    soft.eval()
    batch = full_batch(one_hot.config)  # row 1 starts with a coordinate token, row 0 has none
    weights = torch.zeros_like(batch["labels"], dtype=torch.float)
    weights[0] = 1.0
    with torch.no_grad():
        text_only = [m(**batch, label_weights=weights).lm_loss for m in (one_hot, soft)]
        torch.testing.assert_close(text_only[0], text_only[1])
        assert not torch.allclose(one_hot(**batch).lm_loss, soft(**batch).lm_loss)
    soft.save_pretrained(tmp_path)
    assert PixtokConfig.from_pretrained(tmp_path).coordinate_label_sigma == 4.0
    with pytest.raises(ValueError, match="coordinate_label_sigma"):
        PixtokConfig.from_preset("tiny", coordinate_label_sigma=-1.0)
