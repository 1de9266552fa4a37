"""The report over the agent's runs, against histories written as the daemon writes them (a
moving clock, a flush every few minutes and one at stop): a status lasts until the agent
stopped, however late the report is made; the time the agent did not run is said as such and
not blamed on a terminal; the period begins when the agent's history does, not at the values a
station's report carries from the hour before; a chart starts at its series' first value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.checks import History, Status, TerminalPlan
from agent.checks.history import MIGRATIONS, hour_of
from agent.checks.report import CheckTime, Timeline, build_report, render
from agent.checks.runs import Runs
from agent.storage import sqlite as db
from tests.test_report import Clock, changed, polls, reading, section

T0 = datetime(2026, 11, 30, 13, 12, tzinfo=UTC)
STOP = T0 + timedelta(minutes=6, seconds=50)
FAILS_AT = T0 + timedelta(minutes=4, seconds=40)  # the broker goes away


def stopped_agent(path: Path) -> None:
    """An agent that ran from T0 to STOP: good-plc answered each poll (every 10 s); the clock
    was never synchronised; the broker went away at FAILS_AT. Checks ran with each poll, the
    history was flushed after 5 minutes and at stop."""
    clock = Clock(T0)
    with History(path, clock=clock) as history:
        history.set_meta("gateway", "gw-1")
        history.set_terminals({"good-plc": TerminalPlan(10, 1)})
        history.record_start()
        was = None
        for n, at in enumerate(polls(T0, 10, 42)):  # the last at STOP
            clock.at = at
            history.observe([reading("good-plc", "level", 1.0 + n, at)])
            clock_sync = changed("system.clock_sync", Status.FAIL, at)
            status = Status.FAIL if at >= FAILS_AT else Status.OK
            broker = changed("network.broker_tcp", status, at)
            # the first result of each check is a change, and then each change of status
            history.record_results(
                clock_sync + broker,
                (clock_sync if n == 0 else []) + (broker if status != was else []),
            )
            was = status
            if n == 30:
                history.flush()
        assert clock.at == STOP  # close() flushes: the run's last mark


def report_at(path: Path, now: datetime, language: str = "en") -> str:
    """The 7-day report as `edge-agent report` makes it at `now` (the agent stopped)."""
    with History(path, clock=Clock(now)) as history:
        report = build_report(history, now - timedelta(days=7), language=language)  # type: ignore[typeddict-item]
    return render(report, "md")


def test_the_history_marks_the_agents_run_at_each_flush_and_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    clock = Clock(T0)
    history = History(path, clock=clock)
    history.open()
    history.record_start()
    clock.at = T0 + timedelta(minutes=5)
    history.flush()
    assert history.runs(T0, STOP).spans == ((T0.timestamp(), clock()),)
    clock.at = STOP
    history.close()
    # a reader (`edge-agent report`) starts no run and moves none
    later = STOP + timedelta(hours=1)
    with History(path, clock=Clock(later)) as reader:
        runs = reader.runs(T0, later)
    assert runs == Runs(((T0.timestamp(), STOP.timestamp()),), T0.timestamp())
    assert runs.off(T0.timestamp(), later.timestamp()) == [(STOP.timestamp(), later.timestamp())]
    assert runs.running(T0.timestamp(), later.timestamp()) == (STOP - T0).total_seconds()
    # before the first recorded run (a history older than runs) the agent counts as running
    assert runs.off(T0.timestamp() - 600, T0.timestamp()) == []


def test_a_status_lasts_until_the_agent_stopped_however_late_the_report(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    stopped_agent(path)
    texts = []
    for later in (3, 4):  # minutes after the stop: the same durations
        now = STOP + timedelta(minutes=later)
        with History(path, clock=Clock(now)) as history:
            times = Timeline.load(history, T0, now).times(history.checks(T0, now), T0, now)
        assert times["network.broker_tcp"] == CheckTime((STOP - FAILS_AT).total_seconds(), 0.0)
        assert times["system.clock_sync"] == CheckTime((STOP - T0).total_seconds(), 0.0)
        texts.append(section(report_at(path, now), "Checks that were not ok"))
    assert texts[0] == texts[1]
    assert "| gateway clock not synchronised (`system.clock_sync`) | failing | 7 min |" in texts[0]
    assert "| server not reachable (`network.broker_tcp`) | failing | 2 min |" in texts[0]


def test_the_time_the_agent_did_not_run_is_its_own_fact_not_a_terminals(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    stopped_agent(path)
    text = report_at(path, STOP + timedelta(minutes=3))
    conclusion = section(text, "Conclusion").strip()
    assert conclusion.startswith(
        "In the 10 min from 30 Nov 2026 13:12 to 30 Nov 2026 13:21, its one terminal delivered "
        "its data (completeness 100.0%). The agent on the gateway was not running "
        "for 3 min in all (the longest stretch from 30 Nov 2026 13:18 to 30 Nov 2026 13:21): no "
        "data was collected in that time, and the figures count only the time it ran."
    )
    # good-plc answered every poll while the agent ran: nothing to do about it
    assert conclusion.count("good-plc") == 0
    assert "What to do: unless the gateway was stopped on purpose, check its power" in conclusion
    figures = section(text, "Key figures")
    assert "| time the agent was not running | 3 min |" in figures
    assert "| data completeness (mean of the terminals) | 100.0% |" in figures
    # judged over the 6 min 50 s the agent ran: 41 polls expected, 42 made (one at each end)
    assert "| good-plc | 100.0% | 42 / 41 | 100.0% | 42 / 41 | 0 | — |" in text
    zh = section(report_at(path, STOP + timedelta(minutes=3), "zh"), "结论")
    assert "网关上的采集软件共有 3分钟 未运行" in zh and "good-plc" not in zh


def test_the_period_begins_with_the_agent_not_with_a_reports_earlier_values(
    tmp_path: Path,
) -> None:
    start = datetime(2026, 11, 30, 21, 13, tzinfo=UTC)
    clock = Clock(start)
    with History(tmp_path / "history.db", clock=clock) as history:
        history.set_terminals({"river-1": TerminalPlan(3600, None)})
        history.record_start()
        # the hourly report heard at 21:14 carries the 5-minute levels of the hour before
        clock.at = start + timedelta(minutes=1)
        values = polls(datetime(2026, 11, 30, 20, 5, tzinfo=UTC), 300, 12)  # 20:05 to 21:00
        history.observe([reading("river-1", "Z", 12.0, at) for at in values])
        clock.at = start + timedelta(minutes=4)
        history.flush()
        assert history.begins() == start
        text = render(build_report(history, clock.at - timedelta(days=7)), "md")
    assert "- Period: 30 Nov 2026 21:13 to 30 Nov 2026 21:17 (4 min)" in text


def test_a_chart_starts_at_its_series_first_value(tmp_path: Path) -> None:
    """Terminal a from 20:30; terminal b added by a reload at 21:13."""
    start = datetime(2026, 11, 30, 20, 30, tzinfo=UTC)
    added = datetime(2026, 11, 30, 21, 13, tzinfo=UTC)
    clock = Clock(start)
    with History(tmp_path / "history.db", clock=clock) as history:
        history.set_terminals({"a": TerminalPlan(60, 1)})
        history.record_start()
        for n, at in enumerate(polls(start, 60, 70)):
            history.observe([reading("a", "level", float(n % 7), at)])
        clock.at = added
        history.flush()
        history.set_terminals({"a": TerminalPlan(60, 1), "b": TerminalPlan(60, 1)})
        for n, at in enumerate(polls(added, 60, 27)):
            history.observe([reading("b", "level", float(n % 5), at)])
        clock.at = datetime(2026, 11, 30, 21, 40, tzinfo=UTC)
        history.flush()
        report = build_report(history, clock.at - timedelta(days=7))
    axes = {t.chart.title: [tick.text for tick in t.chart.x_ticks] for t in report.trends}
    assert axes["a.level"][0] == "20:30"
    assert axes["b.level"][0] == "21:13"  # not 21:00, the start of its first hour
    assert axes["a.level"][-1] == axes["b.level"][-1] == "21:40"


def test_a_period_the_agent_did_not_run_at_all_says_so(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    stopped_agent(path)
    now = STOP + timedelta(days=8)
    with History(path, clock=Clock(now)) as history:
        report = build_report(history, now - timedelta(days=1))
    assert report.conclusion.startswith(
        "In the 1 day from 7 Dec 2026 13:00 to 8 Dec 2026 13:18, the agent on the gateway did "
        "not run: no data was collected."
    )
    assert "good-plc" not in report.conclusion
    assert ("time the agent was not running", "1 day") in report.figures


def test_a_history_written_before_runs_were_recorded_is_read_and_extended(
    tmp_path: Path,
) -> None:
    """A gateway updated from a version whose history had no runs, no first value per hour and
    no alarm values: the file is migrated in place, and what it held reads as before."""
    path = tmp_path / "history.db"
    old = db.open_database(path, MIGRATIONS[:1], aside_label="x").conn
    old.execute("INSERT INTO plans VALUES ('plc', 60, 1, ?, NULL)", (T0.timestamp(),))
    old.execute(
        "INSERT INTO point_hours VALUES ('plc', 'a', ?, 'm', 1, 0, 1, 2.0, 2.0, 2.0, 2.0, ?)",
        (hour_of(T0.timestamp()), T0.timestamp()),
    )
    old.execute(
        "INSERT INTO alarms VALUES (?, 'system.disk', 'system', 'raised', 'fail', 'ok', 'full')",
        (T0.timestamp(),),
    )
    old.commit()
    old.close()
    clock = Clock(T0 + timedelta(minutes=30))
    with History(path, clock=clock) as history:
        [alarm] = history.alarms(T0, clock.at)
        assert (alarm.message, alarm.value, alarm.unit, alarm.threshold) == ("full", None, "", None)
        [hour] = history.point_series("plc", "a", T0, clock.at)
        assert (hour.mean, hour.first_at) == (2.0, None)
        # no run recorded: the agent counts as running, as before
        assert history.runs(T0, clock.at) == Runs((), None)
        assert history.begins() == T0
        history.record_start()
        clock.at += timedelta(minutes=5)
    with History(path, clock=clock) as reader:
        start = (T0 + timedelta(minutes=30)).timestamp()
        assert reader.runs(T0, clock.at) == Runs(((start, clock()),), start)
