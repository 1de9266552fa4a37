"""SL651 decode rate on one core: stream-decode + body decode + readings, frames per second, for a
mix of the real report frames of vectors.json (uplink 30-34, 37, 3A, 44), glued into one stream
and fed in TCP-sized chunks. Prints figures; not a test. Target: >= 20,000 frames/s.

    .venv/bin/python bench/sl651_decode.py [--seconds 5] [--chunk 1460] [--vectors PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.protocols.sl651 import Frame, StreamDecoder, decode_body, readings_from

ROOT = Path(__file__).resolve().parent.parent
REPORTS = {"0x30", "0x31", "0x32", "0x33", "0x34", "0x37", "0x3A", "0x44"}


def report_frames(path: Path) -> list[bytes]:
    vectors = json.loads(path.read_text())
    return [
        bytes.fromhex(v["hex"])
        for v in vectors
        if v["direction"] == "up" and v["function"] in REPORTS and not v.get("negative_test")
    ]


def run(stream: bytes, chunk: int, received: datetime) -> tuple[int, int]:
    decoder = StreamDecoder()
    frames = readings = 0
    for i in range(0, len(stream), chunk):
        decoder.feed(stream[i : i + chunk])
        for event in decoder.events():
            if isinstance(event, Frame):
                message = decode_body(event)
                readings += len(readings_from(message, "bench", received))
                frames += 1
    return frames, readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--chunk", type=int, default=1460, help="bytes per feed (one TCP segment)")
    parser.add_argument(
        "--vectors", type=Path, default=ROOT / "tests" / "data" / "sl651_vectors.json"
    )
    args = parser.parse_args()

    frames = report_frames(args.vectors)
    stream = b"".join(frames) * 200
    received = datetime.now(UTC)
    run(stream[:20000], args.chunk, received)  # warm-up

    total_frames = total_readings = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < args.seconds:
        f, r = run(stream, args.chunk, received)
        total_frames += f
        total_readings += r
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    print(f"$ {sys.executable} {' '.join(sys.argv)}")
    print(
        f"mix: {len(frames)} distinct real report frames (30-34, 37, 3A, 44), mean {len(b''.join(frames)) / len(frames):.0f} bytes"
    )
    print(
        f"decoded {total_frames} frames -> {total_readings} readings in {wall:.2f} s wall, {cpu:.2f} s CPU"
    )
    print(
        f"rate: {total_frames / cpu:,.0f} frames/s per core ({total_readings / cpu:,.0f} readings/s)"
    )
    print(f"target >= 20,000 frames/s: {'met' if total_frames / cpu >= 20000 else 'NOT met'}")


if __name__ == "__main__":
    main()
