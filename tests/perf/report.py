"""The benchmark's one table: rows of figures, printed as text, written as JSON and as an SVG
chart of the ratios.

Pure: it formats figures it is given, so ``tests/test_bench_report.py`` can check it on
synthetic numbers without any load. A row's ``ratio`` is its rate over its baseline's rate,
both medians of the same run (absolute rates on a shared machine mean little; the ratio is
the figure to read), except where ``ratio_of`` says it compares latencies instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Literal

RatioOf = Literal["rate", "p99"]
SCHEMA = "signing-keys-bench/1"


@dataclass(frozen=True, slots=True)
class Row:
    """One scenario's medians. ``correct`` false means some load run saw a wrong status or
    a wrong body: that run's rate counts as zero, whatever the load generator measured."""

    scenario: str
    rps: float | None
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline: str | None = None
    ratio: float | None = None
    target: str | None = None
    correct: bool = True
    ratio_of: RatioOf = "rate"
    runs: tuple[float, ...] = ()
    note: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.baseline is None and self.ratio is None

    @property
    def meets_target(self) -> bool | None:
        """Whether the ratio meets ``target`` (``">= 0.7"`` / ``"<= 2"``); None if no target."""
        if self.target is None or self.ratio is None:
            return None
        op, _, bound = self.target.partition(" ")
        value = float(bound)
        return self.ratio >= value if op == ">=" else self.ratio <= value


@dataclass(frozen=True, slots=True)
class NotMeasured:
    scenario: str
    why: str


@dataclass(slots=True)
class Report:
    """Everything one ``make bench`` run found, with what it ran on."""

    started: str
    mode: str
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    not_measured: list[NotMeasured] = field(default_factory=list)

    def row(self, scenario: str) -> Row:
        for row in self.rows:
            if row.scenario == scenario:
                return row
        raise KeyError(scenario)


def ratio_row(
    scenario: str,
    rates: Sequence[float],
    baseline: Row,
    *,
    p50_ms: float | None,
    p99_ms: float | None,
    target: str | None = None,
    correct_runs: Sequence[bool] | None = None,
    note: str = "",
) -> Row:
    """A service row: the median of its runs' rates, divided by its baseline's median. A run
    with a wrong (or failed) answer counts as zero, however fast it was."""
    correct = list(correct_runs) if correct_runs is not None else [True] * len(rates)
    counted = [rate if ok else 0.0 for rate, ok in zip(rates, correct, strict=True)]
    rps = median(counted)
    ratio = rps / baseline.rps if baseline.rps else None
    return Row(
        scenario,
        rps,
        p50_ms,
        p99_ms,
        baseline=baseline.scenario,
        ratio=ratio,
        target=target,
        correct=all(correct),
        runs=tuple(counted),
        note=note,
    )


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


# -- text ------------------------------------------------------------------------------------

COLUMNS = ("scenario", "req/s", "p50 ms", "p99 ms", "baseline", "ratio", "target", "")


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio_text(row: Row) -> str:
    if row.ratio is None:
        return "-"
    suffix = " (p99)" if row.ratio_of == "p99" else ""
    return f"{row.ratio:.2f}x{suffix}"


def _verdict(row: Row, width: int = 110) -> str:
    """The last column: target verdict and note, cut to ``width`` (the JSON has it all)."""
    if not row.correct:
        text = f"WRONG OR FAILED ANSWERS (such runs count as 0): {row.note}"
    elif row.meets_target is None:
        text = row.note
    else:
        verdict = "meets target" if row.meets_target else "misses target"
        text = f"{verdict}; {row.note}" if row.note else verdict
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(report: Report) -> str:
    """The table as aligned text, then memory and what was not measured."""
    cells = [
        (
            row.scenario,
            _number(row.rps),
            _number(row.p50_ms, 2),
            _number(row.p99_ms, 2),
            row.baseline or "(baseline)",
            _ratio_text(row),
            row.target or "",
            _verdict(row),
        )
        for row in report.rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(COLUMNS, *cells, strict=False)]
    lines = [f"signing-keys benchmark, {report.started}, mode {report.mode}"]
    lines.append(", ".join(f"{key} {value}" for key, value in report.machine.items()))
    for index, line in enumerate([COLUMNS, *cells]):
        text = "  ".join(
            str(cell).rjust(width) if 0 < col < 4 else str(cell).ljust(width)
            for col, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        lines.append(text.rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths).rstrip())
    if report.memory:
        lines.append("")
        lines.append("memory (resident set size of the service process):")
        for key, value in report.memory.items():
            lines.append(f"  {key}: {value}")
    if report.not_measured:
        lines.append("")
        lines.append("not measured:")
        for item in report.not_measured:
            lines.append(f"  {item.scenario}: {item.why}")
    return "\n".join(lines)


