"""Runs one `Installer.apply` in its own process and SIGKILLs itself at a chosen point.

Test fault injection for tests/test_update_apply.py, nothing the agent ships: the points are
reached by wrapping the installer's own functions in this process only.

    python -m tests.update_driver ROOT STATE_DIR WHEELHOUSE KILL_AT

KILL_AT: `verify` (inside the verify step), `build` (the venv built, not yet renamed),
`self-test` (the release renamed into place, its self-test not run), `switch` (the record says
trial, `previous` made, `current` not yet), `restart` (in the restart), `none` (run through).
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agent.storage.layout import StateLayout
from agent.update import installer
from agent.update.apply import Installer
from agent.update.layout import InstallLayout
from agent.update.state import UpdateStore
from tests.releases import StandInVerified, hand_over

POINTS = ("verify", "build", "self-test", "switch", "restart", "none")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(root: Path, state_dir: Path, wheelhouse: Path, kill_at: str) -> None:
    assert kill_at in POINTS, kill_at
    verify = hand_over(wheelhouse)

    def verify_then_die(work_dir: Path) -> StandInVerified:
        (work_dir / "half-fetched.whl").write_bytes(b"partial")
        die()
        raise AssertionError("not reached")

    build_release, self_test, replace_symlink = (
        installer.build_release, installer.self_test, installer.replace_symlink,
    )  # fmt: skip

    def build_then_die(*args: Any) -> None:
        build_release(*args)
        if kill_at == "build":
            die()

    def die_before_self_test(*args: Any) -> None:
        if kill_at == "self-test":
            die()
        self_test(*args)

    def die_before_current(link: Path, target: str) -> None:
        if kill_at == "switch" and link.name == "current":
            die()
        replace_symlink(link, target)

    installer.build_release = build_then_die
    installer.self_test = die_before_self_test
    installer.replace_symlink = die_before_current
    apply = Installer(
        InstallLayout(root),
        UpdateStore(StateLayout(state_dir)),
        restart=die if kill_at == "restart" else lambda: None,
        out=io.StringIO(),
    )
    apply.apply(verify_then_die if kill_at == "verify" else verify, f"bundle:{wheelhouse}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
