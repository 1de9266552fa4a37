"""Fleet view benchmark: `edge-agent fleet` over N simulated gateways' retained messages.

Starts a mosquitto on a free loopback port, publishes N gateways' retained `…/state` and signed
`…/health` (tests/fleetsim.py: each its own Ed25519 key, one forged report), writes the
known-gateways file, then times `edge-agent fleet --json --known …` as a process (start to exit,
`--rounds` times) and, in this process, the collection alone (connect, subscribe, every retained
message, the quiet time that ends it) and the verification and sorting of the rows. Not a test.

    .venv/bin/python bench/fleet.py [--gateways 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/fleetsim.py and tests/broker.py: the simulated fleet

from agent.diagnosis.connect import parse_broker  # noqa: E402
from agent.diagnosis.fleet import QUIET, Fleet, collect  # noqa: E402
from tests.broker import Mosquitto  # noqa: E402
from tests.fleetsim import known_gateways, publish_fleet, simulated_fleet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    print(f"$ bench/fleet.py --gateways {options.gateways} --rounds {options.rounds}")
    with tempfile.TemporaryDirectory() as work:
        mosquitto = Mosquitto(Path(work) / "mosquitto").start()
        try:
            gateways = simulated_fleet(options.gateways)
            started = time.perf_counter()
            asyncio.run(publish_fleet(mosquitto.port, gateways))
            print(
                f"published {options.gateways} gateways' retained state and signed health "
                f"in {time.perf_counter() - started:.2f} s"
            )
            known = Path(work) / "known.json"
            known_info = known_gateways(gateways)
            known.write_text(json.dumps(known_info))

            walls = []
            for _ in range(options.rounds):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "agent", "fleet", "--broker", mosquitto.url,
                     "--known", str(known), "--json"],
                    capture_output=True, check=False, cwd=ROOT,
                )  # fmt: skip
                walls.append(time.perf_counter() - started)
                listed = len(json.loads(done.stdout)["gateways"])
                assert listed == options.gateways, (listed, done.stderr)
            print(
                f"edge-agent fleet --json (a process, start to exit): median "
                f"{statistics.median(walls):.2f} s, max {max(walls):.2f} s over {options.rounds} "
                f"runs; {options.gateways} gateways listed (target: under 2 s)"
            )

            broker = parse_broker(mosquitto.url)
            started = time.perf_counter()
            fleet = asyncio.run(collect(broker, "edge/+", known_info, wait=10))
            collected = time.perf_counter() - started
            print(
                f"in process: collection {collected:.3f} s (of which {QUIET:.1f} s is the quiet "
                f"time that ends it), {len(fleet.gateways)} gateways"
            )
            fresh = Fleet("edge/+", known_info)
            fresh.gateways = fleet.gateways
            started = time.perf_counter()
            rows = fresh.rows()
            print(
                f"verify {sum(r['signature'] is not None for r in rows)} signed reports and sort "
                f"{len(rows)} rows: {(time.perf_counter() - started) * 1000:.1f} ms"
            )
        finally:
            mosquitto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
