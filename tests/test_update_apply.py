"""The update installer's state machine, for real: releases built from this project's wheels
into venvs under a temp root, the record on disk, kills with SIGKILL in a child process.

The verify step is handed the wheelhouse directly (`tests.releases.hand_over`: the fields of
`agent.update.trust.Verified`); agent/update/trust.py's own tests verify for real. The release
the gateway runs before the update is a seeded folder with its marker (`tests.releases.seed`):
every release an update installs is a real venv that passed its self-test.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.model import parse_timestamp
from agent.storage.layout import StateLayout
from agent.update.apply import ApplyError, Installer, commit
from agent.update.installer import release_of
from agent.update.layout import InstallLayout
from agent.update.state import UpdateStore
from tests.agentproc import write_config
from tests.conftest import PYTHON, ROOT
from tests.releases import hand_over, manifest, seed

pytestmark = pytest.mark.slow


@dataclass
class Gateway:
    root: Path
    layout: InstallLayout
    store: UpdateStore
    config: Path
    restarts: list[str]
    boot: Path

    def installer(self, keep: int = 3) -> Installer:
        return Installer(
            self.layout,
            self.store,
            probation=600,
            keep=keep,
            restart=lambda: self.restarts.append("restart"),
            out=io.StringIO(),
            boot_id_file=self.boot,
        )

    def cli(self, *args: str) -> int:
        return main([*args, "--config", str(self.config), "--prefix", str(self.root)])


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    root = tmp_path / "root"
    seed(root, "0.1.0")
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    write_config(config, state, [])
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    return Gateway(root, InstallLayout(root), UpdateStore(StateLayout(state)), config, [], boot)


def releases(layout: InstallLayout) -> list[str]:
    return sorted(p.name for p in layout.releases_dir.iterdir())


def links(layout: InstallLayout) -> tuple[str | None, str | None]:
    return release_of(layout, layout.current), release_of(layout, layout.previous)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under `folder`: inode, mtime and (for links) target."""
    seen = {}
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(parent) / name
            st = path.lstat()
            target = path.readlink().as_posix() if path.is_symlink() else ""
            seen[str(path.relative_to(folder))] = (st.st_ino, st.st_mtime_ns, target)
    return seen


def check_invariant(gateway: Gateway) -> None:
    """`current` points at a complete release that was committed or is on trial."""
    record = gateway.store.read()
    current = release_of(gateway.layout, gateway.layout.current)
    assert current is not None
    assert gateway.layout.marker(current).is_file(), f"{current} has no marker"
    # committed or on trial: the record's current, or (a switch not done yet) the one before
    target = record["target"] or {}
    assert current in {record["current"], record["previous"], target.get("from")}, record


