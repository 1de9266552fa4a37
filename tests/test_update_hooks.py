"""The unit hooks judge a release on trial: a stand-in for systemd drives the real scripts.

`Supervisor` does what edge-agent.service asks of systemd, in this process: before each start
it runs `systemd/pre-start` (which execs the known-good release's `edge-agent update hook
pre-start`: this project's CLI), then the release `current` points at (resolved after the
hook, as ExecStart= is), kills it when it outlives the watchdog, then runs `systemd/post-stop`
with $SERVICE_RESULT. The releases are small scripts that crash, hang, fail their gate or run;
the known-good one hands `update …` to this project's CLI. The boot id is a file the test
rewrites (a power cut).
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.model import parse_timestamp
from agent.storage.layout import StateLayout
from agent.update.apply import Installer
from agent.update.hooks import pre_start
from agent.update.installer import release_of
from agent.update.layout import InstallLayout
from agent.update.state import UpdateStore, now_iso
from tests.agentproc import write_config
from tests.conftest import PYTHON, ROOT

UNITS = ROOT / "systemd"
GOOD, TRIAL = "0.1.0", "0.2.0"
WATCHDOG = 1.0  # seconds a hanging release is given before the "watchdog" kills it

BEHAVIOUR = {
    "crash": "echo 'Traceback: boom' >&2; exit 1",
    "hang": "exec sleep 30",
    "gate": (
        f'exec {PYTHON} -c "from agent.update.state import UpdateStore; '
        "from agent.storage.layout import StateLayout; from pathlib import Path; import os, sys\n"
        "with UpdateStore(StateLayout(Path(os.environ['STATE']))).edit() as r:\n"
        "    r['gate_failed'] = 'terminal plc-1 never polled'\n"
        'sys.exit(4)"'
    ),
    "run": "exit 0",
}


def release(root: Path, version: str, behaviour: str, calls: Path) -> None:
    """A complete release whose `edge-agent` does `behaviour`; the good one also runs `update`
    (the hooks) with this project's CLI."""
    folder = root / "opt/edge-agent/releases" / version
    (folder / "bin").mkdir(parents=True)
    update = (
        f'cd {ROOT} && exec {PYTHON} -m agent "$@"'
        if version == GOOD
        else f'echo "{version} was asked: $*" >> {calls}; exit 9'
    )
    (folder / "bin/edge-agent").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = update ]; then {update}; fi\n'
        f'echo "{version} $*" >> {calls}\n'
        f"{BEHAVIOUR[behaviour]}\n"
    )
    (folder / "bin/edge-agent").chmod(0o755)
    (folder / ".installed").write_text("sha256:test\n")


