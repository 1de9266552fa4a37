"""Simulated Modbus terminals (a pymodbus server over TCP or a serial device).

`RegisterMap` is a device's memory: four tables the test or the profile writes into. The server
copies the requested range out of it on every request, so values can change between polls, and
records every request (to count coalescing), can hold its replies (a slow device) or refuse
them. `HydrologyProfile` moves a reservoir station's points over time for the demo.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.protocols.modbus import codec

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

TABLE_SIZE = 1000
_FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


@dataclass
class RegisterMap:
    """One unit's tables; addresses beyond `size` or in `holes` are unmapped (exception 2)."""

    size: int = TABLE_SIZE
    holes: set[int] = field(default_factory=set)
    holding: list[int] = field(default_factory=list)
    input: list[int] = field(default_factory=list)
    coil: list[bool] = field(default_factory=list)
    discrete: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("holding", "input"):
            getattr(self, name).extend([0] * (self.size - len(getattr(self, name))))
        for name in ("coil", "discrete"):
            getattr(self, name).extend([False] * (self.size - len(getattr(self, name))))

    def set_registers(self, table: str, address: int, registers: Sequence[int]) -> None:
        getattr(self, table)[address : address + len(registers)] = list(registers)

    def set_number(
        self, table: str, address: int, value: float, type_: str, word_order: str = "ABCD"
    ) -> None:
        self.set_registers(table, address, codec.encode_number(value, type_, word_order))


@dataclass(frozen=True)
class Request:
    unit: int
    table: str
    address: int
    count: int
    at: float = field(default_factory=time.monotonic, compare=False)


class _SilentForUnknownUnits:
    """Datastore wrapper that makes pymodbus ignore unit ids it does not have.

    pymodbus 3.16's simulator datastore raises KeyError (answered with exception 4) for an unknown
    unit id instead of NoSuchIdException, so `ignore_missing_devices` has no effect. A real RS-485
    bus is silent for an absent unit, and the tests depend on that.
    """

    def __init__(self, inner: Any, units: set[int]) -> None:
        self._inner = inner
        self._units = units

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def async_getValues(self, device_id: int, *args: Any) -> Any:
        if device_id not in self._units:
            raise NoSuchIdException(f"no unit {device_id}")
        return await self._inner.async_getValues(device_id, *args)

    async def async_setValues(self, device_id: int, *args: Any) -> Any:
        if device_id not in self._units:
            raise NoSuchIdException(f"no unit {device_id}")
        return await self._inner.async_setValues(device_id, *args)


class SimulatedModbusDevice:
    """A pymodbus server with one RegisterMap per unit id.

    `delay` holds every reply (a slow device); `refuse` makes it answer every request with that
    exception code; `before_reply` runs on every request (profiles move values there).
    """

    def __init__(
        self,
        units: dict[int, RegisterMap] | None = None,
        before_reply: Callable[[int, RegisterMap], None] | None = None,
    ) -> None:
        self.units = units if units is not None else {1: RegisterMap()}
        self.before_reply = before_reply
        self.requests: list[Request] = []
        self.delay = 0.0
        self.refuse: int | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def _devices(self) -> list[SimDevice]:
        devices = []
        for unit, memory in self.units.items():
            size = memory.size
            devices.append(
                SimDevice(
                    id=unit,
                    simdata=(
                        [SimData(0, count=size, values=False, datatype=DataType.BITS)],
                        [SimData(0, count=size, values=False, datatype=DataType.BITS)],
                        [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
                        [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
                    ),
                    action=partial(self._on_request, unit),
                )
            )
        return devices

    async def _on_request(
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _FC_TABLE.get(function_code)
        if table is None:
            return None
        memory = self.units[unit]
        self.requests.append(Request(unit, table, address, count))
        if self.before_reply is not None:
            self.before_reply(unit, memory)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse is not None:
            return ExcCodes(self.refuse)
        if memory.holes.intersection(range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        if table in ("coil", "discrete"):
            bits = getattr(memory, table)
            for i in range(len(current_registers)):
                word = 0
                for b, on in enumerate(bits[16 * i : 16 * i + 16]):
                    word |= int(on) << b
                current_registers[i] = word
        else:
            registers = getattr(memory, table)
            begin = address - start_address
            current_registers[begin : begin + count] = registers[address : address + count]
        return None

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; returns the port (a free one when `port` is 0)."""
        server = ModbusTcpServer(self._devices(), address=(host, port))
        await self._start(server)
        if port == 0:
            listener = server.transport
            port = int(listener.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return port

    async def serve_serial(self, device: str, baudrate: int = 9600) -> None:
        # On a real bus an absent unit id stays silent: no answer rather than an exception.
        server = ModbusSerialServer(
            self._devices(), port=device, baudrate=baudrate, ignore_missing_devices=True
        )
        server.context = _SilentForUnknownUnits(server.context, set(self.units))  # type: ignore[assignment]
        await self._start(server)

    async def _start(self, server: ModbusTcpServer | ModbusSerialServer) -> None:
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            where = server.comm_params.source_address
            raise OSError(f"simulated device cannot listen on {where} (in use?)") from exc
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    @property
    def connections(self) -> int:
        """Clients connected now (TCP)."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    def count(self, table: str | None = None, unit: int | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (table is None or r.table == table) and (unit is None or r.unit == unit)
        )


class HydrologyProfile:
    """A reservoir station whose points move like real ones (for the demo).

    holding 0-1 reservoir level (float32, m)     holding 2-3 inflow (float32, m3/s)
    holding 4   gate opening (uint16, 0.01 m)    holding 10-17 station name (string)
    input 0-1   rain counter (uint32, 0.1 mm)     input 2 battery (uint16, mV)
    input 3     water temperature (int16, 0.1 C)  coil 0 pump running, discrete 0 door open
    """

    def __init__(self, name: str = "DEMO-DAM-01", seed: int = 1) -> None:
        self.name = name
        self._started = time.monotonic()
        self._rng = random.Random(seed)
        self._rain = 0

    def __call__(self, unit: int, memory: RegisterMap) -> None:
        t = time.monotonic() - self._started
        level = 112.0 + 0.8 * math.sin(2 * math.pi * t / 600) + self._rng.gauss(0, 0.003)
        inflow = max(0.0, 35.0 + 6.0 * math.sin(2 * math.pi * t / 300) + self._rng.gauss(0, 0.2))
        raining = math.sin(2 * math.pi * t / 120) > 0.3
        if raining and self._rng.random() < 0.5:
            self._rain += 1
        memory.set_number("holding", 0, level, "float32")
        memory.set_number("holding", 2, inflow, "float32")
        memory.set_registers("holding", 4, [120 + int(30 * math.sin(2 * math.pi * t / 900))])
        memory.set_registers("holding", 10, codec.encode_string(self.name, 8))
        memory.set_number("input", 0, self._rain, "uint32")
        memory.set_registers("input", 2, [int(12600 + 900 * (0.5 + 0.5 * math.sin(t / 200)))])
        memory.set_number("input", 3, int(148 + 10 * math.sin(t / 400)), "int16")
        memory.coil[0] = level > 112.5
        memory.discrete[0] = int(t) % 97 < 5
