"""How many Modbus TCP terminals one agent process polls on time, and at what cost.

Starts K simulated devices (pymodbus servers from `agent.sim.modbus_device`, R holding
registers each) in separate child processes on 127.0.0.1, then the real daemon
(`python -m agent run`) in its own child process on a generated config: K modbus-tcp terminals,
R consecutive uint16 points each (one coalesced read per poll), period P, everything else at its
defaults — readings go, signed, into the durable outbox (its budget raised so that nothing is
evicted during the run; no broker). `--local-copy` also turns on the JSON-lines copy, to
measure what it costs. The config is block YAML with every point written out. After
a warmup it samples both processes at the start and end of a measurement window of S seconds
and prints:

- points/s: good readings of the polls whose slot falls in the window (see lateness), divided
  by the window's length, counted from the telemetry messages in the outbox after the run (a
  reading there was delivered: signed and durable);
- agent cpu: (utime + stime) from /proc/<pid>/stat over the window, per wall second; the
  simulators' CPU is measured the same way and printed beside it;
- agent rss: VmRSS at the end of the window and VmHWM (peak, startup included: loading a big
  config is often the peak) from /proc/<pid>/status;
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

The script stops the agent with SIGTERM, stops the simulators, and removes its temporary files;
children also get SIGTERM if the script itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import select
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from procs import cpu_seconds, cpu_times, describe_tree, die_with_parent, memory_kib, stop

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP_RESOLUTION = 0.001  # observed_at carries milliseconds (truncated)
IDLE_PERIOD = 3600.0  # the idle agent's one terminal is polled hourly
LATE = 0.1  # a poll starting later than this is counted as late (the K=200 target)


# --- simulator child process -------------------------------------------------------------


async def serve_devices(count: int, registers: int) -> None:
    """Serve `count` simulated devices until stdin closes; prints their ports as one JSON line."""
    from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice

    devices = []
    ports = []
    for i in range(count):
        memory = RegisterMap(size=registers)
        memory.set_registers("holding", 0, [(i * 31 + j) & 0xFFFF for j in range(registers)])
        device = SimulatedModbusDevice({1: memory})
        ports.append(await device.serve_tcp("127.0.0.1", 0))
        devices.append(device)
    print(json.dumps({"ports": ports}), flush=True)

    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            closed.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await closed.wait()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            for device in devices:
                await device.stop()


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


def start_simulators(
    devices: int, registers: int, processes: int
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    sims: list[subprocess.Popen[bytes]] = []
    share = [devices // processes + (i < devices % processes) for i in range(processes)]
    for n in share:
        command = [sys.executable, __file__, "--serve", str(n), "--registers", str(registers)]
        sims.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=die_with_parent,
            )
        )
    ports: list[int] = []
    deadline = time.monotonic() + 120
    for proc in sims:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"simulator {proc.pid} did not report its ports")
        ports.extend(json.loads(line)["ports"])
    return sims, ports


def write_config(
    path: Path,
    state_dir: Path,
    ports: list[int],
    registers: int,
    period: float,
    local_copy: bool = False,
) -> None:
    config = {
        "gateway": {"id": "bench"},
        "state_dir": str(state_dir),
        "log": {"level": "info", "format": "json"},
        "jsonl": {"enabled": local_copy, "max_bytes": 1 << 40},  # no rotation during the run
        "outbox": {"max_bytes": 16 << 30},  # keep every reading of the run for the analysis
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


def outbox_readings(database: Path) -> Iterator[dict[str, object]]:
    """Every reading in the telemetry messages of an outbox (payloads read, not verified)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        for (payload,) in conn.execute("SELECT payload FROM messages WHERE kind = 'telemetry'"):
            middle = payload.split(".")[1]
            envelope = json.loads(base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)))
            yield from envelope["body"]["readings"]
    finally:
        conn.close()


def analyse(
    readings: Iterable[dict[str, object]], terminals: int, period: float, begin: float, end: float
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
        f"warmup={args.warmup:g}s simulator processes={sim_procs} cores={os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        state_dir = Path(tmp) / "state"
        config = Path(tmp) / "config.yaml"
        agent: subprocess.Popen[bytes] | None = None
        sims: list[subprocess.Popen[bytes]] = []
        idle_kib: int | None = None
        traced: tracemalloc.Snapshot | None = None
        try:
            sims, ports = start_simulators(k, r, sim_procs)
            write_config(config, state_dir, ports, r, p, args.local_copy)
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
        finally:
            if agent is not None:
                stop(agent)
            for proc in sims:
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in sims:
                stop(proc)
        log_lines = (Path(tmp) / "agent.log").read_text(errors="replace").splitlines()
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
    print(
        "state_dir at end: "
        + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sorted(state_bytes.items()))
    )
    events = [json.loads(x) for x in log_lines if x.startswith("{")]
    levels = Counter(e.get("level") for e in events)
    print(
        f"agent log: {len(log_lines)} lines, {levels['warning']} warnings, {levels['error']} errors"
    )
    notable = Counter(
        f"{e.get('level')}: {e.get('event')}" for e in events if e.get("level") != "info"
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
        "--sim-processes", type=int, default=0, help="simulator processes (default: 1 per 500)"
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
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_devices(args.serve, args.registers))
    else:
        run(args)


if __name__ == "__main__":
    main()
