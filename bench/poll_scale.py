"""How many Modbus TCP terminals one agent process polls on time, and at what cost.

Starts K simulated devices (pymodbus servers from `agent.sim.modbus_device`, R holding
registers each) in separate child processes on 127.0.0.1, then the real daemon
(`python -m agent run`) in its own child process on a generated config: K modbus-tcp terminals,
R consecutive uint16 points each (one coalesced read per poll), period P, everything else at its
defaults — readings go, signed, into the durable outbox (its budget raised so that nothing is
evicted during the run; no broker, unless `--broker`). `--local-copy` also turns on the
JSON-lines copy, to measure what it costs. The simulated registers change: each starts at a
random value below `--values-max` (10000: a 4-digit sensor count) and takes a random step of at
most `--step` every period. The config is block YAML with every point written out. After
a warmup it samples both processes at the start and end of a measurement window of S seconds
and prints:

- points/s: good readings of the polls whose slot falls in the window (see lateness), divided
  by the window's length, counted from the telemetry messages in the outbox after the run (a
  reading there was delivered: signed and durable);
- agent cpu: (utime + stime) from /proc/<pid>/stat over the window, per wall second; the
  simulators' CPU is measured the same way and printed beside it; agent cpu per delivered
  point = agent cpu / points/s (µs);
- agent rss: VmRSS at the end of the window and VmHWM (peak, startup included: loading a big
  config is often the peak) from /proc/<pid>/status; the agent runs as the service would: with
  the environment the service unit gives it (its `Environment=`: MALLOC_ARENA_MAX=2) and its
  modules compiled to bytecode first (an installed release has them compiled);
- agent rss idle and rss per terminal: before the run, an agent with one terminal (of the same
  simulators) polled hourly runs for the warmup time and its VmRSS is taken; RSS per terminal is
  (VmRSS at the end of the window - that idle VmRSS) / K (`--no-idle` skips it);
- `--tracemalloc FILE`: the agent runs under bench/traced_agent.py and the largest allocation
  sites at the end of the window are printed (tracing slows the agent down: use a long
  `--warmup`, and take no other figure from such a run);
- lateness p50/p99/max: the agent keeps lateness in-process only, so it is rebuilt from the
  readings in the outbox. All readings of one poll share one `observed_at`, taken when the poll starts; the
  schedule is fixed-rate (slot n at t0 + n*P) and polls start at their slot or after it, so
  t0 mod P is taken as the phase (obs mod P) of one of the terminal's polls in the window, the
  one that gives the least mean lateness: in effect the least late poll is taken as on time,
  and a very late poll cannot be mistaken for an early one. Every poll of the file
  is then given slot n = floor((obs - t0) / P), counted if that slot is due in the window, and
  its lateness is obs - t0 - n * P. This under-states lateness by at most that least lateness
  (under 1 ms in practice) and timestamps carry milliseconds, so the figures are good to about
  1 ms. (Checked once against `Poller.stats.lateness` of an in-process daemon: p50/p90/p99
  0.6/1.1/2.0 ms in-process against 0/1/2 ms from the file.)
- polls on time: slots in the window that were polled, over the slots the schedule has in the
  window (about K * S / P); the agent skips a slot it cannot start, so a missing poll is a miss.
- with `--broker`: a mosquitto on a free loopback port (as tests/broker.py starts it), the agent
  publishing to it and the script subscribed to `edge/bench/#`; bytes at the broker per reading =
  payload bytes of the `…/telemetry` messages that arrived in the window / the readings in them
  (expanded by agent/telemetry.py with the `…/meta` messages received), for the body
  `--schema` and `--compression` say (the agent's defaults: 2, zlib). The readings analysed are
  then those received at the broker (the outbox forgets what the broker acknowledged).

`--nice-devices 10` runs the simulators at a lower priority than the agent: at K=5000 on two
cores, ten simulator processes otherwise take the cores from the agent whenever a request
wakes one, which says more about this machine than about the agent.

The script stops the agent with SIGTERM, stops the simulators, and removes its temporary files;
children also get SIGTERM if the script itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from procs import (
    compile_agent,
    cpu_seconds,
    cpu_times,
    describe_tree,
    die_with_parent,
    memory_kib,
    service_environment,
    service_settings,
    start_farm,
    stop,
)
from uplink_drain import start_mosquitto

from agent.telemetry import Receiver, open_token

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP_RESOLUTION = 0.001  # observed_at carries milliseconds (truncated)
IDLE_PERIOD = 3600.0  # the idle agent's one terminal is polled hourly
LATE = 0.1  # a poll starting later than this is counted as late (the K=200 target)


# --- process measurement -----------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    agent_user: float
    agent_system: float
    sim_cpu: float


def sample(agent: subprocess.Popen[bytes], sims: list[subprocess.Popen[bytes]]) -> Sample:
    user, system = cpu_times(agent.pid)
    return Sample(time.time(), user, system, sum(cpu_seconds(p.pid) for p in sims))


# --- orchestration -----------------------------------------------------------------------


def write_config(
    path: Path,
    state_dir: Path,
    ports: list[int],
    registers: int,
    period: float,
    local_copy: bool = False,
    broker: int | None = None,
    telemetry: dict[str, object] | None = None,
    history: bool = True,
) -> None:
    config: dict[str, object] = {
        "gateway": {"id": "bench"},
        "state_dir": str(state_dir),
        "log": {"level": "info", "format": "json"},
        "control": {"socket": str(path.parent / "control.sock")},  # this run's own
        "jsonl": {"enabled": local_copy, "max_bytes": 1 << 40},  # no rotation during the run
        "outbox": {"max_bytes": 16 << 30},  # keep every reading of the run for the analysis
        "telemetry": telemetry or {},
        "checks": {"history": {"enabled": history}},
        "uplink": {"broker": f"mqtt://127.0.0.1:{broker}" if broker else None},
        "terminals": [
            {
                "name": f"t{i:04d}",
                "protocol": "modbus-tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit": 1,
                "period": period,
                "timeout": min(1.0, period),
                # Written out for every terminal (no YAML anchors): the loader's worst case.
                "points": [
                    {"name": f"r{j}", "address": j, "type": "uint16"} for j in range(registers)
                ],
            }
            for i, port in enumerate(ports)
        ],
    }
    # Block-style YAML, as an operator writes it (the loader's cost depends on the style).
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Polls:
    good_points: int
    bad_points: int
    expected_slots: int
    polled_slots: int
    failed_polls: int
    lateness: list[float]
    all_started: float  # when the last terminal to start had its first poll (wall clock)


def schedule_phase(times: list[float], period: float) -> float:
    """The phase (mod P) of the slots that a terminal's polls at `times` belong to.

    Polls start at their slot or after it, never before, so the phase is taken as the observed
    phase that gives the least mean lateness: for the candidate p_j (j-th smallest of m phases)
    the sum of (p_i - p_j) mod P is sum(p) - m * p_j + P * j.
    """
    phases = sorted(t % period for t in times)
    total, m = sum(phases), len(phases)
    costs = [total - m * p + period * j for j, p in enumerate(phases)]
    return phases[costs.index(min(costs))]


def outbox_readings(database: Path) -> list[dict[str, Any]]:
    """Every reading in the telemetry messages of an outbox (payloads read, not verified;
    expanded by the reference decoder with the meta messages stored beside them)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT payload FROM messages WHERE kind IN ('telemetry', 'meta') ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return Receiver().readings(open_token(payload) for (payload,) in rows)


