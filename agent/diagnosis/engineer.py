"""The support desk's keys and codec (docs/diagnosis.md, "A request", "An answer"); no IO but files.

An engineer signs requests with an Ed25519 `EngineerKey` (PKCS#8 PEM, 0600): a JWS in compact
serialization, ``{"alg":"EdDSA","kid":<RFC 7638 thumbprint>}``, payload
``{"id","gw","action","args","iat","exp"}``. A gateway answers with its signed envelope
``{"gw","seq","kind":"diag","ts","body"}``; `verify_answer` checks it against the gateway's public
key from `KnownGateways` (what the gateway's ``edge-agent keys show --json`` printed) and
`Reassembler` joins an answer sent in chunks. The same checks verify any envelope of a known
gateway (`verify_envelope`: the fleet view's health reports).

Every failure is an exception whose message is one line for people: `DeskError` (a key file, the
known-gateways file: bad usage) and `Unverifiable` (a message that is not what it claims).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.signing import ALG, DeviceKey, KeyStoreError, b64url, jwk_thumbprint
from agent.storage.atomic import write_atomic

KEY_FILE_MODE = 0o600
MAX_LIFETIME = 15 * 60  # a gateway refuses a request whose exp - iat is longer
DEFAULT_LIFETIME = 5 * 60
ANSWER_KIND = "diag"
MAX_CHUNKS = 100_000  # 8 MiB answers in 1 KiB chunks are 8192; anything far beyond is not an answer
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class DeskError(Exception):
    """A key or the known-gateways file cannot be used (bad usage: exit 2); one line."""


class Unverifiable(Exception):
    """A message that fails verification: not signed by the key it should be, or not what it
    claims to be (another gateway, another kind, another request)."""


class NotOurs(Unverifiable):
    """A genuine answer to another request (someone else's, or an earlier one of ours)."""


# -- the engineer's key ---------------------------------------------------------------------------


class EngineerKey:
    """An engineer's Ed25519 signing key. `generate`, `load`, then `save`, `public_info`."""

    __slots__ = ("_key", "path")

    def __init__(self, key: DeviceKey, path: Path | None = None) -> None:
        self._key = key
        self.path = path

    @classmethod
    def generate(cls) -> EngineerKey:
        return cls(DeviceKey.generate())

    @classmethod
    def load(cls, path: Path) -> EngineerKey:
        """The key in `path`; DeskError when missing, readable by others, or not Ed25519 PEM."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise DeskError(f"{path}: not a regular file")
            if stat.S_IMODE(mode) & 0o077:
                raise DeskError(
                    f"{path}: key file mode {stat.S_IMODE(mode):04o} lets others read it; "
                    f"run chmod 600 {path}"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise DeskError(f"{path}: cannot read the key: {exc.strerror or exc}") from exc
        try:
            return cls(DeviceKey.from_pem(data, path), path)
        except KeyStoreError as exc:
            raise DeskError(f"{path}: {exc.reason}") from exc

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the private key to `path` (0600); DeskError if it exists and not `overwrite`."""
        path = Path(path)
        try:
            write_atomic(path, self._key.private_pem(), mode=KEY_FILE_MODE, overwrite=overwrite)
        except FileExistsError:
            raise DeskError(f"{path}: exists; use --force to replace that key") from None
        except OSError as exc:
            raise DeskError(f"{path}: cannot write the key: {exc.strerror or exc}") from exc
        self.path = path

    @property
    def kid(self) -> str:
        return self._key.kid

    def public_pem(self) -> str:
        return self._key.public_pem()

    def public_info(self) -> dict[str, Any]:
        """``{"kid", "public_key_pem", "jwk"}``: what goes into a gateway's ``diagnosis.engineers``."""
        return self._key.public_info()

    def sign_compact(self, payload: bytes) -> str:
        return self._key.sign_compact(payload)


def new_request_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base32 characters;
    unique, and sorted by time."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def sign_request(
    key: EngineerKey,
    *,
    gateway: str,
    action: str,
    args: dict[str, Any],
    lifetime: int = DEFAULT_LIFETIME,
    now: float | None = None,
) -> tuple[str, str]:
    """A signed request: its id and the JWS to publish on ``<prefix>/diag/req``."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"a request lives 1 s to {MAX_LIFETIME} s, not {lifetime}")
    issued = int(time.time() if now is None else now)
    request_id = new_request_id(now)
    payload = {
        "id": request_id,
        "gw": gateway,
        "action": action,
        "args": args,
        "iat": issued,
        "exp": issued + lifetime,
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return request_id, key.sign_compact(text.encode())


# -- the gateways' public keys --------------------------------------------------------------------


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def gateway_public_key(info: dict[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 key of a gateway's public info (``keys show --json``); ValueError when the
    info is not one key: its PEM, JWK and kid must all name the same key."""
    if not isinstance(info, dict):
        raise ValueError("not a JSON object like `edge-agent keys show --json` prints")
    pem, jwk, kid = info.get("public_key_pem"), info.get("jwk"), info.get("kid")
    if not isinstance(pem, str) or not isinstance(kid, str):
        raise ValueError('needs "kid" and "public_key_pem" (the output of `keys show --json`)')
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"public_key_pem is not a public key in PEM ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"public_key_pem: expected an Ed25519 key, found {type(key).__name__}")
    x = b64url(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    if isinstance(jwk, dict) and jwk.get("x") != x:
        raise ValueError("jwk.x and public_key_pem are different keys")
    if jwk_thumbprint(x) != kid:
        raise ValueError(f"kid {kid} is not the thumbprint of that key ({jwk_thumbprint(x)})")
    return key


class KnownGateways:
    """``{"<gateway id>": <keys show --json>, …}`` in one JSON file: the keys answers are
    checked with. Read with `load` (once, or again after `add`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.gateways: dict[str, dict[str, Any]] = {}

    def load(self, *, missing_ok: bool = False) -> KnownGateways:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_ok:
                self.gateways = {}
                return self
            raise DeskError(
                f"{self.path}: no such file (add gateways with `remote trust`)"
            ) from None
        except OSError as exc:
            raise DeskError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DeskError(f"{self.path}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DeskError(f'{self.path}: expected {{"<gateway id>": <keys show --json>, …}}')
        for gateway, info in data.items():
            try:
                gateway_public_key(info)
            except ValueError as exc:
                raise DeskError(f"{self.path}: gateway {gateway}: {exc}") from exc
        self.gateways = data
        return self

    def add(self, gateway: str, info: dict[str, Any]) -> None:
        """Trust `info` for `gateway` (replacing what was there) and save the file."""
        if not gateway or any(c in gateway for c in "/+#") or not gateway.isprintable():
            raise DeskError(f"{gateway!r}: not a gateway id (no /, + or #)")
        try:
            gateway_public_key(info)
        except ValueError as exc:
            raise DeskError(f"gateway {gateway}: {exc}") from exc
        self.load(missing_ok=True)
        self.gateways[gateway] = {
            "kid": info["kid"],
            "public_key_pem": info["public_key_pem"],
            "jwk": info.get("jwk") or {},
        }
        text = json.dumps(self.gateways, indent=2, sort_keys=True) + "\n"
        try:
            write_atomic(self.path, text.encode(), mode=0o644)
        except OSError as exc:
            raise DeskError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

    def get(self, gateway: str) -> dict[str, Any]:
        """The public info of `gateway`; DeskError when it is not in the file."""
        try:
            return self.gateways[gateway]
        except KeyError:
            raise DeskError(
                f"gateway {gateway} is not in {self.path}: add it with "
                f"`edge-agent remote trust {gateway} FILE --known {self.path}`"
            ) from None

    def __contains__(self, gateway: object) -> bool:
        return gateway in self.gateways


# -- answers ---------------------------------------------------------------------------------------


def verify_envelope(
    token: str | bytes, known: dict[str, Any], *, gateway: str, kind: str
) -> dict[str, Any]:
    """The payload of a gateway's signed envelope, after checking that the key of `known`
    signed it and that it is a `kind` envelope of `gateway`; Unverifiable otherwise."""
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise Unverifiable("not a compact JWS (not ASCII)") from None
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise Unverifiable("not a compact JWS (three dot-separated parts)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        signature = _b64url_decode(parts[2])
        payload_bytes = _b64url_decode(parts[1])
    except (ValueError, binascii.Error) as exc:
        raise Unverifiable(f"not a compact JWS ({exc})") from exc
    if not isinstance(header, dict) or header.get("alg") != ALG:
        raise Unverifiable(f"not an {ALG} JWS")
    try:
        public = gateway_public_key(known)
    except ValueError as exc:
        raise Unverifiable(f"the known key of {gateway} is unusable: {exc}") from exc
    if header.get("kid") != known["kid"]:
        raise Unverifiable(
            f"signed by another key ({str(header.get('kid'))[:8]}…), "
            f"not by {gateway}'s ({known['kid'][:8]}…)"
        )
    try:
        public.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except (InvalidSignature, ValueError):
        raise Unverifiable(f"the signature does not verify with {gateway}'s key") from None
    try:
        payload = json.loads(payload_bytes)
    except ValueError as exc:
        raise Unverifiable(f"signed, but the payload is not JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise Unverifiable("signed, but the payload is not an envelope")
    if payload.get("gw") != gateway:
        raise Unverifiable(f"signed by {gateway}'s key but for gateway {payload.get('gw')!r}")
    if payload.get("kind") != kind:
        raise Unverifiable(f"a {payload.get('kind')!r} envelope, not {kind!r}")
    return payload


def verify_answer(
    token: str | bytes, known: dict[str, Any], request_id: str, *, gateway: str
) -> dict[str, Any]:
    """The body of `gateway`'s answer to `request_id`; Unverifiable when the signature, the
    gateway, the kind or the body's shape is wrong, NotOurs when it answers another request."""
    payload = verify_envelope(token, known, gateway=gateway, kind=ANSWER_KIND)
    body = payload.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise Unverifiable("signed, but the body is not an answer (no id)")
    if body["id"] != request_id:
        raise NotOurs(body["id"])
    if body.get("status") not in ("ok", "refused", "failed"):
        raise Unverifiable(f"signed, but status {body.get('status')!r} is not ok/refused/failed")
    return body


class ChunkError(Exception):
    """A chunk that does not belong with the others (another `of`, a bad `n`)."""


class Reassembler:
    """Joins the answer to one request: `add(body)` returns the whole answer once it is complete
    (the chunks' slices joined in order and parsed: ``result`` the JSON value, ``chunk`` null),
    else None. Chunks may come in any order and more than once (QoS 1 redelivers); a chunk whose
    `of` differs from the first one's raises ChunkError and is not kept."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.of: int | None = None
        self.slices: dict[int, str] = {}

    @property
    def received(self) -> int:
        return len(self.slices)

    def add(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("id") != self.request_id:
            raise ChunkError(f"an answer to {body.get('id')!r}, not to {self.request_id}")
        chunk = body.get("chunk")
        if chunk is None:
            return body
        if not isinstance(chunk, dict):
            raise ChunkError(f"chunk is {chunk!r}, not {{'n', 'of'}}")
        n, of = chunk.get("n"), chunk.get("of")
        if not isinstance(of, int) or isinstance(of, bool) or not 1 <= of <= MAX_CHUNKS:
            raise ChunkError(f"chunk of {of!r}: not a count of chunks")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= of:
            raise ChunkError(f"chunk {n!r} of {of}: not a chunk number")
        if self.of is not None and of != self.of:
            raise ChunkError(f"chunk {n} of {of} refused: the first chunks said of {self.of}")
        if not isinstance(body.get("result"), str):
            raise ChunkError(f"chunk {n} of {of}: result is not a slice of text")
        if body.get("status") != "ok":
            raise ChunkError(f"chunk {n} of {of}: status {body.get('status')!r}, not ok")
        self.of = of
        self.slices.setdefault(n, body["result"])  # a redelivered duplicate changes nothing
        if len(self.slices) < of:
            return None
        text = "".join(self.slices[i] for i in range(1, of + 1))
        try:
            result = json.loads(text)
        except ValueError as exc:
            raise ChunkError(f"the {of} chunks joined are not JSON ({exc})") from exc
        return {**body, "result": result, "chunk": None}
