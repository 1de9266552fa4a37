"""The history and the inspection report, against known histories: two days with a gap in one
terminal's data, compared with the two days before; a site where one terminal is dead beside a
station that reports far more often than expected; and three minutes of history. The reports
are read as text, parsed as HTML, and rendered in headless Chromium."""

from __future__ import annotations

import html.parser
import re
import string
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFilter

from agent import cli
from agent.checks import History, Status, TerminalPlan, build_checks
from agent.checks.alarms import alarm_event
from agent.checks.data import Anomaly
from agent.checks.framework import CheckResult
from agent.checks.history import DAY
from agent.checks.report import build_report, render, render_report
from agent.checks.report_charts import COLOURS
from agent.checks.report_print import headless
from agent.checks.report_words import CATALOGUES, Words
from agent.config import Config, ConfigError, load_config, parse_config
from agent.model import Quality, Reading

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=2)
BEFORE = NOW - timedelta(days=4)


class Clock:
    """A history's clock that the test moves: where a run of the agent ends is the clock of its
    last flush."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


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
    complete; 3 anomalies, 2 raised and 1 cleared, 3 failing hours, 2 agent starts (a restart:
    the agent never stopped for long).
    """
    clock = Clock(NOW)
    history = History(path, clock=clock)
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
    clock.at = SINCE + timedelta(hours=24, minutes=48)
    history.flush()  # the first run's last mark: it stopped to restart at once
    history.record_start(clock.at)
    clock.at = NOW
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
    assert dam.planned == 2 * DAY and dam.missing_seconds == pytest.approx(288 * 60)
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
    assert disk.last_seen == NOW  # evaluated in the last hour of the period
    assert history.begins() == BEFORE


def test_the_markdown_report_states_the_numbers(history: History) -> None:
    text = render_report(history, SINCE, NOW, "md")
    assert text.startswith("# Inspection report — gw-reservoir-7\n")
    assert "- Period: 20 Nov 2026 00:00 to 22 Nov 2026 00:00 (2 days)" in text
    # the mean of the terminals' own completeness: (90 % + 100 %) / 2
    assert "| data completeness (mean of the terminals) | 95.0% |" in text
    assert "| worst terminal | dam: 90.0% complete |" in text
    assert "| alarms raised / cleared | 2 / 1 |" in text
    assert "| anomalies found | 3 |" in text
    assert (
        "| dam | 90.0% | 2,592 / 2,880 | 90.0% | 5,184 / 5,760 | 0 | 4 h 48 min | 100.0% | worse |"
        in text
    )
    assert "| gauge | 100.0% | 576 / 576 | 100.0% | 576 / 576 | 0 | — | 50.0% | better |" in text
    # previous period: dam 100 %, gauge 50 % -> 75 %
    assert "| data completeness (mean) | 95.0% | 75.0% | better |" in text
    assert "| alarms raised | 2 | 4 | better |" in text
    assert "| anomalies found | 3 | 1 | worse |" in text
    assert "| checks that failed | 1 | 0 | worse |" in text
    assert "| dam.level | spike | 2 |" in text
    # no status change was recorded for the disk check: its failing hours bound the time
    assert "| gateway disk nearly full (`system.disk`) | failing | up to 3 h | — |" in text
    assert "completeness rose from 75.0% to 95.0%" in text
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


def parse(page: str) -> Parsed:
    parsed = Parsed()
    parsed.feed(page)
    parsed.close()
    assert parsed.open == []
    return parsed


def test_the_html_report_is_one_self_contained_file_with_inline_svg_charts(
    history: History,
) -> None:
    page = render_report(history, SINCE, NOW, "html")
    parsed = parse(page)
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
    assert "2,592 / 2,880" in text and "95.0%" in text and "75.0%" in text
    assert "better" in text and "worse" in text
    assert "jumped to 141" in text
    assert "@page{size:A4" in page and "@media print" in page
    assert "section.page{break-before:page}" in page


