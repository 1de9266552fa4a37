"""The systemd units under systemd/: their hardening score, `systemd-analyze verify`, their
paths against the installation layout, and the scripts they run.

Everything here runs offline, without a running systemd: `systemd-analyze security --offline`
rates the unit file as written, and `systemd-analyze verify --root=<temp dir>` loads the units
from a temp root that holds them, this host's own units (for sysinit.target and friends) and
stub executables at the units' paths. The agent is also run under an emulation of the unit's
seccomp settings and W^X (tests/sandbox.py). What needs the real service manager (namespaces,
devices, the user and its groups, credentials, the watchdog, OnFailure=) is left to the
container tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG_PATH, Config, ControlConfig
from agent.credentials import UNIT_PREFIX
from agent.limits import descriptor_budget
from agent.protocols.sl651.config import Sl651Config
from agent.storage.layout import DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, StateLayout
from tests.agentproc import write_config
from tests.conftest import PYTHON, ROOT
from tests.sandbox import UNSUPPORTED

UNITS = ROOT / "systemd"
SERVICE = UNITS / "edge-agent.service"
ROLLBACK = UNITS / "edge-agent-rollback.service"
UPDATE = UNITS / "edge-agent-update.service"
UPDATE_PATH = UNITS / "edge-agent-update.path"
ALL_UNITS = (SERVICE, ROLLBACK, UPDATE, UPDATE_PATH)
# The installation layout (the package puts the scripts under /usr/lib/edge-agent/).
PREFIX = Path("/opt/edge-agent")
AGENT = PREFIX / "current" / "bin" / "edge-agent"
LIBEXEC = Path("/usr/lib/edge-agent")
CREDENTIALS = Path("/etc/edge-agent/credentials")
MAX_EXPOSURE = 2.0
NOTHING_TO_ROLL_BACK = (
    "edge-agent-rollback: nothing to roll back to (no previous release with the update command)"
)
SCRIPTS = ("pre-start", "post-stop", "rollback")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (unit files repeat keys), comments left out."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


def systemd_version() -> int | None:
    if shutil.which("systemd-analyze") is None:
        return None
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else None


VERSION = systemd_version()
needs_analyze = pytest.mark.skipif(
    VERSION is None or VERSION < 250,
    reason="needs systemd-analyze >= 250 (security --offline, verify --root); "
    f"found {'none' if VERSION is None else VERSION}",
)


# -- the hardening score ------------------------------------------------------------------------


@needs_analyze
def test_the_service_is_rated_at_most_2_0_by_systemd_analyze_security() -> None:
    # --threshold= is on systemd's internal 0..100 scale: 20 is the exposure 2.0 it prints.
    run = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(SERVICE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d)", run.stdout)
    assert match, run.stdout[-500:]
    assert float(match.group(1)) <= MAX_EXPOSURE


@needs_analyze
def test_the_threshold_would_catch_a_weaker_unit(tmp_path: Path) -> None:
    """The same check fails a unit stripped of its sandbox, so the test above can fail."""
    weak = tmp_path / "edge-agent.service"
    weak.write_text(
        "[Service]\nType=notify\nExecStart=/opt/edge-agent/current/bin/edge-agent run\n"
        "User=edge-agent\n"
    )
    run = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(weak)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode != 0


# -- systemd-analyze verify in a temp root ------------------------------------------------------


def host_unit_dir() -> Path | None:
    for folder in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (folder / "sysinit.target").exists():
            return folder
    return None


def stub(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def install_root(root: Path, host_units: Path) -> None:
    """A root with this host's units, ours, the scripts and a stub agent release."""
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in ALL_UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    (root / LIBEXEC.relative_to("/")).mkdir(parents=True)
    for script in SCRIPTS:
        shutil.copy(UNITS / script, root / LIBEXEC.relative_to("/") / script)
    stub(root / "opt/edge-agent/releases/0.0.0/bin/edge-agent")
    (root / "opt/edge-agent/current").symlink_to("releases/0.0.0")
    if not (root / "bin/sh").exists():
        stub(root / "bin/sh")  # ExecReload=


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", f"--root={root}", "--man=no", "verify",
         *(unit.name for unit in ALL_UNITS)],
        capture_output=True, text=True, check=False, cwd=root,
    )  # fmt: skip


