"""Checking a diagnosis request: a JWS an engineer signed, in the order docs/diagnosis.md gives.

`RequestChecker.check(token)` parses the compact JWS and then checks, stopping at the first
failure: 1. the signature, by the key of a listed engineer (`kid` names it); 2. the target
gateway; 3. the time (`iat`, `exp` with `clock_tolerance`, a lifetime of at most 15 minutes);
4. replay (the id is recorded here, before any action runs); 5. the engineer's role lists the
action; 6. consent, where the action needs it. A failure raises `Refused` with the reason the
signed refusal carries and the request's id when one could be read (to answer to).

Engineer keys are read once, when the checker is built: a key that cannot be read is logged
as an error and that engineer is left out (`problems` lists why); the others still work.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.diagnosis.settings import ACTION_NAMES, DiagnosisConfig, Engineer
from agent.signing import b64url, jwk_thumbprint

if TYPE_CHECKING:
    from agent.diagnosis.consent import Consent

log = structlog.get_logger(__name__)

MAX_LIFETIME = 15 * 60  # exp - iat, seconds
MAX_ID_LENGTH = 128
MAX_TOKEN_BYTES = 64 * 1024


class Refused(Exception):
    """A request the gateway will not serve: `reason` for the signed refusal, and what is known
    of the request (its id to answer to, and for the audit the rest when it was read)."""

    def __init__(
        self,
        reason: str,
        request_id: str | None = None,
        request: DiagRequest | None = None,
        kid: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id
        self.request = request
        self.kid = kid if kid is not None else (request.kid if request is not None else None)


@dataclass(frozen=True, slots=True)
class DiagRequest:
    """A request whose signature, target and time were checked."""

    id: str
    gw: str
    action: str
    args: Mapping[str, Any]
    iat: int
    exp: int
    engineer: str
    role: str
    kid: str


@dataclass(frozen=True, slots=True)
class EngineerKey:
    """A listed engineer's verified-to-load public key."""

    engineer: Engineer
    kid: str
    key: Ed25519PublicKey = field(repr=False)


class ReplayCache(Protocol):
    def seen_or_add(self, request_id: str, exp: float) -> bool: ...


class ConsentSource(Protocol):
    def read(self, now: float) -> Consent | None: ...


def load_public_key(engineer: Engineer) -> Ed25519PublicKey:
    """The engineer's Ed25519 public key from its PEM string or file; ValueError saying why."""
    if engineer.is_pem:
        data = engineer.public_key.encode("ascii", "replace")
        where = "the PEM in the config"
    else:
        path = Path(engineer.public_key)
        where = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{where}: not a public key in PEM ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{where}: an Ed25519 key is needed, found {type(key).__name__}")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """The RFC 7638 thumbprint of an Ed25519 public key (the `kid` its JWS names)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return jwk_thumbprint(b64url(raw))


def _b64decode(part: str) -> bytes:
    if not part or any(c not in _B64URL for c in part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _valid_id(value: object) -> str | None:
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isprintable()
        and not value.isspace()
    ):
        return value
    return None


