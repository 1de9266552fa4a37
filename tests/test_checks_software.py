"""Software checks: the config file as it is on disk, restarts from the state file, and the
error rate counted by the structlog processor in a real structlog chain."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
import yaml

from agent import __version__
from agent.checks import AgentView, LogCounter, Status, build_checks, load_restarts, record_start
from agent.checks.framework import CheckResult, CheckRunner
from agent.checks.software import ConfigFileCheck
from agent.checks.view import restarts_path
from agent.config import load_config

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def write_config(path: Path, state: Path, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({"gateway": {"id": "gw-1"}, "state_dir": str(state), **extra}))
    return path


def run(view: AgentView, check_id: str, now: datetime = NOW) -> CheckResult:
    checks = [c for c in build_checks(view.config) if c.id == check_id]
    runner = CheckRunner(checks)
    try:
        [result] = asyncio.run(runner.run_all(view, now)).results
    finally:
        runner.close()
    return result


def test_version_python_and_os_are_reported(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", tmp_path))
    view = AgentView(config)
    assert run(view, "software.version").value == __version__
    assert run(view, "software.python").status is Status.OK
    os_release = run(view, "software.os")
    assert os_release.status in (Status.OK, Status.UNKNOWN)
    assert "kernel" in os_release.message


def test_the_config_file_is_validated_as_it_is_on_disk(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tmp_path)
    running = load_config(path)
    view = AgentView(running, path)
    assert run(view, "software.config").status is Status.OK
    path.write_text("gateway: {id: gw-1}\nterminals:\n  - {name: x, protocol: modbus-tcpp}\n")
    broken = run(view, "software.config")
    assert broken.status is Status.FAIL
    assert "terminals[0].protocol: unknown protocol 'modbus-tcpp'" in broken.message
    write_config(path, tmp_path, log={"level": "debug"})
    changed = run(view, "software.config")
    assert changed.status is Status.WARN
    assert "differs from the running config in log" in changed.message
    # the site's names are read by `edge-agent report` from the file: nothing to restart for
    write_config(path, tmp_path, site={"name": "青山水库", "contact": "王工"})
    assert run(view, "software.config").status is Status.OK
    assert run(AgentView(running), "software.config").status is Status.UNKNOWN


def test_restarts_are_counted_from_the_state_file_over_the_last_day(tmp_path: Path) -> None:
    first = NOW - timedelta(days=3)
    assert record_start(tmp_path, first) == []  # the first start is not a restart
    for hours in (30, 5, 4, 3, 2):
        record_start(tmp_path, NOW - timedelta(hours=hours))
    restarts = load_restarts(tmp_path)
    assert len(restarts) == 5
    assert json.loads(restarts_path(tmp_path).read_text())["first_start"].startswith("2026-11-19")
    config = load_config(write_config(tmp_path / "c.yaml", tmp_path))
    result = run(AgentView(config, restarts=restarts), "software.restarts")
    assert (result.status, result.value, result.threshold) == (Status.WARN, 4, 3)


def test_a_damaged_restart_file_starts_the_count_over(tmp_path: Path) -> None:
    path = restarts_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert record_start(tmp_path, NOW) == []
    assert record_start(tmp_path, NOW + timedelta(minutes=1)) == [NOW + timedelta(minutes=1)]


def test_errors_logged_through_structlog_are_counted_and_judged(tmp_path: Path) -> None:
    counter = LogCounter()
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            counter,
            structlog.processors.JSONRenderer(),
        ],
    )
    logger.info("fine")
    logger.warning("uplink failed", reason="refused")
    for i in range(7):
        logger.error("outbox write failed", attempt=i)
    assert len(out.getvalue().splitlines()) == 9  # every event still reaches the output
    counts = counter.snapshot(window=3600)
    assert (counts.errors, counts.warnings, counts.recent_errors) == (7, 1, 7)
    assert counts.latest_error == "outbox write failed"
    config = load_config(write_config(tmp_path / "c.yaml", tmp_path))
    result = run(AgentView(config, logs=counts), "software.log_errors")
    assert (result.status, result.value) == (Status.WARN, 7)
    assert "7 errors and 1 warnings logged in the last 1h" in result.message
    later = counter.snapshot(window=3600, now=time.time() + 7200)
    assert later.recent_errors == 0 and later.errors == 7
    assert run(AgentView(config, logs=later), "software.log_errors").status is Status.OK
    assert run(AgentView(config), "software.log_errors").status is Status.UNKNOWN


def test_an_unchanged_config_file_is_not_parsed_again(tmp_path: Path) -> None:
    """The file is parsed again only when its content or the running config changes; the
    content the running config was parsed from is valid without parsing it at all."""
    path = write_config(tmp_path / "c.yaml", tmp_path)
    running = load_config(path)
    check = ConfigFileCheck()
    view = AgentView(running, path)
    first = check(view)
    assert first.status is Status.OK
    assert check(view) is first  # the same content, the same running config: not parsed
    write_config(path, tmp_path, log={"level": "debug"})
    changed = check(view)
    assert changed.status is Status.WARN and changed is not first
    assert check(AgentView(load_config(path), path)).status is Status.OK  # a new running config
    # The daemon passes the digest of the content it parsed: that content is not parsed again,
    # even when it would not parse now (here: not YAML at all, to tell the two paths apart).
    path.write_text("{not: yaml")
    digest = hashlib.sha256(path.read_bytes()).digest()
    seeded = check(AgentView(running, path, config_digest=digest))
    assert seeded.status is Status.OK and seeded.message == f"{path} is valid"
    assert check(AgentView(running, path)).status is Status.FAIL
