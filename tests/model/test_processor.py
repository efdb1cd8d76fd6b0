import numpy as np
import pytest
import torch
from PIL import Image

from pixtok.model.box_codec import DetectionCodec
from pixtok.model.image_processing_pixtok import PixtokImageProcessor, to_rgb_array
from pixtok.model.processing_pixtok import IGNORE_INDEX, PixtokProcessor
from pixtok.model.vocab import EOS_ID, TASKS


@pytest.fixture(scope="module")
def proc():
    return PixtokProcessor.from_preset("tiny")


def image(w=64, h=48, colour=(200, 30, 10)):
    return Image.new("RGB", (w, h), colour)


# --- image processor --------------------------------------------------------------------------
def test_both_towers_resize_long_side_and_pad_bottom_right():
    ip = PixtokImageProcessor(sam_size=32, eva_size=16)
    out = ip([image(64, 32, (255, 255, 255))])
    assert out["pixel_values"].shape == (1, 3, 32, 32) and out["eva_pixel_values"].shape == (1, 3, 16, 16)
    assert out["image_sizes"].tolist() == [[32, 64]]
    white_sam = (1.0 - torch.tensor(ip.sam_image_mean)) / torch.tensor(ip.sam_image_std)
    white_eva = (1.0 - torch.tensor(ip.eva_image_mean)) / torch.tensor(ip.eva_image_std)
    torch.testing.assert_close(out["pixel_values"][0, :, :16, :], white_sam[:, None, None].expand(3, 16, 32))
    torch.testing.assert_close(
        out["eva_pixel_values"][0, :, :8, :], white_eva[:, None, None].expand(3, 8, 16)
    )
    assert (out["pixel_values"][0, :, 16:, :] == 0).all() and (
        out["eva_pixel_values"][0, :, 8:, :] == 0
    ).all()
    assert not torch.equal(white_sam, white_eva)  # different statistics per tower


