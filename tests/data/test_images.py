"""load_image / inspect_image on every awkward image kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from pixtok.data.images import (
    ImageError,
    ids_to_panoptic_rgb,
    image_cell,
    inspect_image,
    load_image,
    panoptic_ids,
)


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    PIL.Image.fromarray(np.full((5, 7), 90, np.uint8)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (7, 5)
    assert np.asarray(image).tolist()[0][0] == [90, 90, 90]


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (0, 0, 0, 255)  # opaque black
    pixels[0, 1] = (0, 0, 0, 0)  # transparent (hidden colour black) -> white
    PIL.Image.fromarray(pixels, "RGBA").save(path)
    array = np.asarray(load_image(path))
    assert array[0, 0].tolist() == [0, 0, 0] and array[0, 1].tolist() == [255, 255, 255]
    assert inspect_image(path).needs_repair


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    PIL.Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    image = load_image(path)
    assert image.mode == "RGB"
    r, g, b = np.asarray(image)[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60
    assert inspect_image(path).mode == "CMYK" and not inspect_image(path).needs_repair


def test_16bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    PIL.Image.fromarray(values).save(path)
    array = np.asarray(load_image(path))[..., 0]
    assert array.tolist() == [[0, 128, 255]]  # v / 257
    assert inspect_image(path).needs_repair
    cell = image_cell(str(path), inspect_image(path))
    assert cell["path"] is None and cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n"


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    stored = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    PIL.Image.fromarray(stored).save(path, exif=exif)
    assert load_image(path).size == (10, 20)
    check = inspect_image(path)
    assert (check.width, check.height, check.exif_orientation) == (10, 20, 6)


def test_missing_and_truncated_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(ImageError, match="not found"):
        inspect_image(tmp_path / "absent.jpg")
    full = tmp_path / "full.jpg"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    truncated = tmp_path / "truncated.jpg"
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="truncated"):
        inspect_image(truncated, check="decode")
    assert inspect_image(truncated, check="header").width == 64  # header mode cannot see it
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot read"):
        inspect_image(garbage, check="header")
    with pytest.raises(ValueError, match="check_images must be one of"):
        inspect_image(full, check="thorough")


def test_panoptic_id_round_trip() -> None:
    ids = np.array([[0, 1, 256], [65536, 3937500, 16777215]], dtype=np.int64)
    rgb = ids_to_panoptic_rgb(ids)
    assert rgb[1, 1].tolist() == [3937500 % 256, (3937500 // 256) % 256, 3937500 // 65536]
    np.testing.assert_array_equal(panoptic_ids(PIL.Image.fromarray(rgb)), ids)