def test_a_report_without_a_previous_period_says_so(tmp_path: Path) -> None:
    with History(tmp_path / "h.db", clock=lambda: NOW.timestamp()) as history:
        history.set_terminals({"dam": TerminalPlan(60, 1)}, NOW - timedelta(hours=2))
        for at in polls(NOW - timedelta(hours=2), 60, 120):
            history.observe([reading("dam", "level", 1.0, at)])
        history.flush()
        text = render_report(history, NOW - timedelta(hours=1, minutes=30), NOW, "md")
        assert "There is no earlier history to compare with." in text
        assert "| dam | 100.0% | 120 / 120 |" in text  # the period starts on the whole hour
        page = render_report(history, NOW - timedelta(hours=1), NOW, "html")
        assert page.count("<svg") == 2
        with pytest.raises(ValueError, match="unknown report format"):
            render_report(history, NOW - timedelta(hours=1), NOW, "pdf")  # type: ignore[arg-type]


# -- a site with a dead terminal beside a station that reports more than expected -----------------

SITE = """
gateway: {{id: gw-reservoir-7}}
state_dir: {state}
site:
  name: 青山水库
  location: 青山镇
  owner: 青山水库管理处
  contact: 王工 138-0000-0000
  timezone: Asia/Shanghai
checks:
  data:
    dam-plc.level: {{range: [0, 200]}}
terminals:
  - name: dam-plc
    protocol: modbus-tcp
    host: 127.0.0.1
    period: 1m
    points:
      - {{name: level, address: 0, type: float32, unit: m, label: 库水位}}
      - {{name: gate, address: 2, unit: m}}
  - name: dead-plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 1503
    period: 1m
    points:
      - {{name: flow, address: 0, unit: m3/s}}
  - {{name: river-1, protocol: sl651, station: "0012345678", expected_interval: 1h}}
sl651:
  listen: ["127.0.0.1:0"]
"""


def site_config(state: Path) -> Config:
    return parse_config(SITE.format(state=state), state / "config.yaml")


def changed(check_id: str, status: Status, at: datetime) -> list[CheckResult]:
    family = check_id.split(".", 1)[0]
    return [CheckResult(check_id, family, status, None, "", None, str(status), at, at)]


