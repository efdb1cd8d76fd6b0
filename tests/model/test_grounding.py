"""``grounding_loss_weight``: the referring grounding head on the T5 encoder's grid-token outputs."""

from __future__ import annotations

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.heads import GroundingHead, mask_losses
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

from .test_modeling import full_batch


def grounded(weight: float = 0.5, side: int = 4, **overrides) -> PixtokForConditionalGeneration:
    """The tiny model with a grid of ``side``² tokens and the grounding head at ``weight`` (0: none)."""
    torch.manual_seed(0)
    config = PixtokConfig.from_preset(
        "tiny", lora_r=0, extractor_config={"grid_tokens": side}, grounding_loss_weight=weight, **overrides
    )
    return PixtokForConditionalGeneration(config)


def assert_weighted_mask_loss(out, name: str, weight: float, focal, dice) -> None:
    """``out.<name>`` is ``weight`` x the mask loss's form (its focal and dice weights), and the total
    loss sums it with the other heads' losses."""
    config = PixtokConfig.from_preset("tiny")
    expected = weight * (config.mask_focal_weight * focal + config.mask_dice_weight * dice)
    torch.testing.assert_close(getattr(out, name), expected)
    names = ("lm_loss", "trace_loss", "box_loss", "mask_loss", "proposal_loss", name)
    torch.testing.assert_close(out.loss, sum(getattr(out, n) for n in names))


def test_config_checks_the_weight_and_needs_grid_tokens() -> None:
    with pytest.raises(ValueError, match="grid_tokens"):
        PixtokConfig.from_preset("tiny", grounding_loss_weight=1.0)  # the tiny extractor has no grid
    with pytest.raises(ValueError, match=">= 0"):
        PixtokConfig.from_preset("tiny", extractor_config={"grid_tokens": 4}, grounding_loss_weight=-1.0)
    plain = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny"))
    assert plain.grounding_head is None
    assert plain(**full_batch(plain.config)).grounding_loss is None


def test_head_reads_the_grid_tokens_row_major_and_pools_masks_to_the_same_cells() -> None:
    side, offset = 3, 5
    head = GroundingHead(2, offset, side)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.proj.bias.zero_()
    states = torch.zeros(1, offset + side * side + 4, 2)
    states[0, offset + 1 * side + 2, 0] = 7.0  # grid row 1, column 2
    states[0, :offset, 0] = 9.0  # learnable tokens before the grid, text after it: not read
    states[0, offset + side * side :, 0] = 9.0
    logits = head(states)
    expected = torch.zeros(1, 1, side, side)  # (B, channels, side, side)
    expected[0, 0, 1, 2] = 7.0
    torch.testing.assert_close(logits, expected)
    # the extractor pools its features to side x side with adaptive_avg_pool2d, row-major
    mask = torch.zeros(1, 12, 12)
    mask[0, 4:8, 8:12] = 1.0  # exactly cell (1, 2)
    mask[0, 0:2, 0:4] = 1.0  # half of cell (0, 0)
    target = head.targets(mask)
    expected = torch.zeros(1, side, side)
    expected[0, 1, 2], expected[0, 0, 0] = 1.0, 0.5
    torch.testing.assert_close(target, expected)


def test_loss_is_the_mask_loss_form_on_the_pooled_referred_mask_and_reads_the_text() -> None:
    model = grounded(weight=0.5, side=4)
    batch = full_batch(model.config)
    out = model(**batch)
    config = model.config
    # by hand: the head on the encoder's grid positions, against the masked rows' pooled masks
    offset = config.extractor_config.num_tokens
    grid = out.encoder_last_hidden_state[:, offset : offset + 16]
    logits = model.grounding_head.proj(grid).squeeze(-1).reshape(2, 4, 4)
    torch.testing.assert_close(out.grounding_logits, logits)
    valid = batch["mask_valid"]
    target = torch.nn.functional.adaptive_avg_pool2d(batch["mask_targets"][valid].unsqueeze(1), 4).squeeze(1)
    assert 0 < target.sum() < target.numel()  # the fixture's mask covers some cells, partly
    focal, dice = mask_losses(logits[valid], target)
    assert_weighted_mask_loss(out, "grounding_loss", 0.5, focal, dice)
    # the loss trains the head, the encoder and the text embeddings the expression enters with
    model.zero_grad()
    out.grounding_loss.backward()
    assert model.grounding_head.proj.weight.grad.abs().sum() > 0
    shared = model.model.text_model.shared.weight.grad
    assert shared[batch["input_ids"][0]].abs().sum(1).gt(0).all()  # row 0 has the mask target
    # other text, other grid logits: the head reads the encoder after it has seen the expression
    other = dict(batch, input_ids=batch["input_ids"].flip(1))
    with torch.no_grad():
        assert not torch.allclose(model(**other).grounding_logits, out.grounding_logits)