def test_image_kinds_are_converted_and_bad_ones_rejected():
    gray = np.full((10, 20), 255, np.uint8)
    rgba = np.zeros((10, 20, 4), np.uint8)
    chw = torch.rand(3, 10, 20)
    for x in (gray, rgba, chw, Image.fromarray(gray), Image.fromarray(rgba, "RGBA"), gray[..., None]):
        arr = to_rgb_array(x)
        assert arr.shape == (10, 20, 3) and arr.dtype == np.float32 and 0 <= arr.min() <= arr.max() <= 1
    assert to_rgb_array(gray)[0, 0].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="C in 1, 3, 4"):
        to_rgb_array(np.zeros((10, 20, 5), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb_array(np.full((4, 4, 3), 255.0))
    with pytest.raises(ValueError, match="empty"):
        to_rgb_array(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="image 1"):
        PixtokImageProcessor(sam_size=8, eva_size=8)([gray, np.zeros((2, 2, 2, 2))])


# --- inputs -------------------------------------------------------------------------------------
def test_inputs_have_the_architecture_names_shapes_and_prompts(proc):
    batch = proc(
        images=[image(64, 48), image(30, 60)],
        task="region_caption",
        boxes=[[8, 4, 40, 20], None],
        text=["a red thing", None],
    )
    assert set(batch) == {
        "pixel_values",
        "eva_pixel_values",
        "input_ids",
        "attention_mask",
        "prompt_coords",
        "prompt_labels",
        "task_ids",
        "image_sizes",
    }
    assert batch["pixel_values"].shape == (2, 3, 128, 128) and batch["eva_pixel_values"].shape == (
        2,
        3,
        64,
        64,
    )
    assert batch["image_sizes"].tolist() == [[48, 64], [60, 30]]
    assert batch["task_ids"].tolist() == [TASKS.index("region_caption")] * 2
    ids = batch["input_ids"]
    assert ids[0, 0] == proc.vocab.task_id("region_caption") and ids[0, -1] == EOS_ID
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * (ids.shape[1] - 2)
    torch.testing.assert_close(batch["prompt_coords"][0], torch.tensor([[8, 4], [40, 20]]) / 64.0)
    torch.testing.assert_close(
        batch["prompt_coords"][1], torch.tensor([[0.0, 0.0], [0.5, 1.0]])
    )  # whole image
    assert batch["prompt_labels"].tolist() == [[2, 3], [2, 3]]
    pt = proc(images=image(), task="region_caption", points=[(32, 24)])
    torch.testing.assert_close(pt["prompt_coords"][0], torch.tensor([[0.5, 0.375], [0, 0]]))
    assert pt["prompt_labels"].tolist() == [[1, -1]]


def test_bad_calls_are_clear_errors(proc):
    with pytest.raises(ValueError, match="unknown task"):
        proc(images=image(), task="segment")
    with pytest.raises(ValueError, match="one entry per image"):
        proc(images=[image(), image()], task="caption", text=["a", "b", "c"])
    with pytest.raises(ValueError, match="box prompt"):
        proc(images=image(), task="region_caption", boxes=[[1, 2, np.nan, 4]])
    with pytest.raises(ValueError, match="targets"):
        proc(images=image(), task="detection", targets=[{}, {}])
    with pytest.raises(ValueError, match="80 classes"):
        proc(images=image(), task="detection", targets=[{"boxes": [[0, 0, 5, 5]], "labels": [99]}])


# --- targets ------------------------------------------------------------------------------------
def test_detection_targets_match_encode_detection_and_are_padded(proc):
    boxes = np.array([[1.0, 2.0, 30.0, 40.0], [10, 10, 20, 20]])
    batch = proc(
        images=[image(), image()],
        task="detection",
        targets=[{"boxes": boxes, "labels": [3, 7]}, {"boxes": np.zeros((0, 4)), "labels": []}],
        rng=np.random.default_rng(0),
    )
    ids = proc.encode_detection(boxes, [3, 7], (48, 64))
    assert ids.dtype == torch.long and ids.tolist()[-1] == EOS_ID and len(ids) == 11
    assert ids[4] == proc.vocab.class_token(3) and ids[9] == proc.vocab.class_token(7)  # given order
    row = batch["labels"][0]
    objects = {tuple(row[k : k + 5].tolist()) for k in (0, 5)}
    assert objects == {tuple(ids[:5].tolist()), tuple(ids[5:10].tolist())}  # random order, same objects
    assert batch["labels"][1].tolist() == [EOS_ID] + [IGNORE_INDEX] * 10
    assert batch["label_weights"][0].tolist() == pytest.approx([1.0] * 10 + [0.1])
    assert batch["label_weights"][1, 1:].abs().sum() == 0


def test_detection_batches_carry_the_real_objects_for_the_class_map(proc):
    """object_boxes / object_classes: model-space boxes of the valid real objects, no noise, -1 padding."""
    boxes = [[8, 4, 40, 28], [3, 3, 3, 9], [0, 0, 16, 16]]  # the second is empty: dropped
    batch = proc(
        images=[image(64, 48), image()],
        task="detection",
        targets=[{"boxes": boxes, "labels": [5, 1, 2], "augment": True}, {"boxes": [], "labels": []}],
        rng=np.random.default_rng(0),
    )
    assert batch["object_classes"].tolist() == [[5, 2], [-1, -1]]
    torch.testing.assert_close(
        batch["object_boxes"][0], torch.tensor([[8, 4, 40, 28], [0, 0, 16, 16]]) / 64.0
    )
    caption = proc(images=image(), task="caption", targets=[{"text": "a cat", "points": [[1, 1], [2, 2]]}])
    assert "object_classes" not in caption


def test_detection_augmentation_fills_with_noise(proc):
    batch = proc(
        images=image(),
        task="detection",
        targets=[{"boxes": [[1, 2, 30, 40]], "labels": [0], "augment": True}],
        rng=np.random.default_rng(0),
    )
    n = proc.max_objects
    labels, weights = batch["labels"][0], batch["label_weights"][0]
    assert labels.shape == (5 * n + 1,) and labels[-1] == EOS_ID
    assert (labels[9 : 5 * n : 5] == proc.vocab.noise_id).all()
    assert (weights[5:-1].reshape(-1, 5)[:, :4] == 0).all() and (weights[9 : 5 * n : 5] == 1).all()


def test_clipped_and_dropped_boxes_are_counted(proc):
    before = proc.codec_stats.as_dict()
    proc(
        images=image(),
        task="detection",
        targets=[{"boxes": [[-5, 0, 10, 10], [3, 3, 3, 9], [np.nan, 0, 1, 1]], "labels": [0, 1, 2]}],
    )
    after = proc.codec_stats.as_dict()
    assert after["clipped"] - before["clipped"] == 1
    assert after["dropped_empty"] - before["dropped_empty"] == 1
    assert after["dropped_nonfinite"] - before["dropped_nonfinite"] == 1


def test_caption_points_follow_words_onto_their_pieces(proc):
    words = ["A", "xylophone", "left."]
    points = np.array([[10.0, 20.0], [30.0, 5.0], [np.nan, np.nan]])
    batch = proc(images=image(64, 48), task="caption", targets=[{"words": words, "points": points}])
    labels = batch["labels"][0]
    n = int((labels != IGNORE_INDEX).sum())
    pieces = proc.tokenizer.convert_ids_to_tokens(labels[: n - 1].tolist())
    assert labels[n - 1] == EOS_ID and pieces[0] == "▁A" and len(pieces) > 4  # xylophone is split
    starts = [k for k, p in enumerate(pieces) if p.startswith("▁")]
    assert len(starts) == 3
    pt, mask = batch["point_targets"][0], batch["point_mask"][0]
    xylo = range(starts[1], starts[2])
    assert all(torch.allclose(pt[k], torch.tensor([30.0, 5.0]) / 64) for k in xylo)
    assert mask[: starts[2]].all() and not mask[starts[2] : n].any()  # NaN word and EOS: no point
    assert batch["label_weights"][0, :n].eq(1).all()
    text_only = proc(images=image(), task="caption", targets=[{"text": "a red cat"}])
    assert not text_only["point_mask"].any() and text_only["labels"][0, 3] == EOS_ID


def test_referring_targets_box_tokens_box_and_mask(proc):
    mask = np.zeros((48, 64), bool)
    mask[:24, :32] = True
    batch = proc(
        images=image(64, 48),
        task="referring",
        text="the red cat",
        targets=[{"box": [0, 0, 32, 24], "mask": mask}],
    )
    c = proc.vocab.coord_offset
    assert batch["labels"][0].tolist() == [
        c + 0,
        c + 0,
        c + 375,
        c + 500,
        EOS_ID,
    ]  # 24/64, 32/64 of 1000 bins
    torch.testing.assert_close(batch["box_targets"][0], torch.tensor([0, 0, 0.5, 0.375]))
    assert batch["box_mask"].tolist() == [True] and batch["mask_valid"].tolist() == [True]
    m = batch["mask_targets"][0]
    assert m.shape == (32, 32) and m[:10, :14].min() == 1 and m[14:, :].max() == 0 and m[:, 18:].max() == 0
    assert batch["input_ids"][0, 0] == proc.vocab.task_id("referring") and batch["input_ids"].shape[1] > 3


def test_dense_caption_and_region_caption_targets(proc):
    batch = proc(
        images=[image(), image()],
        task=["dense_caption", "region_caption"],
        boxes=[[0, 0, 32, 24], [4, 4, 8, 8]],
        targets=[
            {
                "boxes": [[0, 0, 32, 24], [10, 10, 20, 20], [5, 5, 5, 5]],
                "captions": ["a", "b", "c"],
                "text": "a",
            },
            {"text": "two dogs"},
        ],
    )
    assert batch["proposal_boxes"].shape == (2, 2, 4) and batch["proposal_mask"].tolist() == [
        [True, True],
        [False, False],
    ]
    torch.testing.assert_close(batch["proposal_boxes"][0, 0], torch.tensor([0, 0, 0.5, 0.375]))
    assert batch["labels"][1, 2] == EOS_ID and batch["task_ids"].tolist() == [4, 3]


def test_save_and_load_round_trip(proc, tmp_path):
    proc.save_pretrained(tmp_path)
    again = PixtokProcessor.from_pretrained(tmp_path)
    assert again.vocab == proc.vocab and len(again.tokenizer) == len(proc.tokenizer)
    assert again.image_processor.to_dict() == proc.image_processor.to_dict()
    kwargs = dict(
        images=[image()], task="referring", text="a cat", targets=[{"box": [1, 2, 3, 4], "mask": None}]
    )
    a, b = proc(**kwargs), again(**kwargs)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_codec_matches_processor_vocab(proc):
    assert isinstance(proc.codec, DetectionCodec) and proc.codec.vocab is proc.vocab
    assert proc.tokenizer.convert_tokens_to_ids("<loc_0>") == proc.vocab.coord_offset == 2048


def test_open_vocabulary_targets_and_post_processing():
    proc = PixtokProcessor.from_preset("tiny", open_vocabulary=True, id2label={0: "teddy bear", 1: "cat"})
    assert proc.codec is None and proc.vocab.num_classes == 0
    batch = proc(
        images=image(64, 48),
        task="detection",
        targets=[{"boxes": [[0, 0, 32, 24], [10, 10, 20, 20]], "labels": [0, 1]}],
        rng=np.random.default_rng(0),
    )
    labels = batch["labels"][0]
    assert labels[-1] == EOS_ID and (labels != IGNORE_INDEX).all()
    out = proc.post_process_object_detection(labels[None], target_sizes=[(48, 64)])[0]
    assert sorted(out["names"]) == ["cat", "teddy bear"]
    assert sorted(out["labels"].tolist()) == [0, 1]
    first = out["names"].index("teddy bear")
    torch.testing.assert_close(
        out["boxes"][first], torch.tensor([0.032, 0.032, 32.032, 24.032]), atol=0.04, rtol=0
    )


def test_auto_processor_resolves_a_saved_folder(proc, tmp_path):
    from transformers import AutoConfig, AutoProcessor

    from pixtok.model.configuration_pixtok import PixtokConfig

    # What `import pixtok` registers (lead's __init__); exist_ok so the two never clash.
    AutoConfig.register("pixtok", PixtokConfig, exist_ok=True)
    AutoProcessor.register(PixtokConfig, PixtokProcessor, exist_ok=True)
    PixtokConfig.from_preset("tiny").save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=False)
    assert type(loaded) is PixtokProcessor and loaded.vocab == proc.vocab
    model_only = tmp_path / "model_only"
    PixtokConfig.from_preset("tiny").save_pretrained(model_only)  # a model folder without processor files
    assert PixtokProcessor.from_pretrained(model_only).vocab == proc.vocab


def test_messy_targets_of_every_task_never_crash_and_stay_well_formed(proc):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    coord = st.one_of(st.floats(-100, 300), st.just(float("nan")))
    box = st.lists(coord, min_size=4, max_size=4)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        task=st.sampled_from(["detection", "caption", "referring", "region_caption", "dense_caption"]),
        boxes=st.lists(box, max_size=6),
        words=st.lists(st.text("abcxyz .", min_size=1, max_size=8), min_size=1, max_size=5),
        w=st.integers(1, 120),
        h=st.integers(1, 120),
    )
    def check(task, boxes, words, w, h):
        n = len(boxes)
        target = {
            "detection": {
                "boxes": np.array(boxes).reshape(-1, 4),
                "labels": np.arange(n) % 80,
                "augment": n % 2 == 0,
            },
            "caption": {"words": words, "points": np.full((len(words), 2), 5.0)},
            "referring": {"box": boxes[0] if boxes else [np.nan] * 4, "mask": np.ones((h, w), bool)},
            "region_caption": {"text": " ".join(words)},
            "dense_caption": {
                "boxes": np.array(boxes).reshape(-1, 4),
                "captions": ["x"] * n,
                "text": words[0],
            },
        }[task]
        batch = proc(images=image(w, h), task=task, targets=[target], rng=np.random.default_rng(n))
        labels = batch["labels"][0]
        real = labels[labels != IGNORE_INDEX]
        assert ((real >= 0) & (real < proc.vocab.size)).all()
        if len(real):
            assert real[-1] == EOS_ID and (labels[len(real) :] == IGNORE_INDEX).all()
        if task == "detection":
            assert len(real) % 5 == 1
        if task == "referring" and batch["box_mask"][0]:
            assert len(real) == 5 and 0 <= batch["box_targets"][0].min() <= batch["box_targets"][0].max() <= 1

    check()