def site_history(path: Path) -> History:
    """dam-plc: every 60 s, 2 points, misses 288 polls (4.8 h) in this period; dead-plc: every
    60 s, answered every poll before and none in this period; river-1: an SL651 station expected
    hourly that reports Z and PJ every 60 s in this period (60 times more than expected), hourly
    before. The disk check fails for 2 minutes; dead-plc's freshness check fails from 2 minutes
    into the period to its end, across an agent restart. The agent started at BEFORE and at
    SINCE + 24 h (a restart: it was never off for long)."""
    clock = Clock(NOW)
    history = History(path, clock=clock)
    history.open()
    history.set_meta("gateway", "gw-reservoir-7")
    plans = {
        "dam-plc": TerminalPlan(60, 2),
        "dead-plc": TerminalPlan(60, 1),
        "river-1": TerminalPlan(3600, None),
    }
    history.set_terminals(plans, BEFORE)
    for n, at in enumerate(polls(BEFORE, 60, 2 * 2880)):
        if not (2880 + 1440 <= n < 2880 + 1440 + 288):
            history.observe(
                [
                    reading("dam-plc", "level", 100 + n % 60 / 10, at),
                    reading("dam-plc", "gate", 1, at),
                ]
            )
        if n < 2880:
            history.observe([reading("dead-plc", "flow", 3.5, at)])
        else:
            history.observe(
                [Reading("dead-plc", "flow", None, "m3/s", Quality.BAD, at, "holding:0", "timeout")]
            )
        if n >= 2880 or n % 60 == 0:
            history.observe([reading("river-1", "Z", 12.5, at), reading("river-1", "PJ", 0.5, at)])
    history.record_start(BEFORE)
    clock.at = SINCE + timedelta(hours=24)
    history.flush()  # the first run's last mark: it stopped to restart at once
    history.record_start(clock.at)
    clock.at = NOW
    for check_id in ("system.disk", "terminals.freshness:dead-plc"):
        first = changed(check_id, Status.OK, BEFORE + timedelta(seconds=5))
        history.record_results(first, first)
    for hour in range(1, 96):  # hourly evaluations: the checks ran until the end
        at = BEFORE + timedelta(hours=hour)
        history.record_results(changed("system.disk", Status.OK, at))
        status = Status.FAIL if at > SINCE else Status.OK
        history.record_results(changed("terminals.freshness:dead-plc", status, at))
    for at, check_id, status in (
        (SINCE + timedelta(hours=20), "system.disk", Status.FAIL),
        (SINCE + timedelta(hours=20, minutes=2), "system.disk", Status.OK),
        (SINCE + timedelta(minutes=2), "terminals.freshness:dead-plc", Status.FAIL),
        # after the restart every check's first result is a change
        (SINCE + timedelta(hours=24, seconds=10), "system.disk", Status.OK),
        (SINCE + timedelta(hours=24, seconds=10), "terminals.freshness:dead-plc", Status.FAIL),
    ):
        result = changed(check_id, status, at)
        history.record_results(result, result)
    stale_at = SINCE + timedelta(minutes=3)
    stale = CheckResult(
        "terminals.freshness:dead-plc",
        "terminals",
        Status.FAIL,
        181.0,
        "s",
        180.0,
        "stale: last good reading 181s ago, over 180s",
        stale_at,
        stale_at,
    )
    history.record_alarms([alarm_event(stale, Status.OK, Status.FAIL, stale_at)])
    history.flush()
    return history


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[History, Config]]:
    h = site_history(tmp_path / "history.db")
    yield h, site_config(tmp_path)
    h.close()


def site_report(site: tuple[History, Config], language: str = "en", format: str = "md") -> str:
    history, config = site
    report = build_report(
        history,
        SINCE,
        NOW,
        language=language,  # type: ignore[typeddict-item]
        site=config.site,
        names=config.point_label,
    )
    return render(report, format)  # type: ignore[arg-type]


def section(text: str, heading: str) -> str:
    """The body of a Markdown section."""
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_site_figures_are_the_mean_of_each_terminals_capped_figure(
    site: tuple[History, Config],
) -> None:
    history, _ = site
    dam, dead, river = history.terminals(SINCE, NOW)
    assert (dam.completeness, dead.completeness, river.completeness) == (0.9, 0.0, 1.0)
    assert river.good_readings == 60 * river.expected_readings  # the station over-reports ...
    # ... so much that the sum over the site would have called it complete, dead terminal and all
    assert (
        sum(t.good_readings for t in (dam, dead, river))
        / sum(t.expected_readings for t in (dam, dead, river))
        > 1
    )
    text = site_report(site)
    figures = section(text, "Key figures")
    assert "| data completeness (mean of the terminals) | 63.3% |" in figures  # (0.9+0+1)/3
    assert "| terminal availability (mean of the terminals) | 63.3% |" in figures
    assert "| worst terminal | dead-plc: 0.0% complete |" in figures
    assert "| data completeness (mean) | 63.3% | 100.0% | worse |" in text


def test_durations_are_in_words_at_the_unit_that_fits(site: tuple[History, Config]) -> None:
    text = site_report(site)
    assert "| dam-plc | 90.0% | 2,592 / 2,880 | 90.0% |" in text
    assert "| 4 h 48 min | 100.0% | worse |" in text  # dam-plc's 288 missed polls
    assert "| dead-plc | 0.0% | 0 / 2,880 | 0.0% | 0 / 2,880 | 2,880 | 2 days |" in text
    assert "| river-1 | 100.0% | 2,880 / 48 | 100.0% | 5,760 / 96 | 0 | — |" in text
    checks = section(text, "Checks that were not ok")
    # the disk failed for two minutes; dead-plc's freshness for all but 2 minutes and the
    # 10 seconds of the restart
    assert "| gateway disk nearly full (`system.disk`) | failing | 2 min | — |" in checks
    assert (
        "| data from dead-plc is stale (`terminals.freshness:dead-plc`) | failing | 2 days |"
        in checks
    )
    assert "check-hours" not in text and not re.search(r"\(\d+s\)", text)


