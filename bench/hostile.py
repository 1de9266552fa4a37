#!/usr/bin/env python3
"""Hostile SL651 peers against the real agent: CPU per MiB, other stations' confirms, RSS.

The agent runs as a process (`python -m agent run`) on a generated config: `sl651.listen` on a
free loopback port, S configured stations, no broker, state_dir in a temporary directory, and
`sl651.max_rate` raised to 1 GiB/s so that the decoder, not the per-peer budget, sets the pace
(16 MB of M3 packets at the default 32 KiB/s would take minutes); the confirm latency is also
measured on an agent with the default budgets first.
Its CPU is utime+stime from /proc/<pid>/stat, its memory VmRSS from /proc/<pid>/status.

1. CPU per MiB of hostile input, for each kind: frames that each claim 4,095 bytes with a bad
   CRC; headers 14 bytes apart whose claimed end lands on a header byte set to ETX (the issue's
   75,000-CRC case); random bytes; start markers only (7E); ASCII headers claiming FFF. One
   connection sends 1 MiB, 4,112 zero bytes (they end any frame under way) and a report; the
   agent's CPU is taken from before the first byte to the report's confirm (socket reads and
   that report included).
2. Other stations' confirm latency: the S stations (agent/sim/sl651_station.py frames) each send
   a timed report every 0.2 s, one connection each; latency is from the write to the confirm
   decoded. Measured for D seconds alone, then for D seconds while F flooder processes each
   push frames claiming 4,095 bytes (bad CRC) as fast as the agent reads them. Meanwhile the
   agent polls a simulated Modbus TCP device (a child process) every 200 ms: how late each
   poll started, rebuilt from the readings' `observed_at` in the agent's JSON-lines copy (a poll
   n slots after the first is due at first + n × period; the least late poll of the run is
   taken as on time, so lateness is under-stated by at most that one's), and the polls made
   against the slots of each window.
3. RSS: before and after 4,000 packets (about 4 KB each) of an M3 transfer whose packet 1
   never comes (as in the issue; refused by m3_max_packets), 1,000 packets of a transfer within
   that bound (4 MB: over m3_max_bytes, evicted), and N idle connections; the agent's counters
   (`edge-agent status --json`) and its log lines and tracebacks over the whole run.

    .venv/bin/python bench/hostile.py [--stations 20] [--duration 10] [--flooders 2] [--idle 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.model import parse_timestamp  # noqa: E402
from agent.protocols.sl651 import StreamDecoder, build_frame  # noqa: E402
from agent.protocols.sl651.frame import Ctrl, Frame, LinkAddress  # noqa: E402
from agent.sim.hostile_sl651 import KINDS, claims  # noqa: E402
from agent.sim.sl651_station import SimulatedStation  # noqa: E402
from tests.procstat import cpu_seconds, rss_mb  # noqa: E402

MIB = 1 << 20
POLL_PERIOD = 0.2  # the Modbus terminal's period
PAD = b"\x00" * 4112


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def code(k: int) -> str:
    return f"{k:010d}"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


class Honest:
    """One station on one connection: reports, matched to their confirms by serial."""

    def __init__(self, k: int) -> None:
        self.sim = SimulatedStation(code(k))
        self.decoder = StreamDecoder()
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while data := await self.reader.read(4096):
            self.decoder.feed(data)
            for event in self.decoder.events():
                if isinstance(event, Frame) and event.function == 0x32:
                    serial = int.from_bytes(event.body[:2], "big")
                    at = self.sent.pop(serial, None)
                    if at is not None:
                        self.latencies.append(time.perf_counter() - at)

    def report(self) -> None:
        frame = self.sim.timed_report()
        serial = int.from_bytes(frame[14:16], "big")
        self.sent[serial] = time.perf_counter()
        self.writer.write(frame)

    async def run(self, seconds: float, period: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.report()
            await asyncio.sleep(period)


async def one_report_confirmed(reader: asyncio.StreamReader, timeout: float = 60) -> bool:
    decoder = StreamDecoder()
    async with asyncio.timeout(timeout):
        while data := await reader.read(4096):
            decoder.feed(data)
            if any(isinstance(e, Frame) and e.function == 0x32 for e in decoder.events()):
                return True
    return False


async def cost_of(port: int, pid: int, data: bytes) -> float:
    tail = SimulatedStation("9999999999").timed_report()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    before = cpu_seconds(pid)
    writer.write(data + PAD + tail)
    confirmed = await one_report_confirmed(reader)
    after = cpu_seconds(pid)
    writer.close()
    if not confirmed:
        raise RuntimeError("the report after the hostile bytes was never confirmed")
    return after - before


def flood(port: int) -> None:
    """A flooder process: frames claiming 4,095 bytes, as fast as the agent reads them."""
    import socket

    data = claims(MIB)
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        signal.signal(signal.SIGTERM, lambda *_: (print(sent, flush=True), os._exit(0)))
        while True:
            try:
                sock.sendall(data)
            except OSError:
                break
            sent += len(data)
    print(sent, flush=True)


async def m3_transfer(port: int, station: str, total: int, count: int) -> None:
    link = LinkAddress(1, station, "1234")
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    for seq in range(2, count + 2):
        frame = build_frame(
            link, 0x36, os.urandom(4000), direction="up", end=Ctrl.ETB, packet=(total, seq)
        )
        writer.write(frame)
        if seq % 64 == 0:
            await writer.drain()
    await writer.drain()
    await asyncio.sleep(1.0)  # the agent reads what the kernel holds
    writer.close()


def status(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return dict(json.loads(out.stdout)) if out.stdout.strip() else {}


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("== the agent with its default budgets (sl651.max_rate 32 KiB/s per connection)")
    async with running_agent(args, {}) as (port, pid, config):
        await latency(args, port, pid, config)
    print("\n== sl651.max_rate raised to 1 GiB/s: the decoder sets the pace")
    async with running_agent(args, {"max_rate": 1 << 30}) as (port, pid, config):
        await decoder_cost(port, pid)
        await latency(args, port, pid, config)
        await memory(args, port, pid, config)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.asynccontextmanager
async def running_agent(
    args: argparse.Namespace, sl651: dict[str, Any]
) -> AsyncIterator[tuple[int, int, Path]]:
    with tempfile.TemporaryDirectory(prefix="ea-hostile-") as tmp:
        port = free_port()
        config = Path(tmp) / "config.yaml"
        device = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--modbus-device",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert device.stdout is not None
        modbus_port = int((await device.stdout.readline()).decode())
        terminals: list[dict[str, Any]] = [
            {"name": f"st{k}", "protocol": "sl651", "station": code(k), "password": "1234"}
            for k in range(1, args.stations + 1)
        ]
        terminals.append({
            "name": "plc", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": modbus_port,
            "period": f"{POLL_PERIOD * 1000:g}ms", "timeout": "500ms",
            "points": [{"name": "level", "address": 0}],
        })  # fmt: skip
        config.write_text(
            yaml.safe_dump(
                {
                    "gateway": {"id": "gw-bench"},
                    "state_dir": str(Path(tmp) / "state"),
                    "control": {"socket": str(Path(tmp) / "control.sock")},
                    "log": {"level": "info", "format": "json"},
                    "jsonl": {"enabled": True},  # the poll times, for their lateness
                    "sl651": {"listen": [f"127.0.0.1:{port}"], **sl651},
                    "terminals": terminals,
                }
            )
        )
        log_path = Path(tmp) / "agent.log"
        with log_path.open("wb") as log_file:
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "run", "--config", str(config),
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
            )  # fmt: skip
        try:
            await ready(port, agent.pid)
            yield port, agent.pid, config
        finally:
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 15)
            assert device.stdin is not None
            device.stdin.close()
            await asyncio.wait_for(device.wait(), 15)
            lines = log_path.read_text(errors="replace").splitlines()
            tracebacks = sum("Traceback" in line for line in lines)
            print(f"   agent log: {len(lines)} lines, {tracebacks} with a traceback")


async def ready(port: int, pid: int) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    print(f"agent pid {pid}, RSS at start {rss_mb(pid):.1f} MB")
    idle0 = cpu_seconds(pid)
    await asyncio.sleep(2.0)
    print(f"agent idle CPU: {(cpu_seconds(pid) - idle0) / 2:.4f} CPU-s per s")


async def decoder_cost(port: int, pid: int) -> None:
    print("\n1. agent CPU per MiB of hostile input (one connection, then a report confirmed)")
    for name, make in KINDS.items():
        data = make(MIB)
        costs = [await cost_of(port, pid, data) for _ in range(3)]
        print(
            f"   {name:36s} {min(costs):.3f} CPU-s (of 3 runs: {', '.join(f'{c:.3f}' for c in costs)})"
        )


async def latency(args: argparse.Namespace, port: int, pid: int, config: Path) -> None:
    jsonl = config.parent / "state" / "readings.jsonl"
    print(f"\n2. confirm latency, {args.stations} stations each reporting every 0.2 s")
    stations = [Honest(k) for k in range(1, args.stations + 1)]
    for s in stations:
        await s.connect(port)
    await asyncio.gather(*(s.run(1.0) for s in stations))  # warm-up
    await asyncio.sleep(0.5)
    for s in stations:
        s.latencies.clear()
    alone_window = (time.time(), 0.0)
    await asyncio.gather(*(s.run(args.duration) for s in stations))
    alone_window = (alone_window[0], time.time())
    await asyncio.sleep(0.5)
    alone = [x for s in stations for x in s.latencies]
    for s in stations:
        s.latencies.clear()
    cpu0 = cpu_seconds(pid)
    flooders = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--flood", str(port), stdout=subprocess.PIPE
        )
        for _ in range(args.flooders)
    ]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    flood_window = (time.time(), 0.0)
    await asyncio.gather(*(s.run(args.duration) for s in stations))
    flood_window = (flood_window[0], time.time())
    elapsed = time.monotonic() - started + 0.5
    flooded = 0
    for f in flooders:
        f.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(f.communicate(), 10)
        flooded += int((out.decode() or "0").split()[-1])
    cpu = cpu_seconds(pid) - cpu0
    await asyncio.sleep(1.0)
    under = [x for s in stations for x in s.latencies]
    missing = sum(len(s.sent) for s in stations)
    for label, values in (("alone", alone), (f"under {args.flooders} flooders", under)):
        print(
            f"   {label:22s} confirms {len(values):5d}  p50 {percentile(values, 50) * 1000:6.1f} ms"
            f"  p99 {percentile(values, 99) * 1000:6.1f} ms  max {max(values, default=0) * 1000:6.1f} ms"
        )
    print(
        f"   flood: {flooded / MIB:.1f} MiB sent in {elapsed:.1f} s"
        f" ({flooded / MIB / elapsed:.1f} MiB/s); agent CPU {cpu / elapsed:.2f} CPU-s per s;"
        f" reports unconfirmed {missing}"
    )
    polls = poll_times(jsonl)
    for label, window in (
        ("alone", alone_window),
        (f"under {args.flooders} flooders", flood_window),
    ):
        late = lateness(polls, window)
        slots = int((window[1] - window[0]) / POLL_PERIOD)
        print(
            f"   Modbus poll every {POLL_PERIOD * 1000:.0f} ms, {label:12s} polls {len(late):3d} of"
            f" {slots} slots  lateness p50 {percentile(late, 50) * 1000:5.1f} ms"
            f"  p99 {percentile(late, 99) * 1000:5.1f} ms  max {max(late, default=0) * 1000:5.1f} ms"
        )
    for s in stations:
        s.writer.close()


def poll_times(jsonl: Path) -> list[float]:
    """When each poll of the Modbus terminal was made (POSIX seconds), from the readings copy."""
    stamps = set()
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        if record.get("terminal") == "plc":
            stamps.add(record["observed_at"])
    return sorted(parse_timestamp(t).timestamp() for t in stamps)


def lateness(polls: list[float], window: tuple[float, float]) -> list[float]:
    """How late each poll in `window` started against the fixed-rate schedule (see above)."""
    if not polls:
        return []
    first = polls[0]
    offsets = [t - first - round((t - first) / POLL_PERIOD) * POLL_PERIOD for t in polls]
    zero = min(offsets)
    return [o - zero for t, o in zip(polls, offsets, strict=True) if window[0] <= t < window[1]]


async def serve_modbus_device() -> None:
    """A simulated Modbus TCP device until stdin closes; prints its port."""
    from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice

    memory = RegisterMap(size=8)
    memory.set_registers("holding", 0, [1234] * 8)
    device = SimulatedModbusDevice({1: memory})
    print(await device.serve_tcp("127.0.0.1", 0), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await device.stop()


async def memory(args: argparse.Namespace, port: int, pid: int, config: Path) -> None:
    print("\n3. RSS")
    before = rss_mb(pid)
    await m3_transfer(port, "0000000001", 4000, 3999)
    print(f"   M3, 4,000 packets, packet 1 never comes: RSS {before:.1f} -> {rss_mb(pid):.1f} MB")
    before = rss_mb(pid)
    await m3_transfer(port, "0000000002", 1000, 999)
    print(f"   M3, 1,000 packets (4 MB), no packet 1:    RSS {before:.1f} -> {rss_mb(pid):.1f} MB")
    before = rss_mb(pid)
    idle = []
    for _ in range(args.idle):
        with contextlib.suppress(OSError):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
    await asyncio.sleep(2.0)
    counters = status(config).get("counters", {})
    print(
        f"   {args.idle} idle connections: RSS {before:.1f} -> {rss_mb(pid):.1f} MB"
        f" (open {counters.get('sl651.connections')}, cap {counters.get('sl651.max_connections')})"
    )
    for _, w in idle:
        w.close()
    await asyncio.sleep(1.0)
    print("   counters: " + json.dumps({k: v for k, v in counters.items() if v}, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--flood":
        flood(int(sys.argv[2]))
        sys.exit(0)
    if sys.argv[1:] == ["--modbus-device"]:
        asyncio.run(serve_modbus_device())
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--idle", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