@dataclass
class Supervisor:
    root: Path
    state: Path
    config: Path
    boot: Path
    calls: Path
    ran: list[tuple[str, str]] = field(default_factory=list)  # (version, SERVICE_RESULT)

    @property
    def layout(self) -> InstallLayout:
        return InstallLayout(self.root)

    @property
    def store(self) -> UpdateStore:
        return UpdateStore(StateLayout(self.state))

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.root),
            "EDGE_AGENT_ROOT": str(self.root),
            "EDGE_AGENT_STATE_DIR": str(self.state),
            "EDGE_AGENT_CONFIG": str(self.config),
            "STATE": str(self.state),
            **extra,
        }

    def hook(self, name: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["sh", str(UNITS / name), "--boot-id-file", str(self.boot)],
            capture_output=True, text=True, env=self.env(**env), timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr  # a hook never fails the start
        return done

    def start(self) -> str:
        """One start: pre-start, the release, post-stop; the pre-start hook's output."""
        pre = self.hook("pre-start")
        version = release_of(self.layout, self.layout.current)
        assert version is not None
        agent = self.layout.current / "bin" / "edge-agent"
        process = subprocess.Popen(
            [str(agent), "run"], env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            code = process.wait(WATCHDOG)
            result = "success" if code == 0 else "exit-code"
        except subprocess.TimeoutExpired:
            process.kill()  # WatchdogSec= passed without a ping: SIGABRT, then SIGKILL
            process.wait()
            result = "watchdog"
        assert process.stderr is not None
        process.stderr.close()
        self.ran.append((version, result))
        self.hook("post-stop", SERVICE_RESULT=result)
        return pre.stdout.strip()

    def record(self) -> dict[str, object]:
        return self.store.read()


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    root, state = tmp_path / "root", tmp_path / "state"
    config = tmp_path / "config.yaml"
    write_config(config, state, [])
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    return Supervisor(root, state, config, boot, tmp_path / "calls")


def on_trial(sup: Supervisor, behaviour: str, ends_in: float = 600) -> None:
    """GOOD was committed; TRIAL (`behaviour`) was switched to and is on trial in boot-1."""
    release(sup.root, GOOD, "run", sup.calls)
    release(sup.root, TRIAL, behaviour, sup.calls)
    opt = sup.root / "opt/edge-agent"
    (opt / "current").symlink_to(f"releases/{TRIAL}")
    (opt / "previous").symlink_to(f"releases/{GOOD}")
    with sup.store.edit() as record:
        record.update(
            state="trial",
            step="trial",
            current=TRIAL,
            previous=GOOD,
            trial_boot_id="boot-1",
            trial_ends_at=now_iso(datetime.now(UTC) + timedelta(seconds=ends_in)),
        )


def assert_rolled_back(sup: Supervisor, reason: str) -> None:
    record = sup.record()
    assert (record["state"], record["current"], record["previous"]) == ("rolled_back", GOOD, None)
    assert record["last"] is not None and record["last"]["reason"] == reason  # type: ignore[index]
    assert record["refused"] == [TRIAL]
    assert (release_of(sup.layout, sup.layout.current), sup.layout.previous.exists()) == (
        GOOD, False,
    )  # fmt: skip
    assert not sup.store.layout.update_active.exists()
    assert not sup.store.layout.update_starts.exists()
    # The trial release never ran its own hook: the known-good one did.
    calls = sup.calls.read_text() if sup.calls.exists() else ""
    assert f"{TRIAL} was asked" not in calls


def test_a_crash_loop_is_rolled_back_at_the_fourth_start(supervisor: Supervisor) -> None:
    on_trial(supervisor, "crash")
    outputs = [supervisor.start() for _ in range(4)]
    assert supervisor.ran == [(TRIAL, "exit-code")] * 3 + [(GOOD, "success")]
    assert outputs[2].endswith(f"{TRIAL} on trial: start 3 in this boot")
    assert outputs[3].endswith(f"rolled back {TRIAL}: crash loop: 4 starts on trial")
    assert_rolled_back(supervisor, "crash loop: 4 starts on trial")
    # No update under way: the next start's hooks do nothing at all.
    assert supervisor.start() == ""
    assert supervisor.ran[-1] == (GOOD, "success")


def test_a_watchdog_kill_on_trial_is_rolled_back_at_the_next_start(
    supervisor: Supervisor,
) -> None:
    on_trial(supervisor, "hang")
    supervisor.start()
    assert supervisor.ran == [(TRIAL, "watchdog")]
    assert supervisor.record()["watchdog"] is not None  # post-stop recorded it
    assert supervisor.start().endswith(f"rolled back {TRIAL}: watchdog killed it")
    assert supervisor.ran[-1] == (GOOD, "success")
    assert_rolled_back(supervisor, "watchdog killed it")


def test_a_failed_gate_is_rolled_back_at_the_next_start(supervisor: Supervisor) -> None:
    on_trial(supervisor, "gate")
    supervisor.start()
    assert supervisor.ran == [(TRIAL, "exit-code")]
    assert supervisor.start().endswith(f"rolled back {TRIAL}: gate: terminal plc-1 never polled")
    assert supervisor.ran[-1] == (GOOD, "success")
    assert_rolled_back(supervisor, "gate: terminal plc-1 never polled")


def test_a_power_cut_is_not_a_crash(supervisor: Supervisor) -> None:
    """Three crashes, then the power goes (a new boot id): a fresh count and a fresh window,
    even though the old window had ended by then."""
    on_trial(supervisor, "crash")
    for _ in range(3):
        supervisor.start()
    with supervisor.store.edit() as record:  # the window ended while the power was off
        record["trial_ends_at"] = now_iso(datetime.now(UTC) - timedelta(seconds=5))
    supervisor.boot.write_text("boot-2\n")
    out = supervisor.start()
    assert out.endswith(f"{TRIAL} on trial: start 1 in this boot, a new boot: fresh window")
    assert supervisor.ran[-1] == (TRIAL, "exit-code")
    record = supervisor.record()
    assert (record["state"], record["current"], record["trial_boot_id"]) == (
        "trial", TRIAL, "boot-2",
    )  # fmt: skip
    left = parse_timestamp(str(record["trial_ends_at"])) - datetime.now(UTC)
    assert timedelta(seconds=500) < left <= timedelta(seconds=601)  # rounded up to the second
    assert supervisor.store.starts_this_boot("boot-2") == 1


def test_a_window_that_ended_in_this_boot_is_rolled_back(tmp_path: Path) -> None:
    sup = Supervisor(
        tmp_path / "root", tmp_path / "state", tmp_path / "c", tmp_path / "b", tmp_path / "calls"
    )
    sup.boot.write_text("boot-1\n")
    on_trial(sup, "run", ends_in=-1)
    installer = Installer(
        sup.layout, sup.store, out=io.StringIO(), boot_id_file=sup.boot, restart=_no_restart
    )
    assert pre_start(installer) == f"rolled back {TRIAL}: probation ended without commit"
    assert_rolled_back(sup, "probation ended without commit")


def _no_restart() -> None:
    raise AssertionError("a hook never restarts the service: its own start goes on")


def test_without_an_update_under_way_the_hooks_start_no_python(tmp_path: Path) -> None:
    """No state_dir/update/active: the scripts exit 0 at once, running no release at all."""
    calls = tmp_path / "calls"
    root, state = tmp_path / "root", tmp_path / "state"
    release(root, GOOD, "run", calls)
    (root / "opt/edge-agent/current").symlink_to(f"releases/{GOOD}")
    # `update` would start Python: make the good release only record that it was asked.
    (root / f"opt/edge-agent/releases/{GOOD}/bin/edge-agent").write_text(
        f'#!/bin/sh\necho "asked: $*" >> {calls}\n'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "EDGE_AGENT_ROOT": str(root),
        "EDGE_AGENT_STATE_DIR": str(state),
    }
    for name in ("pre-start", "post-stop"):
        done = subprocess.run(
            ["sh", str(UNITS / name)], capture_output=True, text=True, env=env, check=False
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not calls.exists()
    # The control: with `active` (naming the good release) each hook hands over to it.
    (state / "update").mkdir(parents=True)
    (state / "update/active").write_text(f"{GOOD}\n")
    for name in ("pre-start", "post-stop"):
        subprocess.run(["sh", str(UNITS / name)], env=env, check=True)
    assert calls.read_text().splitlines() == [
        f"asked: update hook pre-start --prefix {root}",
        f"asked: update hook post-stop --prefix {root}",
    ]
    assert os.access(UNITS / "post-stop", os.X_OK)
