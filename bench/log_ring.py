"""What the log ring costs a logged event: the agent's structlog chain (JSON lines, as under
systemd) with and without `LOG_RING`, output to /dev/null, the same event each time; also the
cost of a debug call the level drops, and of `LOG_RING.recent` over a full ring (redacted).
Prints figures; not a test.

    .venv/bin/python bench/log_ring.py [--events 50000]
"""

from __future__ import annotations

import argparse
import sys
import time

import structlog

from agent.logs import LOG_RING, configure_logging


def per_event(count: int) -> float:
    """Microseconds per `log.info` with four keys (the typical event of the agent)."""
    log = structlog.get_logger("bench.ring")
    start = time.perf_counter()
    for i in range(count):
        log.info("poll failed", terminal="dam-plc", attempt=i, error="timed out", after=0.5)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    print("$ .venv/bin/python bench/log_ring.py " + " ".join(sys.argv[1:]))
    stderr = sys.stderr
    with open("/dev/null", "w") as null:  # noqa: PTH123
        sys.stderr = null
        try:
            configure_logging("info", "json")
            per_event(2000)  # warm up
            with_ring = min(per_event(args.events) for _ in range(3))
            chain = structlog.get_config()["processors"]
            structlog.configure(processors=[p for p in chain if p is not LOG_RING])
            without = min(per_event(args.events) for _ in range(3))
            structlog.configure(processors=chain)
            log = structlog.get_logger("bench.ring")
            start = time.perf_counter()
            for i in range(args.events):
                log.debug("dropped", i=i)
            dropped = (time.perf_counter() - start) / args.events * 1e6
        finally:
            sys.stderr = stderr
    start = time.perf_counter()
    recent = LOG_RING.recent("debug", None, 5000)
    read = (time.perf_counter() - start) * 1e3
    print(
        f"log.info, JSON to /dev/null: {without:.2f} µs without the ring, {with_ring:.2f} µs "
        f"with it (+{with_ring - without:.2f} µs, +{(with_ring / without - 1) * 100:.0f} %)"
    )
    print(f"log.debug below the level: {dropped:.3f} µs")
    print(
        f"ring: {len(LOG_RING)} events, {LOG_RING.bytes / 1024:.0f} KiB of text; "
        f"recent() of {len(recent)} redacted: {read:.0f} ms"
    )


if __name__ == "__main__":
    main()
