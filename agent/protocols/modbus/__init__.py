"""Modbus TCP and RTU: config models, the register codec, read planner and ADU framing (sans-IO),
the links (TCP connections and serial buses), the pollers and the driver."""