def test_the_conclusion_says_what_failed_for_how_long_what_changed_and_what_to_do(
    site: tuple[History, Config],
) -> None:
    conclusion = section(site_report(site), "Conclusion").strip()
    assert conclusion == (
        "In the 2 days from 20 Nov 2026 08:00 to 22 Nov 2026 08:00, 1 of 3 terminals delivered "
        "all their data; completeness was 63.3% on average, the worst being dead-plc (0.0%). "
        "dead-plc sent no data at all (2 days without data). "
        "dam-plc was without data for 4 h 48 min (90.0% complete). "
        "Also failing: gateway disk nearly full for 2 min. "
        "Alarms still open at the end of the period: 1. "
        "Against the previous 2 days, completeness fell from 100.0% to 63.3%. "
        "Worse than before: dam-plc (100.0% → 90.0%); dead-plc (100.0% → 0.0%). "
        "What to do: check the power, cabling and address of dead-plc; check the link to "
        "dam-plc; free space on the gateway's disk."
    )


def test_the_report_names_the_site_and_its_contact(site: tuple[History, Config]) -> None:
    text = site_report(site)
    assert text.startswith("# Inspection report — 青山水库\n")
    for line in (
        "- Site: 青山水库",
        "- Location: 青山镇",
        "- Owner: 青山水库管理处",
        "- Contact: 王工 138-0000-0000",
        "- Gateway: gw-reservoir-7",
    ):
        assert line in text
    assert "Times in Asia/Shanghai (UTC+08:00)." in text


def test_points_and_checks_have_plain_names(site: tuple[History, Config]) -> None:
    history, _ = site
    history.record_anomalies(
        [Anomaly("river-1", "DRZ1", "spike", SINCE + timedelta(hours=1), 3.0, "jumped to 3")]
    )
    result = changed("data.range:dam-plc.level", Status.FAIL, SINCE + timedelta(hours=2))
    history.record_results(result, result)
    history.flush()
    en, zh = site_report(site), site_report(site, "zh")
    # a configured label, as written, and the SL651 elements by their names in the standard
    assert "**dam-plc: 库水位**" in en and "**dam-plc.gate**" in en
    assert "**river-1: instantaneous river level / tide level**" in en
    assert "| river-1: 5-minute relative water level 1 x12 | spike | 1 |" in en
    assert "**river-1：瞬时河道水位、潮位**" in zh and "**river-1：当前降水量**" in zh
    assert "| river-1：1小时内每5分钟间隔相对水位1 | 突变 | 1 |" in zh
    # the anomaly's detail: the agent's words in English, the value in Chinese
    assert re.search(r"\| spike \| 1 \|[^\n]*\| jumped to 3 \|", en)
    assert re.search(r"\| 突变 \| 1 \|[^\n]*\| 突变至 3 \|", zh)
    assert "| dam-plc: 库水位 out of range (`data.range:dam-plc.level`) |" in en
    assert "| dam-plc：库水位 超出范围 (`data.range:dam-plc.level`) |" in zh


def test_every_check_the_agent_runs_has_a_plain_name_in_both_languages(tmp_path: Path) -> None:
    config = site_config(tmp_path)
    ids = {c.id for c in build_checks(config)}
    assert {"system.disk", "terminals.freshness:river-1", "data.range:dam-plc.level"} <= ids
    for language in ("en", "zh"):
        words = Words(language, UTC)  # type: ignore[arg-type]
        unnamed = [i for i in ids if words.check_name(i) == i]
        assert unnamed == [], language
        assert all(words.check_action(i) for i in ids)


