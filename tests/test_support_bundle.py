"""The support bundle (agent/diagnosis/support_bundle.py, `edge-agent support-bundle`): from a
real running agent over its control socket, and from the files on disk when it does not run."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import __version__
from agent.control import ControlError, request
from agent.diagnosis.redact import REDACTED
from agent.diagnosis.support_bundle import AGENT_MEMBERS, MEMBERS, logs_jsonl, tail_lines
from tests.agentproc import Agent, short_socket_path, write_config
from tests.broker import free_port
from tests.conftest import PYTHON, ROOT

UPLINK_PASSWORD = "uplink-Pa55-w0rd-7f3a"  # noqa: S105 -- the secrets the tests look for
STATION_PASSWORD = "9A7C"  # noqa: S105
AUDIT_SECRET = "audit-token-0c1d"  # noqa: S105
SECRETS = (UPLINK_PASSWORD, STATION_PASSWORD, AUDIT_SECRET)


def site(tmp_path: Path) -> Path:
    """An agent with secrets in its config (no broker answers) and an audit log of 250 lines."""
    config = tmp_path / "config.yaml"
    state = tmp_path / "state"
    station = {
        "name": "river", "protocol": "sl651", "station": "0012345678",
        "password": STATION_PASSWORD,
    }  # fmt: skip
    write_config(
        config,
        state,
        [station],
        uplink={
            "broker": f"mqtt://127.0.0.1:{free_port()}",
            "username": "gw-user",
            "password": UPLINK_PASSWORD,
            "backoff_max": "1s",
        },
        sl651={"listen": ["127.0.0.1:0"]},
    )
    state.mkdir(mode=0o750)
    lines = [
        {"n": n, "id": f"req-{n}", "action": "status", "args": {}, "outcome": "ok"}
        for n in range(1, 251)
    ]
    lines[-2]["args"] = {"token": AUDIT_SECRET}  # a secret where none should be: it must go
    (state / "audit.log").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return config


async def edge_agent(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "agent", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def members(path: Path) -> dict[str, bytes]:
    """The archive's files by name, after checking each is a regular file of mode 0644."""
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for info in tar.getmembers():
            assert info.isfile() and info.mode == 0o644, (info.name, oct(info.mode))
            extracted = tar.extractfile(info)
            assert extracted is not None
            found[info.name] = extracted.read()
    for name, data in found.items():
        for secret in SECRETS:
            assert secret.encode() not in data, (name, secret)
    return found


def check_common(files: dict[str, bytes], agent_running: bool) -> None:
    """The members every bundle has, each parsed."""
    version = json.loads(files["version.json"])
    assert version["agent"] == __version__
    assert version["python"]["version"] and version["kernel"]["release"]
    assert isinstance(version["os"], dict)
    config = yaml.safe_load(files["config.yaml"])
    assert config["gateway"]["id"] == "gw-test"
    assert config["uplink"]["password"] == REDACTED
    assert config["uplink"]["username"] == "gw-user"
    assert config["terminals"][0]["password"] == REDACTED
    assert config["terminals"][0]["station"] == "0012345678"
    update = json.loads(files["update.json"])
    assert update["schema"] == 1 and update["state"] == "idle"  # no update record yet
    audit = [json.loads(line) for line in files["audit-tail.jsonl"].splitlines()]
    assert [a["n"] for a in audit] == list(range(51, 251))  # the last 200 lines
    assert audit[-2]["args"] == {"token": REDACTED}
    readme = files["README.txt"].decode()
    assert "gateway:    gw-test" in readme
    assert ("made by the running agent" in readme) is agent_running


