"""`edge-agent update check`: is a newer release of the channel online? Through the real CLI,
against a signed repository served over HTTP on loopback (synthetic wheels: only metadata is
read)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.agentproc import write_config
from tests.conftest import PYTHON, ROOT
from tests.update_repo import new_repo, past, publish, resign, serve


def check(config: Path, prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent", "update", "check", "--config", str(config),
         "--prefix", str(prefix), *extra],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def gateway(tmp_path: Path, repo: Path, url: str) -> tuple[Path, Path]:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [])
    text = config.read_text()
    config.write_text(
        text + f"update:\n  repository_url: {url}\n"
        f"  trusted_root: {repo / 'metadata' / '1.root.json'}\n"
    )
    return config, tmp_path / "prefix"


def test_check_names_the_newer_release_and_says_when_there_is_none(tmp_path: Path) -> None:
    from agent import __version__

    repo = new_repo(tmp_path, __version__)
    with serve(repo) as (url, asked):
        config, prefix = gateway(tmp_path, repo, url)
        run = check(config, prefix)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == (f"up to date: {__version__} is the newest release of stable")
        publish(repo, "99.0.0")
        run = check(config, prefix, "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == {
            "schema": 1,
            "current": __version__,
            "available": "99.0.0",
        }
        # Metadata only: no wheel was fetched.
        assert not [path for path in asked if "/targets/wheels/" in path]
    assert (prefix / "opt/edge-agent/trust/timestamp.json").is_file()  # root's trust moved on


def test_a_frozen_repository_is_a_finding_named_by_its_check(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, "0.0.1")
    with serve(repo) as (url, _):
        config, prefix = gateway(tmp_path, repo, url)
        resign(repo, "timestamp", lambda signed: setattr(signed, "expires", past()))
        run = check(config, prefix)
    assert run.returncode == 1
    assert run.stderr.startswith("edge-agent update: expired: "), run.stderr
    assert run.stdout == ""


def test_without_a_repository_url_check_is_bad_usage(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [])
    run = check(config, tmp_path / "prefix")
    assert run.returncode == 2
    assert "update.repository_url is not set" in run.stderr
