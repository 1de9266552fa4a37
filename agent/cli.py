"""The `edge-agent` command line: parses arguments, calls into the parts, renders.

Exit codes (docs/architecture.md, Contracts): 0 ok, 1 a finding (a bad point, a failed check),
2 bad usage or bad input, 3 (`status`) the agent is not running, each with a one-line reason on
stderr.

`status`, `check`, `outbox` and `report` are what an engineer reaches for when something is wrong,
which includes a config file broken halfway through an edit: they ask the running agent over its
control socket first and treat the file's errors as a warning (`Reach`); the config matters only
when no agent answers and they must read the state on disk themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import (
    Config,
    ConfigError,
    ControlConfig,
    default_config_path,
    load_config,
    parse_config_bytes,
)
from agent.diagnosis.diag_cli import add_diag_parser, run_diag
from agent.diagnosis.fleet import add_fleet_parser, run_fleet
from agent.diagnosis.remote import add_remote_parser, run_remote
from agent.logs import configure_logging
from agent.storage.atomic import write_atomic
from agent.update.installer import add_arguments as add_install_arguments
from agent.update.installer import run as run_install
from agent.update.release_cli import add_release_parser, run_release
from agent.update.update_cli import add_update_parser, run_update

if TYPE_CHECKING:  # rich only where a command shows something: `run` (the daemon) never loads it
    from rich.console import Console

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/config.yaml)",
    )


def _socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        help="the running agent's control socket (default: the config's control.socket, or "
        f"{ControlConfig().socket} when the config is invalid)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Field agent for hydrology and water-conservancy gateways.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    _config_arg(run)

    demo = commands.add_parser("demo", help="the agent on a simulated site, no broker needed")
    demo.add_argument(
        "--duration", type=float, default=0, help="seconds to run (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--broker", default=None, help="also publish to this broker (mqtt://host:port)"
    )
    demo.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)

    poll = commands.add_parser("poll", help="read every point of one terminal once")
    poll.add_argument("terminal", help="the terminal's name in the config")
    _config_arg(poll)
    poll.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    status = commands.add_parser("status", help="the running agent at a glance")
    _config_arg(status)
    _socket_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON (shape in README)")
    status.add_argument("--watch", action="store_true", help="refresh in place every 2 s")

    outbox = commands.add_parser("outbox", help="what is queued for upstream")
    _config_arg(outbox)
    _socket_arg(outbox)
    outbox.add_argument("action", nargs="?", choices=("stats", "peek"), default="stats")
    outbox.add_argument("--limit", type=int, default=10, help="messages to show with peek")
    outbox.add_argument("--json", action="store_true", help="print JSON")

    check = commands.add_parser("check", help="run every self-check now and print the results")
    _config_arg(check)
    _socket_arg(check)
    check.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    report = commands.add_parser("report", help="write the inspection report from the history")
    _config_arg(report)
    _socket_arg(report)
    report.add_argument("--since", default="7d", help="the period: 7d, 24h ... (default 7d)")
    report.add_argument("--format", choices=("html", "md"), default="html")
    report.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")

    bundle = commands.add_parser(
        "support-bundle", help="one .tar.gz for support: versions, config, status, logs (redacted)"
    )
    _config_arg(bundle)
    _socket_arg(bundle)
    bundle.add_argument(
        "--since", default="24h", help="logs of this period: 24h, 2h ... (default 24h)"
    )
    bundle.add_argument(
        "--out",
        type=Path,
        default=None,
        help="file to write (default: edge-agent-support-<gateway>-<UTC time>.tar.gz here)",
    )

    keys = commands.add_parser("keys", help="the device identity (Ed25519 key that signs uploads)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_init = keys_commands.add_parser("init", help="create the device key")
    _config_arg(keys_init)
    keys_init.add_argument("--force", action="store_true", help="replace an existing key")
    keys_show = keys_commands.add_parser("show", help="print the key id and public key")
    _config_arg(keys_show)
    keys_show.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    sl651 = commands.add_parser("sl651", help="SL651-2014 tools")
    sl651_commands = sl651.add_subparsers(dest="sl651_command", required=True, metavar="ACTION")
    decode = sl651_commands.add_parser(
        "decode", help="decode frames given as hex (arguments, or stdin one per line)"
    )
    decode.add_argument("frames", nargs="*", metavar="HEX", help="a frame in hex (spaces allowed)")
    decode.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    install = commands.add_parser(
        "install", help="install a release from a wheelhouse and switch to it (the .deb runs this)"
    )
    add_install_arguments(install)
    add_update_parser(commands)
    add_release_parser(commands)
    add_remote_parser(commands)
    add_fleet_parser(commands)
    add_diag_parser(commands)

    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    validate = config_commands.add_parser("validate", help="check a config file, print every error")
    validate.add_argument("path", nargs="?", type=Path, default=None)
    return parser


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"edge-agent: {message}", file=sys.stderr)
    return code


def _load_config(path: Path | None, data: bytes | None = None) -> Config | None:
    """The config (from `data`, the file's content, if given), or None after printing every
    error of the file to stderr."""
    path = path or default_config_path()
    try:
        return load_config(path) if data is None else parse_config_bytes(data, path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def cmd_config_validate(args: argparse.Namespace) -> int:
    path = args.path or default_config_path()
    config = _load_config(path)
    if config is None:
        return EXIT_USAGE
    points = sum(len(t.info.points or ()) for t in config.terminals)
    print(f"{path}: ok ({len(config.terminals)} terminals, {points} points)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from agent.checks.view import LogCounter
    from agent.daemon import Daemon
    from agent.outbox import OutboxError
    from agent.signing import KeyStoreError

    path = args.config or default_config_path()
    try:
        data = path.read_bytes()
    except OSError:
        data = None  # the loader says why
    config = _load_config(path, data)
    if config is None:
        return EXIT_USAGE
    counter = LogCounter()
    configure_logging(config.log.level, config.log.format, counter=counter)
    daemon = Daemon(config, path, log_counter=counter, config_bytes=data)
    del data  # a large site's file is a megabyte: the daemon keeps its digest
    try:
        asyncio.run(daemon.run())
    except (OSError, OutboxError, KeyStoreError, sqlite3.Error) as exc:
        # The agent cannot start here (a port in use, another agent on this state_dir, a key
        # others can read, a history file it cannot open): one line saying why; systemd logs
        # it and tries again.
        return _fail(f"cannot start: {exc}")
    return daemon.exit_code  # 4: a release on trial did not pass its gate (docs/updates.md)


def cmd_poll(args: argparse.Namespace) -> int:
    from agent.protocols.driver import DriverError
    from agent.protocols.registry import poll_once
    from agent.render import poll_errors, poll_json, poll_table

    path = args.config or default_config_path()
    config = _load_config(path)
    if config is None:
        return EXIT_USAGE
    configure_logging("error", "console")
    try:
        answer = asyncio.run(poll_once(config, args.terminal))
    except DriverError as exc:
        return _fail(str(exc))
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    if args.json:
        print(json.dumps(poll_json(answer), indent=2))
    else:
        from rich.console import Console  # the terminal UI: only where it shows something

        console = Console()
        console.print(poll_table(answer))
        for line in poll_errors(answer.readings):
            console.print(f"[red]error[/red] {line}", highlight=False, soft_wrap=True)
    return EXIT_OK if answer.all_good else EXIT_FINDING


@dataclass
class Reach:
    """How a troubleshooting command reaches the agent: the config file as it is on disk (None
    when it has errors, kept in `errors`) and the control socket to ask."""

    config_path: Path
    config: Config | None
    errors: list[str]
    socket: Path
    warned: bool = False


def reach(config_path: Path | None, socket: Path | None) -> Reach:
    """The config at `config_path` (or the default one) and the socket: `socket` if given, else
    the config's, else the default (an invalid config cannot say where the agent listens)."""
    path = config_path or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        return Reach(path, None, exc.lines(), socket or ControlConfig().socket)
    return Reach(path, config, [], socket or config.control.socket)


def ask(target: Reach, cmd: str, args: dict[str, Any] | None = None) -> Any:
    """The running agent's answer; raises NotRunning, or ControlError.

    Once the agent has answered, the config file's errors are only a warning: the agent runs on
    the config it read before (it refuses a broken one), so its answer is still the truth.
    """
    from agent.control import ControlError, NotRunning, request

    try:
        answer = asyncio.run(request(target.socket, cmd, args))
    except (NotRunning, ControlError):
        raise
    except OSError as exc:  # a path no Unix socket can have (over 107 bytes, say)
        raise ControlError(f"cannot use {target.socket}: {exc.strerror or exc}") from exc
    if target.errors and not target.warned:
        target.warned = True
        for line in target.errors:
            print(
                f"edge-agent: warning: {line} (using the running agent at {target.socket})",
                file=sys.stderr,
            )
    return answer


def _unreached(target: Reach, why: str | None = None) -> int:
    """Exit 2: the config is invalid and the agent could not be asked (`why`, or nothing
    answers); the file's errors first, then the one-line reason."""
    for line in target.errors:
        print(line, file=sys.stderr)
    reason = why or f"no agent answers on {target.socket}"
    return _fail(
        f"{reason}, and {target.config_path} is invalid (above): fix it, "
        "or give the running agent's socket with --socket"
    )


def cmd_check(args: argparse.Namespace) -> int:
    from agent.checks.framework import CheckResult, Status
    from agent.checks.registry import run_checks_once
    from agent.checks.view import AgentView, load_restarts
    from agent.control import ControlError, NotRunning
    from agent.render import checks_table

    target = reach(args.config, args.socket)
    configure_logging("error", "console")
    through_agent = True
    try:
        results = [CheckResult.from_dict(r) for r in ask(target, "checks", {"run": True})]
    except NotRunning:
        if (config := target.config) is None:
            return _unreached(target)
        through_agent = False
        view = AgentView(config, target.config_path, restarts=load_restarts(config.state_dir))
        results = asyncio.run(run_checks_once(view, config.checks))
    except ControlError as exc:
        return _unreached(target, str(exc)) if target.config is None else _fail(str(exc))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        console = _wide_console()
        console.print(checks_table(results))
        if not through_agent:
            console.print(
                "[dim]the agent is not running: checked locally; terminal, outbox and uplink "
                "figures come from the running agent[/dim]"
            )
    return EXIT_FINDING if any(r.status is Status.FAIL for r in results) else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from agent.control import ControlError, NotRunning
    from agent.status import offline_status, status_view, unconfigured_status

    target = reach(args.config, args.socket)

    def fetch() -> dict[str, Any]:
        try:
            result: dict[str, Any] = ask(target, "status")
        except NotRunning:
            if (config := target.config) is None:
                return unconfigured_status(target.config_path, target.errors)
            return offline_status(config.state_dir, config.outbox_path, target.config_path)
        return result

    try:
        status = fetch()
        if args.watch and not args.json:
            with Live(status_view(status), console=Console(), auto_refresh=False) as live:
                while True:
                    time.sleep(2)
                    status = fetch()
                    live.update(status_view(status), refresh=True)
    except ControlError as exc:
        return _unreached(target, str(exc)) if target.config is None else _fail(str(exc))
    except KeyboardInterrupt:
        pass
    if args.json:
        print(json.dumps(status, indent=2))
    elif not args.watch:
        _wide_console().print(status_view(status))
    if not status["running"]:
        if target.config is None:  # not running stays exit 3; the reason names the config too
            for line in target.errors:
                print(line, file=sys.stderr)
            _fail(
                f"not running (nothing answers on {target.socket}), and {target.config_path} "
                "is invalid (above)"
            )
        return EXIT_NOT_RUNNING
    return EXIT_FINDING if status["status"] == "failing" else EXIT_OK


def cmd_outbox(args: argparse.Namespace) -> int:
    from agent.control import ControlError, NotRunning
    from agent.status import outbox_depth, outbox_peek_table, peek_outbox

    target = reach(args.config, args.socket)
    limit = args.limit if args.action == "peek" else 0
    try:
        answer = ask(target, "outbox", {"limit": limit})
        stats, messages = answer["stats"], answer["messages"]
    except NotRunning:
        if (config := target.config) is None:
            return _unreached(target)
        stats = outbox_depth(config.outbox_path)
        messages = peek_outbox(config.outbox_path, limit) if limit else []
    except ControlError as exc:
        return _unreached(target, str(exc)) if target.config is None else _fail(str(exc))
    if args.json:
        print(json.dumps({"stats": stats, "messages": messages}, indent=2))
        return EXIT_OK
    console = _wide_console()
    if stats is None and target.config is not None:  # read from disk: the agent had none open
        console.print(f"no outbox at {target.config.outbox_path}")
        return EXIT_OK
    console.print(json.dumps(stats, indent=2))
    if args.action == "peek":
        console.print(outbox_peek_table(messages))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from agent.check_settings import ReportSettings
    from agent.checks.history import History
    from agent.checks.report import render_report
    from agent.control import ControlError, NotRunning
    from agent.durations import parse_duration
    from agent.inspection import history_path, report_since

    try:
        parse_duration(args.since)
    except ValueError as exc:
        return _fail(f"--since: {exc}")
    target = reach(args.config, args.socket)
    try:
        # The agent buffers its history for `checks.history.flush_interval`: have it written
        # now, so that the report covers the period up to now.
        path = Path(str(ask(target, "history-flush")["path"]))
    except NotRunning:
        if target.config is None:
            return _unreached(target)
        path = history_path(target.config)
    except ControlError as exc:
        if target.config is None:
            return _unreached(target, str(exc))
        # An agent of an older version, say: what it has written so far still makes a report.
        print(
            f"edge-agent: warning: the running agent did not write its history now ({exc}): "
            "the report ends where it last did",
            file=sys.stderr,
        )
        path = history_path(target.config)
    settings = target.config.checks.report if target.config else ReportSettings()
    if not path.exists():
        return _fail(f"no history yet at {path}: the agent writes it while it runs")
    history = History(path)
    try:
        history.open()
        text = render_report(
            history,
            report_since(args.since),
            format=args.format,
            key_points=settings.key_points,
            max_trends=settings.max_trends,
        )
    except (OSError, sqlite3.Error, ValueError) as exc:
        return _fail(f"cannot write the report from {path}: {exc}")
    finally:
        history.close()
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        write_atomic(args.out, text.encode())
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}")
    print(f"wrote {args.out} ({args.format}, since {args.since})")
    return EXIT_OK


