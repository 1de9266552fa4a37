"""Outbox benchmark: durable enqueue rate, bytes on disk per reading, backlog read-back + ack.

Telemetry is batched as the poller batches it: one message per poll of `--per-message`
readings (default 50). Prints figures; not a test. The network drain to a broker is measured
by the uplink's benchmark.

    .venv/bin/python bench/outbox.py [--backlog 1000000] [--per-message 50] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.config import TelemetryConfig
from agent.model import Quality, Reading
from agent.outbox import AsyncOutbox, Outbox, Priority, Synchronous
from agent.signing import DeviceKey, encode_body, envelope_from_encoded
from agent.telemetry import ENCODERS, Meta

TELEMETRY = Priority.TELEMETRY


# The daemon's defaults: schema 2 bodies, telemetry compressed (agent/telemetry.py).
DEFAULTS = TelemetryConfig()
COMPRESSION = DEFAULTS.compressed_kinds


def poll_body(poll: int, per_message: int, schema: int = DEFAULTS.body_schema) -> Any:
    """One poll's readings, shaped as the daemon sends them (schema 2 by default: against a
    meta naming the 8 terminals' points, as the daemon's writer encodes them)."""
    observed = datetime.now(UTC)
    readings = [
        Reading(
            terminal=f"rtu-{poll % 8}",
            point=f"level_{n:02d}",
            value=round(random.uniform(0, 250), 3),
            unit="m",
            quality=Quality.GOOD,
            observed_at=observed,
            source=f"holding:{40 + 2 * n}",
        )
        for n in range(per_message)
    ]
    encoder = ENCODERS[schema](_meta(per_message))
    return encoder.body([encoder.encode(group) for group in encoder.groups(readings, 10_000)])


def _meta(points: int) -> Meta:
    return Meta(
        {
            f"rtu-{t}": (
                "modbus-tcp",
                [(f"level_{n:02d}", "m", f"holding:{40 + 2 * n}") for n in range(points)],
            )
            for t in range(8)
        }
    )


def fresh_dir(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("outbox.db"))


def fsync_latency(directory: Path) -> float:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(100):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        return (time.perf_counter() - start) / 100
    finally:
        os.close(fd)
        path.unlink()


def sign_only(key: DeviceKey, bodies: list[Any], per_message: int) -> float:
    """Readings/s of encoding and signing alone (no database): the CPU ceiling."""
    start = time.perf_counter()
    for seq, body in enumerate(bodies, start=1):
        key.sign_compact(
            envelope_from_encoded(
                "gw-bench", seq, "telemetry", "2025-01-01T00:00:00.000Z", encode_body(body)
            ),
            COMPRESSION.get("telemetry"),
        )
    return len(bodies) * per_message / (time.perf_counter() - start)


def enqueue_one_per_tx(path: Path, key: DeviceKey, bodies: list[Any], sync: Synchronous) -> float:
    with Outbox(path, key, "gw-bench", synchronous=sync, compression=COMPRESSION) as ob:
        start = time.perf_counter()
        for body in bodies:
            ob.put("telemetry", body, TELEMETRY)
        return time.perf_counter() - start


def enqueue_batched(
    path: Path, key: DeviceKey, bodies: list[Any], sync: Synchronous, batch: int
) -> float:
    with Outbox(path, key, "gw-bench", synchronous=sync, compression=COMPRESSION) as ob:
        start = time.perf_counter()
        for i in range(0, len(bodies), batch):
            ob.put_many([("telemetry", b, TELEMETRY) for b in bodies[i : i + batch]])
        return time.perf_counter() - start


def enqueue_async(
    path: Path, key: DeviceKey, bodies: list[Any], sync: Synchronous, pollers: int
) -> float:
    """`pollers` tasks each awaiting one durable put per poll: group commit joins them."""

    async def run() -> float:
        async with AsyncOutbox(
            Outbox(path, key, "gw-bench", synchronous=sync, compression=COMPRESSION)
        ) as aob:

            async def poller(mine: list[Any]) -> None:
                for body in mine:
                    await aob.put("telemetry", body, TELEMETRY)

            start = time.perf_counter()
            await asyncio.gather(*(poller(bodies[i::pollers]) for i in range(pollers)))
            return time.perf_counter() - start

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000, help="readings in the backlog")
    parser.add_argument(
        "--per-message", type=int, default=50, help="readings per telemetry message"
    )
    parser.add_argument("--messages", type=int, default=4000, help="messages per enqueue run")
    parser.add_argument("--batch", type=int, default=20, help="messages per put_many")
    parser.add_argument("--pollers", type=int, default=32, help="concurrent async producers")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only

    base = Path(tempfile.mkdtemp(prefix="outbox-bench-", dir=args.dir))
    key = DeviceKey.generate()
    per = args.per_message
    random.seed(1)
    bodies = [poll_body(i, per) for i in range(args.messages)]
    try:
        print(f"outbox benchmark: {per} readings per telemetry message, databases in {base}")
        print(f"  fsync latency on this disk:          {fsync_latency(base) * 1e3:8.3f} ms")
        print(
            f"  encode + sign only (no database):     {sign_only(key, bodies, per):10,.0f} readings/s"
        )
        print("durable enqueue (readings/s; one telemetry message = one poll):")
        for sync in ("full", "normal"):
            d = fresh_dir(base, f"one-{sync}")
            t = enqueue_one_per_tx(d / "outbox.db", key, bodies, sync)
            n = len(bodies)
            print(
                f"  synchronous={sync:<6} put()        1 msg/tx:  {n * per / t:10,.0f} readings/s"
                f"  ({n / t:8,.0f} msg/s, {t / n * 1e3:.3f} ms/put)"
            )
            d = fresh_dir(base, f"batch-{sync}")
            t = enqueue_batched(d / "outbox.db", key, bodies, sync, args.batch)
            print(
                f"  synchronous={sync:<6} put_many() {args.batch:3d} msg/tx:  {n * per / t:10,.0f} readings/s"
                f"  ({n / t:8,.0f} msg/s)"
            )
            d = fresh_dir(base, f"async-{sync}")
            t = enqueue_async(d / "outbox.db", key, bodies, sync, args.pollers)
            print(
                f"  synchronous={sync:<6} AsyncOutbox.put() x{args.pollers} pollers (group commit):"
                f" {n * per / t:10,.0f} readings/s"
            )

        messages = args.backlog // per
        d = fresh_dir(base, "backlog")
        path = d / "outbox.db"
        print(f"backlog of {messages * per:,} readings ({messages:,} messages):")
        start = time.perf_counter()
        with Outbox(path, key, "gw-bench", compression=COMPRESSION) as ob:
            for i in range(0, messages, args.batch):
                n = min(args.batch, messages - i)
                ob.put_many(
                    [("telemetry", bodies[(i + j) % len(bodies)], TELEMETRY) for j in range(n)]
                )
            stored = ob.stats()
        t = time.perf_counter() - start
        print(
            f"  enqueue (synchronous=full, put_many {args.batch}/tx): {t:6.1f} s  ({messages * per / t:,.0f} readings/s)"
        )
        on_disk = disk_bytes(d)
        print(
            f"  on disk after close: {on_disk / 2**20:,.1f} MiB = {on_disk / (messages * per):.0f} bytes/reading"
            f" (payloads {stored.bytes / (messages * per):.0f} bytes/reading, {stored.bytes / messages:,.0f} bytes/message)"
        )
        start = time.perf_counter()
        ob = Outbox(path, key, "gw-bench", compression=COMPRESSION)
        ob.open()
        t_open = time.perf_counter() - start
        print(f"  reopen (incl. quick_check):           {t_open:6.2f} s")
        start = time.perf_counter()
        drained = 0
        while batch := ob.pending(256):
            drained += ob.ack([m.id for m in batch])
        t_drain = time.perf_counter() - start
        left = ob.stats().messages
        ob.close()
        print(
            f"  read back + ack (no network), 256/batch: {t_drain:6.1f} s  "
            f"({drained * per / t_drain:,.0f} readings/s, {drained / t_drain:,.0f} msg/s); "
            f"drained {drained:,}, left {left}"
        )
        print(
            f"  on disk after drain: {disk_bytes(d) / 2**20:,.1f} MiB (free pages are reused, not returned)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
