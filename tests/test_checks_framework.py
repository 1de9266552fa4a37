"""The check framework: results, `since`, schedules, and checks that raise or hang."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.check_settings import ChecksConfig
from agent.checks import (
    AgentView,
    Check,
    CheckRunner,
    Outcome,
    Status,
    build_checks,
    run_checks_once,
    sort_results,
)
from agent.checks.framework import level, worst
from tests.conftest import make_config
from tests.lockshare import LockSharingThread

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def view(tmp_path: Path) -> AgentView:
    return AgentView(make_config([], state_dir=str(tmp_path)))


class Clock:
    """A monotonic clock the test moves by hand (the runner's scheduling seam)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sequence_:
    """A probe that answers the given statuses in turn."""

    def __init__(self, *statuses: Status) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self, v: AgentView, now: datetime) -> Outcome:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return Outcome(status, self.calls, "n", 3, f"call {self.calls}")


async def test_a_result_carries_the_outcome_and_since_is_when_the_status_last_changed(
    tmp_path: Path,
) -> None:
    probe = Sequence_(Status.OK, Status.OK, Status.FAIL, Status.FAIL)
    runner = CheckRunner([Check("x.one", "system", probe)])
    v = view(tmp_path)
    first = await runner.run_all(v, T0)
    second = await runner.run_all(v, T0 + timedelta(minutes=1))
    third = await runner.run_all(v, T0 + timedelta(minutes=2))
    fourth = await runner.run_all(v, T0 + timedelta(minutes=3))
    [r] = fourth.results
    assert r.to_dict() == {
        "id": "x.one",
        "family": "system",
        "status": "fail",
        "value": 4,
        "unit": "n",
        "threshold": 3,
        "message": "call 4",
        "since": "2026-11-22T08:02:00.000Z",
        "checked_at": "2026-11-22T08:03:00.000Z",
    }
    assert first.results[0].since == second.results[0].since == T0
    assert [len(x.changed) for x in (first, second, third, fourth)] == [1, 0, 1, 0]


async def test_a_check_that_raises_is_unknown_with_the_reason_and_the_others_still_run(
    tmp_path: Path,
) -> None:
    def broken(v: AgentView, now: datetime) -> Outcome:
        raise ZeroDivisionError("division by zero")

    runner = CheckRunner(
        [
            Check("x.broken", "system", broken),
            Check("x.blocking_broken", "system", broken, blocking=True),
            Check("x.fine", "system", lambda v, now: Outcome(Status.OK)),
        ]
    )
    try:
        done = await runner.run_all(view(tmp_path))
    finally:
        runner.close()
    by_id = {r.id: r for r in done.results}
    for name in ("x.broken", "x.blocking_broken"):
        assert by_id[name].status is Status.UNKNOWN
        assert by_id[name].message == "check failed: ZeroDivisionError: division by zero"
    assert by_id["x.fine"].status is Status.OK


