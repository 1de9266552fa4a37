"""Every protocol the agent speaks: one entry per driver.

Adding a protocol is a new package under `agent/protocols/<name>/` (its config models, its
runtime behind `agent.protocols.driver.Driver`) and one entry here; docs/architecture.md says
exactly what to write. The config takes its terminal models from here, the daemon its drivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.protocols.driver import Driver, DriverContext, DriverSpec, NotPolled, PollAnswer
from agent.protocols.modbus import config as modbus
from agent.protocols.sl651 import config as sl651

if TYPE_CHECKING:
    from agent.config import Config


def _modbus(context: DriverContext) -> Driver:
    from agent.protocols.modbus.driver import ModbusDriver

    return ModbusDriver.from_context(context)


async def _modbus_poll(config: Config, terminal: str) -> PollAnswer:
    from agent.protocols.modbus.driver import poll_once

    return await poll_once(config, terminal)


def _sl651(context: DriverContext) -> Driver:
    from agent.protocols.sl651.driver import Sl651Driver

    return Sl651Driver(context)


DRIVERS: tuple[DriverSpec, ...] = (
    DriverSpec(
        "modbus",
        (modbus.ModbusTcpTerminal, modbus.ModbusRtuTerminal),
        _modbus,
        _modbus_poll,
        modbus.check_terminals,
    ),
    DriverSpec("sl651", (sl651.Sl651Terminal,), _sl651, check=sl651.check_terminals),
)


def spec_for(protocol: str, drivers: tuple[DriverSpec, ...] = DRIVERS) -> DriverSpec:
    """The entry that serves `protocol`; KeyError if none does."""
    for spec in drivers:
        if protocol in spec.protocols:
            return spec
    raise KeyError(protocol)


async def poll_once(
    config: Config, terminal: str, drivers: tuple[DriverSpec, ...] = DRIVERS
) -> PollAnswer:
    """One poll of a configured terminal without a running agent (`edge-agent poll`).

    KeyError for an unknown name; NotPolled for a terminal that reports by itself.
    """
    model = config.terminal(terminal)
    spec = spec_for(model.protocol, drivers)
    if spec.poll_once is None:
        raise NotPolled(
            f"{terminal} reports by itself ({model.protocol}): see its readings with "
            "'edge-agent status'"
        )
    return await spec.poll_once(config, terminal)
