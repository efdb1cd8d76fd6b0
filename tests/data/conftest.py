"""Shared fixtures for pixtok.data tests: real sample files (tests/fixtures) and a tiny benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pixtok.data.synthetic import write_benchmark

    root = tmp_path_factory.mktemp("synth")
    write_benchmark(root, seed=3, num_images=20, image_size=64)
    return root
