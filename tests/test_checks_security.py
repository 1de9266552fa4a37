"""Security checks against real files with wrong modes and real certificates near expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.checks import AgentView, Status, build_checks
from agent.checks.framework import CheckResult, CheckRunner
from agent.config import load_config
from agent.signing import init_key, key_path

NOW = dt.datetime.now(dt.UTC)


def certificate(folder: Path, days_left: float) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=400))
        .not_valid_after(NOW + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_file = folder / "client.pem", folder / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_path, key_file


def site(tmp_path: Path, **uplink: object) -> AgentView:
    state = tmp_path / "state"
    state.mkdir(mode=0o750, parents=True, exist_ok=True)
    state.chmod(0o750)
    init_key(state)
    path = tmp_path / "config.yaml"
    data = {"gateway": {"id": "gw-1"}, "state_dir": str(state)}
    if uplink:
        data["uplink"] = {"broker": "mqtts://127.0.0.1:8883", **uplink}
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o640)
    return AgentView(load_config(path), path)


def run(view: AgentView, check_id: str) -> CheckResult:
    runner = CheckRunner([c for c in build_checks(view.config) if c.id == check_id])
    try:
        [result] = asyncio.run(runner.run_all(view, NOW)).results
    finally:
        runner.close()
    return result


def test_safe_modes_pass(tmp_path: Path) -> None:
    result = run(site(tmp_path), "security.files")
    assert (result.status, result.value) == (Status.OK, 0)


def test_a_device_key_others_can_read_fails(tmp_path: Path) -> None:
    view = site(tmp_path)
    key_path(view.config.state_dir).chmod(0o644)
    result = run(view, "security.files")
    assert result.status is Status.FAIL
    assert "has mode 0644: others can read it (chmod 600" in result.message


def test_an_open_keys_folder_and_a_world_writable_config_fail(tmp_path: Path) -> None:
    view = site(tmp_path)
    key_path(view.config.state_dir).parent.chmod(0o755)
    assert view.config_path is not None
    view.config_path.chmod(0o666)
    result = run(view, "security.files")
    assert (result.status, result.value) == (Status.FAIL, 2)
    assert "the keys folder" in result.message and "anyone can write it" in result.message


def test_a_group_writable_state_dir_warns_and_a_missing_key_warns(tmp_path: Path) -> None:
    view = site(tmp_path)
    view.config.state_dir.chmod(0o770)
    key_path(view.config.state_dir).unlink()
    result = run(view, "security.files")
    assert (result.status, result.value) == (Status.WARN, 2)
    assert "its group can write it" in result.message and "does not exist" in result.message


def test_a_readable_tls_key_and_a_readable_config_with_a_password_are_found(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, 90)
    view = site(tmp_path, tls={"cert": str(cert), "key": str(key)}, username="u", password="p")  # noqa: S106 -- a test password
    key.chmod(0o640)
    assert view.config_path is not None
    view.config_path.chmod(0o644)
    result = run(view, "security.files")
    assert result.status is Status.FAIL
    assert "the TLS client key" in result.message
    assert "holds the broker password" in result.message


def test_tls_client_certificate_days_to_expiry(tmp_path: Path) -> None:
    expected = {90: Status.OK, 20: Status.WARN, 3: Status.FAIL, -2: Status.FAIL}
    for days, status in expected.items():
        folder = tmp_path / f"d{days}"
        folder.mkdir()
        cert, key = certificate(folder, days)
        result = run(site(folder, tls={"cert": str(cert), "key": str(key)}), "security.cert_expiry")
        assert result.status is status, (days, result)
        assert result.unit == "days"
        assert result.value == round(days, 1)
    assert "security.cert_expiry" not in {c.id for c in build_checks(site(tmp_path / "x").config)}


def test_running_as_root_is_reported(tmp_path: Path) -> None:
    result = run(site(tmp_path / "x"), "security.root")
    if os.geteuid() == 0:
        assert (result.status, result.value) == (Status.WARN, True)
    else:
        assert (result.status, result.value) == (Status.OK, False)
