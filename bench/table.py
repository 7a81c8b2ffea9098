"""One benchmark result and the table `python -m bench` prints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """A measured figure beside its goal; `met` is None for figures that are only reported."""

    name: str
    measured: str
    goal: str
    met: bool | None

    @property
    def verdict(self) -> str:
        """`met`, `MISSED` or `report`."""
        return "report" if self.met is None else ("met" if self.met else "MISSED")


def render(figures: list[Figure]) -> str:
    """A Markdown table of every figure (also readable in a terminal)."""
    rows = [("Figure", "Measured", "Goal", "")] + [(f.name, f.measured, f.goal, f.verdict) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