async def test_the_running_agent_makes_the_bundle_and_every_member_parses(
    tmp_path: Path, agent_factory: Any
) -> None:
    config = site(tmp_path)
    socket = Path(short_socket_path(config))
    agent: Agent = await agent_factory(config)
    await agent.wait_for("socket", socket.exists)
    await agent.wait_for("a reconnect logged", lambda: len(agent.log_lines) >= 3)
    out_file = tmp_path / "bundle.tar.gz"

    code, out, err = await edge_agent(
        "support-bundle", "--config", str(config), "--since", "1h", "--out", str(out_file)
    )
    assert code == 0, err
    assert out.strip() == f"wrote {out_file} ({out_file.stat().st_size} bytes)"
    files = members(out_file)
    assert list(files) == list(MEMBERS)  # every member, in the documented order
    check_common(files, agent_running=True)
    status = json.loads(files["status.json"])
    assert status["running"] is True and status["agent"]["pid"] == agent.process.pid
    assert [t["name"] for t in status["terminals"]] == ["river"]
    checks = json.loads(files["checks.json"])
    assert isinstance(checks, list) and all("status" in c for c in checks)
    assert "stats" in json.loads(files["outbox.json"])
    logs = [json.loads(line) for line in files["logs.jsonl"].splitlines()]
    assert "agent started" in [e["event"] for e in logs]
    assert all(isinstance(e["ts"], float) and e["level"] for e in logs)
    assert [e["ts"] for e in logs] == sorted(e["ts"] for e in logs)
    started = next(e for e in logs if e["event"] == "agent started")
    assert started["logger"] == "agent.daemon" and started["gateway"] == "gw-test"

    # The operation itself: the same bundle base64-encoded; a bad `since` is refused.
    answer = await request(socket, "support-bundle", {"since": 60})
    assert answer["gateway"] == "gw-test"
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(answer["base64"]))) as t:
        assert len(t.getnames()) == len(MEMBERS) and answer["bytes"] > 0
    with pytest.raises(ControlError, match="since: a positive number of seconds"):
        await request(socket, "support-bundle", {"since": -5})
    assert await agent.stop() == 0


async def test_without_the_agent_the_cli_makes_what_it_can_and_says_what_is_missing(
    tmp_path: Path,
) -> None:
    config = site(tmp_path)
    workdir = tmp_path / "here"
    workdir.mkdir()
    code, out, err = await edge_agent("support-bundle", "--config", str(config), cwd=workdir)
    assert code == 0, err
    (written,) = list(workdir.iterdir())
    assert re.fullmatch(r"edge-agent-support-gw-test-\d{8}T\d{6}Z\.tar\.gz", written.name)
    assert out.splitlines()[0] == f"wrote {written.name} ({written.stat().st_size} bytes)"
    assert "the agent is not running" in out
    files = members(written)
    assert list(files) == [m for m in MEMBERS if m not in AGENT_MEMBERS]
    check_common(files, agent_running=False)
    readme = files["README.txt"].decode()
    assert "missing because the agent was not running: " + ", ".join(AGENT_MEMBERS) in readme


async def test_bad_since_is_bad_usage(tmp_path: Path) -> None:
    code, _, err = await edge_agent(
        "support-bundle", "--config", str(site(tmp_path)), "--since", "soon"
    )
    assert code == 2
    assert err.splitlines()[-1] == (
        "edge-agent support-bundle: error: argument --since: expected a duration like 500ms, "
        "5s, 2m, 1h; got 'soon'"
    )


def test_logs_are_capped_keeping_the_newest() -> None:
    events = [{"ts": float(i), "event": "x" * 100, "i": i} for i in range(1000)]
    text, left_out = logs_jsonl(events, max_bytes=10_000)
    kept = [json.loads(line)["i"] for line in text.splitlines()]
    assert len(text) <= 10_000 and kept == list(range(1000 - len(kept), 1000))
    assert left_out == 1000 - len(kept) > 0


def test_the_audit_tail_reads_only_the_end_of_a_long_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(b'{"n": %d}\n' % n for n in range(100_000)))
    tail = tail_lines(path, count=500, max_bytes=4096)
    assert tail[-1] == b'{"n": 99999}' and len(tail) == 4096 // 13  # the last 4 KiB only
    assert all(json.loads(line) for line in tail)  # no line cut at the front
