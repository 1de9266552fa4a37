"""Redaction (agent/diagnosis/redact.py): no secret of the config or of a log event leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, parse_config
from agent.diagnosis.redact import REDACTED, redact_config, redact_event, secret_key
from tests.certs import TestCA

UPLINK_PASSWORD = "uplink-Pa55-w0rd-7f3a"  # noqa: S105 -- the secrets the tests look for
STATION_PASSWORDS = ("9A7C", "B3E1")
REPO_PASSWORD = "repo-pw-51c0de"  # noqa: S105


def secret_config(tmp_path: Path) -> tuple[Config, list[str]]:
    """A config holding every kind of secret a config can hold, and those secrets' texts."""
    cert, key = TestCA(tmp_path / "ca").issue("gw-secret")
    engineer_key = Ed25519PrivateKey.generate().public_key()
    public_pem = engineer_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    data: dict[str, Any] = {
        "gateway": {"id": "gw-secret"},
        "state_dir": str(tmp_path / "state"),
        "uplink": {
            "broker": "mqtts://broker.example:8883",
            "username": "gw-secret-user",
            "password": UPLINK_PASSWORD,
            "tls": {"ca": str(tmp_path / "ca" / "edge-test-ca.pem"), "cert": str(cert),
                    "key": str(key)},
        },
        "update": {"repository_url": f"https://fleet:{REPO_PASSWORD}@updates.example/edge/"},
        "sl651": {"listen": ["127.0.0.1:0"]},
        "diagnosis": {
            "engineers": [{"name": "Li Wei", "role": "support", "public_key": public_pem}],
            "roles": {"support": ["status", "logs"]},
        },
        "terminals": [
            {"name": f"station-{i}", "protocol": "sl651", "station": f"00123456{i:02d}",
             "password": pw}
            for i, pw in enumerate(STATION_PASSWORDS)
        ],
    }  # fmt: skip
    config = parse_config(yaml.safe_dump(data), tmp_path / "config.yaml")
    key_text = key.read_text()
    assert "PRIVATE KEY" in key_text
    secrets = [UPLINK_PASSWORD, *STATION_PASSWORDS, REPO_PASSWORD, key_text.splitlines()[1]]
    return config, secrets


def test_no_secret_of_the_config_survives_and_the_rest_is_kept(tmp_path: Path) -> None:
    config, secrets = secret_config(tmp_path)
    redacted = redact_config(config)
    text = json.dumps(redacted)
    for secret in secrets:
        assert secret not in text, secret
    uplink = redacted["uplink"]
    assert uplink["password"] == REDACTED
    assert [t["password"] for t in redacted["terminals"]] == [REDACTED, REDACTED]
    # The names of systemd credentials go by the rule too (their key names say "credential").
    assert uplink["password_credential"] == REDACTED
    assert uplink["tls"]["key_credential"] == REDACTED
    assert redacted["update"]["repository_url"] == (
        f"https://fleet:{REDACTED}@updates.example/edge/"
    )
    # What is not secret stays: paths (never read), a public key, who logs in where.
    assert uplink["tls"]["key"] == str(config.uplink.tls.key)
    assert uplink["username"] == "gw-secret-user"
    assert uplink["broker"] == "mqtts://broker.example:8883"
    engineer = redacted["diagnosis"]["engineers"][0]
    assert engineer["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert [t["station"] for t in redacted["terminals"]] == ["0012345600", "0012345601"]
    # Plain JSON data, as the answer and the bundle carry it.
    assert json.loads(text) == redacted


def test_an_unset_secret_stays_unset(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_dump({"gateway": {"id": "gw"}}), tmp_path / "c.yaml")
    assert redact_config(config)["uplink"]["password"] is None


PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIGhX2u0fW0wVnZ6f0rQ6cOq9mZbUvZ8M3aXk2bq1cYgN\n"
    "-----END PRIVATE KEY-----\n"
)
PEM_BODY = PEM.splitlines()[1]


def test_a_log_event_loses_its_secrets_by_key_and_by_value() -> None:
    event: dict[str, Any] = {
        "ts": 1796025600.5,
        "level": "error",
        "event": "upstream refused us",
        "logger": "agent.uplink",
        "password": "hunter2",
        "api_token": "tok-3141",
        "clientSecret": "cs-2718",
        "private_key": "anything at all",
        "headers": {"Authorization": "Bearer eyJhbGciOi.J9eyJzdWIiOi.sig", "Accept": "*/*"},
        "error": f"cannot load key: {PEM}",
        "url": "mqtt://bob:b0bs-pw@broker:1883",
        "detail": "login failed: password=pw-in-text; retrying",
        "reply": "{'token': 'tok-in-repr', 'n': 3}",
        "request": ["GET /x", "Authorization: Bearer abc.def.ghi"],
        "key": "temperature",
        "terminal": "dam-plc",
    }
    original = json.loads(json.dumps(event))
    redacted = redact_event(event)
    text = json.dumps(redacted)
    for secret in (
        "hunter2", "tok-3141", "cs-2718", "anything at all", "eyJhbGciOi", PEM_BODY, "b0bs-pw",
        "pw-in-text", "tok-in-repr", "abc.def.ghi",
    ):  # fmt: skip
        assert secret not in text, secret
    assert event == original  # the ring's own copy is left as it was
    assert redacted["password"] == redacted["api_token"] == redacted["clientSecret"] == REDACTED
    assert redacted["headers"] == {"Authorization": REDACTED, "Accept": "*/*"}
    assert redacted["error"] == f"cannot load key: {REDACTED}\n"
    assert redacted["url"] == f"mqtt://bob:{REDACTED}@broker:1883"
    assert redacted["detail"] == f"login failed: password={REDACTED}; retrying"
    assert redacted["request"][1].startswith("Authorization: ")
    # What is not secret stays as it was.
    for key in ("ts", "level", "event", "logger", "key", "terminal"):
        assert redacted[key] == event[key]


def test_a_cut_private_key_is_redacted_to_the_end_of_the_text() -> None:
    cut = PEM[:60]  # the ring cuts long values: the END line may be gone
    assert redact_event({"error": "bad key " + cut})["error"] == f"bad key {REDACTED}"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True), ("passwd", True), ("db_password", True), ("passwords", True),
        ("secret", True), ("client_secret", True), ("token", True), ("refreshToken", True),
        ("private_key", True), ("privateKey", True), ("api_key", True), ("apiKey", True),
        ("secret-key", True), ("key_material", True), ("password_credential", True),
        ("Authorization", True), ("cookie", True),
        ("key", False), ("public_key", False), ("kid", False), ("username", False),
        ("station", False), ("keepalive", False), ("tokenizer", False), ("event", False),
    ],
)  # fmt: skip
def test_the_key_name_rule(name: str, secret: bool) -> None:
    assert secret_key(name) is secret