class BrokerTap:
    """Subscribed to everything the agent publishes: (arrival time, topic, payload)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[tuple[float, str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="poll-scale-tap")
        self.client.on_message = lambda _c, _u, m: self.received.append(
            (time.time(), m.topic, m.payload)
        )
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edge/bench/#", qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def wire(self, begin: float, end: float) -> tuple[int, int, int]:
        """(telemetry messages, their payload bytes, their readings) arrived in [begin, end)."""
        receiver = Receiver()
        receiver.readings(open_token(p) for _, t, p in self.received if t.endswith("/meta"))
        messages = size = readings = 0
        for at, topic, payload in self.received:
            if topic.endswith("/telemetry") and begin <= at < end:
                messages += 1
                size += len(payload)
                readings += len(receiver.readings([open_token(payload)]))
        return messages, size, readings

    def readings(self) -> list[dict[str, Any]]:
        envelopes = [
            open_token(p) for _, t, p in self.received if t.endswith(("/telemetry", "/meta"))
        ]
        return Receiver().readings(envelopes)


def analyse(
    readings: Iterable[dict[str, Any]], terminals: int, period: float, begin: float, end: float
) -> Polls:
    """Polls and lateness per terminal from the readings delivered (see the module docstring)."""
    stamps: dict[str, float] = {}
    polls: dict[str, dict[float, list[int]]] = defaultdict(dict)  # terminal -> obs -> [good, bad]
    for r in readings:
        text = str(r["observed_at"])
        obs = stamps.get(text)
        if obs is None:
            obs = stamps[text] = datetime.fromisoformat(text).timestamp()
        counts = polls[str(r["terminal"])].setdefault(obs, [0, 0])
        counts[0 if r["quality"] == "good" else 1] += 1
    result = Polls(0, 0, 0, 0, 0, [], -math.inf)
    for by_time in polls.values():
        result.all_started = max(result.all_started, min(by_time))
        # Startup polls may be late by a large part of P: estimate t0 from the window's polls.
        times = sorted(t for t in by_time if begin <= t < end)
        if not times:
            result.expected_slots += round((end - begin) / period)
            continue
        t0 = schedule_phase(times, period)
        # A poll belongs to the window if its slot does (not its start), so that a slot due just
        # before the end and started just after it is neither a miss nor an extra poll.
        first, last = math.ceil((begin - t0) / period), math.ceil((end - t0) / period)
        result.expected_slots += max(0, last - first)
        seen = set()
        for t, (good, bad) in by_time.items():
            n = math.floor((t - t0 + TIMESTAMP_RESOLUTION) / period)
            if not first <= n < last or n in seen:
                continue
            seen.add(n)
            result.good_points += good
            result.bad_points += bad
            result.failed_polls += good == 0
            result.lateness.append(max(0.0, t - t0 - n * period))
        result.polled_slots += len(seen)
    # A terminal that never answered or was never polled still had its slots.
    result.expected_slots += round((terminals - len(polls)) * (end - begin) / period)
    return result


def agent_status(config: Path) -> dict[str, Any] | None:
    """`edge-agent status --json` of the running agent (None if it does not answer)."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    try:
        status: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    return status


