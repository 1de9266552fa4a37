"""What every config model shares: frozen, strict pydantic models and the terminal base.

The protocol drivers define their own config models (`agent/protocols/<name>/config.py`) on
these bases; `agent/config.py` assembles them into the whole config. Nothing here imports a
protocol, so every driver's config module can import it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.model import TerminalInfo

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# The languages of what the agent writes for people (the inspection report): English and
# Simplified Chinese.
Language = Literal["en", "zh"]

_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")


def parse_host_port(text: str) -> tuple[str, int]:
    """(host, port) of "host:port" as a listener takes it (`127.0.0.1:9108`, `[::1]:9108`,
    `gateway.local:5001`; port 0: any free port); ValueError saying what is wrong."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{text!r} is not host:port, e.g. 127.0.0.1:9108")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9108")
    elif not _HOST_NAME.match(host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or IP address")
    return host, int(port)


def _host_port(text: str) -> str:
    parse_host_port(text)
    return text


# A config field holding a listener's "host:port" (checked at load; `parse_host_port` splits it).
HostPort = Annotated[str, AfterValidator(_host_port)]


class Frozen(BaseModel):
    """A config model: immutable after validation, unknown keys refused, strings stripped."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class TerminalModel(Frozen):
    """A terminal in the config: a unique name and its protocol (the discriminator).

    Each protocol's terminal models subclass this, narrow `protocol` to a `Literal`, and say
    what protocol-neutral parts (checks, history, status, metrics) see of them in `info`.
    """

    name: str = Field(pattern=NAME_PATTERN)
    protocol: str

    @property
    def info(self) -> TerminalInfo:
        raise NotImplementedError(f"{type(self).__name__} must describe itself in `info`")

    @property
    def points_meta(self) -> tuple[tuple[str, str, str], ...] | None:
        """(name, unit, source) of each configured point, in order, for the `…/meta` message
        telemetry refers to (agent/telemetry.py); None where the terminal decides what it
        sends (its readings are then carried whole)."""
        return None

    def point_label(self, point: str, language: Language) -> str | None:
        """A point's plain name for people (the inspection report), None where there is none:
        a configured `label`, or what the protocol's standard calls it."""
        return None
