"""Frozen-tower feature caching: same training, fewer tower passes, refused where it would be wrong."""

import pytest
import torch
from safetensors.torch import load_file

from pixtok.training.feature_cache import FeatureCache
from pixtok.training.recipe import main
from tests.training.test_recipes import _args


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pixtok-cache"))


def _run(tmp_path, cache_dir, name, *extra):
    out = tmp_path / name
    args = _args(
        "localized_narratives",
        out,
        cache_dir,
        10,
        "--set",
        "train.augment=false",
        "--set",
        "train.batch_size=4",
    )
    # the tiny preset's default: frozen towers, LoRA on the T5 (the paper's setting)
    args += ["--set", "model.overrides={}", *extra]
    return out, main(args)


def test_cached_training_equals_uncached_and_hits(tmp_path, cache_dir):
    plain, _ = _run(tmp_path, cache_dir, "plain")
    cached, result = _run(tmp_path, cache_dir, "cached", "--set", "train.cache_features=true")
    assert result["feature_cache"]["hit_rate"] > 0.3  # images recur (sentences of one image, epochs)
    assert result["feature_cache"]["mb_per_image"] > 0
    a, b = load_file(plain / "model.safetensors"), load_file(cached / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "train.augment=true"], "augment"),
        (["--set", "model.overrides={freeze_towers: false}"], "frozen towers"),
    ],
)
def test_cache_refused_where_features_would_change(tmp_path, cache_dir, extra, message):
    with pytest.raises(SystemExit, match=message):
        _run(tmp_path, cache_dir, "bad", "--set", "train.cache_features=true", *extra)


class CountingTowers(torch.nn.Module):
    """Stands in for the model: encode_images doubles pixels and counts the images it encoded."""

    def __init__(self):
        super().__init__()
        self.encoded = 0
        self.model = self

    def encode_images(self, pixel_values, eva_pixel_values):
        self.encoded += pixel_values.shape[0]
        return type("F", (), {"sam": pixel_values * 2, "fused": eva_pixel_values * 3})


def test_each_image_is_encoded_once():
    towers = CountingTowers()
    cache = FeatureCache(towers, max_images=10)
    pixels = torch.arange(3 * 2, dtype=torch.float32).reshape(3, 1, 2)
    pixels[2] = pixels[0]  # the same image ("a") twice in one batch
    batch = {"pixel_values": pixels, "eva_pixel_values": pixels + 1, "labels": torch.zeros(3)}
    out = cache.apply(batch, [("s", "a", 1, 1), ("s", "b", 1, 1), ("s", "a", 1, 1)])
    assert towers.encoded == 3  # first sight: all three rows are encoded (duplicates within a batch too)
    again = cache.apply(batch, [("s", "b", 1, 1), ("s", "a", 1, 1), ("s", "b", 1, 1)])
    assert towers.encoded == 3  # nothing new
    torch.testing.assert_close(again["image_embeddings"][1], pixels[0] * 2)
    torch.testing.assert_close(again["fused_features"][0], (pixels[1] + 1) * 3)
    assert "pixel_values" not in out and torch.equal(out["labels"], batch["labels"])
    assert cache.summary()["hit_rate"] == 0.5