# --- padding to a multiple (train.pad_to_multiple_of) -------------------------------------------
def test_pad_to_multiple_of_rounds_lengths_up_and_leaves_the_loss_unchanged(proc):
    """Every sequence dimension lands on a multiple of 8; the extra positions are masked text and
    ignored labels, so a model's loss (referring: LM, box and mask terms) does not move."""
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny")).eval()
    mask = np.zeros((48, 64), bool)
    mask[10:30, 5:40] = True
    kwargs = dict(
        images=[image(64, 48), image(64, 48, (10, 200, 30))],
        task="referring",
        text=["the red square", "the small green circle left of the blue star"],
        targets=[{"box": [5, 10, 40, 30], "mask": mask}, {"box": [0, 0, 20, 20], "mask": mask}],
    )
    plain = proc(**kwargs)
    padded = proc(**kwargs, pad_to_multiple_of=8)
    for key in ("input_ids", "labels"):
        n = padded[key].shape[1]
        assert n % 8 == 0 and n > plain[key].shape[1], key
    assert (padded["labels"][:, plain["labels"].shape[1] :] == IGNORE_INDEX).all()
    assert not padded["attention_mask"][:, plain["input_ids"].shape[1] :].any()
    with torch.no_grad():
        a, b = model(**plain), model(**padded)
    for name in ("loss", "lm_loss", "box_loss", "mask_loss"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        proc(**kwargs, pad_to_multiple_of=0)
