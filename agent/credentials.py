"""Secrets that systemd hands over (credentials): the MQTT password and the TLS client key.

Under systemd the unit's `LoadCredential=` lines copy secrets into a private, read-only folder
that only the agent's user can read, and name it in `$CREDENTIALS_DIRECTORY`. The shipped unit
loads every file of `/etc/edge-agent/credentials/` (`LoadCredential=edge-agent:<folder>`), which
systemd names `edge-agent_<file name>`; a site's own `LoadCredential=<name>:<path>` line (a
drop-in) gives the name as is. So a credential `<name>` is looked for as `<name>`, then as
`edge-agent_<name>`, in `$CREDENTIALS_DIRECTORY`.

`resolve_uplink` fills in, at start, what the config leaves to a credential:

| config | when | from |
|---|---|---|
| `uplink.password` | not given (null) | the credential `uplink.password_credential` (default `mqtt-password`) |
| `uplink.tls.key` | not given, and `uplink.tls.cert` is | the credential `uplink.tls.key_credential` (default `tls-key`): its path |

A value written in the config wins (the credential is not read). A credential given another
name than its default must be there: a missing one is a `CredentialError`; the default one
missing just means no password (so a config that spells out the defaults, as
config/example.yaml does, behaves as one that leaves them out). A client certificate always
needs its key, so a missing key credential is an error whatever its name. The password is read
once and never logged; the key is handed to ssl as a path (the agent never reads it itself).

`CredentialError` is an `OSError`: `edge-agent run` reports it like any other reason it cannot
start, in one line ("cannot start: uplink.password_credential: ...").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from agent.config import DEFAULT_PASSWORD_CREDENTIAL, UplinkConfig

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# The shipped unit loads /etc/edge-agent/credentials/ as the credential "edge-agent": systemd
# names each file in it "edge-agent_<file name>" (systemd.exec(5), LoadCredential=).
UNIT_PREFIX = "edge-agent_"


class CredentialError(OSError):
    """A credential the config relies on is missing or unusable; `str()` is one line."""


def credentials_directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder systemd put the credentials in, or None (not started with credentials)."""
    value = (os.environ if environ is None else environ).get(CREDENTIALS_ENV, "")
    return Path(value) if value else None


def find_credential(name: str, directory: Path) -> Path | None:
    """The file of credential `name` in `directory` (as is, or with the unit's prefix)."""
    for candidate in (name, UNIT_PREFIX + name):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def read_secret(path: Path, key: str) -> str:
    """A text secret: the file's UTF-8 text without its trailing line end; never empty."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise CredentialError(f"{key}: {path} is not UTF-8 text") from None
    if not text:
        raise CredentialError(f"{key}: {path} is empty")
    return text


def _missing(key: str, name: str, directory: Path | None) -> str:
    if directory is None:
        return (
            f"{key}: no credential {name!r}: ${CREDENTIALS_ENV} is not set "
            "(the agent was not started by systemd with LoadCredential=)"
        )
    return (
        f"{key}: no credential {name!r} (nor {UNIT_PREFIX + name!r}) in {directory} "
        f"(put it in /etc/edge-agent/credentials/{name})"
    )


def resolve_uplink(uplink: UplinkConfig, environ: Mapping[str, str] | None = None) -> UplinkConfig:
    """The uplink config with its password and TLS key taken from the credentials where the
    config leaves them to one (see the module's table); unchanged without a broker.

    Raises CredentialError when a credential the config relies on is missing or unusable.
    """
    if uplink.broker is None:
        return uplink
    directory = credentials_directory(environ)
    updates: dict[str, object] = {}

    name = uplink.password_credential
    if uplink.password is None and name is not None:
        path = find_credential(name, directory) if directory is not None else None
        if path is not None:
            updates["password"] = read_secret(path, "uplink.password_credential")
        elif name != DEFAULT_PASSWORD_CREDENTIAL:
            raise CredentialError(_missing("uplink.password_credential", name, directory))

    tls = uplink.tls
    key_name = tls.key_credential
    if uplink.tls_enabled and tls.cert is not None and tls.key is None and key_name is not None:
        path = find_credential(key_name, directory) if directory is not None else None
        if path is None:
            raise CredentialError(
                _missing("uplink.tls.key_credential", key_name, directory)
                + "; uplink.tls.cert needs its key"
            )
        updates["tls"] = tls.model_copy(update={"key": path})

    return uplink.model_copy(update=updates) if updates else uplink
