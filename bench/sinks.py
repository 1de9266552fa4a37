"""What the local reading sinks cost per reading, in-process, on one core.

Feeds K terminals x R points of polls (one `submit` per poll, as the pollers do; the values
change every poll) to the history (`History.submit`, the statistics behind `edge-agent
report`; `flush()` timed apart, as it runs off the event loop), the data monitor with and
without data checks configured (`DataMonitor.submit`; with: every point of every terminal
has range, stuck, spike and counter checks) and the metrics counter (`ReadingCounter.submit`),
and prints microseconds per reading for each, best of 3 rounds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.check_settings import ChecksConfig  # noqa: E402
from agent.checks.data import DataMonitor  # noqa: E402
from agent.checks.history import History  # noqa: E402
from agent.metrics import ReadingCounter  # noqa: E402
from agent.model import Quality, Reading  # noqa: E402


def polls(terminals: int, points: int, rounds: int) -> list[list[Reading]]:
    """`rounds` polls of every terminal, one second apart, as a Modbus poller makes them."""
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    names = [f"r{j}" for j in range(points)]
    out = []
    for n in range(rounds):
        at = start + timedelta(seconds=n)
        for i in range(terminals):
            terminal = f"t{i:04d}"
            out.append(
                [
                    Reading(
                        terminal, p, (i * 31 + j + n) % 65536, "", Quality.GOOD, at, f"holding:{j}"
                    )
                    for j, p in enumerate(names)
                ]
            )
    return out


def per_reading(submit: Callable[[Sequence[Reading]], None], batches: list[list[Reading]]) -> float:
    count = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            submit(batch)
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="K terminals")
    parser.add_argument("--registers", type=int, default=20, help="R points each")
    parser.add_argument("--rounds", type=int, default=20, help="polls of each terminal")
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    batches = polls(args.devices, args.registers, args.rounds)
    readings = sum(len(b) for b in batches)
    print(f"{len(batches)} polls, {readings} readings")
    with tempfile.TemporaryDirectory() as tmp:
        history = History(Path(tmp) / "history.db")
        with history:
            cost = per_reading(history.submit, batches)
            started = time.perf_counter()
            history.flush()
            flushed = time.perf_counter() - started
        print(f"History.submit: {cost:.3f} us/reading; flush {flushed * 1e3:.0f} ms (off the loop)")
    idle = DataMonitor(ChecksConfig())
    print(f"DataMonitor.submit, no data checks: {per_reading(idle.submit, batches):.3f} us/reading")
    every = {
        f"t{i:04d}.r{j}": {
            "range": [0, 70000],
            "stuck_samples": 5,
            "spike_per_s": 1e6,
            "counter": False,
        }
        for i in range(args.devices)
        for j in range(args.registers)
    }
    watched = DataMonitor(ChecksConfig.model_validate({"data": every}))
    print(
        f"DataMonitor.submit, every point checked: {per_reading(watched.submit, batches):.3f} us/reading"
    )
    few = DataMonitor(ChecksConfig.model_validate({"data": dict(list(every.items())[:10])}))
    print(
        f"DataMonitor.submit, 10 points checked: {per_reading(few.submit, batches):.3f} us/reading"
    )
    counter = ReadingCounter()
    print(f"ReadingCounter.submit: {per_reading(counter.submit, batches):.3f} us/reading")


if __name__ == "__main__":
    main()