async def test_a_hanging_check_is_unknown_after_its_timeout_and_does_not_delay_the_others(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    async def hangs(v: AgentView, now: datetime) -> Outcome:
        await asyncio.sleep(3600)
        return Outcome(Status.OK)

    def hangs_in_a_thread(v: AgentView, now: datetime) -> Outcome:
        release.wait(10)  # a stuck statvfs on a dead mount, say
        return Outcome(Status.OK)

    runner = CheckRunner(
        [
            Check("x.async", "network", hangs, timeout=0.2),
            Check("x.thread", "system", hangs_in_a_thread, timeout=0.2, blocking=True),
            Check("x.fine", "system", lambda v, now: Outcome(Status.OK)),
        ]
    )
    try:
        started = time.monotonic()
        done = await runner.run_all(view(tmp_path))
        took = time.monotonic() - started
        by_id = {r.id: r for r in done.results}
        assert took < 1.0
        assert by_id["x.async"].status is Status.UNKNOWN
        assert by_id["x.async"].message == "no result within 0.2s"
        assert by_id["x.thread"].message == "no result within 0.2s"
        assert by_id["x.fine"].status is Status.OK
        # The thread still hangs: the next run does not start a second one.
        again = {r.id: r for r in (await runner.run_all(view(tmp_path))).results}
        assert again["x.thread"].status is Status.UNKNOWN
        assert "still hangs" in again["x.thread"].message
    finally:
        release.set()
        runner.close()


async def test_each_check_runs_on_its_own_interval(tmp_path: Path) -> None:
    clock = Clock()
    fast, slow = Sequence_(Status.OK), Sequence_(Status.OK)
    runner = CheckRunner(
        [
            Check("x.fast", "system", fast, interval=10),
            Check("x.slow", "system", slow, interval=60),
        ],
        clock=clock,
    )
    v = view(tmp_path)
    for _ in range(13):  # two minutes in 10 s steps
        await runner.run_due(v)
        clock.now += 10
    assert (fast.calls, slow.calls) == (13, 3)
    assert runner.next_due_in() == 0


async def test_replacing_the_checks_keeps_the_results_of_those_that_stay(tmp_path: Path) -> None:
    clock = Clock()
    runner = CheckRunner([Check("x.a", "system", Sequence_(Status.WARN))], clock=clock)
    await runner.run_all(view(tmp_path), T0)
    runner.replace(
        [
            Check("x.a", "system", Sequence_(Status.WARN)),
            Check("x.b", "system", Sequence_(Status.OK)),
        ]
    )
    done = await runner.run_due(view(tmp_path), T0 + timedelta(seconds=1))
    assert [r.id for r in done.results] == ["x.b"]  # new: due at once; x.a keeps its schedule
    clock.now += 60
    done = await runner.run_due(view(tmp_path), T0 + timedelta(minutes=1))
    assert [r.id for r in done.results] == ["x.a", "x.b"]
    assert done.results[0].since == T0
    runner.replace([Check("x.b", "system", Sequence_(Status.OK))])
    assert [r.id for r in runner.results] == ["x.b"]
    with pytest.raises(ValueError, match=r"repeated: x\.a"):
        runner.replace(
            [
                Check("x.a", "system", Sequence_(Status.OK)),
                Check("x.a", "data", Sequence_(Status.OK)),
            ]
        )


def test_worst_of_orders_ok_unknown_warn_fail_and_results_sort_failing_first() -> None:
    assert worst([Status.OK, Status.UNKNOWN]) is Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.WARN, Status.OK]) is Status.WARN
    assert worst([Status.WARN, Status.FAIL]) is Status.FAIL
    assert worst([]) is Status.OK
    outcome = level(3.0, warn=2.0, fail=5.0, higher_is_worse=True, unit="days")
    assert (outcome.status, outcome.threshold, outcome.message) == (
        Status.WARN,
        2.0,
        "3 days, above 2 days",
    )
    assert level(1.0, warn=None, fail=None, higher_is_worse=False).status is Status.OK


async def test_every_family_is_built_and_disabled_checks_are_left_out(tmp_path: Path) -> None:
    config = make_config([], state_dir=str(tmp_path), uplink={"broker": "mqtt://127.0.0.1:1"})
    ids = {c.id for c in build_checks(config)}
    families = {c.family for c in build_checks(config)}
    assert {"system", "software", "network", "security"} <= families
    assert "network.broker_tcp" in ids
    settings = ChecksConfig(disabled=["network", "system.load"])
    fewer = {c.id for c in build_checks(config, settings)}
    assert "system.load" not in fewer and not any(i.startswith("network.") for i in fewer)
    assert build_checks(config, ChecksConfig(enabled=False)) == []
    results = await run_checks_once(AgentView(config), build_checks(config, settings))
    assert results == sort_results(results)
    assert {r.id for r in results} == fewer