def test_both_catalogues_hold_the_same_strings_with_the_same_placeholders() -> None:
    en, zh = CATALOGUES["en"], CATALOGUES["zh"]
    assert set(en) == set(zh)

    def fields(text: str) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f}

    assert [k for k in en if fields(en[k]) != fields(zh[k])] == []


def test_what_a_check_measured_is_put_in_the_reports_words() -> None:
    """What the Chinese report shows in place of the agent's English message."""
    zh = Words("zh", UTC)
    assert zh.measured("network.uplink:x", 0.553, "", 0.9) == "数值 55.3%，阈值 90.0%"  # shares
    assert zh.measured("system.disk", 4.5, "%", 10) == "数值 4.5%，阈值 10%"
    assert zh.measured("network.backlog", 1200, "messages", 1000) == (
        "数值 1200条消息，阈值 1000条消息"
    )
    assert zh.measured("data.range:dam.level", 250.0, "", "[0, 200]") == "数值 250，阈值 [0, 200]"
    assert zh.measured("terminals.freshness:dam", None, "s", 180) == "阈值 180秒"
    assert zh.measured("system.clock_sync", False, "", None) == "—"  # the name says it
    assert zh.anomaly_detail("gap", 3, "m") == "缺 3 个样本"
    assert zh.anomaly_detail("spike", 140.0, "m") == "突变至 140 m"
    en = Words("en", UTC)
    assert en.agent_text("disk 96% full", "value 96%") == "disk 96% full"
    assert en.agent_text("", "value 96%") == "value 96%"
    assert zh.agent_text("disk 96% full", "数值 96%") == "数值 96%"


def test_a_chinese_report_is_chinese_with_chinese_dates(site: tuple[History, Config]) -> None:
    text = site_report(site, "zh")
    assert text.startswith("# 巡检报告 — 青山水库\n")
    assert "- 报告期：2026年11月20日 08:00 至 2026年11月22日 08:00（2天）" in text
    conclusion = section(text, "结论").strip()
    assert conclusion.startswith("2026年11月20日 08:00 至 2026年11月22日 08:00（2天）期间")
    assert "dead-plc 完全没有数据（缺数 2天）" in conclusion
    assert "dam-plc 缺数 4小时48分钟（完整率 90.0%）" in conclusion
    assert "网关磁盘空间不足（2分钟）" in conclusion
    assert "与前2天相比，完整率由 100.0% 降至 63.3%" in conclusion
    assert "建议：检查 dead-plc 的供电、线缆和地址设置" in conclusion
    figures = section(text, "主要指标")
    assert "| 数据完整率（各终端平均） | 63.3% |" in figures
    assert "| 最差终端 | dead-plc：完整率 0.0% |" in figures
    # the alarm says what was measured against what limit, in Chinese
    alarms = section(text, "告警（产生 1 次，解除 0 次）")
    assert "| dead-plc 的数据过时 | 产生 | 正常 → 故障 | 数值 181秒，阈值 180秒 |" in alarms
    # no English left in the whole report once the names of the gateway, terminals, points
    # and time zone, the check ids shown beside their names for support, and the units of the
    # points are taken out
    names = (
        r"gw-reservoir-7|dam-plc\.gate|dam-plc|dead-plc|river-1|Asia/Shanghai \(UTC|"
        r"system\.disk|terminals\.freshness:dead-plc|m3/s|\bm\b"
    )
    assert re.findall(r"[A-Za-z]{2,}", re.sub(names, "", text)) == []
    english = site_report(site, "en")
    assert "结论" not in english and "Conclusion" not in text
    # an English report quotes the agent's own message
    assert "| raised | ok → failing | stale: last good reading 181s ago, over 180s |" in english