def overload_lines(
    status: dict[str, Any] | None, health_bytes: int | None, stopped_in: float, code: int | None
) -> str:
    """What the agent itself counted (slots skipped, readings lost), its health report's size
    and how long it took to end after SIGTERM."""
    lines = []
    if status is None:
        lines.append("agent status: no answer")
    else:
        ts = status.get("terminals") or []
        missed = sum(t.get("missed_slots", 0) for t in ts)
        behind = sum(t.get("behind_slots", 0) for t in ts)
        held = sum(t.get("held_slots", 0) for t in ts)
        skipping = sum(1 for t in ts if t.get("behind_slots", 0))
        lines.append(
            f"slots skipped (agent's count, since start): {missed} "
            f"(agent behind {behind}, of which held by the outbox {held}; "
            f"{skipping} of {len(ts)} terminals behind)"
        )
        lost = ((status.get("outbox") or {}).get("lost") or {}).get("readings", 0)
        reported = (status.get("outbox") or {}).get("lost_reported", 0)
        lines.append(f"readings lost (agent's count): {lost + reported}")
        late = sum(t.get("late_starts", 0) for t in ts)
        lines.append(f"polls started over a quarter period late (agent's count): {late}")
        checks = status.get("checks") or {}
        flagged = [r["id"] for r in checks.get("failing", []) + checks.get("warning", [])]
        lines.append(
            "overload check: "
            + ("raised" if "terminals.overload" in flagged else "ok")
            + f" ({len(flagged)} checks failing or warning)"
        )
    shown = "none written" if health_bytes is None else f"{health_bytes / 1024:.1f} KiB"
    lines.append(f"health report on disk: {shown}")
    lines.append(f"sigterm to exit: {stopped_in:.2f} s (exit code {code})")
    return "\n".join(lines)