async def test_run_forever_hands_each_round_over_until_cancelled(tmp_path: Path) -> None:
    probe = Sequence_(Status.OK, Status.WARN)
    runner = CheckRunner([Check("x.a", "system", probe, interval=0.05)])
    rounds: list[int] = []

    async def snapshot() -> AgentView:
        return view(tmp_path)

    async def on_round(done: object) -> None:
        rounds.append(len(getattr(done, "changed", [])))

    task = asyncio.create_task(runner.run_forever(snapshot, on_round, idle=0.01))
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(rounds) >= 3
    assert rounds[:3] == [1, 1, 0]  # first result, then ok -> warn, then unchanged


async def test_a_round_of_many_checks_gives_the_event_loop_turns(tmp_path: Path) -> None:
    """Thousands of terminals make thousands of checks: a round runs them in slices, so the
    pollers' timers and replies are served while it runs (it held them back by a quarter of
    a second at 2,000 terminals when every check was a task started at once)."""

    def busy(v: AgentView, now: datetime) -> Outcome:
        end = time.perf_counter() + 0.0002  # a check that reads a large view
        while time.perf_counter() < end:
            pass
        return Outcome(Status.OK, None, None, None, "fine")

    runner = CheckRunner([Check(f"terminals.x:{i}", "terminals", busy) for i in range(500)])
    turns = 0
    done = False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            await asyncio.sleep(0)
            turns += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    round_ = await runner.run_all(view(tmp_path), T0)
    took = time.perf_counter() - started
    done = True
    await task
    assert [r.status for r in round_.results] == [Status.OK] * 500
    # 500 x 0.2 ms is 100 ms of work: a turn for the loop at least every 5 ms of it
    assert took >= 0.1
    assert turns >= int(took / 0.005) // 2


async def test_a_round_of_many_checks_leaves_the_interpreter_to_a_polling_thread(
    tmp_path: Path,
) -> None:
    """The TCP engine polls in a thread that gives the interpreter's lock up at every socket
    call and waits for it again; while the loop computes, it gets it back only every 5 ms
    (the switch interval). A round's pauses let it run: at 2,000 terminals a round held the
    polls back ~100 ms."""

    def busy(v: AgentView, now: datetime) -> Outcome:
        end = time.perf_counter() + 0.0002
        while time.perf_counter() < end:
            pass
        return Outcome(Status.OK, None, None, None, "fine")

    runner = CheckRunner([Check(f"terminals.x:{i}", "terminals", busy) for i in range(500)])
    started = time.perf_counter()
    with LockSharingThread() as thread:
        round_ = await runner.run_all(view(tmp_path), T0)
    took = time.perf_counter() - started
    assert len(round_.results) == 500
    assert took >= 0.1  # 500 x 0.2 ms of work
    # With only the switch interval the thread made a handful of steps in the round (3 when
    # checked); with the pauses, hundreds (772).
    assert thread.steps >= 100, thread.steps


@pytest.mark.parametrize("blocking", [True, False], ids=["thread", "coroutine"])
async def test_a_round_cancelled_before_its_probes_had_a_turn_leaves_no_coroutine_behind(
    tmp_path: Path, blocking: bool
) -> None:
    """The agent stopping cancels a round; the task of a probe that waits may not have had its
    first turn yet. Its coroutine is closed, not left to the collector ("was never awaited")."""
    import gc
    import warnings

    async def waits(v: AgentView, now: datetime) -> Outcome:
        await asyncio.sleep(0)
        return Outcome(Status.OK)

    def sleeps(v: AgentView, now: datetime) -> Outcome:
        time.sleep(0.01)
        return Outcome(Status.OK)

    probe = sleeps if blocking else waits
    runner = CheckRunner([Check("x.waits", "system", probe, blocking=blocking)])  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        round_ = asyncio.create_task(runner.run_all(view(tmp_path)))
        await asyncio.sleep(0)  # the round made the probe's task and awaits it; it had no turn
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_
        await asyncio.sleep(0.05)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
