"""A simulated site for a config: a device behind every terminal it names.

Every Modbus TCP terminal on a loopback host gets a simulated device on its port (terminals on
one port become unit ids of one device); every RTU bus gets a virtual serial line linked at its
`device` path, with one simulated device answering the bus's unit ids.
"""

from __future__ import annotations

from pathlib import Path

from agent.config import Config, ModbusRtuTerminal, ModbusTcpTerminal
from agent.sim.modbus_device import HydrologyProfile, RegisterMap, SimulatedModbusDevice
from agent.sim.serial_line import VirtualSerialLine

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SimulatedSite:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.devices: list[SimulatedModbusDevice] = []
        self.lines: list[VirtualSerialLine] = []

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
        except BaseException:
            await self.stop()
            raise

    def _device(self, name: str, units: list[int]) -> SimulatedModbusDevice:
        profile = HydrologyProfile(name=name.upper()[:16], seed=len(self.devices) + 1)
        device = SimulatedModbusDevice({u: RegisterMap() for u in units}, before_reply=profile)
        self.devices.append(device)
        return device

    async def stop(self) -> None:
        for device in self.devices:
            await device.stop()
        for line in self.lines:
            line.close()
        self.devices, self.lines = [], []
