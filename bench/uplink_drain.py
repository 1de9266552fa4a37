"""Uplink drain benchmark: how fast a backlog leaves the outbox for a local mosquitto.

Builds an outbox holding `--backlog` readings (telemetry messages of `--per-message` readings,
shaped as the poller makes them), closes it (a restart), reopens it, and runs the real Uplink
against a mosquitto started on a free loopback port until every message is acknowledged (PUBACK,
QoS 1). Prints messages/s, readings/s, the time to drain, and the agent process's CPU seconds.
Not a test.

    .venv/bin/python bench/uplink_drain.py [--backlog 1000000] [--per-message 50] [--inflight 32]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from agent.config import UplinkConfig
from agent.outbox import AsyncOutbox, Outbox, Priority
from agent.signing import init_key
from agent.uplink import Uplink

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from outbox import COMPRESSION, poll_body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    user = "user root\n"
    conf.write_text(
        f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 0\nmax_queued_messages 0\n"
    )
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drain(outbox: Outbox, port: int, inflight: int) -> float:
    config = UplinkConfig(broker=f"mqtt://127.0.0.1:{port}", inflight=inflight)
    uplink = Uplink(config, AsyncOutbox(outbox), "edge/bench", "bench")
    task = asyncio.create_task(uplink.run())
    started = time.perf_counter()
    try:
        while outbox.stats().messages:
            await asyncio.sleep(0.05)
    finally:
        elapsed = time.perf_counter() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if uplink.state.last_error:
        print(f"  uplink error during the run: {uplink.state.last_error}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000, help="readings")
    parser.add_argument("--per-message", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    workdir = Path(tempfile.mkdtemp(prefix="uplink-drain-"))
    mosquitto, port = start_mosquitto(workdir)
    try:
        key = init_key(workdir / "state")
        messages = args.backlog // args.per_message
        box = Outbox(
            workdir / "outbox.db", key, "bench", max_bytes=4 * 1024**3, compression=COMPRESSION
        )
        box.open()
        started = time.perf_counter()
        for first in range(0, messages, 100):
            box.put_many(
                [
                    ("telemetry", poll_body(i, args.per_message), Priority.TELEMETRY)
                    for i in range(first, min(first + 100, messages))
                ]
            )
        built = time.perf_counter() - started
        box.close()
        print(
            f"backlog: {messages:,} messages x {args.per_message} = {args.backlog:,} readings "
            f"(built in {built:.1f} s)"
        )
        box = Outbox(
            workdir / "outbox.db", key, "bench", max_bytes=4 * 1024**3, compression=COMPRESSION
        )
        reopen_started = time.perf_counter()
        box.open()
        print(
            f"restart: reopened with {box.stats().messages:,} messages waiting in "
            f"{time.perf_counter() - reopen_started:.2f} s"
        )
        cpu_before = cpu_seconds()
        elapsed = asyncio.run(drain(box, port, args.inflight))
        cpu = cpu_seconds() - cpu_before
        left = box.stats().messages
        box.close()
        print(
            f"drained to mosquitto (QoS 1, inflight {args.inflight}) in {elapsed:.1f} s: "
            f"{messages / elapsed:,.0f} messages/s, {args.backlog / elapsed:,.0f} readings/s; "
            f"left {left}"
        )
        print(f"agent CPU during the drain: {cpu:.1f} s ({cpu / elapsed:.2f} s per second)")
    finally:
        mosquitto.terminate()
        mosquitto.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
