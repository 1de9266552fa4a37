"""Modbus TCP and RTU: config models, the register codec and read planner (sans-IO), the links
(the only modules that import pymodbus), the pollers and the driver."""
