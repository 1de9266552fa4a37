"""Device identity and signed envelopes (docs/architecture.md, "Signed envelope").

The device key is one Ed25519 key in ``<state_dir>/keys/device-ed25519.pem`` (PKCS#8 PEM,
file mode 0600, folder 0700). Its key id is the RFC 7638 JWK thumbprint of the public key, so
anyone holding the public key computes the same `kid`. Every upstream payload is a JWS
(RFC 7515) in compact serialization with the protected header ``{"alg":"EdDSA","kid":…}``
(RFC 8037), and ``"cty":"zlib"`` when the payload is compressed: its content type is then
application/zlib (RFC 6713; RFC 7515 4.1.10 drops the ``application/`` prefix), a zlib stream
of the JSON envelope (docs/telemetry.md). A registered parameter, so every JOSE library takes it
(``zip`` is registered for JWE only, and strict libraries refuse names they do not know).
No ``typ``, because the payload is our envelope, not a JWT. The envelope is compact JSON: ``{"gw","seq","kind","ts","body"}`` in that order.
A compressed payload is signed as it is sent: a receiver verifies, then decompresses.

The functions a CLI needs (`init_key`, `load_key`, `DeviceKey.public_info`) return data and
raise `KeyStoreError` subclasses whose message is a one-line reason for people.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.model import format_timestamp
from agent.storage.atomic import ensure_dir, fsync_dir, remove_stale_temps, write_atomic
from agent.storage.layout import StateLayout

ALG = "EdDSA"
# The protected header parameter saying the payload is compressed, and how (docs/telemetry.md):
# the payload's content type, "zlib" for application/zlib.
COMPRESS_HEADER = "cty"
COMPRESSIONS = ("none", "zlib")  # what `telemetry.compression` may say
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700
_EXISTS = "a device key already exists; use --force to replace it (the gateway's identity changes)"


class KeyStoreError(Exception):
    """The device key cannot be used; `reason` is one line for people, `path` the file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class KeyNotFoundError(KeyStoreError):
    """No device key yet."""


class KeyExistsError(KeyStoreError):
    """`init_key` without force found a key already there."""


class KeyPermissionError(KeyStoreError):
    """The key or its folder can be read or changed by others than its owner."""


class KeyInvalidError(KeyStoreError):
    """The key file is not an Ed25519 private key in PEM."""


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515, 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_bytes(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jwk_thumbprint(x: str) -> str:
    """RFC 7638 thumbprint (SHA-256) of an Ed25519 public key given as its JWK ``x`` member.

    The canonical JWK has exactly the required members of an OKP key (RFC 8037, 2), sorted,
    without whitespace.
    """
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


class DeviceKey:
    """The gateway's signing key. Build it with `init_key`, `load_key` or `from_pem`."""

    __slots__ = ("_header", "_headers", "_private", "kid", "path", "x")

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private_key
        self.path = path
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.x = b64url(raw)
        self.kid = jwk_thumbprint(self.x)
        # Signing runs for every outbox message: encode the header once (per compression).
        self._header = self._encode_header({"alg": ALG, "kid": self.kid})
        self._headers = {
            method: self._encode_header({"alg": ALG, "kid": self.kid, COMPRESS_HEADER: method})
            for method in COMPRESSIONS[1:]
        }

    @staticmethod
    def _encode_header(header: dict[str, str]) -> bytes:
        return _b64url_bytes(json.dumps(header, separators=(",", ":")).encode("ascii")) + b"."

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, path: Path | None = None) -> DeviceKey:
        where = path or Path("<pem>")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyInvalidError(where, f"not a usable private key in PEM ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyInvalidError(where, f"expected an Ed25519 key, found {type(key).__name__}")
        return cls(key, path)

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> str:
        return (
            self._private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037) with its kid, for any JOSE library."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.x,
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
        }

    def public_info(self) -> dict[str, Any]:
        """What `edge-agent keys show --json` prints: ``{"kid", "public_key_pem", "jwk"}``."""
        return {"kid": self.kid, "public_key_pem": self.public_pem(), "jwk": self.public_jwk()}

    def sign_compact(self, payload: bytes, compress: str | None = None) -> str:
        """The JWS compact serialization of `payload`: ``header.payload.signature``; with
        `compress` (``zlib``) the payload is compressed first and the header says so."""
        header = self._header
        if compress is not None and compress != "none":
            header = self._headers[compress]
            payload = compress_payload(payload, compress)
        signing_input = header + _b64url_bytes(payload)
        signature = self._private.sign(signing_input)
        return (signing_input + b"." + _b64url_bytes(signature)).decode("ascii")


def key_path(state_dir: Path) -> Path:
    return StateLayout(Path(state_dir)).device_key


