"""systemd's service notification protocol (sd_notify), without libsystemd.

`notify("READY=1")` sends one datagram to $NOTIFY_SOCKET; without that variable (not started by
systemd with Type=notify) it does nothing. Abstract-namespace sockets ('@...') are supported.
`claim()` takes the variables out of the environment (as sd_notify's unset_environment does) so
that programs the agent runs — timedatectl, say, which reports its own errors to that socket —
cannot speak for the agent.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_claimed: dict[str, str] | None = None


def claim() -> dict[str, str]:
    """Move systemd's notification variables from the environment to this module (once)."""
    global _claimed
    if _claimed is None:
        _claimed = {k: v for k in _VARIABLES if (v := os.environ.pop(k, None)) is not None}
    return dict(_claimed)


def environment() -> dict[str, str]:
    """The notification variables: as claimed, or as the environment has them."""
    if _claimed is not None:
        return dict(_claimed)
    return {k: v for k in _VARIABLES if (v := os.environ.get(k)) is not None}


def notify(*assignments: str) -> bool:
    """Send `KEY=value` lines to systemd; True if sent, False when not under systemd."""
    address = environment().get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError as exc:
        log.warning("cannot notify systemd", socket=address, error=str(exc))
        return False
    return True
