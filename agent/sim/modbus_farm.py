"""Many simulated Modbus TCP devices in one process, for the benchmarks and the load tests.

`python -m agent.sim.modbus_farm COUNT [--registers R]` serves COUNT devices on 127.0.0.1 (one
port each, R holding registers; device i holds (i*31 + j) & 0xFFFF at register j), prints
their ports as one JSON line (`{"ports": [...]}`) and serves until its stdin closes. Run it as
a child process, so that the devices' work is not the measured process's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys

from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice


async def serve_devices(count: int, registers: int) -> None:
    """Serve `count` simulated devices until stdin closes; prints their ports as one JSON line."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="devices to serve")
    parser.add_argument("--registers", type=int, default=20, help="holding registers each")
    args = parser.parse_args()
    asyncio.run(serve_devices(args.count, args.registers))


if __name__ == "__main__":
    main()
