"""The ThingsBoard IoT Gateway on the poll_scale.py workload: the yardstick issue 14 names.

Issue 14 sets the agent's CPU target against the ThingsBoard IoT Gateway 3.8.5, the Python
gateway most sites would install instead ("≤ 6 µs per point, 5× better than its ≈30 µs
here"). This machine's speed moves by a factor of three within hours (a shared host), so a
figure in µs is only comparable with one taken in the same minutes: run this script and
`poll_scale.py` alternately, and compare the two.

It runs the gateway as a process on the very workload of `poll_scale.py` (K simulated Modbus
TCP devices × R holding registers that change, polled every second, `agent.sim.modbus_farm`
in child processes) with the gateway's best settings for it: one read of the R registers per
poll (its "wide range" address `0-(R-1)`, a key per register), no rate limits, its default
memory storage and logging. The broker is a mosquitto of its own on a free loopback port;
this script stands in for the ThingsBoard server where the gateway waits for it (it answers
the gateway's `getSessionLimits` request, with no limits) and counts the points that arrive
on `v1/gateway/telemetry`. It prints points/s delivered, the gateway's CPU (its process and
children) per wall second and per delivered point, and its RSS.

The gateway is not a dependency of the project: install it in a virtual environment of its
own (it installs pymodbus into that environment at its first start) and name its Python:

    python3 -m venv /tmp/tbvenv && /tmp/tbvenv/bin/pip install thingsboard-gateway==3.8.5
    .venv/bin/python bench/thingsboard.py --tb-python /tmp/tbvenv/bin/python --devices 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from procs import cpu_seconds, memory_kib, start_farm, stop
from uplink_drain import start_mosquitto

TELEMETRY = "v1/gateway/telemetry"
RPC_REQUESTS = "v1/devices/me/rpc/request/"
RPC_RESPONSES = "v1/devices/me/rpc/response/"
# What the platform answers to the gateway's getSessionLimits (no rate limit; ThingsBoard's
# defaults for the rest): the gateway sends nothing before it has an answer.
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {},
    "gatewayRateLimits": {},
}


def gateway_package(python: str) -> Path:
    code = "import os, thingsboard_gateway as m; print(os.path.dirname(m.__file__))"
    return Path(subprocess.check_output([python, "-c", code], text=True).strip())


def write_configuration(
    folder: Path, package: Path, broker: int, ports: list[int], registers: int
) -> None:
    """The gateway's own example configuration, pointed at the local broker, with one Modbus
    connector for the simulated devices."""
    gateway = json.loads((package / "config" / "tb_gateway.json").read_text())
    gateway["thingsboard"].update(
        host="127.0.0.1",
        port=broker,
        remoteConfiguration=False,
        remoteShell=False,
        security={"type": "accessToken", "accessToken": "bench"},
    )
    gateway["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    (folder / "tb_gateway.json").write_text(json.dumps(gateway))
    shutil.copy(package / "config" / "logs.json", folder / "logs.json")
    slaves = [
        {
            "host": "127.0.0.1", "port": port, "type": "tcp", "method": "socket", "unitId": 1,
            "deviceName": f"t{i:04d}", "deviceType": "default", "timeout": 3, "retries": 0,
            "byteOrder": "BIG", "wordOrder": "BIG", "pollPeriod": 1000,
            "attributes": [], "attributeUpdates": [], "rpc": [],
            "timeseries": [{
                "tag": "r${address}", "type": "16uint", "functionCode": 3, "objectsCount": 1,
                "address": f"0-{registers - 1}", "maxRegistersPerRequest": 125,
            }],
        }
        for i, port in enumerate(ports)
    ]  # fmt: skip
    (folder / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}))


class Platform:
    """Stands in for the ThingsBoard server on the broker: answers the session-limits request
    and counts the telemetry points that arrive."""

    def __init__(self, port: int) -> None:
        self.points = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe([(TELEMETRY, 1), (RPC_REQUESTS + "+", 1)])
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: Any) -> None:
        if message.topic.startswith(RPC_REQUESTS):
            request_id = message.topic.rsplit("/", 1)[1]
            client.publish(RPC_RESPONSES + request_id, json.dumps(SESSION_LIMITS), qos=1)
            return
        devices = json.loads(message.payload)  # {"device": [{"ts": …, "values": {key: value}}]}
        points = sum(len(entry["values"]) for entries in devices.values() for entry in entries)
        with self._lock:
            self.points += points

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def tree_cpu_seconds(pid: int) -> float:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sum(cpu_seconds(p) for p in [pid, *map(int, children.split())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tb-python", required=True, help="the Python of the gateway's venv")
    parser.add_argument("--devices", type=int, default=200, help="K simulated terminals")
    parser.add_argument("--registers", type=int, default=20, help="R registers read per poll")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=40.0, help="seconds before measuring")
    args = parser.parse_args()
    print("command: python bench/thingsboard.py " + " ".join(sys.argv[1:]))
    package = gateway_package(args.tb_python)
    with tempfile.TemporaryDirectory(prefix="bench-thingsboard-") as tmp:
        work = Path(tmp)
        (work / "config").mkdir()
        sims, ports = start_farm(args.devices, args.registers, 2, 10_000, 50, 1.0)
        broker, port = start_mosquitto(work)
        platform = Platform(port)
        write_configuration(work / "config", package, port, ports, args.registers)
        code = "from thingsboard_gateway.tb_gateway import main; main()"
        with (work / "gateway.log").open("wb") as output:
            gateway = subprocess.Popen(
                [args.tb_python, "-c", code],
                cwd=work,
                env=dict(os.environ, TB_GW_CONFIG_DIR=str(work / "config")),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(args.warmup)
            cpu, points, wall = tree_cpu_seconds(gateway.pid), platform.points, time.time()
            time.sleep(args.duration)
            cpu = tree_cpu_seconds(gateway.pid) - cpu
            points, wall = platform.points - points, time.time() - wall
            rss = memory_kib(gateway.pid)["VmRSS"] / 1024
        finally:
            stop(gateway, signal.SIGINT, grace=10)
            platform.close()
            broker.terminate()
            broker.wait()
            for proc in sims:
                stop(proc)
    rate = points / wall
    print(
        f"thingsboard gateway: points/s {rate:.0f} (expected {args.devices * args.registers}); "
        f"cpu {cpu / wall:.3f} s/s; {1e6 * cpu / max(points, 1):.1f} µs per delivered point; "
        f"rss {rss:.1f} MiB"
    )


if __name__ == "__main__":
    main()
