"""How close the agent's shared RS-485 bus comes to the line's limit, Modbus RTU at 9600 baud.

A `VirtualSerialLine` (a pseudo-terminal pair that holds every byte for its wire time, 10 bits a
character, in both directions) joins the agent's `SerialBus` to one simulated device answering
U unit ids. The agent's own `ModbusDriver` runs one `Poller` per unit id, each reading N
consecutive holding registers (one request per poll) with a period far below a transaction's
time, so the bus is always the bottleneck. The device runs in this process; its replies are
held by the line emulation, not by CPU.

After a warmup, requests completed by the bus over the measurement window give requests/s.
The theoretical maximum is 1 / (request frame (8 chars) + response frame (5 + 2N chars) +
the minimum silence the spec mandates between frames: 3.5 chars before the request and 3.5
before the response), each character 10 bits at the baud rate. The simulated device answers
as soon as the request has arrived, without a turnaround silence of its own, so the agent can
pass that figure (a real device adds its turnaround); the time each request takes beyond its
bytes and the agent's frame gap is printed too. Also printed: the bus's own
`SerialBus.utilisation()` and requests per unit id (round-robin fairness).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections import Counter
from collections.abc import Sequence

from procs import describe_tree

from agent.config import Config, ModbusRtuTerminal
from agent.model import Quality, Reading
from agent.protocols.modbus.driver import ModbusDriver
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine

BITS_PER_CHAR = 10  # start + 8 data + stop, no parity
REQUEST_CHARS = 8  # unit, function, address (2), count (2), CRC (2)
SILENCE_CHARS = 3.5  # Modbus over serial line V1.02, 2.5.1.1


class CountingSink:
    def __init__(self) -> None:
        self.good = 0
        self.bad = 0
        self.errors: Counter[str] = Counter()

    def submit(self, readings: Sequence[Reading]) -> None:
        for r in readings:
            if r.quality is Quality.GOOD:
                self.good += 1
            else:
                self.bad += 1
                self.errors[r.error or "?"] += 1


def terminals(
    device: str, units: int, registers: int, baudrate: int, period: float
) -> list[ModbusRtuTerminal]:
    config = Config.model_validate(
        {
            "gateway": {"id": "bench"},
            "terminals": [
                {
                    "name": f"rtu-{unit}",
                    "protocol": "modbus-rtu",
                    "device": device,
                    "baudrate": baudrate,
                    "unit": unit,
                    "period": period,
                    "timeout": 1.0,
                    "points": [
                        {"name": f"r{j}", "address": j, "type": "uint16"} for j in range(registers)
                    ],
                }
                for unit in range(1, units + 1)
            ],
        }
    )
    return [t for t in config.terminals if isinstance(t, ModbusRtuTerminal)]


async def run(args: argparse.Namespace) -> None:
    n, baud = args.registers, args.baudrate
    print("command:", shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]))
    print("agent code:", describe_tree())
    print(
        f"parameters: baudrate={baud} units={args.units} registers/read={n} "
        f"period={args.period * 1e3:g}ms duration={args.duration:g}s warmup={args.warmup:g}s"
    )
    loop = asyncio.get_running_loop()
    line = VirtualSerialLine(baudrate=baud, bits_per_char=BITS_PER_CHAR).open()
    units = {u: RegisterMap(size=max(n, 1)) for u in range(1, args.units + 1)}
    for u, memory in units.items():
        memory.set_registers("holding", 0, [(u * 1000 + j) & 0xFFFF for j in range(n)])
    device = SimulatedModbusDevice(units)
    sink = CountingSink()
    acquisition = ModbusDriver(terminals(line.a_path, args.units, n, baud, args.period), sink)
    try:
        await device.serve_serial(line.b_path, baud)
        await acquisition.start()
        await asyncio.sleep(args.warmup)
        bus = acquisition.serial_buses[line.a_path]
        start, requests0, good0 = loop.time(), bus.requests, sink.good
        seen0 = len(device.requests)
        await asyncio.sleep(args.duration)
        window = loop.time() - start
        requests = bus.requests - requests0
        good = sink.good - good0
        utilisation = bus.utilisation(window)
        per_unit = Counter(r.unit for r in device.requests[seen0:])
        frame_gap = bus.settings.frame_gap
    finally:
        await acquisition.stop()
        await device.stop()
        line.close()

    char = BITS_PER_CHAR / baud
    response_chars = 5 + 2 * n
    cycle_chars = REQUEST_CHARS + response_chars + 2 * SILENCE_CHARS
    theoretical = 1 / (cycle_chars * char)
    achieved = requests / window
    print(
        "theoretical max: 1 / (request + response + 3.5 chars silence before each) = "
        f"1 / (({REQUEST_CHARS} + {response_chars} + 2 x {SILENCE_CHARS:g}) chars x "
        f"{char * 1e3:.4f} ms) = {theoretical:.2f} requests/s ({cycle_chars * char * 1e3:.2f} ms each)"
    )
    print(f"window: {window:.1f} s")
    print(f"achieved: {achieved:.2f} requests/s ({window / requests * 1e3:.2f} ms each)")
    print(f"achieved/theoretical: {achieved / theoretical:.1%}")
    wire = (REQUEST_CHARS + response_chars) * char + frame_gap
    print(
        f"time per request beyond its bytes on the wire and the agent's frame gap: "
        f"{(window / requests - wire) * 1e3:.2f} ms (the simulated device replies with no "
        "turnaround silence of its own, so achieved may pass the theoretical figure)"
    )
    print(f"bus utilisation (SerialBus.utilisation over the window): {utilisation:.1%}")
    print(f"agent frame gap: {frame_gap * 1e3:.3f} ms (3.5 chars = {3.5 * char * 1e3:.3f} ms)")
    print(f"points/s delivered: {good / window:.1f} good, {sink.bad} bad readings in total")
    for error, count in sink.errors.most_common(3):
        print(f"  bad: {count} x {error}")
    print(
        "requests per unit id: " + ", ".join(f"{u}: {per_unit[u]}" for u in sorted(units))
        if per_unit
        else "requests per unit id: none"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--units", type=int, default=4, help="unit ids on the bus")
    parser.add_argument("--registers", type=int, default=10, help="N registers per read")
    parser.add_argument("--period", type=float, default=0.01, help="poll period, seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
