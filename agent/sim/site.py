"""A simulated site for a config: a device behind every terminal it names.

Every Modbus TCP terminal on a loopback host gets a simulated device on its port (terminals on
one port become unit ids of one device); every RTU bus gets a virtual serial line linked at its
`device` path, with one simulated device answering the bus's unit ids; every SL651 terminal
gets a simulated station that connects to the first `sl651.listen` address.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.config import Config, ModbusRtuTerminal, ModbusTcpTerminal, Sl651Terminal
from agent.sim.modbus_device import HydrologyProfile, RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine
from agent.sim.sl651_station import SimulatedStation, StationSchedule

DEMO_STATION_SCHEDULE = StationSchedule(keepalive=20, timed=10, hourly=60)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SimulatedSite:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.devices: list[SimulatedModbusDevice] = []
        self.lines: list[VirtualSerialLine] = []
        self.stations: list[SimulatedStation] = []
        self._station_tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        tcp: dict[int, list[ModbusTcpTerminal]] = {}
        rtu: dict[str, list[ModbusRtuTerminal]] = {}
        for t in self.config.terminals:
            if isinstance(t, ModbusTcpTerminal) and t.host in LOOPBACK:
                tcp.setdefault(t.port, []).append(t)
            elif isinstance(t, ModbusRtuTerminal):
                rtu.setdefault(t.device, []).append(t)
        try:
            for port, terminals in tcp.items():
                device = self._device(terminals[0].name, [t.unit for t in terminals])
                await device.serve_tcp("127.0.0.1", port)
            for path, bus in rtu.items():
                line = VirtualSerialLine().open()
                self.lines.append(line)
                line.link(a=Path(path))
                device = self._device(bus[0].name, [t.unit for t in bus])
                await device.serve_serial(line.b_path, bus[0].baudrate)
            self._start_stations()
        except BaseException:
            await self.stop()
            raise

    def _start_stations(self) -> None:
        addresses = self.config.sl651.listen_addresses
        if not addresses:
            return
        host, port = addresses[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        for t in self.config.terminals:
            if isinstance(t, Sl651Terminal):
                station = SimulatedStation(
                    t.station, self.config.sl651.center, t.password, DEMO_STATION_SCHEDULE
                )
                self.stations.append(station)
                self._station_tasks.append(
                    asyncio.create_task(station.run(host, port), name=f"sim station {t.name}")
                )

    def _device(self, name: str, units: list[int]) -> SimulatedModbusDevice:
        profile = HydrologyProfile(name=name.upper()[:16], seed=len(self.devices) + 1)
        device = SimulatedModbusDevice({u: RegisterMap() for u in units}, before_reply=profile)
        self.devices.append(device)
        return device

    async def stop(self) -> None:
        for task in self._station_tasks:
            task.cancel()
        for task in self._station_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._station_tasks = []
        for device in self.devices:
            await device.stop()
        for line in self.lines:
            line.close()
        self.devices, self.lines = [], []
