"""SL651 central station benchmark: decode rate, and the agent under N stations reporting at r/s.

Two measurements, printed one after the other:

1. decode rate: `bench/sl651_decode.py` (stream-decode + body decode + readings for the mix of
   real report frames of vectors.json, on one core), run as a child process before anything
   else so it has a quiet machine; its output is printed as it is.
2. the central station: the real daemon (`python -m agent run`) in its own process, on a
   generated config (`sl651.listen` 127.0.0.1 on a free port, N sl651 terminals with station
   addresses 0000000001.., password 1234; no broker, the outbox at its defaults, state_dir in a
   temporary directory). A load generator in G separate processes (asyncio, one TCP connection
   per station to 127.0.0.1) sends timed reports (0x32, `SimulatedStation.timed_report()`,
   each station its own address and serials) at r reports/s per station, spread evenly in
   time: station k of N sends at t0 + k/(N*r) + j/r. Each connection decodes what the centre
   sends with a StreamDecoder; the confirm is the downlink with function 0x32 and end EOT, and
   is matched to its report by the echoed serial. Latency is from just before the report is
   written to the socket to when the confirm has been decoded.

   After a warmup, a window of S seconds is measured:
   - frames/s handled: confirms received in the window / window;
   - reports sent/s: reports whose slot is in the window / window;
   - ack latency p50/p99/max over the reports of the window;
   - acks missing: reports of the window without a confirm `GRACE` seconds after it ends;
   - agent CPU: (utime + stime) of all its threads from /proc/<pid>/stat over the window per wall
     second; RSS (VmRSS at the end, VmHWM peak) from /proc/<pid>/status;
   - load generator CPU the same way, per process, and how late it sent against its schedule
     (if it is late, or near one core, it is the bottleneck: use more `--generators`).

The open-file limit is raised to what N connections need (in this process before the agent
starts, so the agent inherits it, and in each generator). Children run in their own session
(Ctrl-C reaches only this script) and get SIGTERM if it dies (PR_SET_PDEATHSIG); on exit, error,
Ctrl-C or SIGTERM the generators and the agent are stopped and the temporary files removed.
Only loopback is used.

    .venv/bin/python bench/sl651.py [--stations 1000] [--rate 1] [--duration 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from procs import (
    compile_agent,
    cpu_seconds,
    describe_tree,
    die_with_parent,
    memory_kib,
    service_environment,
    stop,
)

ROOT = Path(__file__).resolve().parent.parent
DECODE_BENCH = Path(__file__).resolve().parent / "sl651_decode.py"
HOST = "127.0.0.1"
GRACE = 5.0  # seconds after the window for its last confirms to arrive
FDS_SPARE = 256  # descriptors beyond one per connection (logs, database, pipes, the loop)
DECODE_TARGET = 20_000  # frames/s on one core (issue 4)
P99_TARGET = 0.050  # s, ack p99 with 1,000 stations at 1 report/s (issue 4)
STATIONS_TARGET, RATE_TARGET = 1000, 1.0


# --- small helpers -----------------------------------------------------------------------


def raise_nofile(needed: int) -> int:
    """Raise the soft open-file limit to `needed` (up to the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def station_code(k: int) -> str:
    return f"00{k + 1:08d}"


# --- load generator (child process) ------------------------------------------------------


@dataclass
class Tally:
    """What one generator process saw."""

    begin: float = 0.0
    end: float = 0.0
    sent: int = 0  # all reports written
    sent_window: int = 0  # reports whose slot is in the window
    unsent: int = 0  # slots missed because the connection was gone
    confirms: int = 0
    confirms_window: int = 0  # confirms received in the window
    latencies: list[float] = field(default_factory=list)  # of the window's reports
    lateness: list[float] = field(default_factory=list)  # send time - slot, window's reports
    unmatched: int = 0  # confirms whose serial matches no report outstanding
    other: Counter[str] = field(default_factory=Counter)  # other downlinks, by function/end
    rejected: int = 0  # bytes the decoder refused
    lost: int = 0  # connections closed by the agent


class StationLink(asyncio.Protocol):
    """One simulated station's TCP connection: sends its reports, times their confirms."""

    def __init__(self, tally: Tally, code: str) -> None:
        from agent.protocols.sl651.stream import StreamDecoder
        from agent.sim.sl651_station import SimulatedStation

        self.tally = tally
        self.station = SimulatedStation(code, center=1, password="1234")  # noqa: S106
        self.decoder = StreamDecoder()
        self.transport: asyncio.Transport | None = None
        self.outstanding: dict[int, tuple[float, bool]] = {}  # serial -> (sent at, in window)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.tally.lost += 1
        self.transport = None

    def send_report(self, slot: float) -> None:
        tally = self.tally
        if self.transport is None or self.transport.is_closing():
            tally.unsent += 1
            return
        frame = self.station.timed_report()
        serial = self.station._serial  # the serial timed_report() just used
        in_window = tally.begin <= slot < tally.end
        now = time.monotonic()
        self.outstanding[serial] = (now, in_window)
        self.transport.write(frame)
        tally.sent += 1
        if in_window:
            tally.sent_window += 1
            tally.lateness.append(now - slot)

    def data_received(self, data: bytes) -> None:
        from agent.protocols.sl651.body import frame_serial
        from agent.protocols.sl651.frame import Ctrl, Frame, end_name

        now = time.monotonic()
        tally = self.tally
        self.decoder.feed(data)
        for event in self.decoder.events():
            if not isinstance(event, Frame):
                tally.rejected += 1
                continue
            if event.direction != "down" or event.function != 0x32 or event.end != Ctrl.EOT:
                tally.other[f"{event.direction} 0x{event.function:02X} {end_name(event.end)}"] += 1
                continue
            tally.confirms += 1
            if tally.begin <= now < tally.end:
                tally.confirms_window += 1
            sent = self.outstanding.pop(frame_serial(event) or -1, None)
            if sent is None:
                tally.unmatched += 1
            elif sent[1]:
                tally.latencies.append(now - sent[0])


async def _read_line(loop: asyncio.AbstractEventLoop) -> str:
    return await loop.run_in_executor(None, sys.stdin.readline)


async def generate(args: argparse.Namespace) -> None:
    """Connect `args.count` stations, report on the plan read from stdin, print the tally."""
    raise_nofile(args.count + FDS_SPARE)
    loop = asyncio.get_running_loop()
    tally = Tally()
    gate = asyncio.Semaphore(32)  # the listener's accept backlog is 100

    async def connect(k: int) -> StationLink | None:
        async with gate:
            for _ in range(5):
                try:
                    async with asyncio.timeout(10):
                        _, link = await loop.create_connection(
                            lambda: StationLink(tally, station_code(k)), args.host, args.port
                        )
                    return link
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.5)
        return None

    started = time.monotonic()
    indices = range(args.first, args.first + args.count)
    links = await asyncio.gather(*(connect(k) for k in indices))
    connected = [(k, link) for k, link in zip(indices, links, strict=True) if link is not None]
    print(
        json.dumps(
            {
                "connected": len(connected),
                "failed": args.count - len(connected),
                "seconds": time.monotonic() - started,
            }
        ),
        flush=True,
    )

    plan = json.loads(await _read_line(loop))
    t0, tally.begin, tally.end = plan["t0"], plan["begin"], plan["end"]
    interval = 1.0 / args.rate

    def fire(link: StationLink, slot: float) -> None:
        if slot >= tally.end:
            return
        link.send_report(slot)
        loop.call_at(slot + interval, fire, link, slot + interval)

    for k, link in connected:  # asyncio's loop.time() is time.monotonic()
        first = t0 + k / (args.total * args.rate)
        loop.call_at(first, fire, link, first)

    await asyncio.sleep(max(0.0, tally.end + GRACE - time.monotonic()))
    missing = sum(w for _, link in connected for _, w in link.outstanding.values())
    missing_all = sum(len(link.outstanding) for _, link in connected)
    result = {
        "sent": tally.sent,
        "sent_window": tally.sent_window,
        "unsent": tally.unsent,
        "confirms": tally.confirms,
        "confirms_window": tally.confirms_window,
        "missing_window": missing,
        "missing_all": missing_all,
        "unmatched": tally.unmatched,
        "other": dict(tally.other),
        "rejected": tally.rejected,
        "lost": tally.lost,
        "latencies": [round(x, 6) for x in tally.latencies],
        "lateness": [round(x, 6) for x in tally.lateness],
    }
    print(json.dumps(result), flush=True)
    await _read_line(loop)  # the benchmark closes stdin when it is done with us
    for _, link in connected:
        if link.transport is not None:
            link.transport.close()
    await asyncio.sleep(0.1)


