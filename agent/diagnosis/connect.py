"""How the support desk reaches the broker (`remote`, `fleet`): URL, credentials, TLS → a client.

The desk's commands share these options: ``--broker mqtt(s)://host[:port]``, ``--username``,
``--password-file`` (the first line is the password; never on the command line, where `ps` shows
it), ``--tls-ca`` (the CA that signs the broker's certificate; default: the system's). Each
connection is MQTT 5 with a clean start and a random client id: two engineers never take over
each other's session.
"""

from __future__ import annotations

import argparse
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from agent.diagnosis.engineer import DeskError

_URL = re.compile(r"^(mqtts?)://([^/:\s]+)(?::(\d{1,5}))?/?$")


@dataclass(frozen=True)
class Broker:
    """Where and how to connect; `client` builds a fresh aiomqtt client."""

    url: str
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None

    def client(self, purpose: str, *, timeout: float = 10.0) -> aiomqtt.Client:
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"edge-{purpose}-{secrets.token_hex(6)}",
            username=self.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            timeout=timeout,
            tls_context=context,
        )


def parse_broker(
    url: str,
    *,
    username: str | None = None,
    password_file: Path | None = None,
    tls_ca: Path | None = None,
) -> Broker:
    """The broker of the options; DeskError for a bad URL or an unreadable file."""
    match = _URL.match(url.strip())
    if match is None:
        raise DeskError(f"--broker {url}: expected mqtt://host:1883 or mqtts://host:8883")
    scheme, host, port = match.groups()
    tls = scheme == "mqtts"
    password: str | None = None
    if password_file is not None:
        try:
            lines = Path(password_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DeskError(f"--password-file {password_file}: {exc.strerror or exc}") from exc
        password = lines[0] if lines else ""
    if tls_ca is not None:
        if not tls:
            raise DeskError("--tls-ca needs an mqtts:// broker")
        if not Path(tls_ca).is_file():
            raise DeskError(f"--tls-ca {tls_ca}: no such file")
    return Broker(
        url=url,
        host=host,
        port=int(port) if port else (8883 if tls else 1883),
        tls=tls,
        username=username,
        password=password,
        tls_ca=tls_ca,
    )


def add_broker_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--broker", metavar="URL", help="mqtt://host:1883 or mqtts://host:8883")
    parser.add_argument("--username", default=None, help="the broker account")
    parser.add_argument(
        "--password-file", type=Path, default=None, metavar="FILE", help="its password (first line)"
    )
    parser.add_argument(
        "--tls-ca", type=Path, default=None, metavar="FILE", help="CA of the broker's certificate"
    )


def broker_from_args(args: argparse.Namespace) -> Broker:
    if not args.broker:
        raise DeskError("--broker URL is required (mqtt://host:1883 or mqtts://host:8883)")
    return parse_broker(
        args.broker,
        username=args.username,
        password_file=args.password_file,
        tls_ca=args.tls_ca,
    )


def describe_connect_error(broker: Broker, exc: BaseException) -> str:
    """One line: why the broker could not be reached or refused us."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {broker.url} is not trusted ({exc.verify_message}); give --tls-ca"
    if "Not authorized" in text or "Bad user name or password" in text:
        return f"{broker.url} refused the login ({text}): check --username/--password-file"
    return f"cannot reach {broker.url}: {text}"