def test_no_mask_rows_no_grounding_loss() -> None:
    model = grounded()
    batch = full_batch(model.config)
    batch["mask_valid"] = torch.tensor([False, False])
    out = model(**batch)
    assert out.grounding_loss is None and out.mask_loss is None


def test_head_round_trips_through_save_pretrained(tmp_path) -> None:
    model = grounded(weight=2.0, side=4)
    model.save_pretrained(tmp_path)
    loaded = PixtokForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.grounding_loss_weight == 2.0
    torch.testing.assert_close(loaded.grounding_head.proj.weight, model.grounding_head.proj.weight)


# --- class_map_loss_weight: the same head, one channel per class, on detection boxes ---------------
def test_box_targets_rasterise_each_class_to_the_cells_it_covers() -> None:
    side = 4
    head = GroundingHead(2, 0, side, channels=3)
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 0.5, 0.25],  # class 2: cells (0, 0) and (0, 1) whole
                [0.125, 0.5, 0.25, 1.0],  # class 2: half of cells (2, 0) and (3, 0)
                [0.0, 0.0, 0.25, 0.25],  # class 2 again over (0, 0): the max, not a sum
                [0.5, 0.5, 1.0, 1.0],  # padding (class -1): not drawn
            ]
        ]
    )
    classes = torch.tensor([[2, 2, 2, -1]])
    target = head.box_targets(boxes, classes)
    expected = torch.zeros(1, 3, side, side)
    expected[0, 2, 0, 0] = expected[0, 2, 0, 1] = 1.0
    expected[0, 2, 2, 0] = expected[0, 2, 3, 0] = 0.5
    torch.testing.assert_close(target, expected)
    # a box's cover is the product of its row and column overlaps, as the mask pooling gives
    mask = torch.zeros(1, 16, 16)
    mask[0, 3:10, 5:14] = 1.0
    box = torch.tensor([[[5 / 16, 3 / 16, 14 / 16, 10 / 16]]])
    torch.testing.assert_close(
        GroundingHead(2, 0, side).box_targets(box, torch.tensor([[0]]))[:, 0], head.targets(mask)
    )


