"""What a loader repaired, skipped or noticed, counted and kept with the dataset it built.

Every ``pixtok.data.load`` call fills one :class:`LoadReport`. The report travels inside the returned
``datasets.Dataset`` (as JSON in ``dataset.info.description``, next to the category table) so that it
survives ``map``/``filter``/``save_to_disk`` without any module-level state; read it back with
:func:`pixtok.data.load_report`. The loader also logs the summary once on the ``pixtok.data`` logger
(WARNING when anything was skipped or repaired, INFO otherwise).

Three kinds of entries, each a reason string with a count and the first few readable messages:

* ``skipped``  — a record left out (its image is unreadable, its box is NaN, …);
* ``repaired`` — a record kept after a fix (box clipped to the image, 16-bit image rescaled, …);
* ``notes``    — kept unchanged but worth knowing (images without annotations, rows without image).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger("pixtok.data")

MAX_EXAMPLES = 3
"""How many example messages a report keeps per reason."""

_KINDS = ("skipped", "repaired", "notes")


@dataclass
class LoadReport:
    """Counts of what one load repaired, skipped or noticed.

    Args:
        source (`str`): the loader's source name (``"coco"``, ``"refcoco"``, …).
        rows (`int`): rows in the returned dataset.
        skipped / repaired / notes (`dict[str, int]`): count per reason.
        examples (`dict[str, list[str]]`): up to :data:`MAX_EXAMPLES` messages per reason.
    """

    source: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _add(self, kind: str, reason: str, message: str, count: int) -> None:
        if count <= 0:
            return
        table = getattr(self, kind)
        table[reason] = table.get(reason, 0) + count
        kept = self.examples.setdefault(reason, [])
        if message and len(kept) < MAX_EXAMPLES:
            kept.append(message)
        logger.debug("%s %s (%s): %s", self.source, kind, reason, message)

    def skip(self, reason: str, message: str = "", count: int = 1) -> None:
        """Count a record left out for ``reason``; ``message`` names the record."""
        self._add("skipped", reason, message, count)

    def repair(self, reason: str, message: str = "", count: int = 1) -> None:
        """Count a record kept after a fix."""
        self._add("repaired", reason, message, count)

    def note(self, reason: str, message: str = "", count: int = 1) -> None:
        """Count something kept unchanged but worth reporting."""
        self._add("notes", reason, message, count)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def num_repaired(self) -> int:
        return sum(self.repaired.values())

    def summary(self) -> str:
        """One readable paragraph: rows, then each reason with its count and first example."""
        lines = [f"pixtok.data.load({self.source!r}): {self.rows} rows"]
        for kind in _KINDS:
            for reason, count in sorted(getattr(self, kind).items()):
                example = self.examples.get(reason) or [""]
                suffix = f" — e.g. {example[0]}" if example[0] else ""
                lines.append(f"  {kind} {count} × {reason}{suffix}")
        return "\n".join(lines)

    def log(self) -> None:
        """Log :meth:`summary` once (WARNING when something was skipped or repaired)."""
        level = logging.WARNING if self.num_skipped or self.num_repaired else logging.INFO
        logger.log(level, self.summary())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "rows": self.rows,
            "skipped": dict(self.skipped),
            "repaired": dict(self.repaired),
            "notes": dict(self.notes),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> LoadReport:
        return cls(
            source=data["source"],
            rows=int(data.get("rows", 0)),
            skipped=dict(data.get("skipped", {})),
            repaired=dict(data.get("repaired", {})),
            notes=dict(data.get("notes", {})),
            examples={k: list(v) for k, v in data.get("examples", {}).items()},
        )

    def __str__(self) -> str:
        return self.summary()


__all__ = ["MAX_EXAMPLES", "LoadReport", "logger"]
