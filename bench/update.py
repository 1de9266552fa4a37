"""Signed updates end to end: bundle sizes, the apply's steps, the trial, a failed gate undone.

In a temporary folder (or `--work DIR`, kept, its wheelhouses reused):

1. Builds three real wheelhouses of this project (`tests/releases.py`): 0.1.0 (the base: the
   agent wheel and every dependency's, `pip wheel .`), 0.2.0 (only the agent wheel differs) and
   0.3.0, a copy of the project patched as a **benchmark fault**: the Modbus poller replaces
   the readings it decoded by bad ones, so the release starts and runs but no terminal ever
   answers, and it must fail its trial gate.
2. Makes a vendor repository with `edge-agent release init` and `release add` (real keys, real
   TUF metadata) and writes the bundles: 0.2.0 full, 0.2.0 delta from 0.1.0, 0.3.0 delta from
   0.2.0; prints their sizes.
3. Per round (`--rounds`, default 3), a fresh installation: the 0.1.0 wheelhouse put where the
   .deb puts it (`PREFIX/usr/lib/edge-agent/wheelhouse`) and `edge-agent install --wheelhouse
   … --prefix PREFIX` (the .deb's postinst), a stand-in supervisor (below) running
   `PREFIX/opt/edge-agent/current/bin/edge-agent run` against one simulated Modbus TCP terminal
   on loopback (`agent.sim.modbus_device`), `update.probation: 5s` (shortened from 10 min),
   `update.trusted_root` = the repository's 1.root.json, no uplink. Then, as root would:
   `PREFIX/opt/edge-agent/current/bin/edge-agent update apply BUNDLE --prefix PREFIX --config
   CFG`, the installed release's own CLI, for the 0.2.0 delta; the supervisor restarts the
   agent once the apply has switched, and the new agent's gate commits. Then the same for the
   0.3.0 delta: its gate fails when the probation ends, the agent exits with status 4, the
   supervisor runs the real pre-start hook (which rolls back) and starts `current` again.

The stand-in supervisor does for `edge-agent.service` what systemd does (as
tests/test_update_hooks.py): before each start it runs `agent/data/systemd/pre-start` (the
script the unit runs, with EDGE_AGENT_ROOT / EDGE_AGENT_STATE_DIR / EDGE_AGENT_CONFIG), after
each stop `post-stop` with $SERVICE_RESULT; it starts the release `current` points at (resolved
after the hook, as ExecStart= is) with $NOTIFY_SOCKET on a datagram socket of its own, so
READY=1 is seen as systemd sees it (Type=notify). There is no systemd here, so the CLI's
restart step (`systemctl restart` only where /run/systemd/system exists) does nothing: the
supervisor restarts the agent (stop, post-stop, pre-start, start) as soon as the apply process
has exited — what `systemctl restart` would do inside it.

Printed, per round and as median / max over the rounds:
- verify, stage, switch: the `installed` outcome's timings (the installer's own monotonic
  clock); the apply's wall clock from its start to the "installed, on trial" line (switch done)
  and to its exit; its CPU (user + system, the apply process and every child it waited for:
  `python -m venv`, the self-test) and peak RSS (ru_maxrss: the largest of those processes),
  from wait4(2);
- switch done → the new release READY (READY=1 on the notify socket) and answering `status` on
  its control socket (the version it reports is checked);
- apply start → committed (state.json, polled every 20 ms);
- the failed gate: the agent's exit with status 4 → the previous release READY and answering
  `status` again (post-stop, pre-start with its rollback, the start); the record is checked to
  say `rolled_back` with a reason starting `gate:`.

Run from the repository root: `.venv/bin/python bench/update.py [--rounds N] [--work DIR]`.
Children get SIGTERM if the script dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from procs import describe_tree, die_with_parent, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/releases.py: the wheelhouses the update tests build

from agent.control import ControlError, NotRunning, request  # noqa: E402
from agent.sim.modbus_device import RegisterMap, SimulatedModbusDevice  # noqa: E402
from tests.releases import agent_wheelhouse, cannot_decode, wheelhouse  # noqa: E402

HOOKS = ROOT / "agent" / "data" / "systemd"
PROBATION = "5s"
BASE, GOOD, FAULTY = "0.1.0", "0.2.0", "0.3.0"
# The benchmark fault: the poller's decoded readings replaced by bad ones (0.3.0 only).
POLLER = "agent/protocols/modbus/poller.py"
FAULT = cannot_decode("benchmark fault (bench/update.py): decoded readings replaced by bad ones")
TIMEOUT = 300.0  # for any one wait: a stuck step fails the run instead of hanging it


# --- releases and the vendor repository ---------------------------------------------------


def build_wheelhouses(work: Path) -> dict[str, Path]:
    """The three releases' wheelhouses, built once (reused from an earlier run of `--work`)."""
    houses = {
        BASE: work / "wh-base",
        GOOD: work / f"build-{GOOD}" / "wheelhouse",
        FAULTY: work / f"build-{FAULTY}" / "wheelhouse",
    }
    started = time.monotonic()
    if not houses[BASE].is_dir():
        wheelhouse(houses[BASE])
    if not houses[GOOD].is_dir():
        shutil.rmtree(work / f"build-{GOOD}", ignore_errors=True)
        agent_wheelhouse(houses[BASE], work / f"build-{GOOD}", GOOD)
    if not houses[FAULTY].is_dir():
        shutil.rmtree(work / f"build-{FAULTY}", ignore_errors=True)
        agent_wheelhouse(houses[BASE], work / f"build-{FAULTY}", FAULTY, fault=FAULT)
    print(
        f"wheelhouses: {len(list(houses[BASE].glob('*.whl')))} wheels each, built in "
        f"{time.monotonic() - started:.1f} s (0.3.0: {POLLER} patched, decoded readings bad)"
    )
    return houses