def init_key(state_dir: Path, force: bool = False) -> DeviceKey:
    """Create the device key (`edge-agent keys init`); KeyExistsError if one exists and not force.

    Replacing a key changes the gateway's identity: upstream must learn the new public key.
    """
    path = key_path(state_dir)
    directory = path.parent
    key = DeviceKey.generate()
    try:
        # Exactly 0700 whatever the umask, also when it existed wider; state_dir 0750 if new.
        ensure_dir(directory, KEY_DIR_MODE)
        remove_stale_temps(path)  # a crash during an earlier init may have left a copy of a key
        if path.exists() and not force:
            raise KeyExistsError(path, _EXISTS)
        write_atomic(path, key.private_pem(), mode=KEY_FILE_MODE, overwrite=force)
        fsync_dir(directory.parent)
    except FileExistsError:  # created meanwhile by someone else
        raise KeyExistsError(path, _EXISTS) from None
    except OSError as exc:
        raise KeyStoreError(path, f"cannot write the device key: {exc.strerror or exc}") from exc
    key.path = path
    return key


def load_key(state_dir: Path) -> DeviceKey:
    """The device key; KeyNotFoundError, KeyPermissionError or KeyInvalidError when unusable."""
    path = key_path(state_dir)
    try:
        dir_mode = path.parent.stat().st_mode
        file_mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyNotFoundError(path, "no device key: run `edge-agent keys init`") from None
    if not stat.S_ISREG(file_mode):
        raise KeyInvalidError(path, "not a regular file")
    if stat.S_IMODE(dir_mode) & 0o077:
        raise KeyPermissionError(
            path.parent,
            f"folder mode {stat.S_IMODE(dir_mode):04o} lets others in; run chmod 700 {path.parent}",
        )
    if stat.S_IMODE(file_mode) & 0o077:
        raise KeyPermissionError(
            path,
            f"key file mode {stat.S_IMODE(file_mode):04o} lets others read it; run chmod 600 {path}",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(path, f"cannot read the device key: {exc.strerror or exc}") from exc
    return DeviceKey.from_pem(data, path)


def key_info(state_dir: Path) -> dict[str, Any]:
    """`edge-agent keys show --json`: ``{"kid", "public_key_pem", "jwk"}`` of the device key."""
    return load_key(state_dir).public_info()


def _dumps(value: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; a value that is not a measurement is refused
    # here rather than signed and rejected by every receiver.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class EncodedJSON(str):
    """A body already encoded as compact JSON (by whoever built it); signed as it is."""

    __slots__ = ()


def encode_body(body: Any) -> str:
    """The body as it goes into an envelope (compact JSON); ValueError/TypeError if not JSON."""
    if isinstance(body, EncodedJSON):
        return body
    return _dumps(body)


def envelope_from_encoded(gateway_id: str, seq: int, kind: str, ts: str, body_json: str) -> bytes:
    """`envelope_payload` for a body already encoded with `encode_body` and a formatted ts."""
    return (
        f'{{"gw":{_dumps(gateway_id)},"seq":{int(seq)},"kind":{_dumps(kind)},'
        f'"ts":{_dumps(ts)},"body":{body_json}}}'
    ).encode()


def envelope_payload(gateway_id: str, seq: int, kind: str, ts: datetime, body: Any) -> bytes:
    """The JSON payload of a signed envelope: ``{"gw","seq","kind","ts","body"}``, compact.

    `ts` is written as RFC 3339 UTC with milliseconds and a Z (naive datetimes are refused).
    """
    if ts.tzinfo is None:
        raise ValueError("envelope ts must be timezone-aware")
    stamp = format_timestamp(ts.astimezone(UTC))
    return envelope_from_encoded(gateway_id, seq, kind, stamp, encode_body(body))


def utc_stamp(unix_seconds: float) -> str:
    """RFC 3339 UTC of a POSIX time, as envelopes carry it."""
    return format_timestamp(datetime.fromtimestamp(unix_seconds, UTC))


def compress_payload(payload: bytes, method: str) -> bytes:
    """The payload compressed as `method` says: ``zlib`` is RFC 1950 (zlib format), level 6."""
    if method == "zlib":
        return zlib.compress(payload, 6)
    raise ValueError(f"unknown compression {method!r}")


def decompress_payload(payload: bytes, method: str) -> bytes:
    if method == "zlib":
        return zlib.decompress(payload)
    raise ValueError(f"unknown compression {method!r}")


def read_envelope(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The protected header and payload of a compact JWS (decompressed if the header says
    so), NOT verified (for inspection only: `edge-agent outbox peek`, the agent's own outbox).
    Raises ValueError for text that is not a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (three dot-separated parts)")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        data = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        if isinstance(header, dict) and header.get(COMPRESS_HEADER):
            data = decompress_payload(data, str(header[COMPRESS_HEADER]))
        payload = json.loads(data)
    except (ValueError, TypeError, zlib.error) as exc:
        raise ValueError(f"not a compact JWS: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ValueError("not a compact JWS: header and payload must be JSON objects")
    return header, payload
