"""`edge-agent check` with no agent running: probe what can be probed, say what cannot.

The agent's own figures (its polls, its uplink session, its log, the readings it saw) exist
only in a running agent. Without one, `check` runs every check that does not need them
(`Check.needs_agent`) on a view read from disk — the outbox opened read-only — and in place of
the others:
- `terminals.reachable:<name>`: each polled terminal read once through its driver (the path of
  `edge-agent poll`), all at once, each within its own timeout and retries; terminals on one
  serial line take turns on it;
- `network.broker_mqtt`: a real MQTT session with the config's address, credentials and TLS,
  left at once with a clean disconnect — tried once the broker's TCP port answers (one that does
  not is `network.broker_tcp`'s one finding);
- `terminals.reporting`: one line for the terminals that report by themselves (SL651 stations
  call in: nothing can be asked of them without the agent listening);
- `software.agent`: one line naming the checks that need the running agent.
Like operations.py, this is where the parts meet (checks, protocols, uplink, outbox); none of
them imports another for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from agent.check_settings import checks_settings
from agent.checks.framework import (
    Check,
    CheckResult,
    Outcome,
    Probe,
    Status,
)
from agent.checks.network import broker_tcp
from agent.checks.registry import build_checks, run_checks_once
from agent.checks.view import AgentView, load_restarts
from agent.config import Config
from agent.credentials import CREDENTIALS_ENV, resolve_uplink
from agent.outbox import OutboxError, read_stats
from agent.protocols.driver import DriverError, PollAnswer
from agent.protocols.registry import poll_once
from agent.update.layout import InstallLayout
from agent.uplink import UplinkError, try_session

# A probe is bounded by the terminal's own timeouts and retries; this only stops one that
# hangs for another reason.
PROBE_LIMIT = 300.0


OUTBOX_CHECKS = ("network.backlog", "network.evictions")


def probe_checks(config: Config, outbox_missing: str | None = None) -> list[Check]:
    """What `check` runs with no agent: the checks that do not need it, and the probes.
    `outbox_missing`: why the outbox could not be read, said once for its checks."""
    found = build_checks(config)
    kept = [c for c in found if not c.needs_agent]
    if outbox_missing is not None:
        kept = [c for c in kept if c.id not in OUTBOX_CHECKS]
    needing = [c.id for c in found if c.needs_agent]
    probes: list[Check] = []
    for t in config.terminals:
        if t.info.polled:
            probes.append(_check(f"terminals.reachable:{t.name}", "terminals", _poller(t.name)))
    reporting = [t.info for t in config.terminals if not t.info.polled]
    if reporting:
        names = ", ".join(t.name for t in reporting)
        protocols = ", ".join(sorted({t.protocol for t in reporting}))
        probes.append(
            _fixed(
                "terminals.reporting",
                "terminals",
                f"{names} ({protocols}): cannot be probed without the agent: stations call in",
            )
        )
    if config.uplink.broker is not None:
        probes.append(_check("network.broker_mqtt", "network", _broker))
    if outbox_missing is not None:
        probes.append(_fixed("network.backlog", "network", outbox_missing))
    if needing:
        probes.append(
            _fixed(
                "software.agent",
                "software",
                f"the agent is not running: {len(needing)} checks need it "
                f"({', '.join(_kinds(needing))})",
            )
        )
    settings = checks_settings(config)
    if not settings.enabled:
        return []
    return kept + [c for c in probes if not settings.is_disabled(c.id, c.family)]


async def probe(config: Config, config_path: Path | None) -> list[CheckResult]:
    """Run `probe_checks` once, all at once; results failing first."""
    path = config.outbox_path
    missing = None
    try:
        outbox = read_stats(path, config.outbox.max_bytes)
    except OutboxError as exc:
        outbox, missing = None, str(exc)
    if outbox is None and missing is None:
        missing = f"no outbox at {path} yet: the agent makes it when it starts"
    view = AgentView(config, config_path, restarts=load_restarts(config.state_dir), outbox=outbox)
    return await run_checks_once(view, probe_checks(config, missing))


def _check(check_id: str, family: str, probe: Probe) -> Check:
    return Check(check_id, family, probe, timeout=PROBE_LIMIT)


def _fixed(check_id: str, family: str, message: str) -> Check:
    outcome = Outcome(Status.UNKNOWN, message=message)
    return Check(check_id, family, lambda view, now: outcome)


def _kinds(check_ids: Sequence[str]) -> list[str]:
    """Check ids without their subject (`terminals.success:plc` -> `terminals.success`), once."""
    return list(dict.fromkeys(i.split(":", 1)[0] for i in check_ids))


def _poller(name: str) -> Probe:
    async def reachable(view: AgentView, now: datetime) -> Outcome:
        try:
            answer = await poll_once(view.config, name)
        except DriverError as exc:
            return Outcome(Status.FAIL, message=str(exc))
        return _judge(answer)

    return reachable


def _judge(answer: PollAnswer) -> Outcome:
    """One poll as one finding: answered (how fast), some points unreadable, or no answer."""
    readings = answer.readings
    bad = [r for r in readings if r.error]
    if len(bad) == len(readings):
        reason = bad[0].error if bad else "no reading"
        return Outcome(Status.FAIL, None, "", None, f"not answering: {reason}")
    if bad:
        reasons = list(dict.fromkeys(r.error for r in bad))
        return Outcome(
            Status.WARN,
            len(bad),
            "points",
            0,
            f"answered, but {len(bad)} of {len(readings)} points unreadable: {reasons[0]}"
            + (f" (and {len(reasons) - 1} more reasons: edge-agent poll)" if reasons[1:] else ""),
        )
    return Outcome(
        Status.OK, len(readings), "points", None, f"{len(readings)} points read ({answer.where})"
    )


async def _broker(view: AgentView, now: datetime) -> Outcome:
    """An MQTT session with the broker, once its TCP port answers: a port that does not is
    network.broker_tcp's finding, not a second one here."""
    config = view.config
    where = f"{config.uplink.host}:{config.uplink.port}"
    tcp = await broker_tcp(view, checks_settings(config))
    if tcp.status in (Status.FAIL, Status.UNKNOWN):  # refused, silent, or no such host
        return Outcome(
            Status.UNKNOWN,
            message=f"not tried: {where} takes no TCP connection (see network.broker_tcp)",
        )
    try:
        uplink = resolve_uplink(config.uplink, _credentials_environ())
    except OSError as exc:  # CredentialError, or a credentials folder we may not read
        reason = str(exc) if exc.strerror is None else f"{exc.filename}: {exc.strerror}"
        return Outcome(Status.UNKNOWN, message=f"cannot try {where} without its secret: {reason}")
    try:
        took = await try_session(uplink, config.client_id)
    except UplinkError as exc:
        return Outcome(Status.FAIL, None, "s", None, exc.reason)
    tls = "TLS" if uplink.tls_enabled else "no TLS"
    user = f"as {uplink.username}" if uplink.username else "without a username"
    return Outcome(
        Status.OK,
        round(took, 3),
        "s",
        None,
        f"{where} accepted an MQTT session ({tls}, {user}) in {took * 1000:.0f} ms",
    )


def _credentials_environ() -> dict[str, str]:
    """Where the secrets are: systemd's credentials folder when it gave one (under the unit),
    else the folder the shipped unit loads them from (readable by root)."""
    environ = dict(os.environ)
    if not environ.get(CREDENTIALS_ENV):
        environ[CREDENTIALS_ENV] = str(InstallLayout().credentials_dir)
    return environ
