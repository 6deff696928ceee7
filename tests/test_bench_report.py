"""The benchmark's table, JSON and SVG writer and its load-generator parsers, on synthetic
figures: no load runs here (``make bench`` does that), only what turns figures into the
report users read."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.perf.loads import Sample, log_percentiles, parse_h2load, parse_wrk
from tests.perf.report import (
    MET,
    MISSED,
    SCHEMA,
    WRONG,
    NotMeasured,
    Report,
    Row,
    median,
    ratio_row,
    render_svg,
    render_table,
    write_json,
    write_svg,
)

SVG = "{http://www.w3.org/2000/svg}"


def synthetic() -> Report:
    bare = Row("bare aiohttp, small JSON", 20_000.0, 1.5, 4.0, runs=(19_000, 20_000, 21_000))
    report = Report(started="2026-12-02 05:00 UTC", mode="quick", machine={"cpus": 2})
    report.rows.append(bare)
    report.rows.append(
        ratio_row(
            "HTTP GET key", [1_000, 1_500, 2_000], bare, p50_ms=20.0, p99_ms=90.0, target=">= 0.7"
        )
    )
    report.rows.append(
        ratio_row(
            "HTTP list keys",
            [16_000, 15_000, 14_000],
            bare,
            p50_ms=2.0,
            p99_ms=5.0,
            target=">= 0.7",
        )
    )
    report.rows.append(
        ratio_row(
            "HTTP verify <RS256> & co",
            [30_000.0, 31_000.0, 14_000.0],
            bare,
            p50_ms=1.0,
            p99_ms=2.0,
            target=">= 0.7",
            correct_runs=[False, False, True],
            note="2 wrong run(s)",
        )
    )
    report.rows.append(
        Row(
            "lookups while creating",
            900.0,
            3.0,
            30.0,
            baseline="idle",
            ratio=2.5,
            target="<= 2",
            ratio_of="p99",
        )
    )
    report.memory = {"idle": "RSS 65 MiB"}
    report.not_measured.append(NotMeasured("1 vs 2 workers", "no workers yet"))
    return report


def test_ratio_is_median_over_baseline_median() -> None:
    row = synthetic().row("HTTP GET key")
    assert row.rps == 1_500
    assert row.ratio == pytest.approx(0.075)
    assert row.baseline == "bare aiohttp, small JSON"
    assert row.meets_target is False
    assert synthetic().row("HTTP list keys").meets_target is True


def test_a_wrong_answer_counts_as_zero_whatever_its_speed() -> None:
    row = synthetic().row("HTTP verify <RS256> & co")
    assert row.runs == (0.0, 0.0, 14_000.0)
    assert row.rps == 0.0  # the median of two zeroed fast runs and one right one
    assert row.ratio == 0.0
    assert not row.correct
    assert row.meets_target is False


def test_a_latency_ratio_meets_an_upper_bound_target() -> None:
    row = synthetic().row("lookups while creating")
    assert row.meets_target is False
    assert Row("x", 1.0, ratio=1.9, target="<= 2", ratio_of="p99").meets_target is True


def test_median_of_even_and_odd_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_table_shows_every_column_and_the_verdicts() -> None:
    text = render_table(synthetic())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("scenario"))
    for column in ("req/s", "p50 ms", "p99 ms", "baseline", "ratio", "target"):
        assert column in header
    get_line = next(line for line in lines if line.startswith("HTTP GET key"))
    assert "1,500" in get_line and "0.07x" in get_line and "misses target" in get_line
    assert "2.50x (p99)" in text
    assert "WRONG OR FAILED ANSWERS" in text
    assert "1 vs 2 workers: no workers yet" in text
    assert "idle: RSS 65 MiB" in text


def test_json_holds_every_row_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "bench.json"
    write_json(synthetic(), path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert [row["scenario"] for row in data["rows"]] == [r.scenario for r in synthetic().rows]
    get = next(row for row in data["rows"] if row["scenario"] == "HTTP GET key")
    assert get["runs"] == [1_000, 1_500, 2_000]
    assert get["meets_target"] is False
    assert data["not_measured"] == [{"scenario": "1 vs 2 workers", "why": "no workers yet"}]


def test_svg_is_well_formed_with_one_bar_per_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bench.svg"
    write_svg(synthetic(), path)
    root = ET.fromstring(path.read_text())  # raises on malformed XML (the `<` and `&` above)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "HTTP verify <RS256> & co" in labels
    assert "bare aiohttp, small JSON" not in labels  # a baseline has no ratio to draw
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(bars) == 4
    widths = {bar.find(f"{SVG}title").text: float(bar.get("width", "0")) for bar in bars}  # type: ignore[union-attr]
    # A longer ratio draws a longer bar; the colour says target met, missed or wrong.
    assert widths["0.75x of bare aiohttp, small JSON"] > widths["0.07x of bare aiohttp, small JSON"]
    fills = {bar.find(f"{SVG}title").text: bar.get("fill") for bar in bars}  # type: ignore[union-attr]
    assert fills["0.00x of bare aiohttp, small JSON"] == WRONG
    assert fills["0.07x of bare aiohttp, small JSON"] == MISSED
    assert fills["0.75x of bare aiohttp, small JSON"] == MET
    assert render_svg(synthetic()) == path.read_text()


WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:1/small
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.61ms  310.00us   5.00ms   90.00%
  Latency Distribution
     50%    1.52ms
     75%    1.70ms
     90%    1.90ms
     99%  850.00us
  20000 requests in 1.00s, 3.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  19990.12
Transfer/sec:      2.99MB
"""


def test_wrk_output_gives_rate_percentiles_and_errors() -> None:
    rps, p50, p99, requests, bad = parse_wrk(WRK_OUTPUT)
    assert (rps, requests, bad) == (19990.12, 20000, 7)
    assert p50 == pytest.approx(1.52)
    assert p99 == pytest.approx(0.85)


def test_wrk_with_no_answer_has_no_latency() -> None:
    output = "  0 requests in 1.00s, 0.00B read\nRequests/sec:      0.00\n"
    assert parse_wrk(output) == (0.0, None, None, 0, 0)


def test_h2load_summary_and_log() -> None:
    output = (
        "finished in 1.00s, 3000.50 req/s, 1.2MB/s\n"
        "requests: 3001 total, 3001 started, 3001 done, 2999 succeeded, 2 failed, 1 errored,"
        " 0 timeout\n"
    )
    assert parse_h2load(output) == (3000.50, 3001, 3)
    log = "\n".join(f"1700000000{i:06d}\t200\t{(i + 1) * 1000}" for i in range(100))
    assert log_percentiles(log) == (50.5, 100.0)
    assert log_percentiles("") == (None, None)


def test_a_run_without_a_checked_sample_is_not_correct() -> None:
    assert Sample(10.0, 1.0, 2.0, 10, 0, 5, 0).correct
    assert not Sample(10.0, 1.0, 2.0, 10, 0, 0, 0).correct
    assert not Sample(10.0, 1.0, 2.0, 10, 1, 5, 0).correct
    assert not Sample(10.0, 1.0, 2.0, 10, 0, 5, 1).correct
