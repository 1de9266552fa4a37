"""Secrets from systemd credentials: the MQTT password and the TLS client key
(agent/credentials.py), with a temp folder as $CREDENTIALS_DIRECTORY."""

# ruff: noqa: S105, S106 -- made-up passwords and credential names are what these tests are about

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.config import ConfigError, UplinkConfig, parse_config
from agent.credentials import CredentialError, resolve_uplink
from tests.conftest import PYTHON, ROOT

BROKER = "mqtt://broker.example:1883"
TLS_BROKER = "mqtts://broker.example:8883"


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty credentials folder, named in $CREDENTIALS_DIRECTORY as systemd does."""
    folder = tmp_path / "credentials"
    folder.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    return folder


def uplink(**settings: object) -> UplinkConfig:
    return UplinkConfig.model_validate({"broker": BROKER, **settings})


def test_the_password_is_taken_from_the_credential(creds: Path) -> None:
    (creds / "mqtt-password").write_text("s3cret pass\n")  # the line end is not part of it
    assert resolve_uplink(uplink(username="gw")).password == "s3cret pass"


def test_the_shipped_units_folder_credential_is_found_under_its_prefixed_name(creds: Path) -> None:
    """LoadCredential=edge-agent:/etc/edge-agent/credentials names the file edge-agent_<file>."""
    (creds / "edge-agent_mqtt-password").write_bytes(b"from-the-folder")
    assert resolve_uplink(uplink()).password == "from-the-folder"


def test_a_password_in_the_config_wins_over_the_credential(creds: Path) -> None:
    (creds / "mqtt-password").write_text("from-credential")
    assert resolve_uplink(uplink(password="from-config")).password == "from-config"


def test_a_named_credential_is_read_under_its_own_name(creds: Path) -> None:
    (creds / "site-broker").write_text("other")
    resolved = resolve_uplink(uplink(password_credential="site-broker"))
    assert resolved.password == "other"


def test_a_credential_named_in_the_config_but_missing_is_one_clear_error(creds: Path) -> None:
    with pytest.raises(CredentialError) as info:
        resolve_uplink(uplink(password_credential="site-broker"))
    message = str(info.value)
    assert message.startswith("uplink.password_credential: no credential 'site-broker'")
    assert str(creds) in message
    assert "\n" not in message


def test_a_named_credential_without_credentials_directory_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(CredentialError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        resolve_uplink(uplink(password_credential="site-broker"))


def test_a_missing_default_credential_means_no_password(creds: Path) -> None:
    assert resolve_uplink(uplink()).password is None
    # Spelled out, as config/example.yaml does, the default name is no different.
    assert resolve_uplink(uplink(password_credential="mqtt-password")).password is None


def test_no_credentials_directory_and_nothing_named_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = uplink(password="p")
    assert resolve_uplink(config) is config


def test_an_empty_credential_is_an_error_and_its_content_is_never_shown(creds: Path) -> None:
    (creds / "mqtt-password").write_text("\n")
    with pytest.raises(CredentialError, match="is empty"):
        resolve_uplink(uplink())
    (creds / "mqtt-password").write_bytes(b"\xffsecret")
    with pytest.raises(CredentialError) as info:
        resolve_uplink(uplink())
    assert "not UTF-8" in str(info.value)
    assert "secret" not in str(info.value).replace(str(creds), "")


def test_password_credential_null_turns_the_credential_off(creds: Path) -> None:
    (creds / "mqtt-password").write_text("unused")
    assert resolve_uplink(uplink(password_credential=None)).password is None


def test_without_a_broker_nothing_is_resolved(creds: Path) -> None:
    config = UplinkConfig.model_validate({"password_credential": "absent"})
    assert resolve_uplink(config) is config


# -- the TLS client key -------------------------------------------------------------------------


def tls_uplink(**tls: object) -> UplinkConfig:
    return UplinkConfig.model_validate({"broker": TLS_BROKER, "tls": tls})


def test_the_tls_key_is_the_credentials_file(creds: Path, tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    (creds / "tls-key").write_text("-----BEGIN PRIVATE KEY-----\n")
    resolved = resolve_uplink(tls_uplink(cert=str(cert)))
    assert resolved.tls.key == creds / "tls-key"
    assert resolved.tls.cert == cert


def test_the_tls_key_is_found_under_the_units_prefixed_name(creds: Path) -> None:
    (creds / "edge-agent_tls-key").write_text("key")
    resolved = resolve_uplink(tls_uplink(cert="/etc/edge-agent/client.pem"))
    assert resolved.tls.key == creds / "edge-agent_tls-key"


def test_a_tls_key_in_the_config_wins(creds: Path) -> None:
    (creds / "tls-key").write_text("key")
    resolved = resolve_uplink(tls_uplink(cert="/c.pem", key="/etc/edge-agent/client.key"))
    assert resolved.tls.key == Path("/etc/edge-agent/client.key")


def test_a_certificate_whose_key_credential_is_missing_is_an_error(creds: Path) -> None:
    with pytest.raises(CredentialError) as info:
        resolve_uplink(tls_uplink(cert="/c.pem"))
    assert str(info.value).startswith("uplink.tls.key_credential: no credential 'tls-key'")
    assert str(info.value).endswith("uplink.tls.cert needs its key")


def test_the_key_credential_is_not_needed_without_tls(creds: Path) -> None:
    config = UplinkConfig.model_validate({"broker": BROKER, "tls": {"cert": "/c.pem"}})
    assert resolve_uplink(config).tls.key is None


# -- the config keys ----------------------------------------------------------------------------


def config_errors(uplink_yaml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(f"gateway: {{id: gw}}\nuplink: {uplink_yaml}\n")
    return info.value.errors


def test_the_credential_keys_have_their_defaults() -> None:
    config = parse_config("gateway: {id: gw}\n")
    assert config.uplink.password_credential == "mqtt-password"
    assert config.uplink.tls.key_credential == "tls-key"


def test_a_password_and_a_named_credential_together_are_refused() -> None:
    assert config_errors("{password: p, password_credential: site-broker}") == [
        "uplink: password and password_credential exclude each other: give one of them"
    ]
    # The default name beside a password is no contradiction: the password wins.
    parse_config("gateway: {id: gw}\nuplink: {password: p, password_credential: mqtt-password}\n")


def test_a_credential_name_is_a_file_name_never_a_path() -> None:
    errors = config_errors("{password_credential: ../../etc/shadow}")
    assert errors == [
        "uplink.password_credential: '../../etc/shadow' is not a credential name: "
        "a file name of letters, digits, '.', '_' or '-'"
    ]


def test_tls_key_and_key_credential_rules() -> None:
    assert config_errors("{tls: {key: k.pem}}") == [
        "uplink.tls: cert and key go together (client certificate and its key)"
    ]
    assert config_errors("{tls: {cert: c.pem, key_credential: null}}") == [
        "uplink.tls: cert needs its key: give key, or key_credential (a credential)"
    ]
    assert config_errors("{tls: {cert: c.pem, key: k.pem, key_credential: site-key}}") == [
        "uplink.tls: key and key_credential exclude each other: give one of them"
    ]
    assert config_errors("{tls: {key_credential: site-key}}") == [
        "uplink.tls: key_credential needs cert (the client certificate of that key)"
    ]
    # A certificate alone is valid: its key comes from the credential at start.
    assert parse_config("gateway: {id: gw}\nuplink: {tls: {cert: /c.pem}}\n").uplink.tls.key is None


# -- at start -----------------------------------------------------------------------------------


def test_the_agent_refuses_to_start_on_a_missing_named_credential_in_one_line(
    creds: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {id: gw}\nstate_dir: state\n"
        "uplink: {broker: 'mqtt://127.0.0.1:1', password_credential: site-broker}\n"
    )
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    process = subprocess.run(
        [PYTHON, "-m", "agent", "run", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1] == (
        f"edge-agent: cannot start: uplink.password_credential: no credential 'site-broker' "
        f"(nor 'edge-agent_site-broker') in {creds} "
        "(put it in /etc/edge-agent/credentials/site-broker)"
    )
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "state" / "outbox.db").exists()  # refused before anything is opened
