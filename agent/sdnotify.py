"""systemd's service notification protocol (sd_notify), without libsystemd.

`notify("READY=1")` sends one datagram to $NOTIFY_SOCKET; without that variable (not started by
systemd with Type=notify) it does nothing. Abstract-namespace sockets ('@...') are supported.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


def notify(*assignments: str) -> bool:
    """Send `KEY=value` lines to systemd; True if sent, False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
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
