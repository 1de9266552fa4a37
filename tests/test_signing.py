"""Device identity and signed envelopes, checked against an independent JOSE library (joserfc)."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.errors import BadSignatureError, SecurityWarning
from joserfc.jwk import OKPKey

from agent.signing import (
    DeviceKey,
    KeyExistsError,
    KeyInvalidError,
    KeyNotFoundError,
    KeyPermissionError,
    envelope_payload,
    init_key,
    key_info,
    key_path,
    load_key,
)

# RFC 8037, appendix A.1 (the Ed25519 key) and A.3 (its RFC 7638 thumbprint).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(token: str, public_key: dict[str, Any] | str) -> jws.CompactSignature:
    """Verify with joserfc only. It flags ``EdDSA`` as deprecated by RFC 9864 (fully-specified
    algorithms, which name it ``Ed25519``); our contract (docs/architecture.md) still says EdDSA."""
    key = OKPKey.import_key(public_key)
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        return jws.deserialize_compact(token, key, algorithms=["EdDSA"])


def test_kid_is_the_rfc7638_thumbprint_of_the_rfc8037_example_key() -> None:
    key = DeviceKey(Ed25519PrivateKey.from_private_bytes(_b64decode(RFC8037_D)))
    assert key.x == RFC8037_X
    assert key.kid == RFC8037_THUMBPRINT


def test_signed_envelope_verifies_with_joserfc_against_keys_show_jwk(tmp_path: Path) -> None:
    key = init_key(tmp_path)
    info = load_key(tmp_path).public_info()
    payload = envelope_payload("gw-1", 7, "telemetry", datetime.now(UTC), {"readings": []})

    token = key.sign_compact(payload)

    result = verify(token, info["jwk"])
    assert result.headers() == {"alg": "EdDSA", "kid": info["kid"]}
    assert result.payload == payload
    assert "=" not in token and token.count(".") == 2


def test_keys_show_shape_and_kid_agree_with_joserfc(tmp_path: Path) -> None:
    info = init_key(tmp_path).public_info()

    assert set(info) == {"kid", "public_key_pem", "jwk"}
    assert info["jwk"] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": info["jwk"]["x"],
        "kid": info["kid"],
        "alg": "EdDSA",
        "use": "sig",
    }
    # The kid is what an independent library computes, from the JWK and from the PEM.
    assert OKPKey.import_key(info["jwk"]).thumbprint() == info["kid"]
    assert OKPKey.import_key(info["public_key_pem"]).thumbprint() == info["kid"]
    token = load_key(tmp_path).sign_compact(b"{}")
    assert verify(token, info["public_key_pem"]).payload == b"{}"


def test_a_tampered_payload_fails_verification(tmp_path: Path) -> None:
    key = init_key(tmp_path)
    ts = datetime.now(UTC)
    token = key.sign_compact(envelope_payload("gw-1", 1, "events", ts, {"alarm": "high"}))
    header, _, signature = token.split(".")
    forged = envelope_payload("gw-1", 1, "events", ts, {"alarm": "none"})
    tampered = ".".join([header, base64.urlsafe_b64encode(forged).rstrip(b"=").decode(), signature])

    with pytest.raises(BadSignatureError):
        verify(tampered, key.public_jwk())


def test_a_signature_from_another_key_fails_verification(tmp_path: Path) -> None:
    token = DeviceKey.generate().sign_compact(b'{"seq":1}')

    with pytest.raises(BadSignatureError):
        verify(token, init_key(tmp_path).public_jwk())


def test_key_file_is_0600_in_a_0700_folder_and_loads_back(tmp_path: Path) -> None:
    key = init_key(tmp_path)

    path = key_path(tmp_path)
    assert path == tmp_path / "keys" / "device-ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key(tmp_path).kid == key.kid


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = init_key(tmp_path)

    with pytest.raises(KeyExistsError, match="--force"):
        init_key(tmp_path)
    assert load_key(tmp_path).kid == first.kid

    second = init_key(tmp_path, force=True)
    assert second.kid != first.kid
    assert load_key(tmp_path).kid == second.kid
    assert stat.S_IMODE(key_path(tmp_path).stat().st_mode) == 0o600


def test_init_tightens_an_existing_keys_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o755)

    init_key(tmp_path)

    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_load_without_a_key_says_to_run_keys_init(tmp_path: Path) -> None:
    with pytest.raises(KeyNotFoundError, match="run `edge-agent keys init`"):
        load_key(tmp_path)


def test_load_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    init_key(tmp_path)
    key_path(tmp_path).chmod(0o644)

    with pytest.raises(KeyPermissionError, match="chmod 600"):
        load_key(tmp_path)


def test_load_refuses_a_keys_folder_others_can_enter(tmp_path: Path) -> None:
    init_key(tmp_path)
    key_path(tmp_path).parent.chmod(0o755)

    with pytest.raises(KeyPermissionError, match="chmod 700"):
        load_key(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"not a key",
        Ed25519PrivateKey.generate().private_bytes_raw(),
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_load_refuses_a_file_that_is_not_an_ed25519_pem_key(tmp_path: Path, content: bytes) -> None:
    init_key(tmp_path)
    key_path(tmp_path).write_bytes(content)

    with pytest.raises(KeyInvalidError):
        load_key(tmp_path)


def test_envelope_is_compact_json_with_gw_seq_kind_ts_body_in_order() -> None:
    ts = datetime(2025, 3, 1, 8, 30, 0, 123456, tzinfo=timezone(timedelta(hours=8)))

    payload = envelope_payload("站-1", 42, "telemetry", ts, {"readings": [{"value": 1.5}]})

    text = payload.decode("utf-8")
    assert text == (
        '{"gw":"站-1","seq":42,"kind":"telemetry","ts":"2025-03-01T00:30:00.123Z",'
        '"body":{"readings":[{"value":1.5}]}}'
    )
    assert list(json.loads(text)) == ["gw", "seq", "kind", "ts", "body"]


def test_envelope_refuses_values_that_are_not_json() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="JSON compliant"):
        envelope_payload("gw", 1, "telemetry", now, {"value": float("nan")})
    with pytest.raises(ValueError, match="timezone"):
        envelope_payload("gw", 1, "telemetry", datetime(2025, 1, 1), {})


def test_init_removes_a_key_copy_left_by_a_crash_midway(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    stale = keys / ".device-ed25519.pem.tmp-4242-deadbeef"
    stale.write_bytes(DeviceKey.generate().private_pem())

    init_key(tmp_path)

    assert sorted(p.name for p in keys.iterdir()) == ["device-ed25519.pem"]


def test_key_info_is_what_keys_show_prints(tmp_path: Path) -> None:
    key = init_key(tmp_path)

    assert key_info(tmp_path) == key.public_info()
