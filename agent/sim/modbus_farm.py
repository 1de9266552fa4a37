"""Many simulated Modbus TCP devices in one process, for the benchmarks and the load tests.

`python -m agent.sim.modbus_farm COUNT [--registers R] [--values-max M --step S --period P]`
serves COUNT devices on 127.0.0.1 (one port each, R holding registers), prints their ports as
one JSON line (`{"ports": [...]}`) and serves until its stdin closes. Run it as a child process,
so that the devices' work is not the measured process's. Without `--step`, device i holds
(i*31 + j) & 0xFFFF at register j; with it, every register walks as a sensor's value does: a
random start below M, then a step of at most S every P seconds (the wire's bytes per reading
depend on values that change).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys

from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice


async def serve_devices(
    count: int, registers: int, values_max: int = 65536, step: int = 0, period: float = 1.0
) -> None:
    """Serve `count` simulated devices until stdin closes; prints their ports as one JSON line."""
    rng = random.Random(count * 7919 + registers)
    devices = []
    ports = []
    walking: list[tuple[RegisterMap, list[int]]] = []
    for i in range(count):
        memory = RegisterMap(size=registers)
        if step:
            start = [rng.randrange(values_max) for _ in range(registers)]
            walking.append((memory, start))
        else:
            start = [(i * 31 + j) & 0xFFFF for j in range(registers)]
        memory.set_registers("holding", 0, start)
        device = SimulatedModbusDevice({1: memory})
        ports.append(await device.serve_tcp("127.0.0.1", 0))
        devices.append(device)
    print(json.dumps({"ports": ports}), flush=True)

    async def walk() -> None:
        while True:
            await asyncio.sleep(period)
            for memory, current in walking:
                for j, v in enumerate(current):
                    current[j] = min(values_max - 1, max(0, v + rng.randint(-step, step)))
                memory.set_registers("holding", 0, current)

    walker = asyncio.create_task(walk()) if walking else None
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            closed.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await closed.wait()
    if walker is not None:
        walker.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            for device in devices:
                await device.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="devices to serve")
    parser.add_argument("--registers", type=int, default=20, help="holding registers each")
    parser.add_argument("--values-max", type=int, default=65536, help="walks stay below this")
    parser.add_argument("--step", type=int, default=0, help="largest step a period (0: fixed)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between steps")
    args = parser.parse_args()
    asyncio.run(serve_devices(args.count, args.registers, args.values_max, args.step, args.period))


if __name__ == "__main__":
    main()
