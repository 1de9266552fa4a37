"""The history and the inspection report, against a known history: two days with a gap in one
terminal's data, compared with the two days before."""

from __future__ import annotations

import html.parser
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.checks import History, Status, TerminalPlan, render_report
from agent.checks.data import Anomaly
from agent.checks.framework import CheckResult
from agent.checks.history import DAY
from agent.model import Quality, Reading

NOW = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=2)
BEFORE = NOW - timedelta(days=4)


def reading(terminal: str, point: str, value: object, at: datetime) -> Reading:
    return Reading(terminal, point, value, "m", Quality.GOOD, at, "holding:0")  # type: ignore[arg-type]


def polls(start: datetime, period: int, count: int) -> Iterator[datetime]:
    for i in range(count):
        yield start + timedelta(seconds=i * period)


def check(status: Status, at: datetime, check_id: str = "system.disk") -> CheckResult:
    return CheckResult(check_id, "system", status, 1.0, "%", 5.0, str(status), at, at)


def alarm(action: str, at: datetime) -> dict[str, object]:
    status, previous = ("fail", "ok") if action == "raised" else ("ok", "fail")
    return {
        "check": "system.disk",
        "family": "system",
        "action": action,
        "status": status,
        "previous": previous,
        "message": f"disk {action}",
        "at": at.isoformat(),
    }


def known_history(path: Path) -> History:
    """dam: every 60 s, 2 points; gauge: every 300 s, 1 point.

    previous period: dam complete, gauge answers every other poll; 1 anomaly, 4 alarms raised
    and 4 cleared, 5 hours of warnings. This period: dam misses 288 polls (4.8 h), gauge
    complete; 3 anomalies, 2 raised and 1 cleared, 3 failing hours, 2 agent starts.
    """
    history = History(path, clock=lambda: NOW.timestamp())
    history.open()
    history.set_meta("gateway", "gw-reservoir-7")
    history.set_terminals({"dam": TerminalPlan(60, 2), "gauge": TerminalPlan(300, 1)}, BEFORE)
    for n, at in enumerate(polls(BEFORE, 60, 2880)):
        history.observe(
            [reading("dam", "level", 100 + n % 60 / 10, at), reading("dam", "state", "OK", at)]
        )
    for n, at in enumerate(polls(BEFORE, 300, 576)):
        if n % 2 == 0:
            history.observe([reading("gauge", "rain", float(n), at)])
        else:
            history.observe(
                [Reading("gauge", "rain", None, "mm", Quality.BAD, at, "holding:0", "timeout")]
            )
    for n, at in enumerate(polls(SINCE, 60, 2880)):
        if 1440 <= n < 1440 + 288:
            continue  # the terminal stopped answering for 4.8 hours
        history.observe(
            [reading("dam", "level", 110 + n % 60 / 10, at), reading("dam", "state", "OK", at)]
        )
    for n, at in enumerate(polls(SINCE, 300, 576)):
        history.observe([reading("gauge", "rain", float(n), at)])
    for h in range(5):
        history.record_results([check(Status.WARN, BEFORE + timedelta(hours=10 + h))])
    for h in range(48):
        status = Status.FAIL if 20 <= h < 23 else Status.OK
        history.record_results([check(status, SINCE + timedelta(hours=h))])
    for i in range(4):
        history.record_alarms(
            [
                alarm("raised", BEFORE + timedelta(hours=i * 6)),
                alarm("cleared", BEFORE + timedelta(hours=i * 6 + 1)),
            ]
        )
    history.record_alarms(
        [
            alarm("raised", SINCE + timedelta(hours=20)),
            alarm("cleared", SINCE + timedelta(hours=23)),
            alarm("raised", SINCE + timedelta(hours=40)),
        ]
    )
    history.record_anomalies(
        [
            Anomaly("gauge", "rain", "counter", BEFORE + timedelta(hours=3), 1.0, "went back"),
            Anomaly("dam", "level", "spike", SINCE + timedelta(hours=5), 140.0, "jumped to 140"),
            Anomaly("dam", "level", "spike", SINCE + timedelta(hours=6), 141.0, "jumped to 141"),
            Anomaly("gauge", "rain", "counter", SINCE + timedelta(hours=7), 0.0, "went back"),
        ]
    )
    history.record_start(SINCE + timedelta(hours=24))
    history.record_start(SINCE + timedelta(hours=24, minutes=48))
    history.flush()
    return history


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    h = known_history(tmp_path / "history.db")
    yield h
    h.close()


def test_the_history_gives_expected_and_received_figures_per_terminal(history: History) -> None:
    dam, gauge = history.terminals(SINCE, NOW)
    assert (dam.name, dam.expected_polls, dam.good_polls, dam.expected_readings) == (
        "dam",
        2880,
        2592,
        5760,
    )
    assert (dam.good_readings, dam.bad_readings, dam.availability) == (5184, 0, 0.9)
    assert (gauge.expected_polls, gauge.good_polls, gauge.completeness) == (576, 576, 1.0)
    dam0, gauge0 = history.terminals(BEFORE, SINCE)
    assert dam0.completeness == 1.0
    assert (gauge0.polls, gauge0.good_polls, gauge0.bad_readings, gauge0.completeness) == (
        576,
        288,
        288,
        0.5,
    )
    [level] = history.point_series("dam", "level", SINCE, SINCE + timedelta(hours=1))
    assert (level.count, level.min, level.max, level.last) == (60, 110.0, 115.9, 115.9)
    assert level.mean == pytest.approx(112.95)
    assert history.numeric_points(SINCE, NOW) == [("dam", "level", "m"), ("gauge", "rain", "m")]
    [disk] = history.checks(SINCE, NOW)
    assert (disk.worst, disk.fail_hours, disk.ok, disk.fail) == (Status.FAIL, 3, 45, 3)