def percentile(samples: list[float], pct: float) -> float:
    if len(samples) < 2:
        return samples[0] if samples else math.nan
    return statistics.quantiles(samples, n=1000, method="inclusive")[round(pct * 10) - 1]


def start_agent(
    config: Path, log_path: Path, tracemalloc: Path | None = None
) -> subprocess.Popen[bytes]:
    """The daemon as a child process (under bench/traced_agent.py if `tracemalloc`)."""
    command = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    if tracemalloc is not None:
        command[1:3] = [str(ROOT / "bench" / "traced_agent.py"), str(tracemalloc), "--"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=service_environment(),  # as the service unit starts it (MALLOC_ARENA_MAX)
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=die_with_parent,
        )


def idle_rss(tmp: Path, port: int, registers: int, settle: float) -> int:
    """VmRSS (KiB) of an agent with one terminal polled hourly, `settle` seconds after launch:
    the baseline that "RSS per terminal" is counted from."""
    config, state_dir = tmp / "idle.yaml", tmp / "idle-state"
    write_config(config, state_dir, [port], registers, IDLE_PERIOD)
    agent = start_agent(config, tmp / "idle.log")
    try:
        time.sleep(settle)
        if agent.poll() is not None:
            raise RuntimeError(f"idle agent exited with {agent.returncode}")
        return memory_kib(agent.pid)["VmRSS"]
    finally:
        stop(agent)


def take_snapshot(agent: subprocess.Popen[bytes], path: Path) -> tracemalloc.Snapshot:
    """Ask a traced agent for its tracemalloc snapshot and load it."""
    path.unlink(missing_ok=True)
    agent.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    size = -1
    while time.monotonic() < deadline:
        time.sleep(1)
        now = path.stat().st_size if path.exists() else -1
        if now > 0 and now == size:
            return tracemalloc.Snapshot.load(str(path))
        size = now
    raise RuntimeError(f"no tracemalloc snapshot in {path}")


def print_snapshot(snapshot: tracemalloc.Snapshot, top: int = 25) -> None:
    """The largest allocation sites of the agent's own code, by line and by file."""
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    print(f"tracemalloc: {total / 2**20:.1f} MiB traced")
    for key in ("filename", "lineno"):
        print(f"  largest by {key}:")
        for stat in snapshot.statistics(key)[:top]:
            frame = stat.traceback[0]
            where = frame.filename if key == "filename" else f"{frame.filename}:{frame.lineno}"
            print(f"    {stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {where}")


