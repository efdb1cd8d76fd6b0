"""Reading annotation JSON and JSON-lines files with readable errors.

Files ending in ``.gz`` are read through gzip transparently. A whole-file JSON that does not parse cannot be partly used: :func:`read_json` raises a
``ValueError`` naming the file and position. A JSON-lines file is read record by record: a line
that does not parse (or is not an object) is skipped and counted in the report, never fatal.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from typing import IO, Any

from ..report import LoadReport


def _open_text(path: str | os.PathLike) -> IO[str]:
    if os.fspath(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse one JSON file.

    Args:
        path: the file.
        what: what the file should be (``"COCO instances JSON"``), for error messages.

    Raises:
        FileNotFoundError / ValueError: with the path and what was expected.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with _open_text(path) as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is not valid JSON ({what} expected): {err}") from None


def iter_jsonl(path: str | os.PathLike, report: LoadReport) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for every JSON object line of ``path`` (1-based numbers).

    Blank lines are ignored; malformed lines and non-object lines are skipped and counted as
    ``"malformed JSON line"``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"JSON-lines file not found: {path}")
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                report.skip("malformed JSON line", f"{path}:{number}: {err}")
                continue
            if not isinstance(record, dict):
                report.skip("malformed JSON line", f"{path}:{number}: a JSON object was expected")
                continue
            yield number, record


__all__ = ["iter_jsonl", "read_json"]