# --- process measurement -----------------------------------------------------------------


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, preexec_fn=die_with_parent, **kwargs
    )


def read_line(proc: subprocess.Popen[bytes], deadline: float, what: str) -> dict[str, Any]:
    """One JSON line from a child's stdout, by a monotonic deadline."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    line = proc.stdout.readline() if ready else b""
    if not line:
        raise RuntimeError(f"{what} (pid {proc.pid}) gave no answer (exit code {proc.poll()})")
    return json.loads(line)


# --- 1. decode rate ----------------------------------------------------------------------


def run_decode(seconds: float) -> float | None:
    """The colleague's decode benchmark in a child process; prints its output, returns the rate."""
    print(f"== decode rate ({DECODE_BENCH.relative_to(ROOT)}) ==", flush=True)
    proc = spawn(
        [sys.executable, str(DECODE_BENCH), "--seconds", f"{seconds:g}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=seconds + 120)
    finally:
        stop(proc)
    text = out.decode(errors="replace")
    for line in text.splitlines():
        print(f"  {line}")
    match = re.search(r"rate: ([\d,]+) frames/s", text)
    if proc.returncode != 0 or match is None:
        print(f"  decode benchmark failed (exit code {proc.returncode})")
        return None
    return float(match.group(1).replace(",", ""))


# --- 2. the central station under load ---------------------------------------------------


def write_config(path: Path, state_dir: Path, stations: int, rate: float) -> None:
    config = {
        "gateway": {"id": "bench"},
        "state_dir": str(state_dir),
        "log": {"level": "info", "format": "json"},
        "sl651": {"center": 1, "listen": [f"{HOST}:0"]},
        "terminals": [
            {
                "name": f"st{k:05d}",
                "protocol": "sl651",
                "station": station_code(k),
                "password": "1234",
                "expected_interval": max(60.0, 3 / rate),
            }
            for k in range(stations)
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def wait_listening(agent: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """The port the agent's SL651 listener got (from its JSON log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"agent exited with {agent.returncode} at start:\n{tail}")
        for line in log.read_text(errors="replace").splitlines():
            if "SL651 central station listening" in line:
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    return int(json.loads(line)["tcp"][0].rsplit(":", 1)[1])
        time.sleep(0.1)
    raise RuntimeError(f"the agent did not start listening within {timeout:g} s")


@dataclass
class LoadResult:
    window: float
    agent_cpu: float
    agent_memory: dict[str, int]
    generator_cpu: list[float]
    connect_seconds: float
    connected: int
    results: list[dict[str, Any]]
    state_bytes: dict[str, int]
    log_lines: list[str]


def run_load(args: argparse.Namespace, generators: int) -> LoadResult:
    n = args.stations
    share = [n // generators + (i < n % generators) for i in range(generators)]
    compile_agent()  # as an installed release has it
    with tempfile.TemporaryDirectory(prefix="bench-sl651-") as tmp:
        state_dir = Path(tmp) / "state"
        config = Path(tmp) / "config.yaml"
        log_path = Path(tmp) / "agent.log"
        write_config(config, state_dir, n, args.rate)
        agent: subprocess.Popen[bytes] | None = None
        gens: list[subprocess.Popen[bytes]] = []
        try:
            with log_path.open("wb") as log:
                agent = spawn(
                    [sys.executable, "-m", "agent", "run", "--config", str(config)],
                    env=service_environment(),  # as the service unit starts it
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            port = wait_listening(agent, log_path, 120)
            first = 0
            for count in share:
                command = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--generate",
                    f"--host={HOST}",
                    f"--port={port}",
                    f"--first={first}",
                    f"--count={count}",
                    f"--total={n}",
                    f"--rate={args.rate!r}",
                ]
                gens.append(spawn(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
                first += count
            deadline = time.monotonic() + 180
            hello = [read_line(g, deadline, "load generator") for g in gens]
            connected = sum(h["connected"] for h in hello)
            connect_seconds = max(h["seconds"] for h in hello)

            t0 = time.monotonic() + 1.0
            begin = t0 + args.warmup
            end = begin + args.duration
            plan = json.dumps({"t0": t0, "begin": begin, "end": end}).encode() + b"\n"
            for g in gens:
                assert g.stdin is not None
                g.stdin.write(plan)
                g.stdin.flush()

            time.sleep(max(0.0, begin - time.monotonic()))
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited during warmup with {agent.returncode}")
            wall_a = time.monotonic()
            agent_a, gens_a = cpu_seconds(agent.pid), [cpu_seconds(g.pid) for g in gens]
            time.sleep(max(0.0, end - time.monotonic()))
            wall_b = time.monotonic()
            agent_b, gens_b = cpu_seconds(agent.pid), [cpu_seconds(g.pid) for g in gens]
            memory = memory_kib(agent.pid)
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited during the window with {agent.returncode}")

            deadline = end + GRACE + 60
            results = [read_line(g, deadline, "load generator") for g in gens]
            state_bytes = {f.name: f.stat().st_size for f in state_dir.iterdir() if f.is_file()}
        finally:
            for g in gens:
                with contextlib.suppress(OSError):
                    if g.stdin is not None:
                        g.stdin.close()
            for g in gens:
                stop(g, grace=5)
            if agent is not None:
                stop(agent)
        log_lines = log_path.read_text(errors="replace").splitlines()

    window = wall_b - wall_a
    return LoadResult(
        window=window,
        agent_cpu=(agent_b - agent_a) / window,
        agent_memory=memory,
        generator_cpu=[(b - a) / window for a, b in zip(gens_a, gens_b, strict=True)],
        connect_seconds=connect_seconds,
        connected=connected,
        results=results,
        state_bytes=state_bytes,
        log_lines=log_lines,
    )


def report_load(args: argparse.Namespace, generators: int, load: LoadResult) -> float:
    """Prints the load figures; returns the ack p99 (s)."""
    results, window = load.results, load.window

    def total(key: str) -> int:
        return sum(r[key] for r in results)

    latencies = sorted(x for r in results for x in r["latencies"])
    lateness = sorted(x for r in results for x in r["lateness"])
    other: Counter[str] = Counter()
    for r in results:
        other.update(r["other"])
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    ms = 1e3

    print(f"window: {window:.1f} s (after {args.warmup:g} s warmup)")
    print(
        f"stations connected: {load.connected} of {args.stations} "
        f"(in {load.connect_seconds:.1f} s), connections closed by the agent: {total('lost')}"
    )
    print(
        f"frames/s handled: {total('confirms_window') / window:,.1f} confirms/s "
        f"(expected {args.stations * args.rate:,.0f})"
    )
    print(f"reports sent/s: {total('sent_window') / window:,.1f} ({total('sent_window')} reports)")
    if latencies:
        print(
            f"ack latency p50/p99/max: {p50 * ms:.1f} ms / {p99 * ms:.1f} ms / "
            f"{latencies[-1] * ms:.1f} ms ({len(latencies)} acks)"
        )
    else:
        print("ack latency: no acks received")
    print(
        f"acks missing: {total('missing_window')} of {total('sent_window')} reports of the window "
        f"(no confirm {GRACE:g} s after it; {total('missing_all')} over the whole run), "
        f"unsent (connection gone): {total('unsent')}"
    )
    print(
        f"other downlinks: {dict(other) or 'none'}, unmatched confirms: {total('unmatched')}, "
        f"rejected bytes events: {total('rejected')}"
    )
    user_mem = load.agent_memory
    print(
        f"agent cpu: {load.agent_cpu:.3f} s/s; rss {user_mem['VmRSS'] / 1024:.1f} MiB at end, "
        f"peak {user_mem['VmHWM'] / 1024:.1f} MiB (VmHWM)"
    )
    per = ", ".join(f"{c:.3f}" for c in load.generator_cpu)
    print(
        f"load generator cpu: {sum(load.generator_cpu):.3f} s/s in {generators} "
        f"process{'es' if generators > 1 else ''} ({per}); "
        f"send lateness p50/p99/max {percentile(lateness, 50) * ms:.2f} / "
        f"{percentile(lateness, 99) * ms:.2f} / {(lateness[-1] if lateness else math.nan) * ms:.1f} ms"
    )
    if any(c > 0.8 for c in load.generator_cpu) or percentile(lateness, 99) > 0.01:
        print("  WARNING: the load generator may be the bottleneck: try more --generators")
    print(
        "state_dir at end: "
        + ", ".join(
            f"{name} {size / 2**20:.1f} MiB" for name, size in sorted(load.state_bytes.items())
        )
    )
    events = []
    for line in load.log_lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    levels = Counter(e.get("level") for e in events if isinstance(e, dict))
    print(
        f"agent log: {len(load.log_lines)} lines, {levels['warning']} warnings, "
        f"{levels['error']} errors"
    )
    notable = Counter(
        f"{e.get('level')}: {e.get('event')}"
        for e in events
        if isinstance(e, dict) and e.get("level") != "info"
    )
    for text, count in notable.most_common(5):
        print(f"  {count} x {text}")
    for e in [e for e in events if isinstance(e, dict) and e.get("level") != "info"][:5]:
        detail = {k: v for k, v in e.items() if k not in ("level", "event", "timestamp")}
        print(f"    {e.get('event')}: {json.dumps(detail)[:200]}")
    return p99


# --- main --------------------------------------------------------------------------------


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=1000, help="N concurrent stations")
    parser.add_argument("--rate", type=float, default=1.0, help="r reports/s per station")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument(
        "--generators", type=int, default=0, help="load generator processes (default: 1 per 1000)"
    )
    parser.add_argument(
        "--decode-seconds", type=float, default=5.0, help="decode benchmark length (0: skip)"
    )
    # The load generator's own mode (a child process of the benchmark).
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default=HOST, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        asyncio.run(generate(args))
        return
    if args.stations < 1 or args.rate <= 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("--stations >= 1, --rate > 0, --duration > 0, --warmup >= 0")

    # Ctrl-C raises KeyboardInterrupt even if the shell started us with SIGINT ignored (a
    # background job); SIGTERM and SIGHUP unwind the same way. Either way the finally blocks
    # stop the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    generators = args.generators or max(1, math.ceil(args.stations / 1000))
    limit = raise_nofile(args.stations + FDS_SPARE)  # inherited by the agent
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("agent code:", describe_tree())
    print(
        f"parameters: stations={args.stations} rate={args.rate:g}/s duration={args.duration:g}s "
        f"warmup={args.warmup:g}s generators={generators} cores={os.cpu_count()} "
        f"open-file limit={limit}",
        flush=True,
    )
    decode_rate = run_decode(args.decode_seconds) if args.decode_seconds > 0 else None

    print("== central station under load ==", flush=True)
    load = run_load(args, generators)
    p99 = report_load(args, generators, load)

    print("== targets (issue 4) ==")
    if decode_rate is not None:
        verdict = "met" if decode_rate >= DECODE_TARGET else "NOT met"
        print(f"decode >= {DECODE_TARGET:,} frames/s on one core: {decode_rate:,.0f} -> {verdict}")
    at_target = args.stations >= STATIONS_TARGET and args.rate >= RATE_TARGET
    missing = sum(r["missing_window"] for r in load.results)
    ok = p99 < P99_TARGET and missing == 0 and load.connected == args.stations
    print(
        f"{STATIONS_TARGET:,} stations at {RATE_TARGET:g} report/s, ack p99 < "
        f"{P99_TARGET * 1e3:.0f} ms: p99 {p99 * 1e3:.1f} ms, {missing} acks missing -> "
        + ("met" if ok else "NOT met")
        + ("" if at_target else " (at a lighter load than the target's)")
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: children stopped, temporary files removed", file=sys.stderr)
        sys.exit(130)