def run(args: argparse.Namespace) -> None:
    k, r, p, s = args.devices, args.registers, args.period, args.duration
    sim_procs = args.sim_processes or max(1, math.ceil(k / 500))
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("agent code:", describe_tree())
    print(
        f"parameters: devices={k} registers={r} period={p:g}s duration={s:g}s "
        f"warmup={args.warmup:g}s simulator processes={sim_procs} (nice {args.nice_devices}) "
        f"cores={os.cpu_count()}"
    )
    settings = " ".join(f"{key}={value}" for key, value in service_settings().items())
    print(
        f"agent environment: {settings or 'as is'} (the service unit's Environment=), "
        "bytecode compiled (as installed)"
    )
    compile_agent()
    telemetry = {"schema": args.schema, "compression": args.compression}
    print(
        f"values: random walk below {args.values_max}, step <= {args.step} per period; "
        f"telemetry: schema {args.schema}, compression {args.compression}"
        + (" (published to a local mosquitto)" if args.broker else " (no broker)")
        + ("" if args.history else "; history off")
    )
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        state_dir = Path(tmp) / "state"
        config = Path(tmp) / "config.yaml"
        agent: subprocess.Popen[bytes] | None = None
        sims: list[subprocess.Popen[bytes]] = []
        mosquitto: subprocess.Popen[bytes] | None = None
        tap: BrokerTap | None = None
        idle_kib: int | None = None
        traced: tracemalloc.Snapshot | None = None
        try:
            broker = None
            if args.broker:
                mosquitto, broker = start_mosquitto(Path(tmp))
                tap = BrokerTap(broker)
            sims, ports = start_farm(
                k, r, sim_procs, args.values_max, args.step, args.period, args.nice_devices
            )
            write_config(
                config, state_dir, ports, r, p, args.local_copy, broker, telemetry, args.history
            )
            if not args.no_idle:
                idle_kib = idle_rss(Path(tmp), ports[0], r, args.warmup)
            launched = time.time()
            agent = start_agent(config, Path(tmp) / "agent.log", args.tracemalloc)
            time.sleep(args.warmup)
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited during warmup with {agent.returncode}")
            a = sample(agent, sims)
            time.sleep(s)
            b = sample(agent, sims)
            memory = memory_kib(agent.pid)
            if args.tracemalloc is not None:
                traced = take_snapshot(agent, args.tracemalloc)
            state_bytes = {f.name: f.stat().st_size for f in state_dir.iterdir() if f.is_file()}
            status = agent_status(config)
            health = state_dir / "state" / "health.json"
            health_bytes = health.stat().st_size if health.exists() else None
            asked = time.monotonic()
            stop(agent)
            stopped_in = time.monotonic() - asked
        finally:
            if agent is not None:
                stop(agent)
            for proc in sims:
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in sims:
                stop(proc)
            if tap is not None:
                time.sleep(1.0)  # what the agent published on its way out
                tap.close()
            if mosquitto is not None:
                mosquitto.terminate()
                mosquitto.wait()
        log_lines = (Path(tmp) / "agent.log").read_text(errors="replace").splitlines()
        if tap is not None:
            polls = analyse(tap.readings(), k, p, a.wall, b.wall)
            wire = tap.wire(a.wall, b.wall)
        else:
            polls = analyse(outbox_readings(state_dir / "outbox.db"), k, p, a.wall, b.wall)

    window = b.wall - a.wall
    late = polls.lateness
    expected_points = k * r / p
    print(f"window: {window:.1f} s")
    print(
        f"startup: every terminal polled {polls.all_started - launched:.1f} s after launch "
        f"(measuring from {args.warmup:g} s)"
    )
    print(f"points/s: {polls.good_points / window:.0f} (expected {expected_points:.0f})")
    print(f"bad readings: {polls.bad_points} in {polls.failed_polls} failed polls")
    user = (b.agent_user - a.agent_user) / window
    system = (b.agent_system - a.agent_system) / window
    print(f"agent cpu: {user + system:.3f} s/s (user {user:.3f}, system {system:.3f})")
    points_per_s = polls.good_points / window
    if points_per_s:
        print(f"agent cpu per delivered point: {(user + system) / points_per_s * 1e6:.1f} µs")
    print(f"simulator cpu: {(b.sim_cpu - a.sim_cpu) / window:.3f} s/s ({sim_procs} processes)")
    print(
        f"agent rss: {memory['VmRSS'] / 1024:.1f} MiB at end, "
        f"peak {memory['VmHWM'] / 1024:.1f} MiB (VmHWM)"
    )
    if idle_kib is not None:
        per_terminal = (memory["VmRSS"] - idle_kib) / 1024 / k
        print(
            f"agent rss idle: {idle_kib / 1024:.1f} MiB (one terminal polled every "
            f"{IDLE_PERIOD:g} s); rss per terminal: {per_terminal:.3f} MiB "
            "((end - idle) / K)"
        )
    if late:
        print(
            f"lateness p50/p99/max: {percentile(late, 50) * 1e3:.0f} ms / "
            f"{percentile(late, 99) * 1e3:.0f} ms / {max(late) * 1e3:.0f} ms "
            f"({len(late)} polls)"
        )
        print(f"polls started > {LATE * 1e3:.0f} ms late: {sum(x > LATE for x in late)}")
    ratio = polls.polled_slots / polls.expected_slots if polls.expected_slots else math.nan
    print(
        f"polls on time: {ratio:.1%} ({polls.polled_slots} of {polls.expected_slots} "
        f"scheduled slots polled; K*S/P = {k * window / p:.0f})"
    )
    if tap is not None:
        messages, size, readings = wire
        print(
            f"bytes at the broker per reading: {size / max(1, readings):.2f} "
            f"({size:,} payload bytes of {messages} telemetry messages, {readings:,} readings; "
            f"{readings / max(1, messages):.0f} readings a message)"
        )
    print(
        "state_dir at end: "
        + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sorted(state_bytes.items()))
    )
    print(overload_lines(status, health_bytes, stopped_in, agent.returncode))
    events = [json.loads(x) for x in log_lines if x.startswith("{")]
    levels = Counter(e.get("level") for e in events)
    print(
        f"agent log: {len(log_lines)} lines, {levels['warning']} warnings, {levels['error']} errors"
    )
    notable = Counter(  # an alarm with its check and status
        f"{e.get('level')}: {e.get('event')}"
        + (f" {e.get('check')} {e.get('status')}" if e.get("check") else "")
        for e in events
        if e.get("level") != "info"
    )
    for text, count in notable.most_common(5):
        print(f"  {count} x {text}")
    if traced is not None:
        print_snapshot(traced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200, help="K simulated terminals")
    parser.add_argument("--registers", type=int, default=50, help="R uint16 points each")
    parser.add_argument("--period", type=float, default=1.0, help="P poll period, seconds")
    parser.add_argument("--duration", type=float, default=30.0, help="S measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument(
        "--local-copy", action="store_true", help="also write the JSON-lines copy (its cost)"
    )
    parser.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        help="turn the history statistics off (what the rest of the path costs without them)",
    )
    parser.add_argument(
        "--sim-processes", type=int, default=0, help="simulator processes (default: 1 per 500)"
    )
    parser.add_argument(
        "--values-max", type=int, default=10_000, help="registers walk below this (<= 65536)"
    )
    parser.add_argument("--step", type=int, default=50, help="largest step of a register a period")
    parser.add_argument(
        "--nice-devices",
        type=int,
        choices=range(20),
        default=0,
        metavar="N",
        help="run the simulators at niceness N (0-19): on a small machine the agent otherwise "
        "shares the cores with its own test devices, which it never does in the field",
    )
    parser.add_argument(
        "--broker", action="store_true", help="publish to a local mosquitto, measure bytes there"
    )
    parser.add_argument("--schema", type=int, choices=(1, 2), default=2, help="telemetry.schema")
    parser.add_argument(
        "--compression", choices=("none", "zlib"), default="zlib", help="telemetry.compression"
    )
    parser.add_argument(
        "--no-idle", action="store_true", help="skip the idle agent (its RSS, RSS per terminal)"
    )
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        default=None,
        help="run the agent under tracemalloc, snapshot to this file, print the largest sites",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