def test_the_markdown_report_states_the_numbers(history: History) -> None:
    text = render_report(history, SINCE, NOW, "md")
    assert text.startswith("# Inspection report — gw-reservoir-7\n")
    assert "Period: 2026-11-20 00:00 UTC to 2026-11-22 00:00 UTC (2d)" in text
    assert "| data completeness | 90.9% |" in text
    assert "| alarms raised / cleared | 2 / 1 |" in text
    assert "| anomalies found | 3 |" in text
    assert "| dam | 90.0% | 2592 / 2880 | 90.0% | 5184 / 5760 | 0 | 100.0% | worse |" in text
    assert "| gauge | 100.0% | 576 / 576 | 100.0% | 576 / 576 | 0 | 50.0% | better |" in text
    assert "| data completeness (all terminals) | 90.9% | 95.5% | worse |" in text
    assert "| alarms raised | 2 | 4 | better |" in text
    assert "| anomalies found | 3 | 1 | worse |" in text
    assert "| check-hours failing | 3 | 0 | worse |" in text
    assert "| dam.level | spike | 2 |" in text
    assert "| system.disk | fail | 3 | 0 |" in text
    assert "Compared with the previous period: 2 figures better, 5 worse." in text
    assert "**dam.level**" in text and "**gauge.rain**" in text


class Parsed(html.parser.HTMLParser):
    """Collects tags, attributes and text, and checks that every element is closed."""

    VOID = frozenset({"meta", "br", "rect", "line", "polyline", "polygon", "circle"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_html_report_is_one_self_contained_file_with_inline_svg_charts(
    history: History,
) -> None:
    page = render_report(history, SINCE, NOW, "html")
    parsed = Parsed()
    parsed.feed(page)
    parsed.close()
    assert parsed.open == []
    text = " ".join(parsed.text)
    # one completeness chart, one trend per numeric point
    assert parsed.tags.count("svg") == 3
    assert parsed.tags.count("polyline") >= 2
    bars = [v for k, v in parsed.attrs if k == "width" and v and re.fullmatch(r"[\d.]+", v)]
    assert "342.0" in bars  # dam's bar: 90% of 380 px
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    external = [v for k, v in parsed.attrs if k in ("src", "href") and v]
    assert external == []
    assert "Inspection report — gw-reservoir-7" in text
    assert "2592 / 2880" in text and "90.9%" in text and "95.5%" in text
    assert "better" in text and "worse" in text
    assert "jumped to 141" in text
    assert "@media print" in page


def test_a_report_without_a_previous_period_says_so(tmp_path: Path) -> None:
    with History(tmp_path / "h.db", clock=lambda: NOW.timestamp()) as history:
        history.set_terminals({"dam": TerminalPlan(60, 1)}, NOW - timedelta(hours=2))
        for at in polls(NOW - timedelta(hours=2), 60, 120):
            history.observe([reading("dam", "level", 1.0, at)])
        history.flush()
        text = render_report(history, NOW - timedelta(hours=1, minutes=30), NOW, "md")
        assert "No history for the previous period" in text
        assert "| dam | 100.0% | 120 / 120 |" in text  # the period starts on the whole hour
        page = render_report(history, NOW - timedelta(hours=1), NOW, "html")
        assert page.count("<svg") == 2
        with pytest.raises(ValueError, match="unknown report format"):
            render_report(history, NOW - timedelta(hours=1), NOW, "pdf")  # type: ignore[arg-type]


def test_the_history_is_bounded_by_retention_and_row_caps(tmp_path: Path) -> None:
    clock = [NOW.timestamp()]
    with History(
        tmp_path / "h.db", retention=30 * DAY, max_events=100, clock=lambda: clock[0]
    ) as h:
        old = NOW - timedelta(days=40)
        h.observe([reading("dam", "level", 1.0, old)])
        h.record_results([check(Status.OK, old)])
        h.record_anomalies(
            [
                Anomaly("dam", "level", "spike", NOW - timedelta(minutes=i), 1.0, "x")
                for i in range(150)
            ]
        )
        h.observe([reading("dam", "level", 2.0, NOW)])
        h.flush()
        counts = h.counts()
        assert counts["anomalies"] == 100
        assert counts["point_hours"] == 1 and counts["check_hours"] == 0
        kept = h.anomalies(NOW - timedelta(days=1), NOW + timedelta(minutes=1))
        assert kept[0].at == NOW - timedelta(minutes=99)  # the newest are kept


def test_a_damaged_history_file_is_set_aside_and_a_fresh_one_started(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not a database" * 100)
    with History(path) as history:
        assert history.recovered_from is not None and history.recovered_from.exists()
        history.observe([reading("dam", "level", 1.0, NOW)])
        history.flush()
        assert history.counts()["point_hours"] == 1


def test_a_reporting_terminal_is_expected_to_carry_every_point_it_reported(tmp_path: Path) -> None:
    with History(tmp_path / "h.db", clock=lambda: NOW.timestamp()) as history:
        start = NOW - timedelta(hours=4)
        history.set_terminals({"station": TerminalPlan(3600, None)}, start)
        for i, at in enumerate(polls(start, 3600, 4)):
            batch = [reading("station", "rain", 1.0, at)]
            if i != 2:  # one report came without its water level
                batch.append(reading("station", "level", 2.0, at))
            history.observe(batch)
        history.flush()
        [station] = history.terminals(start, NOW)
        assert (station.expected_polls, station.good_polls) == (4, 4)
        assert (station.expected_readings, station.good_readings) == (8, 7)
        assert station.completeness == 7 / 8