def _int(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: a whole number of seconds since the epoch is required")
    return value


class RequestChecker:
    """Checks requests against the `diagnosis:` settings, this gateway, the replay cache and
    the owner's consent; `now` is the wall clock (the tests move it)."""

    def __init__(
        self,
        settings: DiagnosisConfig,
        gateway_id: str,
        replay: ReplayCache,
        consent: ConsentSource,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.replay = replay
        self.consent = consent
        self.now = now
        self.keys: dict[str, EngineerKey] = {}
        self.problems: list[str] = []  # engineers left out, and why
        for engineer in settings.engineers:
            try:
                key = load_public_key(engineer)
            except ValueError as exc:
                problem = f"engineer {engineer.name}: {exc}; their requests are refused"
                self.problems.append(problem)
                log.error(
                    "diagnosis: engineer key unusable", engineer=engineer.name, error=str(exc)
                )
                continue
            kid = key_id(key)
            self.keys[kid] = EngineerKey(engineer, kid, key)

    # -- the checks, in order ----------------------------------------------------------------

    def check(self, token: bytes) -> DiagRequest:
        """The checked request, or Refused with the first reason it fails."""
        header, payload, signing_input, signature = self._parse(token)
        request_id = _valid_id(payload.get("id"))
        kid = header.get("kid")
        # 1. signature
        if not isinstance(kid, str) or kid not in self.keys:
            raise Refused(f"unknown key {kid!r}: not a listed engineer's", request_id, kid=_s(kid))
        entry = self.keys[kid]
        try:
            entry.key.verify(signature, signing_input)
        except InvalidSignature:
            raise Refused("bad signature", request_id, kid=kid) from None
        request = self._request(payload, entry, request_id)
        # 2. target
        if request.gw != self.gateway_id:
            raise Refused(f"wrong gateway: the request is for {request.gw!r}", request.id, request)
        # 3. time
        now = self.now()
        tolerance = float(self.settings.clock_tolerance)
        if request.iat > now + tolerance:
            raise Refused("issued in the future (check the clocks)", request.id, request)
        if request.exp < now - tolerance:
            raise Refused("expired", request.id, request)
        if request.exp - request.iat > MAX_LIFETIME:
            raise Refused("lifetime over 15 minutes (exp - iat)", request.id, request)
        # 4. replay: recorded before anything runs
        if self.replay.seen_or_add(request.id, request.exp):
            raise Refused("replayed id", request.id, request)
        # 5. role
        allowed = self.settings.roles.get(entry.engineer.role, [])
        if request.action not in ACTION_NAMES:
            raise Refused(f"unknown action {request.action!r}", request.id, request)
        if request.action not in allowed:
            raise Refused(
                f"role {entry.engineer.role} may not ask for {request.action}", request.id, request
            )
        # 6. consent
        reason = self.consent_refusal(request.action, now)
        if reason is not None:
            raise Refused(reason, request.id, request)
        return request

    def consent_refusal(self, action: str, now: float | None = None) -> str | None:
        """Why the owner's consent does not cover `action` now, or None when it does."""
        mode = self.settings.consent
        if mode == "always" or action in self.settings.without_consent:
            return None
        if mode == "never":
            return f"no consent: {action} needs consent and this gateway's consent is never"
        consent = self.consent.read(self.now() if now is None else now)
        if consent is None:
            return f"no consent: {action} needs the site owner's grant (edge-agent diag grant)"
        if consent.actions is not None and action not in consent.actions:
            return f"no consent: the grant does not cover {action}"
        return None

    def consent_open(self, request: DiagRequest) -> bool:
        """Whether consent still covers the request now (checked again before answering)."""
        return self.consent_refusal(request.action) is None

    # -- parsing -----------------------------------------------------------------------------

    def _parse(self, token: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Refused(f"not a request: over {MAX_TOKEN_BYTES} bytes")
        try:
            text = token.decode("ascii").strip()
            parts = text.split(".")
            if len(parts) != 3:
                raise ValueError("not a compact JWS (three dot-separated parts)")
            header = json.loads(_b64decode(parts[0]))
            payload = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (UnicodeDecodeError, ValueError, binascii.Error) as exc:
            raise Refused(f"not a request: {exc}") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise Refused("not a request: header and payload must be JSON objects")
        request_id = _valid_id(payload.get("id"))
        if header.get("alg") != "EdDSA":
            raise Refused(f"unsupported alg {header.get('alg')!r} (EdDSA only)", request_id)
        if "crit" in header:
            raise Refused("unsupported crit header", request_id)
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        return header, payload, signing_input, signature

    def _request(
        self, payload: Mapping[str, Any], entry: EngineerKey, request_id: str | None
    ) -> DiagRequest:
        try:
            if request_id is None:
                raise ValueError("id: 1 to 128 printable characters are required")
            gw, action, args = payload.get("gw"), payload.get("action"), payload.get("args", {})
            if not isinstance(gw, str):
                raise ValueError("gw: a string is required")
            if not isinstance(action, str):
                raise ValueError("action: a string is required")
            if not isinstance(args, dict):
                raise ValueError("args: an object is required")
            iat, exp = _int(payload, "iat"), _int(payload, "exp")
            if exp < iat:
                raise ValueError("exp is before iat")
        except ValueError as exc:
            raise Refused(f"malformed request: {exc}", request_id, kid=entry.kid) from None
        e = entry.engineer
        return DiagRequest(request_id, gw, action, args, iat, exp, e.name, e.role, entry.kid)


def _s(value: object) -> str | None:
    return value if isinstance(value, str) else None