@needs_analyze
def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    host_units = host_unit_dir()
    if host_units is None:
        pytest.skip("no systemd unit folder on this host (sysinit.target) to verify against")
    install_root(tmp_path, host_units)
    run = verify(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout + run.stderr == ""  # not even a warning (an unknown key, bad syntax)
    # ... and it does look: without the release's agent, the unit is refused.
    (tmp_path / "opt/edge-agent/releases/0.0.0/bin/edge-agent").unlink()
    run = verify(tmp_path)
    assert run.returncode != 0
    assert f"Command {AGENT} is not executable" in run.stderr


# -- the units against the installation layout --------------------------------------------------


def test_the_service_runs_the_current_release_on_the_default_config() -> None:
    unit = parse_unit(SERVICE)
    command = one(unit, "Service", "ExecStart").split()
    assert command == [str(AGENT), "run", "--config", str(DEFAULT_CONFIG_PATH)]
    # The update hooks run as root ("+"), outside the agent's sandbox: they switch root's links.
    assert one(unit, "Service", "ExecStartPre") == "+" + str(LIBEXEC / "pre-start")
    assert one(unit, "Service", "ExecStopPost") == "+" + str(LIBEXEC / "post-stop")
    assert (UNITS / "pre-start").exists() and (UNITS / "post-stop").exists()


def test_the_services_folders_are_the_agents_state_dir_and_runtime_dir() -> None:
    unit = parse_unit(SERVICE)
    state = Path("/var/lib") / one(unit, "Service", "StateDirectory")
    runtime = Path("/run") / one(unit, "Service", "RuntimeDirectory")
    assert state == DEFAULT_STATE_DIR == Config.model_fields["state_dir"].default
    assert runtime == DEFAULT_RUNTIME_DIR == ControlConfig().socket.parent
    assert one(unit, "Service", "StateDirectoryMode") == "0750"
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0750"


def test_the_service_is_notify_with_a_watchdog_restart_and_rollback() -> None:
    unit = parse_unit(SERVICE)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "WatchdogSec")
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Unit", "StartLimitIntervalSec")
    assert int(one(unit, "Unit", "StartLimitBurst")) > 1
    assert one(unit, "Unit", "OnFailure") == ROLLBACK.name
    assert one(unit, "Unit", "After") == one(unit, "Unit", "Wants") == "network-online.target"
    assert one(unit, "Unit", "Documentation") == (
        "man:edge-agent(1) file:///usr/share/doc/edge-agent/README.md"
    )


def test_the_update_path_starts_root_s_apply_when_the_agent_requests_one() -> None:
    """The agent writes update/pending/request.json; the path unit starts the apply as root."""
    path_unit = parse_unit(UPDATE_PATH)
    request = StateLayout(DEFAULT_STATE_DIR).update_request
    assert one(path_unit, "Path", "PathExists") == str(request)
    assert one(path_unit, "Path", "Unit") == UPDATE.name
    service = parse_unit(UPDATE)
    assert one(service, "Service", "Type") == "oneshot"
    assert one(service, "Service", "User") == "root"
    command = one(service, "Service", "ExecStart").split()
    assert command[:4] == [str(AGENT), "update", "apply", "--pending"]
    assert command[command.index("--config") + 1] == str(DEFAULT_CONFIG_PATH)
    # It may write only the releases and the agent's state, and keeps no capability but the
    # ones it needs for the agent's 0700 update folder.
    assert one(service, "Service", "ProtectSystem") == "strict"
    writable = one(service, "Service", "ReadWritePaths").split()
    assert writable == [str(PREFIX), f"-{DEFAULT_STATE_DIR}"]
    caps = set(one(service, "Service", "CapabilityBoundingSet").split())
    assert caps == {"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_CHOWN"}