def test_a_terminal_named_like_markup_is_escaped(tmp_path: Path) -> None:
    with History(tmp_path / "h.db", clock=lambda: NOW.timestamp()) as history:
        history.set_terminals({"<script>alert(1)</script>": TerminalPlan(60, 1)}, SINCE)
        history.flush()
        page = render_report(history, SINCE, NOW, "html")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = parse(page)
    assert "script" not in parsed.tags


def test_the_period_starts_where_the_history_begins_and_charts_span_its_data(
    tmp_path: Path,
) -> None:
    """Three minutes of history, a report of the last seven days."""
    start = NOW - timedelta(minutes=3)
    with History(tmp_path / "h.db", clock=lambda: NOW.timestamp()) as history:
        history.set_terminals({"dam": TerminalPlan(10, 1)}, start)
        history.record_start(start)
        for n, at in enumerate(polls(start, 10, 18)):
            history.observe([reading("dam", "level", 100 + n, at)])
        history.flush()
        text = render_report(history, NOW - timedelta(days=7), NOW, "md")
        page = render_report(history, NOW - timedelta(days=7), NOW, "html")
    assert "- Period: 21 Nov 2026 23:57 to 22 Nov 2026 00:00 (3 min)" in text
    assert "The history begins on 21 Nov 2026 23:57: the period starts there." in text
    assert "| dam | 100.0% | 18 / 18 |" in text
    assert "There is no earlier history to compare with." in text
    assert "| agent starts | 1 | n/a | no data |" in text  # nothing before the history began
    trend = page[page.index('<svg class="trend"') :]
    ticks = re.findall(
        r'<text class="tick"[^>]*text-anchor="(?:start|middle|end)">([^<]+)</text>', trend
    )
    times = [t for t in ticks if re.fullmatch(r"\d\d:\d\d:\d\d", t)]
    assert times[0] == "23:57:00" and times[-1] == "00:00:00"  # the axis spans the 3 minutes
    assert len(times) == 5


def test_the_daemon_does_not_load_the_report_or_jinja2() -> None:
    probe = (
        "import sys, agent.daemon; "
        "print(sorted(m for m in ('jinja2', 'agent.checks.report') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_site_section_and_point_labels_are_validated(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {id: gw}\nsite: {timezone: Mars/Olympus, language: fr}\n"
        "terminals:\n- {name: p, protocol: modbus-tcp, host: h, points: [{name: a, address: 0, label: ''}]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    errors = caught.value.errors
    assert (
        "site.timezone: unknown time zone 'Mars/Olympus' (an IANA name such as Asia/Shanghai, or UTC)"
        in errors
    )
    assert "site.language: unknown language 'fr' (expected one of: en, zh)" in errors
    assert any(e.startswith("terminals[0].points[0].label:") for e in errors)


# -- the command line and the browser ---------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium (/usr/bin/chromium): make system-packages installs it as root",
)


def write_site(tmp_path: Path) -> tuple[Path, list[str]]:
    """A config and its history on disk (NOW is in the past: the report asks for 3 years), and
    the arguments that reach no agent."""
    state = tmp_path / "state"
    state.mkdir()
    config = state / "config.yaml"
    config.write_text(SITE.format(state=state))
    site_history(state / "history.db").close()
    socket = f"/tmp/ea-missing-{uuid.uuid4().hex[:12]}.sock"
    return config, ["--config", str(config), "--socket", socket, "--since", f"{3 * 365}d"]