def test_apply_puts_the_release_on_trial_and_commit_keeps_it(
    gateway: Gateway, make_wheelhouse: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    house = make_wheelhouse("9.0.1")
    installer = gateway.installer()
    assert installer.apply(hand_over(house), "bundle:test") == "9.0.1"
    layout = gateway.layout

    record = gateway.store.read()
    assert (record["state"], record["step"]) == ("trial", "trial")
    assert (record["current"], record["previous"]) == ("9.0.1", "0.1.0")
    assert links(layout) == ("9.0.1", "0.1.0")
    assert gateway.restarts == ["restart"]
    assert record["trial_boot_id"] == "boot-1"
    ends = parse_timestamp(record["trial_ends_at"])
    assert abs((ends - datetime.now(UTC)) - timedelta(seconds=600)) < timedelta(seconds=60)
    installed = record["outcomes"][-1]
    assert (installed["outcome"], installed["version"], installed["running"]) == (
        "installed", "9.0.1", "9.0.1",
    )  # fmt: skip
    assert set(installed["timings"]) == {"verify", "stage", "switch"}
    assert layout.release_manifest("9.0.1").read_bytes() == manifest(house, "9.0.1")
    assert sorted(p.name for p in layout.wheel_cache.iterdir()) == sorted(
        p.name for p in house.glob("*.whl")
    )
    # The unit hooks run the known-good release while the new one is on trial.
    assert gateway.store.layout.update_active.read_text() == "0.1.0\n"
    assert not installer.work_dir.exists()
    # The new release runs from `current`: the real venv, the real entry point.
    entry = layout.current / "bin" / "edge-agent"
    done = subprocess.run([str(entry), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "edge-agent 9.0.1"

    assert gateway.cli("update", "status") == 0
    # 10 minutes of probation, rounded up to the second: 9m59s or, within that second, 10m00s.
    assert capsys.readouterr().out.startswith(("on trial 9.0.1, 9m", "on trial 9.0.1, 10m00s"))
    # Another apply while on trial is refused, and recorded.
    with pytest.raises(ApplyError, match=r"busy: 9\.0\.1 is on trial"):
        installer.apply(hand_over(house), "bundle:test")

    assert commit(gateway.store, "0.1.0") is False  # not the version on trial
    assert commit(gateway.store, "9.0.1") is True
    assert commit(gateway.store, "9.0.1") is False  # once
    record = gateway.store.read()
    assert (record["state"], record["step"]) == ("committed", None)
    assert record["last"]["outcome"] == "committed"
    assert not gateway.store.layout.update_active.exists()
    assert gateway.cli("update", "commit") == 1  # nothing on trial
    assert "nothing on trial (state committed)" in capsys.readouterr().err

    assert gateway.cli("update", "status", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "schema": 1,
        "state": "committed",
        "current": "9.0.1",
        "previous": "0.1.0",
        "trial_ends_at": None,
        "last": {k: record["last"][k] for k in ("outcome", "version", "reason", "at")},
    }
    assert gateway.cli("update", "status") == 0
    assert capsys.readouterr().out == "committed 9.0.1\n"


def test_a_release_failing_its_self_test_or_its_checks_changes_nothing(
    gateway: Gateway, make_wheelhouse: Callable[..., Path]
) -> None:
    installer = gateway.installer()
    opt = gateway.layout.opt_dir
    broken = make_wheelhouse("9.0.2", entry="agent.cli:no_such_function")
    before = snapshot(opt)
    with pytest.raises(ApplyError) as failed:
        installer.apply(hand_over(broken), "bundle:broken")
    assert failed.value.check == "stage"
    assert failed.value.reason.startswith("self-test: edge-agent --version failed")
    after = snapshot(opt)
    # The releases, the links: as they were (the folder's mtime aside: the build came and
    # went); the wheel cache took the verified wheels (pruned with the next release).
    for path in list(after):
        if path.startswith("wheels") or path == "releases" or path.startswith(".install"):
            after.pop(path)
            before.pop(path, None)
    assert after == before
    assert links(gateway.layout) == ("0.1.0", None)
    record = gateway.store.read()
    assert (record["state"], record["step"], record["target"]) == ("idle", None, None)
    rejected = record["outcomes"][-1]
    assert (rejected["outcome"], rejected["version"], rejected["check"]) == (
        "rejected", "9.0.2", "stage",
    )  # fmt: skip
    assert set(rejected["timings"]) == {"verify"}
    assert not gateway.store.layout.update_active.exists()
    assert gateway.restarts == []

    # A check of the verify step fails (UpdateRejected's fields): named in the outcome.
    class Rejected(Exception):
        check, reason = "expired", "timestamp.json expired on 2026-11-29"

    def refuse(work_dir: Path) -> Any:
        (work_dir / "some.whl").write_bytes(b"half")
        raise Rejected()

    with pytest.raises(ApplyError, match=r"expired: timestamp\.json expired"):
        installer.apply(refuse, "bundle:old")
    assert gateway.store.read()["last"]["reason"] == "timestamp.json expired on 2026-11-29"
    assert gateway.store.read()["outcomes"][-1]["check"] == "expired"
    assert not installer.work_dir.exists()
    assert links(gateway.layout) == ("0.1.0", None)


def test_keep_prunes_releases_and_wheels_rollback_restores_and_refuses(
    gateway: Gateway, make_wheelhouse: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    installer = gateway.installer(keep=2)
    layout = gateway.layout
    layout.wheel_cache.mkdir(parents=True)
    (layout.wheel_cache / "stale-1.0-py3-none-any.whl").write_bytes(b"no release lists me")
    installer.apply(hand_over(make_wheelhouse("9.0.1")), "bundle:a")
    assert commit(gateway.store, "9.0.1")
    newer = make_wheelhouse("9.0.3")
    installer.apply(hand_over(newer), "bundle:b")
    # keep=2: the oldest (0.1.0) went; current and previous stay; only listed wheels stay.
    assert releases(layout) == ["9.0.1", "9.0.3"]
    assert links(layout) == ("9.0.3", "9.0.1")
    listed = set(json.loads(manifest(newer, "9.0.3"))["wheels"])
    listed |= set(json.loads(layout.release_manifest("9.0.1").read_bytes())["wheels"])
    assert {p.name for p in layout.wheel_cache.iterdir()} == listed

    # Rollback by hand, through the CLI (no restart: the test has no systemd).
    assert gateway.cli("update", "rollback", "--no-restart") == 0
    assert capsys.readouterr().out.strip() == "rolled back 9.0.3 to 9.0.1: by hand"
    assert links(layout) == ("9.0.1", None)
    record = gateway.store.read()
    assert (record["state"], record["current"], record["previous"]) == (
        "rolled_back", "9.0.1", None,
    )  # fmt: skip
    assert record["refused"] == ["9.0.3"]
    last = record["outcomes"][-1]
    assert (last["outcome"], last["version"], last["running"], last["reason"]) == (
        "rolled_back", "9.0.3", "9.0.1", "by hand",
    )  # fmt: skip
    assert not gateway.store.layout.update_active.exists()
    assert gateway.cli("update", "status") == 0
    assert capsys.readouterr().out == "rolled back 9.0.3: by hand\n"
    # Nothing left to roll back to: exit 1, the check named.
    assert gateway.cli("update", "rollback", "--no-restart") == 1
    assert "rollback: nothing to roll back to" in capsys.readouterr().err
    # The rolled-back release stays on disk until pruned; the installer's rollback restarts.
    assert (layout.release("9.0.3") / ".installed").is_file()
    assert gateway.restarts == ["restart", "restart"]


# -- killed after each step, then resumed ---------------------------------------------------------

KILLS = ["verify", "build", "self-test", "switch", "restart"]


@pytest.mark.parametrize("kill_at", KILLS)
def test_a_kill_at_any_point_keeps_the_invariant_and_the_next_command_resumes(
    gateway: Gateway,
    make_wheelhouse: Callable[..., Path],
    kill_at: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    house = make_wheelhouse("9.0.1")
    state_dir = gateway.store.layout.state_dir
    driver = subprocess.run(
        [PYTHON, "-m", "tests.update_driver", str(gateway.root), str(state_dir), str(house),
         kill_at],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert driver.returncode == -signal.SIGKILL, driver.stderr
    check_invariant(gateway)
    record = gateway.store.read()
    layout = gateway.layout
    if kill_at in ("verify", "build", "self-test"):
        step = "verify" if kill_at == "verify" else "stage"
        assert (record["state"], record["step"]) == ("staging", step)
        # the unit hooks run (an update is under way), with the release running now
        assert gateway.store.layout.update_active.read_text() == "0.1.0\n"
    else:
        assert record["state"] == "trial"
    left_over = sorted(p.name for p in layout.releases_dir.iterdir() if p.name != "0.1.0")
    if kill_at == "build":  # the half build, named after the killed process
        assert len(left_over) == 1 and re.fullmatch(r"\.9\.0\.1\.tmp-\d+", left_over[0])
    else:
        assert left_over == ([] if kill_at == "verify" else ["9.0.1"])
    if kill_at == "self-test":  # renamed into place, but without its marker: not complete
        assert not layout.marker("9.0.1").exists()

    # The next `update` command (here: the unit's pre-start hook) finishes or undoes it.
    assert gateway.cli("update", "hook", "pre-start") == 0
    out = capsys.readouterr().out
    check_invariant(gateway)
    record = gateway.store.read()
    assert record["step"] in (None, "trial")
    if kill_at in ("verify", "build", "self-test"):
        assert releases(layout) == ["0.1.0"]
        assert links(layout) == ("0.1.0", None)
        assert (record["state"], record["target"]) == ("idle", None)
        last = record["outcomes"][-1]
        step = "verify" if kill_at == "verify" else "stage"
        assert (last["outcome"], last["reason"]) == ("rejected", f"interrupted in {step}")
        assert not (layout.opt_dir / ".update-work").exists()
        assert not gateway.store.layout.update_active.exists()
        cleaned = {
            "verify": [],
            "build": [f"removed the unfinished build {left_over[0] if left_over else ''}"],
            "self-test": ["removed the incomplete release 9.0.1"],
        }[kill_at]
        assert out.splitlines() == [
            *cleaned,
            f"edge-agent update hook pre-start: undid the update interrupted in {step}",
        ]
    else:
        assert links(layout) == ("9.0.1", "0.1.0")
        assert (record["state"], record["step"]) == ("trial", "trial")
        assert [o["outcome"] for o in record["outcomes"]] == ["installed"]
        assert out.strip().endswith("9.0.1 on trial: start 1 in this boot")
        assert gateway.store.starts_this_boot() == 1
        # ... and the trial goes on to its commit.
        assert commit(gateway.store, "9.0.1")


def test_a_pending_request_is_removed_whatever_the_outcome(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = gateway.store.layout.update_pending
    pending.mkdir(parents=True)
    request = pending / "request.json"
    request.write_text(json.dumps({"bundle": "../../etc/passwd"}))
    assert gateway.cli("update", "apply", "--pending") == 1
    assert "request: bundle '../../etc/passwd': not a file name" in capsys.readouterr().err
    assert not request.exists()

    # A bundle that does not verify: rejected (the check named), the request and bundle gone.
    bundle = pending / "edge-agent-9.9.9.bundle"
    bundle.write_bytes(b"not a tar")
    request.write_text(json.dumps({"bundle": bundle.name}))
    assert gateway.cli("update", "apply", "--pending") == 1
    assert capsys.readouterr().err.startswith("edge-agent update: ")
    assert not request.exists() and not bundle.exists()
    record = gateway.store.read()
    assert (record["state"], record["last"]["outcome"]) == ("idle", "rejected")
    assert record["target"] is None
    assert links(gateway.layout) == ("0.1.0", None)

    assert gateway.cli("update", "apply", "--pending") == 2  # no request at all
    assert "no pending request" in capsys.readouterr().err


def test_a_pending_rollback_request_rolls_back_with_its_reason(
    gateway: Gateway, make_wheelhouse: Callable[..., Path]
) -> None:
    """Remote diagnosis' `update-rollback` writes `{"rollback": true, "reason": …}`; root's
    `update apply --pending` performs it and removes the request."""
    installer = gateway.installer()
    installer.apply(hand_over(make_wheelhouse("9.0.1")), "bundle:a")
    assert commit(gateway.store, "9.0.1")
    pending = gateway.store.layout.update_pending
    pending.mkdir(parents=True, exist_ok=True)
    request = pending / "request.json"
    request.write_text(json.dumps({"rollback": True, "reason": "remote: Li Wei: no readings"}))
    assert gateway.cli("update", "apply", "--pending") == 0
    assert not request.exists()
    assert links(gateway.layout) == ("0.1.0", None)
    record = gateway.store.read()
    assert (record["state"], record["current"]) == ("rolled_back", "0.1.0")
    last = record["outcomes"][-1]
    assert (last["outcome"], last["version"], last["reason"]) == (
        "rolled_back", "9.0.1", "remote: Li Wei: no readings",
    )  # fmt: skip
    request.write_text(json.dumps({"rollback": True, "reason": ""}))
    assert gateway.cli("update", "apply", "--pending") == 1
    assert not request.exists()