def test_the_rollback_unit_runs_the_shipped_script() -> None:
    unit = parse_unit(ROLLBACK)
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "ExecStart") == str(LIBEXEC / "rollback")
    assert one(unit, "Service", "User") == "root"  # it switches links root owns
    writable = one(unit, "Service", "ReadWritePaths").split()
    assert f"-{PREFIX}" in writable and f"-{DEFAULT_STATE_DIR}" in writable
    # The update record is the agent's (0700): read, written and given back to the agent.
    caps = one(unit, "Service", "CapabilityBoundingSet").split()
    assert sorted(caps) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]


def test_the_user_and_groups_match_sysusers() -> None:
    unit = parse_unit(SERVICE)
    lines = [
        line.split()
        for line in (UNITS / "edge-agent.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = {fields[1]: fields for fields in lines if fields[0] == "u"}
    members = {(fields[1], fields[2]) for fields in lines if fields[0] == "m"}
    user = one(unit, "Service", "User")
    assert user == one(unit, "Service", "Group") == "edge-agent"
    assert users[user][-1] == str(DEFAULT_STATE_DIR)  # its home
    assert (user, one(unit, "Service", "SupplementaryGroups")) in members


def tmpfiles() -> dict[str, list[str]]:
    return {
        fields[1]: fields
        for line in (UNITS / "edge-agent.tmpfiles").read_text().splitlines()
        if line.strip() and not line.startswith("#")
        for fields in [line.split()]
    }


def test_tmpfiles_lays_out_the_config_credentials_and_state_folders() -> None:
    entries = tmpfiles()
    config_dir = str(DEFAULT_CONFIG_PATH.parent)
    assert entries[config_dir][:5] == ["d", config_dir, "0750", "root", "edge-agent"]
    assert entries[str(DEFAULT_CONFIG_PATH)][2:5] == ["0640", "root", "edge-agent"]
    assert entries[str(CREDENTIALS)][:5] == ["d", str(CREDENTIALS), "0700", "root", "root"]
    state = str(DEFAULT_STATE_DIR)
    assert entries[state][:5] == ["d", state, "0750", "edge-agent", "edge-agent"]


def test_the_credentials_folder_is_loaded_under_the_name_the_agent_looks_for() -> None:
    unit = parse_unit(SERVICE)
    credential_id, _, source = one(unit, "Service", "LoadCredential").partition(":")
    assert Path(source) == CREDENTIALS
    # systemd names each file of a folder credential "<id>_<file name>".
    assert f"{credential_id}_" == UNIT_PREFIX


def test_the_sandbox_keeps_what_the_system_checks_and_the_serial_lines_need() -> None:
    service = parse_unit(SERVICE)["Service"]
    # /proc/meminfo and /proc/loadavg (memory and load checks) stay visible.
    assert "ProcSubset" not in service
    # The read-only clock status (adjtimex) stays allowed: ProtectClock= would deny it.
    assert "ProtectClock" not in service
    assert any("adjtimex" in f.split() for f in service["SystemCallFilter"])
    assert "PrivateDevices" not in service
    assert service["DevicePolicy"] == ["closed"]
    assert service["DeviceAllow"] == ["char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"]
    assert service["CapabilityBoundingSet"] == [""]


# -- the scripts --------------------------------------------------------------------------------


def sh() -> str:
    return shutil.which("dash") or "/bin/sh"  # POSIX sh: Debian's /bin/sh is dash


def run_script(
    name: str, prefix: Path, path: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": path or os.environ.get("PATH", "/usr/bin:/bin"),
        "EDGE_AGENT_PREFIX": str(prefix),
        "EDGE_AGENT_STATE_DIR": str(prefix / "state"),
        **env,
    }
    return subprocess.run(
        [sh(), str(UNITS / name)], capture_output=True, text=True, env=env, check=False
    )


def test_the_scripts_are_executable() -> None:
    for name in SCRIPTS:
        assert os.access(UNITS / name, os.X_OK), name


def test_the_hooks_do_nothing_without_an_update_under_way(tmp_path: Path) -> None:
    """No state_dir/update/active: not a line, exit 0 (tests/test_update_hooks.py: the rest)."""
    for name in ("pre-start", "post-stop"):
        run = run_script(name, tmp_path)
        assert (run.returncode, run.stdout, run.stderr) == (0, "", ""), name


def test_rollback_without_a_previous_release_logs_one_line(tmp_path: Path) -> None:
    run = run_script("rollback", tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, NOTHING_TO_ROLL_BACK + "\n", "")


def test_rollback_with_a_previous_release_without_update_logs_one_line(tmp_path: Path) -> None:
    agent = tmp_path / "releases/0.1.0/bin/edge-agent"
    agent.parent.mkdir(parents=True)
    agent.write_text("#!/bin/sh\necho \"edge-agent: invalid choice: '$1'\" >&2\nexit 2\n")
    agent.chmod(0o755)
    (tmp_path / "previous").symlink_to("releases/0.1.0")
    run = run_script("rollback", tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, NOTHING_TO_ROLL_BACK + "\n", "")


def recorder(path: Path, calls: Path, body: str = "exit 0") -> None:
    """An executable that appends its arguments (one line, "|" after each) to `calls`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'#!/bin/sh\nprintf "%s|" "$(basename "$0")" "$@" >> {calls}\necho >> {calls}\n{body}\n'
    )
    path.chmod(0o755)


def test_rollback_hands_over_then_clears_the_failure_and_starts_the_agent(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    recorder(
        tmp_path / "releases/0.2.0/bin/edge-agent",
        calls,
        'if [ "$2" = rollback ]; then echo rolled back; fi',
    )
    (tmp_path / "previous").symlink_to("releases/0.2.0")
    recorder(tmp_path / "bin/systemctl", calls)  # systemd itself is not ours to drive here
    run = run_script("rollback", tmp_path, path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert calls.read_text().splitlines() == [
        "edge-agent|update|--help|",
        "edge-agent|update|rollback|--reason|unit failed|--no-restart|--prefix|/|",
        "systemctl|reset-failed|edge-agent.service|",
        "systemctl|start|--no-block|edge-agent.service|",
    ]
    assert (run.returncode, run.stdout) == (0, "rolled back\n")


def test_a_failed_rollback_is_the_units_failure_and_starts_nothing(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    recorder(
        tmp_path / "releases/0.2.0/bin/edge-agent",
        calls,
        'if [ "$2" = rollback ]; then echo "nothing to roll back to" >&2; exit 1; fi',
    )
    (tmp_path / "previous").symlink_to("releases/0.2.0")
    recorder(tmp_path / "bin/systemctl", calls)
    run = run_script("rollback", tmp_path, path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert run.returncode == 1
    assert not any(line.startswith("systemctl") for line in calls.read_text().splitlines())


# -- sysusers and tmpfiles, applied to a temp root ----------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfiles needs root to chown in the temp root")
@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="needs systemd-sysusers and systemd-tmpfiles",
)
def test_sysusers_and_tmpfiles_make_the_user_and_folders(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        shutil.copy(Path("/etc") / name, tmp_path / "etc" / name)
    if "dialout" not in (tmp_path / "etc/group").read_text():
        pytest.skip("this host has no dialout group")
    for tool, source, folder in (
        ("systemd-sysusers", "edge-agent.sysusers", "sysusers.d"),
        ("systemd-tmpfiles", "edge-agent.tmpfiles", "tmpfiles.d"),
    ):
        target = tmp_path / "usr/lib" / folder / "edge-agent.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(UNITS / source, target)
        args = [tool, f"--root={tmp_path}"] + (["--create"] if "tmpfiles" in tool else [])
        run = subprocess.run(args, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
    passwd = {
        ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    group = {
        ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/group").read_text().splitlines()
    }
    uid, gid = int(passwd["edge-agent"][2]), int(passwd["edge-agent"][3])
    assert passwd["edge-agent"][5] == str(DEFAULT_STATE_DIR)
    assert "edge-agent" in group["dialout"][3].split(",")

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = (tmp_path / path.relative_to("/")).stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    assert owner_mode(DEFAULT_STATE_DIR) == (uid, gid, 0o750)
    assert owner_mode(DEFAULT_CONFIG_PATH.parent) == (0, gid, 0o750)
    assert owner_mode(CREDENTIALS) == (0, 0, 0o700)


# -- the agent under the unit's syscall filter and W^X (emulated: tests/sandbox.py) -------------

SANDBOX = ROOT / "tests" / "sandbox.py"
CLOCK_STATUS = "from agent.timesync import clock_synchronised; print(clock_synchronised())"


def sandboxed(*command: str) -> list[str]:
    """The command line that runs `command` under the unit's seccomp settings."""
    return [PYTHON, str(SANDBOX), str(SERVICE), "--", *command]


def run_sandboxed(*command: str, drop: str = "") -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        sandboxed(*command), capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SANDBOX_DROP": drop},
    )  # fmt: skip
    if run.returncode == UNSUPPORTED:
        pytest.skip(f"cannot emulate the unit's sandbox here: {run.stderr.strip()}")
    return run


@needs_analyze
def test_under_the_units_syscall_filter_the_clock_status_stays_readable() -> None:
    run = run_sandboxed(PYTHON, "-c", CLOCK_STATUS)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in {"True", "False"}
    # The control: without adjtimex the answer is unknown, as it would be under ProtectClock=.
    run = run_sandboxed(PYTHON, "-c", CLOCK_STATUS, drop="adjtimex,clock_adjtime,clock_adjtime64")
    assert run.stdout.strip() == "None"


@needs_analyze
def test_writable_executable_memory_is_refused_in_the_sandbox() -> None:
    code = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)"
    run = run_sandboxed(PYTHON, "-c", code)
    assert run.returncode != 0
    assert "PermissionError" in run.stderr


