"""PixtokForConditionalGeneration on the tiny preset: every head trains, generate is consistent."""

from __future__ import annotations

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration, shift_right
from pixtok.model.vocab import EOS_ID, TASKS

torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a shared 2-core runner


def tiny_model(**overrides) -> PixtokForConditionalGeneration:
    torch.manual_seed(0)
    return PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny", **overrides))


def images(config: PixtokConfig, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(batch, 3, config.image_size, config.image_size, generator=g),
        "eva_pixel_values": torch.randn(batch, 3, config.eva_image_size, config.eva_image_size, generator=g),
    }


def full_batch(config: PixtokConfig) -> dict[str, torch.Tensor]:
    vocab = config.vocab
    b, t = 2, 6
    labels = torch.tensor([[50, 60, 70, 80, EOS_ID, -100], [vocab.coord_offset + 10, 90, 91, 92, 93, EOS_ID]])
    m = config.mask_size
    mask = torch.zeros(b, m, m)
    mask[:, 4:20, 6:24] = 1
    return {
        **images(config, b),
        "input_ids": torch.tensor([[vocab.task_id("caption"), 5, 6], [vocab.task_id("referring"), 7, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "prompt_coords": torch.tensor([[[0.1, 0.2], [0.6, 0.7]], [[0.5, 0.5], [0.0, 0.0]]]),
        "prompt_labels": torch.tensor([[2, 3], [1, -1]]),
        "labels": labels,
        "point_targets": torch.rand(b, t, 2, generator=torch.Generator().manual_seed(2)),
        "point_mask": labels != -100,
        "box_targets": torch.tensor([[0.1, 0.15, 0.5, 0.6], [0.2, 0.3, 0.9, 0.8]]),
        "box_mask": torch.tensor([True, True]),
        "mask_targets": mask,
        "mask_valid": torch.tensor([True, False]),
        "proposal_boxes": torch.tensor(
            [[[0.1, 0.1, 0.5, 0.6], [0, 0, 0, 0]], [[0.2, 0.3, 0.9, 0.8], [0.1, 0.1, 0.3, 0.3]]]
        ),
        "proposal_mask": torch.tensor([[True, False], [True, True]]),
        "task_ids": torch.tensor([1, 2]),
        "image_sizes": torch.tensor([[480, 640], [300, 300]]),
    }


HEAD_LOSSES = ("lm_loss", "trace_loss", "box_loss", "mask_loss", "proposal_loss")


def test_training_step_trains_every_head_and_only_trainable_parts() -> None:
    model = tiny_model()
    batch = full_batch(model.config)
    out = model(**batch)
    for name in HEAD_LOSSES:
        value = getattr(out, name)
        assert value is not None and torch.isfinite(value) and value > 0, name
    assert torch.allclose(out.loss, sum(getattr(out, n) for n in HEAD_LOSSES))
    assert out.logits.shape == (2, 6, model.config.text_config.vocab_size)
    assert out.points.shape == (2, 6, 2) and out.pred_boxes.shape == (2, 4)
    assert out.pred_masks.shape == (2, 1, model.config.mask_size, model.config.mask_size)
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    without_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert without_grad == []
    assert not any(n.startswith("model.towers.") for n in trainable)  # frozen towers
    text_trainable = {n for n in trainable if n.startswith("model.text_model.")}
    assert text_trainable and all("lora_" in n for n in text_trainable)  # frozen T5 but its adapters
    for prefix in (
        "model.extractor.",
        "trace_head.",
        "box_head.",
        "mask_decoder.",
        "proposal_head.",
        "model.added_tokens.",
    ):
        assert any(n.startswith(prefix) for n in trainable), prefix
    # the added-token rows learn through their deltas, the base rows of the frozen T5 do not move
    delta = model.model.added_tokens.embedding_delta.grad
    coord_row = model.config.vocab.coord_offset + 10 - model.config.base_vocab_size
    assert delta[coord_row].abs().sum() > 0 and delta[0].abs().sum() == 0


def test_heads_without_targets_give_no_loss() -> None:
    model = tiny_model()
    batch = full_batch(model.config)
    for key in (
        "point_targets",
        "point_mask",
        "box_targets",
        "box_mask",
        "mask_targets",
        "mask_valid",
        "proposal_boxes",
        "proposal_mask",
    ):
        batch.pop(key)
    out = model(**batch)
    assert out.lm_loss is not None and torch.allclose(out.loss, out.lm_loss)
    assert (out.trace_loss, out.box_loss, out.mask_loss, out.proposal_loss) == (None, None, None, None)
    # all-masked targets count as absent
    batch = full_batch(model.config)
    batch["point_mask"][:] = False
    batch["box_mask"][:] = False
    batch["mask_valid"][:] = False
    batch["proposal_mask"][:] = False
    out = model(**batch)
    # the trace loss is a masked mean (no device read to find the mask empty): 0, not absent
    assert out.trace_loss is not None and float(out.trace_loss) == 0.0
    assert (out.box_loss, out.mask_loss, out.proposal_loss) == (None, None, None)


def test_label_weights_change_the_lm_loss() -> None:
    model = tiny_model().eval()
    batch = full_batch(model.config)
    base = model(**batch).lm_loss
    weights = torch.ones_like(batch["labels"], dtype=torch.float)
    weights[0, :2] = 0.0  # e.g. Pix2Seq noise coordinates
    weighted = model(**batch, label_weights=weights).lm_loss
    assert not torch.allclose(base, weighted)
    only_first = torch.zeros_like(weights)
    only_first[1, 0] = 1.0
    single = model(**batch, label_weights=only_first).lm_loss
    logits = model(**batch).logits[..., : model.config.vocab.size]  # the padded head's real ids
    expected = torch.nn.functional.cross_entropy(logits[1, :1], batch["labels"][1, :1], label_smoothing=0.1)
    torch.testing.assert_close(single, expected, rtol=1e-5, atol=1e-5)


def fit(model: PixtokForConditionalGeneration, steps: int) -> tuple[list[float], list[float]]:
    batch = full_batch(model.config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = last = None
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        last = [getattr(out, name).item() for name in HEAD_LOSSES]
        first = first or last
    return first, last


def test_a_few_steps_fit_every_head() -> None:
    first, last = fit(tiny_model(lora_r=0), steps=12)
    for name, a, b in zip(HEAD_LOSSES, first, last):
        assert b < 0.9 * a, (name, a, b)
    # with LoRA the T5 is frozen: the heads still learn
    first, last = fit(tiny_model(), steps=12)
    for name, a, b in zip(HEAD_LOSSES[1:], first[1:], last[1:]):
        assert b < 0.9 * a, (name, a, b)


def test_full_fine_tuning_without_lora_trains_the_t5() -> None:
    model = tiny_model(lora_r=0, freeze_towers=False)
    assert model.model.added_tokens is None
    out = model(**full_batch(model.config))
    out.loss.backward()
    assert model.model.text_model.get_input_embeddings().weight.grad is not None
    assert any(p.grad is not None for p in model.model.towers.parameters())
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_box_head_cannot_read_the_teacher_forced_box() -> None:
    """Under teacher forcing the referring answer's coordinate tokens are decoder inputs; the box head
    must not see them, or it learns to copy a box that generation does not have."""
    model = tiny_model().eval()
    config = model.config
    coord = config.vocab.coord_offset
    inputs = {**images(config), "input_ids": torch.tensor([[config.vocab.task_id("referring"), 9]] * 2)}
    boxes = []
    for first in (10, 900):
        labels = torch.tensor([[coord + first, coord + 20, coord + 500, coord + 600, EOS_ID]] * 2)
        with torch.no_grad():
            out = model(**inputs, labels=labels)
        boxes.append(out.pred_boxes)
        states = out.logits  # the coordinates do reach later decoder steps
    torch.testing.assert_close(boxes[0], boxes[1])
    with torch.no_grad():
        other = model(**inputs, labels=labels.roll(1, dims=1)).logits
    assert not torch.allclose(states[:, 1:], other[:, 1:])


def test_shift_right() -> None:
    labels = torch.tensor([[5, 6, EOS_ID, -100], [7, 8, 9, 10], [EOS_ID, -100, -100, -100]])
    assert shift_right(labels).tolist() == [[0, 5, 6, EOS_ID], [0, 7, 8, 9], [0, EOS_ID, 0, 0]]


def test_default_prompt_is_the_unpadded_image_box() -> None:
    model = tiny_model()
    coords, labels = model.model.default_prompt(
        2, torch.tensor([[480, 640], [300, 150]]), torch.device("cpu")
    )
    torch.testing.assert_close(coords, torch.tensor([[[0, 0], [1.0, 0.75]], [[0, 0], [0.5, 1.0]]]))
    assert labels.tolist() == [[2, 3], [2, 3]]


@pytest.mark.parametrize("task", ["caption", "referring", "detection", "region_caption"])
def test_generate_matches_a_full_forward_pass(task: str) -> None:
    """The KV-cached decode loop gives the same states as recomputing the whole prefix."""
    model = tiny_model().eval()
    config = model.config
    inputs = {**images(config), "input_ids": torch.tensor([[config.vocab.task_id(task), 9]] * 2)}
    budget = {"detection": 11, "referring": 5}.get(task, 6)
    gen = model.generate(
        **inputs, task_ids=torch.full((2,), TASKS.index(task)), max_new_tokens=budget, do_sample=False
    )
    t = gen.sequences.shape[1]
    assert (
        gen.sequences.shape == (2, t) and gen.token_scores.shape == (2, t) and gen.points.shape == (2, t, 2)
    )
    assert ((gen.token_scores > 0) & (gen.token_scores <= 1))[gen.sequences != 0].all()
    full = model(**inputs, decoder_input_ids=shift_right(gen.sequences))
    probs = full.logits.float().softmax(-1)
    # greedy under the grammar picks tokens the unconstrained model also rates; recompute their points
    torch.testing.assert_close(full.points, gen.points, rtol=1e-4, atol=1e-5)
    chosen = probs.gather(-1, gen.sequences[..., None])[..., 0]
    assert (chosen[gen.sequences != 0] > 0).all()
    if task == "referring":
        vocab = config.vocab
        assert all(vocab.is_coord(int(i)) for i in gen.sequences[:, :4].flatten())
        assert (gen.sequences[:, 4] == EOS_ID).all()
        assert gen.boxes.shape == (2, 4) and (gen.boxes[:, 2:] >= gen.boxes[:, :2]).all()
        assert gen.masks.shape == (2, config.mask_size, config.mask_size)
        torch.testing.assert_close(full.pred_boxes, gen.boxes, rtol=1e-4, atol=1e-5)  # same state read
        torch.testing.assert_close(model.box_head(full.logits.new_zeros(0, 64)).shape, torch.Size([0, 4]))
    else:
        assert gen.boxes is None and gen.masks is None


def test_generate_dense_caption_captions_each_proposal() -> None:
    model = tiny_model(num_proposals=3).eval()
    config = model.config
    inputs = {**images(config), "input_ids": torch.tensor([[config.vocab.task_id("dense_caption")]] * 2)}
    gen = model.generate(**inputs, task_ids=torch.tensor([4, 4]), max_new_tokens=4)
    assert gen.proposals.shape == (2, 3, 4) and gen.proposal_scores.shape == (2, 3)
    assert gen.sequences.shape[0] == 6
    assert ((gen.proposals >= 0) & (gen.proposals <= 1)).all()
    assert gen.task_ids.tolist() == [4, 4]
    # the same as region-captioning each proposal box
    rows = {**images(config), "prompt_coords": gen.proposals[1].reshape(3, 2, 2).clone()}
    rows = {k: v[1:2].repeat_interleave(3, 0) if k != "prompt_coords" else v for k, v in rows.items()}
    region = model.generate(
        **rows,
        prompt_labels=torch.tensor([[2, 3]] * 3),
        input_ids=torch.tensor([[config.vocab.task_id("region_caption")]] * 3),
        max_new_tokens=4,
    )
    assert torch.equal(region.sequences, gen.sequences[3:6, : region.sequences.shape[1]])


def test_generate_rejects_mixed_tasks() -> None:
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="one task per batch"):
        model.generate(**images(model.config), task_ids=torch.tensor([0, 1]))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = tiny_model(lora_dropout=0.0)
    batch = full_batch(model.config)
    model(**batch).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.model.text_model.encoder.gradient_checkpointing
    model(**batch).loss.backward()
    for name, grad in reference.items():
        scale = 1e-4 * (1 + grad.abs().max().item())  # recomputation reorders float sums
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-3, atol=scale, msg=name)


def test_sdpa_and_eager_attention_agree() -> None:
    batch = full_batch(PixtokConfig.from_preset("tiny"))
    outputs = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny", attn_implementation=impl))
        assert model.model.text_model.config._attn_implementation == impl
        assert model.mask_decoder.config._attn_implementation == impl
        model.eval()
        outputs[impl] = model(**batch)
    torch.testing.assert_close(outputs["sdpa"].logits, outputs["eager"].logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["sdpa"].pred_masks, outputs["eager"].pred_masks, rtol=1e-4, atol=1e-4)


def test_bf16_forward_and_backward() -> None:
    model = tiny_model().to(torch.bfloat16)
    batch = full_batch(model.config)
    out = model(**batch)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.extractor.tokens.grad is not None


def test_processor_batches_train_and_generate_for_every_task() -> None:
    """The processor's batches (ARCHITECTURE.md's tensor names) drive forward, generate and post-processing."""
    import numpy as np
    from PIL import Image

    from pixtok.model.processing_pixtok import PixtokProcessor

    proc = PixtokProcessor.from_preset("tiny")
    model = tiny_model()
    image = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    box = [2.0, 3.0, 30.0, 40.0]
    cases = {
        "detection": ({"boxes": [box], "labels": [3]}, {}, {"lm_loss"}),
        "caption": ({"words": ["a", "cat"], "points": [[3, 4], [20, 30]]}, {}, {"lm_loss", "trace_loss"}),
        "referring": (
            {"box": box, "mask": np.ones((48, 64), bool)},
            {"text": ["the cat"]},
            {"lm_loss", "box_loss", "mask_loss"},
        ),
        "region_caption": ({"text": "a cat"}, {"boxes": [[box]]}, {"lm_loss"}),
        # no region prompt: every label is padding, so the LM loss is 0 (found on the device, not read)
        "dense_caption": ({"boxes": [box], "captions": ["a cat"]}, {}, {"lm_loss", "proposal_loss"}),
    }
    for task, (target, extra, expected) in cases.items():
        batch = proc(images=[image], task=task, targets=[target], return_tensors="pt", **extra)
        out = model(**batch)
        got = {name for name in HEAD_LOSSES if getattr(out, name) is not None}
        assert got == expected, (task, got)
        if task == "dense_caption":
            assert bool((batch["labels"] == -100).all()) and float(out.lm_loss) == 0.0
        out.loss.backward()
        inputs = proc(images=[image], task=task, return_tensors="pt", **extra)
        gen = model.eval().generate(**inputs, max_new_tokens=11 if task == "detection" else 5)
        model.train()
        post = {
            "detection": proc.post_process_object_detection,
            "caption": proc.post_process_caption,
            "referring": proc.post_process_referring,
            "region_caption": proc.post_process_caption,
            "dense_caption": proc.post_process_dense_caption,
        }[task](gen, target_sizes=[(48, 64)])
        assert len(post) == 1, task
        if task == "referring":
            assert post[0]["box"].shape == (4,) and post[0]["mask"].shape == (48, 64)
        if task == "dense_caption":
            assert len(post[0]["boxes"]) == len(post[0]["captions"]) == model.config.num_proposals


def test_cached_tower_features_replace_the_pixels() -> None:
    model = tiny_model().eval()
    batch = full_batch(model.config)
    with torch.no_grad():
        features = model.model.encode_images(batch["pixel_values"], batch["eva_pixel_values"])
        reference = model(**batch)
        pixels = {k: batch.pop(k) for k in ("pixel_values", "eva_pixel_values")}
        cached = model(**batch, image_embeddings=features.sam, fused_features=features.fused)
    for name in ("loss", "logits", "pred_masks", "proposal_logits"):
        assert torch.equal(getattr(cached, name), getattr(reference, name)), name
    gen_kwargs = {"task_ids": torch.tensor([2, 2]), "max_new_tokens": 5}
    a = model.generate(**pixels, **gen_kwargs)
    b = model.generate(image_embeddings=features.sam, fused_features=features.fused, **gen_kwargs)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.masks, b.masks)
    with pytest.raises(ValueError, match="both image_embeddings and fused_features"):
        model(**batch, image_embeddings=features.sam)
    with pytest.raises(ValueError, match=r"fused_features must be \(2, 64, 8, 8\)"):
        model(**batch, image_embeddings=features.sam, fused_features=features.sam)


def test_proposal_assignment_keeps_edge_boxes_in_the_grid_in_bf16():
    """A box centred on the image's right/bottom edge lands in the last cell, also in bf16 (where
    1 - 1e-6 rounds to 1.0: the old coordinate clamp put it in cell g, out of range)."""
    from pixtok.model.heads import ProposalHead

    grid = 16
    boxes = torch.tensor([[[0.9, 0.9, 1.0, 1.0], [0.0, 0.0, 0.05, 0.05], [0.98, 0.5, 1.02, 0.6]]])
    for dtype in (torch.float32, torch.bfloat16):
        positive, targets = ProposalHead.assign(boxes.to(dtype), torch.ones(1, 3, dtype=torch.bool), grid)
        cells = sorted(torch.nonzero(positive[0]).flatten().tolist())
        assert cells == [0, 8 * grid + grid - 1, grid * grid - 1], dtype
        assert targets.shape == (1, grid * grid, 4)


@pytest.mark.parametrize("lora_r", [4, 0])
def test_decoder_logits_are_t5s_head_with_the_added_rows(lora_r: int) -> None:
    """``decode`` runs the T5 decoder stack and one LM-head product over the head weight with the
    added rows' deltas folded in; it must give what T5's own forward gives, plus ``state @ delta``
    on the added ids (and exactly T5's logits when the whole T5 trains)."""
    model = tiny_model(lora_r=lora_r).eval()
    config = model.config
    inputs = {**images(config), "input_ids": torch.tensor([[config.vocab.task_id("detection"), 9]] * 2)}
    decoder_ids = torch.tensor([[0, config.vocab.coord_offset + 3, config.vocab.coord_offset + 700]] * 2)
    added = model.model.added_tokens
    if added is not None:
        torch.nn.init.normal_(added.head_delta, std=0.5)
    with torch.no_grad():
        encoder_outputs, mask, _, _ = model.model.encode(**images(config), input_ids=inputs["input_ids"])
        logits, states, _ = model.model.decode(encoder_outputs, mask, decoder_ids)
        reference = model.model.text_model(
            encoder_outputs=encoder_outputs,
            attention_mask=mask,
            decoder_inputs_embeds=model.model.decoder_inputs(decoder_ids, 0),
            output_hidden_states=True,
        )
    torch.testing.assert_close(states, reference.decoder_hidden_states[-1])
    expected = reference.logits.clone()
    if added is not None:
        from pixtok.model.lora import lm_head_input_scale

        base = config.base_vocab_size
        scale = lm_head_input_scale(config.text_config)
        expected[..., base:] += (states * scale) @ added.head_delta.T
        assert not torch.allclose(logits, reference.logits)
    torch.testing.assert_close(logits, expected)