def cmd_support_bundle(args: argparse.Namespace) -> int:
    import base64

    from agent.control import ControlError, NotRunning
    from agent.diagnosis.support_bundle import OfflineSource, build, default_name
    from agent.durations import parse_duration

    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        return _fail(f"--since: {exc}")
    if since <= 0:
        return _fail("--since: a positive period is required")
    target = reach(args.config, args.socket)
    running = True
    try:
        answer = ask(target, "support-bundle", {"since": since})
        data, gateway = base64.b64decode(answer["base64"]), str(answer["gateway"])
    except NotRunning:
        if (config := target.config) is None:
            return _unreached(target)
        running = False
        data = asyncio.run(
            build(OfflineSource(config), since=time.time() - since, layout=config.layout)
        )
        gateway = config.gateway.id
    except ControlError as exc:
        return _unreached(target, str(exc)) if target.config is None else _fail(str(exc))
    out = args.out or Path(default_name(gateway))
    try:
        write_atomic(out, data)
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc.strerror or exc}")
    print(f"wrote {out} ({len(data)} bytes)")
    if not running:
        print(
            "the agent is not running: status, checks, logs and outbox are missing "
            "(README.txt in the bundle says so)"
        )
    return EXIT_OK


def cmd_sl651(args: argparse.Namespace) -> int:
    from agent.protocols.sl651 import describe_hex
    from agent.render import sl651_frame_view

    lines = list(args.frames) or [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not lines:
        return _fail("no frames: give hex frames as arguments or on stdin, one per line")
    described = [describe_hex(line) for line in lines]
    if args.json:
        print(
            json.dumps(
                described[0] if len(described) == 1 else described, ensure_ascii=False, indent=2
            )
        )
    else:
        console = _wide_console()
        for item in described:
            console.print(sl651_frame_view(item))
    bad = any("error" in d or not d.get("crc_ok", True) for d in described)
    return EXIT_FINDING if bad else EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from agent.signing import KeyStoreError, init_key, key_info

    config = _load_config(args.config)
    if config is None:
        return EXIT_USAGE
    try:
        if args.keys_command == "init":
            key = init_key(config.state_dir, force=args.force)
            print(f"created device key {key.kid} in {key.path}")
            return EXIT_OK
        info = key_info(config.state_dir)
    except KeyStoreError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write the device key under {config.state_dir}: {exc.strerror or exc}")
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"key id:  {info['kid']}\nalgorithm: EdDSA (Ed25519)\n\n{info['public_key_pem']}")
        print(json.dumps(info["jwk"]))
    return EXIT_OK


def _wide_console() -> Console:
    """A console that does not wrap tables at 80 columns when its output is piped."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.data import DEMO_CONFIG
    from agent.demo import run_demo

    configure_logging("warning", "console")
    try:
        return asyncio.run(
            run_demo(_wide_console(), args.duration, args.config or DEMO_CONFIG, broker=args.broker)
        )
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        return _fail(f"demo cannot start: {exc}")
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    """The same installer the package's postinst runs (agent/update/installer.py)."""
    return run_install(args)


COMMANDS = {
    "run": cmd_run,
    "install": cmd_install,
    "update": run_update,
    "demo": cmd_demo,
    "poll": cmd_poll,
    "keys": cmd_keys,
    "check": cmd_check,
    "status": cmd_status,
    "outbox": cmd_outbox,
    "sl651": cmd_sl651,
    "report": cmd_report,
    "support-bundle": cmd_support_bundle,
    "release": run_release,
    "remote": run_remote,
    "fleet": run_fleet,
    "diag": run_diag,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return cmd_config_validate(args)
    return COMMANDS[args.command](args)