def vendor(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "release", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"edge-agent release {shlex.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def make_repository(work: Path, houses: dict[str, Path]) -> tuple[Path, dict[str, Path]]:
    """The vendor's repository with the three releases; the bundles by name."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(work / "repo-keys", ignore_errors=True)
    vendor("init", str(repo))
    for version in (BASE, GOOD, FAULTY):
        vendor("add", str(repo), "--channel", "stable", "--wheelhouse", str(houses[version]))
    bundles = {
        "0.2.0 full": (GOOD, None),
        "0.2.0 delta from 0.1.0": (GOOD, BASE),
        "0.3.0 delta from 0.2.0": (FAULTY, GOOD),
    }
    out: dict[str, Path] = {}
    for name, (version, delta_from) in bundles.items():
        path = work / "bundles" / (name.replace(" ", "-") + ".bundle")
        path.parent.mkdir(exist_ok=True)
        path.unlink(missing_ok=True)
        extra = ["--delta-from", delta_from] if delta_from else []
        vendor("bundle", str(repo), "--version", version, "--out", str(path), *extra)
        out[name] = path
    return repo, out


def verify_full(work: Path, repo: Path, bundle: Path, times: int) -> list[float]:
    """`agent.update.trust.verify` of a full bundle as root's apply calls it, in this process,
    each time with a fresh trust folder and an empty wheel cache (every wheel from the bundle)."""
    from agent.update import trust
    from agent.update.platforms import gateway_platform, python_tag

    target = trust.Target(
        channel="stable",
        platform=gateway_platform(),
        python=python_tag(),
        running=BASE,
        refused=frozenset(),
        automatic=False,
    )
    seconds = []
    for number in range(times):
        here = work / f"verify-{number}"
        shutil.rmtree(here, ignore_errors=True)
        (here / "work").mkdir(parents=True)
        started = time.monotonic()
        verified = trust.verify(
            trust.bundle_source(bundle, 512 * 1024 * 1024),
            trust_dir=here / "trust",
            trusted_root=repo / "metadata" / "1.root.json",
            target=target,
            wheel_cache=here / "wheels",
            work_dir=here / "work",
        )
        seconds.append(time.monotonic() - started)
        assert len(list(verified.wheelhouse.iterdir())) == len(verified.release.wheels)
        shutil.rmtree(here)
    return seconds


# --- the simulated terminal ---------------------------------------------------------------


class Terminal:
    """One simulated Modbus TCP device on loopback, served by an event loop in a thread."""

    def __init__(self) -> None:
        memory = RegisterMap(size=16)
        memory.set_number("holding", 0, 12.5, "float32")
        self.device = SimulatedModbusDevice({1: memory})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self._call(self.device.serve_tcp("127.0.0.1", 0))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self._call(self.device.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- the stand-in supervisor --------------------------------------------------------------


@dataclass
class Supervisor:
    """What systemd does for edge-agent.service: hooks around each start, READY=1, restarts."""

    prefix: Path
    state: Path
    config: Path
    socket_path: Path
    work: Path
    agent: subprocess.Popen[bytes] | None = None
    version: str | None = None
    notify: socket.socket = field(init=False)
    hook_lines: list[str] = field(default_factory=list)
    hook_seconds: dict[str, float] = field(default_factory=dict)  # the last run of each

    def __post_init__(self) -> None:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = self.work / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self.notify.bind(str(notify_path))
        self.notify_path = notify_path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.work),
            "EDGE_AGENT_ROOT": str(self.prefix),
            "EDGE_AGENT_STATE_DIR": str(self.state),
            "EDGE_AGENT_CONFIG": str(self.config),
            **extra,
        }

    def hook(self, name: str, **env: str) -> None:
        started = time.monotonic()
        done = subprocess.run(
            ["sh", str(HOOKS / name)],
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode != 0:  # a hook never fails the start
            raise RuntimeError(f"{name} exited {done.returncode}: {done.stderr.strip()}")
        self.hook_seconds[name] = time.monotonic() - started
        self.hook_lines.extend(line for line in done.stdout.splitlines() if line)

    def start(self) -> None:
        """ExecStartPre= (pre-start), then ExecStart= on `current` as the hook left it."""
        self.hook("pre-start")
        current = self.prefix / "opt/edge-agent/current"
        self.version = current.readlink().name
        self._drain()
        log = (self.work / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            [str(current / "bin" / "edge-agent"), "run", "--config", str(self.config)],
            env=self.env(NOTIFY_SOCKET=str(self.notify_path)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        log.close()

    def stopped(self, result: str) -> None:
        """ExecStopPost= (post-stop) with $SERVICE_RESULT."""
        self.agent = None
        self.hook("post-stop", SERVICE_RESULT=result)

    def stop(self) -> None:
        assert self.agent is not None
        stop(self.agent)
        self.stopped("success")

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_exit(self, timeout: float) -> int:
        """The agent exits by itself (the gate): its status; post-stop runs."""
        assert self.agent is not None
        code = self.agent.wait(timeout)
        self.stopped("success" if code == 0 else "exit-code")
        return code

    def _drain(self) -> None:
        """Throw away notifications queued from an agent that has stopped."""
        self.notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.notify.recv(4096)
        self.notify.setblocking(True)

    def wait_ready(self, timeout: float = TIMEOUT) -> float:
        """Until READY=1 comes on the notify socket; when (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                raise RuntimeError(f"no READY=1 within {timeout:g} s; see agent.log") from None
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()

    def wait_answering(
        self, timeout: float = TIMEOUT, terminal_ok: bool = False
    ) -> tuple[float, str]:
        """Until `status` answers on the control socket (and, with `terminal_ok`, says the
        terminal answered); when, and the version it reports."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.agent.returncode}")
            try:
                status = asyncio.run(request(self.socket_path, "status"))
            except (NotRunning, ControlError, OSError):
                time.sleep(0.02)
                continue
            if not terminal_ok or all(t["state"] == "ok" for t in status["terminals"]):
                return time.monotonic(), str(status["agent"]["version"])
            time.sleep(0.1)
        raise RuntimeError(f"the control socket did not answer within {timeout:g} s")

    def close(self) -> None:
        if self.agent is not None:
            stop(self.agent)
        self.notify.close()


# --- one apply ----------------------------------------------------------------------------


@dataclass
class Apply:
    started: float
    switched: float  # the "installed, on trial" line: the switch is done
    exited: float
    cpu: float
    max_rss_kib: int
    output: list[str]


def run_apply(prefix: Path, config: Path, bundle: Path) -> Apply:
    """`update apply BUNDLE` by the installed release's CLI; timed, its rusage from wait4."""
    entry = prefix / "opt/edge-agent/current/bin/edge-agent"
    argv = [str(entry), "update", "apply", str(bundle), "--prefix", str(prefix)]
    argv += ["--config", str(config)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    switched = float("nan")
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if line.endswith("installed, on trial"):
            switched = time.monotonic()
    _, status, usage = os.wait4(proc.pid, 0)
    exited = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"update apply {bundle.name} exited {proc.returncode}: {lines}")
    return Apply(
        started,
        switched,
        exited,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss,
        lines,
    )


def read_record(state: Path) -> dict[str, Any]:
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data: dict[str, Any] = json.loads((state / "update/state.json").read_bytes())
            return data
        time.sleep(0.01)


def wait_state(state: Path, wanted: str, timeout: float = TIMEOUT) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_record(state)["state"] == wanted:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"state.json never said {wanted!r} (it says {read_record(state)['state']})")


def installed_timings(state: Path, version: str) -> dict[str, float]:
    for outcome in reversed(read_record(state)["outcomes"]):
        if outcome["outcome"] == "installed" and outcome["version"] == version:
            return dict(outcome["timings"])
    raise RuntimeError(f"no installed outcome for {version} in state.json")


# --- one round ----------------------------------------------------------------------------


def write_config(path: Path, state: Path, control: Path, port: int, repo: Path) -> None:
    config = {
        "gateway": {"id": "bench-update"},
        "state_dir": str(state),
        "control": {"socket": str(control)},
        "log": {"level": "info", "format": "json"},
        "terminals": [
            {
                "name": "plc",
                "protocol": "modbus-tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit": 1,
                "period": "1s",
                "timeout": "500ms",
                "retries": 0,
                "points": [{"name": "level", "address": 0, "type": "float32", "unit": "m"}],
            }
        ],
        "update": {
            "probation": PROBATION,
            "trusted_root": str(repo / "metadata" / "1.root.json"),
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def install_base(prefix: Path, base: Path) -> float:
    """The .deb's way: its wheelhouse in /usr/lib/edge-agent/wheelhouse, then `install`."""
    packaged = prefix / "usr/lib/edge-agent/wheelhouse"
    packaged.parent.mkdir(parents=True)
    shutil.copytree(base, packaged)
    started = time.monotonic()
    argv = [sys.executable, "-m", "agent", "install", "--wheelhouse", str(packaged)]
    argv += ["--prefix", str(prefix)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"edge-agent install: {done.stderr.strip()}")
    return time.monotonic() - started


@dataclass
class Round:
    install: float
    good_timings: dict[str, float]
    good: Apply
    good_ready: float
    good_answering: float
    committed: float
    faulty_timings: dict[str, float]
    faulty: Apply
    gate_exit: float  # when the 0.3.0 agent exited with status 4
    post_stop: float  # the post-stop hook after that exit, seconds
    pre_start: float  # the pre-start hook that rolled back, seconds
    back_ready: float
    back_answering: float
    reason: str


def one_round(
    number: int, work: Path, houses: dict[str, Path], repo: Path, bundles: dict[str, Path]
) -> Round:
    here = work / f"round-{number}"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    prefix, state, config = here / "root", here / "state", here / "config.yaml"
    control = Path(tempfile.mkdtemp(prefix="bench-upd-")) / "control.sock"  # AF_UNIX: short
    terminal = Terminal()
    write_config(config, state, control, terminal.port, repo)
    install = install_base(prefix, houses[BASE])
    supervisor = Supervisor(prefix, state, config, control, here)
    try:
        supervisor.start()
        supervisor.wait_ready()
        # The terminal answered: the baseline the apply asks the running agent for has it.
        _, running = supervisor.wait_answering(terminal_ok=True)
        assert running == BASE, running

        # 0.2.0: verify, stage, switch; the supervisor restarts it; its gate commits.
        good = run_apply(prefix, config, bundles["0.2.0 delta from 0.1.0"])
        supervisor.restart()
        good_ready = supervisor.wait_ready()
        good_answering, running = supervisor.wait_answering()
        assert running == GOOD, running
        committed = wait_state(state, "committed")

        # 0.3.0, the benchmark fault: the gate fails, exit 4, the hook rolls back.
        faulty = run_apply(prefix, config, bundles["0.3.0 delta from 0.2.0"])
        supervisor.restart()
        supervisor.wait_ready()
        _, running = supervisor.wait_answering()
        assert running == FAULTY, running
        code = supervisor.agent.wait(TIMEOUT) if supervisor.agent is not None else None
        gate_exit = time.monotonic()
        if code != 4:
            raise RuntimeError(f"the faulty release exited {code}, not 4 (the gate)")
        supervisor.stopped("exit-code")
        post_stop = supervisor.hook_seconds["post-stop"]
        supervisor.start()
        pre_start = supervisor.hook_seconds["pre-start"]
        back_ready = supervisor.wait_ready()
        back_answering, running = supervisor.wait_answering()
        assert running == GOOD, running
        record = read_record(state)
        last = record["last"] or {}
        if record["state"] != "rolled_back" or not str(last.get("reason", "")).startswith("gate:"):
            raise RuntimeError(f"expected rolled_back with a gate: reason, got {record}")
        return Round(
            install,
            installed_timings(state, GOOD),
            good,
            good_ready,
            good_answering,
            committed,
            installed_timings(state, FAULTY),
            faulty,
            gate_exit,
            post_stop,
            pre_start,
            back_ready,
            back_answering,
            str(last["reason"]),
        )
    finally:
        supervisor.close()
        terminal.close()
        shutil.rmtree(control.parent, ignore_errors=True)


# --- report -------------------------------------------------------------------------------


def summary(values: list[float], unit: str = "s", digits: int = 2) -> str:
    each = " ".join(f"{v:.{digits}f}" for v in values)
    med, top = statistics.median(values), max(values)
    return f"median {med:.{digits}f} {unit}, max {top:.{digits}f} {unit}  ({each})"


def report(rounds: list[Round]) -> None:
    print(f"rounds: {len(rounds)}; figures per round in brackets")
    rows: list[tuple[str, list[float], str, int]] = []
    for label, version, pick in (("0.2.0", GOOD, "good"), ("0.3.0", FAULTY, "faulty")):
        for step in ("verify", "stage", "switch"):
            values = [(getattr(r, f"{pick}_timings"))[step] for r in rounds]
            rows.append((f"apply {label}: {step} (outcome timings)", values, "s", 3))
        applies: list[Apply] = [getattr(r, pick) for r in rounds]
        rows.append(
            (
                f"apply {label}: start → switched (wall)",
                [a.switched - a.started for a in applies],
                "s",
                2,
            )
        )
        rows.append(
            (f"apply {label}: start → exit (wall)", [a.exited - a.started for a in applies], "s", 2)
        )
        rows.append((f"apply {label}: CPU user+system", [a.cpu for a in applies], "s", 2))
        rows.append(
            (
                f"apply {label}: peak RSS (ru_maxrss)",
                [a.max_rss_kib / 1024 for a in applies],
                "MiB",
                1,
            )
        )
        del version
    rows += [
        ("0.2.0: switched → READY=1", [r.good_ready - r.good.switched for r in rounds], "s", 2),
        (
            "0.2.0: switched → answering status",
            [r.good_answering - r.good.switched for r in rounds],
            "s",
            2,
        ),
        ("0.2.0: switched → committed", [r.committed - r.good.switched for r in rounds], "s", 2),
        ("0.2.0: apply start → committed", [r.committed - r.good.started for r in rounds], "s", 2),
        (
            "0.3.0: switched → gate failed (exit 4)",
            [r.gate_exit - r.faulty.switched for r in rounds],
            "s",
            2,
        ),
        (
            "gate failed (exit 4) → 0.2.0 READY=1",
            [r.back_ready - r.gate_exit for r in rounds],
            "s",
            2,
        ),
        ("  of which the post-stop hook", [r.post_stop for r in rounds], "s", 2),
        ("  of which the pre-start hook (the rollback)", [r.pre_start for r in rounds], "s", 2),
        (
            "gate failed (exit 4) → 0.2.0 answering status",
            [r.back_answering - r.gate_exit for r in rounds],
            "s",
            2,
        ),
        (
            "install 0.1.0 (edge-agent install, not timed above)",
            [r.install for r in rounds],
            "s",
            1,
        ),
    ]
    width = max(len(label) for label, *_ in rows)
    for label, values, unit, digits in rows:
        print(f"{label:<{width}}  {summary(values, unit, digits)}")
    print(f"rolled back with reason: {rounds[-1].reason}")


def run(args: argparse.Namespace) -> None:
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("agent code:", describe_tree())
    print(f"probation: {PROBATION}; rounds: {args.rounds}; cores: {os.cpu_count()}")
    with contextlib.ExitStack() as stack:
        if args.work is not None:
            work = args.work.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-update-")))
        houses = build_wheelhouses(work)
        repo, bundles = make_repository(work, houses)
        for name, path in bundles.items():
            size = path.stat().st_size
            print(f"bundle {name}: {size:,} bytes ({size / 1e6:.2f} MB)")
        full = verify_full(work, repo, bundles["0.2.0 full"], args.rounds)
        print(f"verify only, 0.2.0 full bundle, empty wheel cache: {summary(full, 's', 3)}")
        rounds = []
        for number in range(1, args.rounds + 1):
            rounds.append(one_round(number, work, houses, repo, bundles))
            print(f"round {number} done", flush=True)
        report(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="install, apply, roll back N times")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the work here (wheelhouses reused)"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