def test_class_map_loss_on_detection_boxes_and_config_checks() -> None:
    with pytest.raises(ValueError, match="class_map_loss_weight > 0 needs"):
        PixtokConfig.from_preset("tiny", class_map_loss_weight=1.0)
    model = grounded(weight=0.0, class_map_loss_weight=0.5)
    config = model.config
    batch = full_batch(config)
    batch["object_boxes"] = torch.tensor([[[0.1, 0.1, 0.6, 0.5], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    batch["object_classes"] = torch.tensor([[3, -1], [-1, -1]])  # row 1: no objects (another task)
    out = model(**batch)
    assert out.class_map_logits.shape == (2, config.vocab.num_classes, 4, 4)
    head = model.class_map_head
    target = head.box_targets(batch["object_boxes"][:1], batch["object_classes"][:1])
    logits = out.class_map_logits[:1]
    focal, _ = mask_losses(logits.flatten(0, 1), target.flatten(0, 1))
    _, dice = mask_losses(logits[:, 3], target[:, 3])  # dice on the present class only
    assert_weighted_mask_loss(out, "class_map_loss", 0.5, focal, dice)
    # two images with objects of different classes: dice over exactly (image 0, class 3) and
    # (image 1, classes 1 and 3)
    batch["object_boxes"][1] = torch.tensor([[0.5, 0.5, 0.9, 0.8], [0.0, 0.2, 0.3, 0.4]])
    batch["object_classes"] = torch.tensor([[3, -1], [1, 3]])
    out = model(**batch)
    target = head.box_targets(batch["object_boxes"], batch["object_classes"])
    logits = out.class_map_logits
    focal, _ = mask_losses(logits.flatten(0, 1), target.flatten(0, 1))
    pick = (torch.tensor([0, 1, 1]), torch.tensor([3, 1, 3]))
    _, dice = mask_losses(logits[pick], target[pick])
    assert_weighted_mask_loss(out, "class_map_loss", 0.5, focal, dice)
    model.zero_grad()
    out.class_map_loss.backward()
    assert model.class_map_head.proj.weight.grad[3].abs().sum() > 0
    encoder = model.model.text_model.encoder  # the dense signal reaches the encoder's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    # no objects in the batch, no loss; a model without the head ignores the boxes
    batch["object_classes"] = torch.full((2, 2), -1)
    assert model(**batch).class_map_loss is None
    plain = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny"))
    assert plain.class_map_head is None and plain(**batch).class_map_loss is None


# --- box_head_grounding: the box head reads where the grounding map points -------------------------
def test_grounding_moments_summarise_the_map() -> None:
    from pixtok.model.heads import grounding_moments

    logits = torch.full((1, 4, 4), -30.0)
    logits[0, 1, 2] = 30.0  # one lit cell: row 1, column 2
    m = grounding_moments(logits)[0]
    torch.testing.assert_close(m[:2], torch.tensor([2.5 / 4, 1.5 / 4]))  # centroid x, y
    torch.testing.assert_close(m[2:4], torch.zeros(2), atol=1e-5, rtol=0)  # no spread
    torch.testing.assert_close(m[4], torch.tensor(1 / 16))  # mass: one cell of 16
    torch.testing.assert_close(m[5:], torch.tensor([2.5 / 4, 1.5 / 4, 1.0]))  # peak x, y, prob
    logits[0, 1, 0] = 30.0  # a second lit cell two columns left: centroid between, spread 1 cell
    m = grounding_moments(logits)[0]
    torch.testing.assert_close(m[0], torch.tensor(1.5 / 4))
    torch.testing.assert_close(m[2], torch.tensor(1 / 4))


def test_box_head_reads_the_grounding_map_in_training_and_generation() -> None:
    with pytest.raises(ValueError, match="box_head_grounding needs"):
        PixtokConfig.from_preset("tiny", extractor_config={"grid_tokens": 4}, box_head_grounding=True)
    model = grounded(weight=1.0, box_head_grounding=True).eval()
    config = model.config
    batch = full_batch(config)
    out = model(**batch)
    from pixtok.model.heads import grounding_moments

    state = torch.randn(2, config.text_config.d_model)
    moments = grounding_moments(model.grounding_head(out.encoder_last_hidden_state)[:, 0])
    boxes = model.referred_boxes(state, out.encoder_last_hidden_state)
    torch.testing.assert_close(boxes, model.box_head(state, moments))
    # the head's extra inputs matter: another grounding map, another box from the same state
    with torch.no_grad():
        model.grounding_head.proj.weight.mul_(-3.0)
        moved = model.referred_boxes(state, out.encoder_last_hidden_state)
        moved_out = model(**batch).pred_boxes
    assert not torch.allclose(moved, boxes) and not torch.allclose(moved_out, out.pred_boxes)
    out = model(**batch)
    # the box loss does not train the grounding head through the moments (they are detached)
    model.zero_grad()
    out.box_loss.backward()
    assert model.grounding_head.proj.weight.grad is None
    # generation reads the map too (the head would raise without its extra inputs)
    from PIL import Image

    from pixtok.model.processing_pixtok import PixtokProcessor

    processor = PixtokProcessor.from_preset("tiny")
    inputs = processor(
        images=Image.new("RGB", (40, 30), (200, 30, 10)), text="the red square", task="referring"
    )
    generated = model.generate(**inputs, task="referring", max_new_tokens=5)
    assert generated.boxes.shape == (1, 4) and torch.isfinite(generated.boxes).all()