def test_report_lang_and_format_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, reach = write_site(tmp_path)
    assert cli.main(["report", *reach, "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("# Inspection report — 青山水库")
    # the site's language by default
    config.write_text(config.read_text().replace("  timezone:", "  language: zh\n  timezone:"))
    assert cli.main(["report", *reach, "--format", "md"]) == 0
    zh = capsys.readouterr().out
    assert zh.startswith("# 巡检报告 — 青山水库") and "river-1：瞬时河道水位、潮位" in zh
    assert cli.main(["report", *reach, "--format", "md", "--lang", "en"]) == 0
    assert capsys.readouterr().out.startswith("# Inspection report")
    with pytest.raises(SystemExit) as bad:
        cli.main(["report", *reach, "--lang", "fr"])
    assert bad.value.code == 2
    assert "invalid choice: 'fr'" in capsys.readouterr().err
    assert cli.main(["report", *reach, "--format", "pdf"]) == 2
    assert capsys.readouterr().err == (
        "edge-agent: --format pdf needs --out FILE (a PDF is not written to a terminal)\n"
    )


def test_a_pdf_without_chromium_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reach = write_site(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # a machine without a browser
    out = tmp_path / "report.pdf"
    assert cli.main(["report", *reach, "--format", "pdf", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "edge-agent: a PDF is printed by Chromium, which is not installed: apt-get install chromium\n"
    )
    assert not out.exists()


@needs_chromium
def test_the_report_prints_to_an_a4_pdf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, reach = write_site(tmp_path)
    out = tmp_path / "report.pdf"
    assert cli.main(["report", *reach, "--format", "pdf", "--out", str(out), "--lang", "zh"]) == 0
    assert capsys.readouterr().out == f"wrote {out} (pdf, zh, since {3 * 365}d)\n"
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    # A4 (595 x 842 points), and more than one page: the events and trends start their own
    sizes = {
        (round(float(w)), round(float(h)))
        for w, h in re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)
    }
    assert sizes == {(595, 842)}
    assert len(re.findall(rb"/Type /Page\b", data)) >= 3
    assert out.stat().st_mode & 0o077 == 0  # like every file the agent writes


@needs_chromium
@pytest.mark.parametrize(
    ("language", "opening", "dead"),
    [
        ("en", "In the 2 days from 20 Nov 2026 08:00", "dead-plc sent no data at all"),
        ("zh", "2026年11月20日 08:00 至 2026年11月22日 08:00（2天）期间", "dead-plc 完全没有数据"),
    ],
)
def test_the_html_report_renders_in_chromium_with_its_conclusion_and_charts(
    site: tuple[History, Config], tmp_path: Path, language: str, opening: str, dead: str
) -> None:
    page = tmp_path / "report.html"
    page.write_text(site_report(site, language, "html"))
    shot = tmp_path / "report.png"
    done = headless(CHROMIUM, page.as_uri(), f"--screenshot={shot}", "--window-size=1000,1400")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = headless(CHROMIUM, page.as_uri(), "--dump-dom").stdout.decode()
    # What the browser made of the page: the conclusion, the bar chart, a trend per point
    assert f'<p class="conclusion">{opening}' in dom
    assert dead in dom.split('<p class="conclusion">', 1)[1].split("</p>", 1)[0]
    assert dom.count("<svg") == 1 + 4 and dom.count("<polyline") >= 4
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1400)
    assert len(image.getcolors(maxcolors=1 << 16) or []) > 50  # not blank: text, bars, lines
    # dead-plc's 0 % is a red bar: a solid block of the failure colour at least 5 px each way
    # (bold red text is thinner, and goes under the 5 x 5 erosion)
    red = tuple(int(COLOURS["fail"][i : i + 2], 16) for i in (1, 3, 5))
    channels = [
        band.point(lambda v, want=want: 255 if v == want else 0)
        for band, want in zip(image.split(), red, strict=True)
    ]
    mask = ImageChops.multiply(ImageChops.multiply(channels[0], channels[1]), channels[2])
    assert mask.filter(ImageFilter.MinFilter(5)).getbbox() is not None
    # the green of the complete river-1 is there too, the amber of dam-plc's 90 % as well
    colours = {rgb for _, rgb in image.getcolors(maxcolors=1 << 20) or []}
    for name in ("ok", "warn"):
        assert tuple(int(COLOURS[name][i : i + 2], 16) for i in (1, 3, 5)) in colours, name


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