@needs_analyze
def test_the_agent_runs_checks_and_stops_under_the_units_filter_and_wx(tmp_path: Path) -> None:
    """CPython with cryptography (signing), pydantic-core, yaml, sqlite, the control socket and
    the system checks (/proc/meminfo, /proc/loadavg, the clock status) under the unit's syscall
    filter, address families and MemoryDenyWriteExecute=."""
    probe = run_sandboxed(PYTHON, "-c", "pass")
    assert probe.returncode == 0, probe.stderr
    config = tmp_path / "config.yaml"
    write_config(config, tmp_path / "state", [], jsonl={"enabled": False})
    logs = tmp_path / "agent.log"
    with logs.open("wb") as out:
        agent = subprocess.Popen(
            sandboxed(PYTHON, "-m", "agent", "run", "--config", str(config)),
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "agent started" not in logs.read_text():
            assert agent.poll() is None, logs.read_text()
            assert time.monotonic() < deadline, logs.read_text()
            time.sleep(0.1)
        check = subprocess.run(
            [PYTHON, "-m", "agent", "check", "--json", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
    text = logs.read_text()
    assert code == 0, text
    assert "agent stopped" in text
    assert "not permitted" not in text.lower()
    statuses = {c["id"]: c["status"] for c in json.loads(check.stdout)["checks"]}
    for check_id in ("system.memory", "system.load", "system.clock_sync", "system.fs_writable"):
        assert statuses[check_id] != "unknown", (check_id, check.stdout)


def test_the_units_descriptor_limit_holds_the_default_sl651_connections_and_the_reserve() -> None:
    """LimitNOFILE= sets soft and hard; the agent keeps its reserve (agent/limits.py) and caps
    sl651.max_connections below the rest: the default must fit uncapped."""
    limit = int(one(parse_unit(SERVICE), "Service", "LimitNOFILE"))
    assert descriptor_budget(limit=limit) >= Sl651Config().max_connections
