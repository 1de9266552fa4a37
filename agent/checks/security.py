"""Security checks: who may read the secrets (device key, TLS key, config), how long the TLS
client certificate stays valid, and whether the agent runs as root.

File rules (by mode bits, not by who runs the check, so root sees what others could do):
- device key and TLS private key: nobody but the owner may read them (fail);
- the keys folder: closed to group and others (fail);
- state_dir and the config file: not writable by others (fail) nor the group (warn); a config
  holding a password must not be readable by others (warn).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from agent.check_settings import ChecksConfig
from agent.checks.framework import Check, Outcome, Probe, Status, level, unknown, worst
from agent.checks.view import AgentView

FAMILY = "security"


def checks(settings: ChecksConfig, tls_cert: Path | None) -> list[Check]:
    s = settings.security

    def make(check_id: str, probe: Probe, blocking: bool = False) -> Check:
        return Check(check_id, FAMILY, probe, s.interval, settings.timeout, blocking)

    out = [
        make("security.files", lambda v, now: files(v), blocking=True),
        make("security.root", lambda v, now: root(settings)),
    ]
    if tls_cert is not None:
        out.append(
            make(
                "security.cert_expiry", lambda v, now: cert_expiry(v, now, settings), blocking=True
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    text: str


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def _private(path: Path, what: str, missing: Status) -> list[Finding]:
    mode = _mode(path)
    if mode is None:
        return [Finding(missing, f"{what} {path} does not exist")]
    if mode & 0o077:
        return [
            Finding(
                Status.FAIL,
                f"{what} {path} has mode {mode:04o}: others can read it (chmod 600 {path})",
            )
        ]
    return []


def _closed_dir(path: Path, what: str) -> list[Finding]:
    mode = _mode(path)
    if mode is not None and mode & 0o077:
        return [
            Finding(
                Status.FAIL, f"{what} {path} has mode {mode:04o}: open to others (chmod 700 {path})"
            )
        ]
    return []


def _not_writable(path: Path, what: str) -> list[Finding]:
    mode = _mode(path)
    if mode is None:
        return []
    if mode & 0o002:
        return [Finding(Status.FAIL, f"{what} {path} has mode {mode:04o}: anyone can write it")]
    if mode & 0o020:
        return [Finding(Status.WARN, f"{what} {path} has mode {mode:04o}: its group can write it")]
    return []


def file_findings(view: AgentView) -> list[Finding]:
    config = view.config
    found: list[Finding] = []
    key = config.layout.device_key
    found += _private(key, "the device key", Status.WARN)
    found += _closed_dir(key.parent, "the keys folder")
    found += _not_writable(config.state_dir, "state_dir")
    tls = config.uplink.tls
    if tls.key is not None:
        found += _private(tls.key, "the TLS client key", Status.FAIL)
    for path, what in ((tls.cert, "the TLS client certificate"), (tls.ca, "the TLS CA file")):
        if path is not None:
            found += _not_writable(path, what)
    if view.config_path is not None:
        found += _not_writable(view.config_path, "the config file")
        mode = _mode(view.config_path)
        if mode is not None and mode & 0o004 and config.uplink.password:
            found.append(
                Finding(
                    Status.WARN,
                    f"the config file {view.config_path} holds the broker password and has mode "
                    f"{mode:04o}: others can read it (chmod 640)",
                )
            )
    return found


def files(view: AgentView) -> Outcome:
    found = file_findings(view)
    if not found:
        return Outcome(Status.OK, 0, "problems", 0, "keys and config files have safe modes")
    text = "; ".join(f.text for f in sorted(found, key=lambda f: -f.status.severity))
    return Outcome(worst(f.status for f in found), len(found), "problems", 0, text)


def root(settings: ChecksConfig) -> Outcome:
    uid = os.geteuid()
    if uid == 0:
        return Outcome(
            Status(settings.security.root),
            True,
            message="the agent runs as root (a dedicated user is safer)",
        )
    return Outcome(Status.OK, False, message=f"the agent runs as uid {uid}, not root")


def cert_expiry(view: AgentView, now: datetime, settings: ChecksConfig) -> Outcome:
    path = view.config.uplink.tls.cert
    if path is None:
        return unknown("no TLS client certificate configured")
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return Outcome(
            Status.FAIL, None, "days", None, f"the TLS client certificate {path} is missing"
        )
    except ValueError as exc:
        return Outcome(Status.FAIL, None, "days", None, f"{path} is not a PEM certificate: {exc}")
    not_after = cert.not_valid_after_utc
    days = round((not_after - now).total_seconds() / 86400, 1)
    subject = cert.subject.rfc4514_string() or "(no subject)"
    if days <= 0:
        return Outcome(
            Status.FAIL, days, "days", 0, f"{subject}: expired on {not_after:%Y-%m-%d} ({path})"
        )
    limits = settings.security.cert_days
    return level(
        days,
        warn=limits.warn,
        fail=limits.fail,
        higher_is_worse=False,
        unit="days",
        describe=lambda d: f"{subject}: valid until {not_after:%Y-%m-%d} ({d:g} days left)",
    )
