"""A simulated fleet on a real broker: each gateway's retained `…/state` and signed `…/health`.

Each gateway has its own device key (`agent.signing.DeviceKey`) and publishes what its uplink
would: `online`/`offline` retained on `<prefix>/state`, and its health report (README, "Health
report") in the signed envelope (kind `health`) retained on `<prefix>/health`. Used by
tests/test_fleet.py and bench/fleet.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt

from agent.model import format_timestamp
from agent.signing import DeviceKey, envelope_payload


@dataclass
class SimGateway:
    id: str
    state: str | None = "online"  # None: no retained state
    status: str | None = "ok"  # the health summary's status; None: no health report
    failing: list[str] = field(default_factory=list)
    warning: list[str] = field(default_factory=list)
    version: str = "0.2.0"
    update: str = "committed"
    backlog: int = 1
    forged: bool = False  # the health report is signed by another key
    known: bool = True  # in the known-gateways file
    key: DeviceKey = field(default_factory=DeviceKey.generate)
    age: float = 60.0  # seconds since the report was made

    def report(self, now: datetime) -> dict[str, Any]:
        generated = format_timestamp(now - timedelta(seconds=self.age))
        counts = {"ok": 20, "warn": len(self.warning), "fail": len(self.failing), "unknown": 0}
        return {
            "schema": 1,
            "gateway": self.id,
            "generated_at": generated,
            "summary": {
                "status": self.status,
                "counts": counts,
                "failing": self.failing,
                "warning": self.warning,
            },
            "checks": [
                {
                    "id": c,
                    "family": c.split(".")[0],
                    "status": "fail",
                    "value": None,
                    "unit": "",
                    "threshold": None,
                    "message": "simulated",
                    "since": generated,
                    "checked_at": generated,
                }
                for c in self.failing
            ],
            "agent": {
                "version": self.version,
                "python": "3.11.7",
                "started_at": generated,
                "uptime": 3600.0,
                "restarts_24h": 0,
                "config": "/etc/edge-agent/config.yaml",
                "log": {"errors": 0, "warnings": 0, "window": 3600.0},
            },
            "outbox": {
                "messages": {"events": 0, "health": 1, "telemetry": self.backlog - 1},
                "bytes": 1000 * self.backlog,
                "max_bytes": 268435456,
                "oldest_age": 1.0,
                "evicted": 0,
                "evicted_bytes": 0,
                "last_evicted_at": None,
                "over_budget": False,
                "last_seq": 100,
                "recovered_from": None,
            },
            "uplink": None,
            "terminals": [],
            "buses": {},
            "update": {
                "schema": 1,
                "state": self.update,
                "current": self.version,
                "previous": None,
                "trial_ends_at": None,
                "last": None,
            },
        }

    def health_token(self, now: datetime) -> str:
        signer = DeviceKey.generate() if self.forged else self.key
        payload = envelope_payload(self.id, 100, "health", now, self.report(now))
        return signer.sign_compact(payload)


def simulated_fleet(count: int) -> list[SimGateway]:
    """`count` gateways: mostly ok, some warning, failing, offline; one forged report, one
    gateway not in the known file, one with a state but no health report yet."""
    fleet = []
    for i in range(count):
        g = SimGateway(f"gw-{i:03d}", backlog=1 + i % 7)
        if i % 10 == 3:
            g.status, g.warning = "warn", ["network.backlog"]
        if i % 20 == 5:
            g.status, g.failing = "fail", ["terminals.freshness:dam-plc", "system.disk"]
        if i % 25 == 7:
            g.state = "offline"
        fleet.append(g)
    fleet[17].forged = True
    fleet[18].known = False
    fleet[19].status = None
    fleet[21].update, fleet[21].version = "trial", "0.3.0"
    return fleet


async def publish_fleet(port: int, gateways: list[SimGateway], prefix: str = "edge") -> None:
    """Publish every gateway's retained state and health (QoS 1, each acknowledged)."""
    now = datetime.now(UTC)
    messages: list[tuple[str, str]] = []
    for g in gateways:
        if g.state is not None:
            messages.append((f"{prefix}/{g.id}/state", g.state))
        if g.status is not None:
            messages.append((f"{prefix}/{g.id}/health", g.health_token(now)))
    async with aiomqtt.Client("127.0.0.1", port, identifier="fleet-sim") as client:
        # A few at a time: aiomqtt warns when more than 10 publishes wait for their PUBACK.
        for start in range(0, len(messages), 8):
            await asyncio.gather(
                *(
                    client.publish(topic, payload, qos=1, retain=True)
                    for topic, payload in messages[start : start + 8]
                )
            )


def known_gateways(gateways: list[SimGateway]) -> dict[str, Any]:
    """The known-gateways file's content: what each gateway's `keys show --json` printed."""
    return {g.id: g.key.public_info() for g in gateways if g.known}
