"""The README's quick start runs as written (its first ```python block)."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert os.path.isdir(tmp_path / "my-model")
    detections = namespace["proc"].post_process_object_detection(namespace["gen"], target_sizes=[(96, 128)])
    assert set(detections[0]) == {"scores", "labels", "boxes"}
    boxes = detections[0]["boxes"]
    assert boxes.shape[-1] == 4 and bool(((boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])).all())
