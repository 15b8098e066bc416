"""The one table format the benchmarks print: (metric, value, target) rows in Markdown."""

from __future__ import annotations

Row = tuple[str, str, str]


def judge(met: bool, target: str) -> str:
    """A target cell: the target and whether it was met."""
    return f"{target}: {'met' if met else 'NOT met'}"


def markdown(rows: list[Row]) -> str:
    lines = ["| metric | value | target |", "|---|---:|---|"]
    lines += [f"| {m} | {v} | {t} |" for m, v, t in rows]
    return "\n".join(lines)