# -- JSON ------------------------------------------------------------------------------------


def to_json(report: Report) -> dict[str, Any]:
    rows = []
    for row in report.rows:
        data = asdict(row)
        data["runs"] = list(row.runs)
        data["meets_target"] = row.meets_target
        rows.append(data)
    return {
        "schema": SCHEMA,
        "started": report.started,
        "mode": report.mode,
        "machine": report.machine,
        "rows": rows,
        "memory": report.memory,
        "not_measured": [asdict(item) for item in report.not_measured],
    }


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2, allow_nan=False) + "\n")


# -- SVG -------------------------------------------------------------------------------------

WRONG, MISSED, MET = "#c0392b", "#e67e22", "#2e86c1"
BAR_HEIGHT = 18
GAP = 6
LABEL_WIDTH = 260
CHART_WIDTH = 420
MARGIN = 10


def render_svg(report: Report) -> str:
    """A horizontal bar per row that has a ratio, a dashed line at its target: blue meets
    it, orange misses it, red had wrong answers (counted as zero). Plain SVG: a dozen lines
    do not need a plotting library."""
    rows = [row for row in report.rows if row.ratio is not None]
    top = 2 * BAR_HEIGHT + MARGIN
    height = top + len(rows) * (BAR_HEIGHT + GAP) + 2 * MARGIN
    width = LABEL_WIDTH + CHART_WIDTH + 90
    scale_max = max([1.0, *(row.ratio or 0.0 for row in rows), *_target_values(rows)])
    scale = CHART_WIDTH / scale_max
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN}" y="{BAR_HEIGHT}" font-weight="bold">'
        f"{escape(f'ratio to the same-run baseline ({report.mode}, {report.started})')}</text>",
        f'<text x="{width - MARGIN}" y="{BAR_HEIGHT}" text-anchor="end">'
        f'<tspan fill="{MET}">meets target</tspan> · <tspan fill="{MISSED}">misses</tspan> · '
        f'<tspan fill="{WRONG}">wrong answers</tspan> · dashed: target</text>',
    ]
    one = LABEL_WIDTH + scale
    parts.append(
        f'<line x1="{one:.1f}" y1="{top - 4}" x2="{one:.1f}" y2="{height - MARGIN}" '
        'stroke="#888" stroke-width="1"/>'
    )
    parts.append(f'<text x="{one:.1f}" y="{top - 6}" text-anchor="middle">1.0x</text>')
    for index, row in enumerate(rows):
        y = top + index * (BAR_HEIGHT + GAP)
        ratio = row.ratio or 0.0
        meets = row.meets_target
        colour = WRONG if not row.correct else MISSED if meets is False else MET
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + BAR_HEIGHT - 5}" text-anchor="end">'
            f"{escape(row.scenario)}</text>"
        )
        parts.append(
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{max(ratio * scale, 1):.1f}" '
            f'height="{BAR_HEIGHT}" fill="{colour}"><title>{escape(_ratio_text(row))} of '
            f"{escape(row.baseline or '')}</title></rect>"
        )
        parts.append(
            f'<text x="{LABEL_WIDTH + ratio * scale + 4:.1f}" y="{y + BAR_HEIGHT - 5}">'
            f"{escape(_ratio_text(row))}</text>"
        )
        for value in _target_values([row]):
            x = LABEL_WIDTH + value * scale
            parts.append(
                f'<line x1="{x:.1f}" y1="{y - 2}" x2="{x:.1f}" y2="{y + BAR_HEIGHT + 2}" '
                'stroke="black" stroke-dasharray="3,2"/>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _target_values(rows: Sequence[Row]) -> list[float]:
    return [float(row.target.split(" ")[1]) for row in rows if row.target]


def write_svg(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_svg(report))
