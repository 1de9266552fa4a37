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
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent import __version__
from agent.cli_parser import (
    EXIT_FINDING,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    count,
    duration,
    epilog,
    positive_int,
    seconds_or_zero,
)
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

# The schema of each `--json` shape that has no other home (README, "Command line").
OUTBOX_SCHEMA = KEYS_SCHEMA = SL651_DECODE_SCHEMA = 1

if TYPE_CHECKING:  # rich only where a command shows something: `run` (the daemon) never loads it
    from rich.console import Console


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


def _adhoc_args(poll: argparse.ArgumentParser) -> None:
    """`poll`'s ad-hoc target: a Modbus device not in the config (a first look at it)."""
    from agent.protocols.modbus.config import POINT_TABLES, POINT_TYPES

    adhoc = poll.add_argument_group(
        "a Modbus device not in the config",
        "count values of one type from an address, each named TABLE:ADDRESS",
    )
    where = adhoc.add_mutually_exclusive_group()
    where.add_argument("--tcp", metavar="HOST[:PORT]", help="Modbus TCP (port default 502)")
    where.add_argument("--rtu", metavar="DEVICE", help="Modbus RTU on this serial device")
    adhoc.add_argument("--baudrate", type=count(1), help="RTU (default 9600)")
    adhoc.add_argument("--parity", choices=("N", "E", "O"), help="RTU (default N)")
    adhoc.add_argument("--bytesize", type=int, choices=(7, 8), help="RTU (default 8)")
    adhoc.add_argument("--stopbits", type=int, choices=(1, 2), help="RTU (default 1)")
    adhoc.add_argument("--unit", type=count(0, 247), help="unit id (default 1)")
    adhoc.add_argument(
        "--table",
        choices=POINT_TABLES,
        metavar="TABLE",
        help=f"{', '.join(POINT_TABLES)} (default holding)",
    )
    adhoc.add_argument("--address", type=count(0, 65535), help="first address, 0-based (default 0)")
    adhoc.add_argument(
        "--count",
        type=count(1, 2000),
        help="values to read (registers for a string; default 1)",
    )
    adhoc.add_argument(
        "--type",
        choices=POINT_TYPES,
        metavar="TYPE",
        help=f"how to decode them: {', '.join(POINT_TYPES)} (default uint16; bool for coil and "
        "discrete)",
    )
    adhoc.add_argument("--timeout", type=duration, help="per request (default 1s)")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="edge-agent",
        description="Field agent for hydrology and water-conservancy gateways.",
        epilog=f"{epilog('')}\n\n`edge-agent COMMAND --help` says what each command does.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    _config_arg(run)

    demo = commands.add_parser("demo", help="the agent on a simulated site, no broker needed")
    demo.add_argument(
        "--duration",
        type=seconds_or_zero,
        default=0,
        help="seconds to run, 0 or more (default: 0, until Ctrl-C)",
    )
    demo.add_argument(
        "--broker", default=None, help="also publish to this broker (mqtt://host:port)"
    )
    demo.add_argument(
        "--keep-state",
        action="store_true",
        help="reuse the state directory of the last --keep-state run (in the temporary folder: "
        "edge-agent-demo) instead of a fresh one removed at exit",
    )
    demo.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)

    poll = commands.add_parser(
        "poll",
        help="read every point of one terminal once, or of a Modbus device not in the config",
    )
    poll.add_argument(
        "terminal", nargs="?", help="the terminal's name in the config (or give --tcp/--rtu)"
    )
    _config_arg(poll)
    poll.add_argument("--json", action="store_true", help="print JSON (shape in README)")
    poll.add_argument(
        "--raw",
        action="store_true",
        help="Modbus: the register words in hex, each point decoded in every word order",
    )
    _adhoc_args(poll)

    status = commands.add_parser("status", help="the running agent at a glance")
    _config_arg(status)
    _socket_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON (shape in README)")
    status.add_argument("--watch", action="store_true", help="refresh in place every 2 s")

    outbox = commands.add_parser("outbox", help="what is queued for upstream")
    _config_arg(outbox)
    _socket_arg(outbox)
    outbox.add_argument(
        "action",
        nargs="?",
        choices=("stats", "peek"),
        default="stats",
        help="stats: the figures; peek: the figures and the next messages, decoded",
    )
    outbox.add_argument("--limit", type=positive_int, default=10, help="messages to show with peek")
    outbox.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    check = commands.add_parser("check", help="run every self-check now and print the results")
    _config_arg(check)
    _socket_arg(check)
    check.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    report = commands.add_parser("report", help="write the inspection report from the history")
    _config_arg(report)
    _socket_arg(report)
    report.add_argument("--since", default="7d", help="the period: 7d, 24h ... (default 7d)")
    report.add_argument(
        "--format",
        choices=("html", "md", "pdf"),
        default="html",
        help="html (one self-contained file, A4 when printed), md, or pdf (printed by "
        "Chromium; needs --out) (default html)",
    )
    report.add_argument(
        "--lang",
        choices=("en", "zh"),
        default=None,
        help="the report's language: en or zh (default: the config's site.language, else en)",
    )
    report.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")

    bundle = commands.add_parser(
        "support-bundle", help="one .tar.gz for support: versions, config, status, logs (redacted)"
    )
    _config_arg(bundle)
    _socket_arg(bundle)
    bundle.add_argument(
        "--since",
        type=duration,
        default="24h",
        help="logs of this period: 24h, 2h ... (default 24h)",
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
    listen = sl651_commands.add_parser(
        "listen",
        help="show live what stations send, decoded; answers nothing unless --confirm",
    )
    source = listen.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--port", type=count(0, 65535), help="listen for stations on this TCP port (0: any free)"
    )
    source.add_argument("--device", help="read this serial port")
    listen.add_argument(
        "--host", default="0.0.0.0", help="with --port: the address to listen on (default all)"
    )
    listen.add_argument(
        "--baudrate", type=count(1), default=9600, help="with --device (default 9600)"
    )
    listen.add_argument(
        "--confirm",
        action="store_true",
        help="answer as the central station does (confirmations, M3 NAKs); the stations then "
        "delete what they sent, and this tool keeps nothing",
    )
    listen.add_argument(
        "--json", action="store_true", help="one JSON object per line (shape in README)"
    )

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
    validate.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        metavar="PATH",
        help="the config file (the same as --config)",
    )
    _config_arg(validate)
    validate.add_argument(
        "--no-files",
        dest="files",
        action="store_false",
        help="check the file only, not the files it names (the installer's self-test: whether "
        "a release accepts the config, not whether this machine is set up)",
    )
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


def _same_file(one: Path, other: Path) -> bool:
    """Whether two paths name one file (`x.yaml` and `/here/x.yaml`, a link and its target)."""
    try:
        return one.samefile(other)
    except OSError:  # one of them does not exist: the same name, or not the same
        return one.absolute() == other.absolute()


def cmd_config_validate(args: argparse.Namespace) -> int:
    from agent.config_access import file_problems

    if args.path is not None and args.config is not None and not _same_file(args.path, args.config):
        return _fail(f"two config files given: {args.path} and --config {args.config}; give one")
    path = args.path or args.config or default_config_path()
    config = _load_config(path)
    if config is None:
        return EXIT_USAGE
    problems = file_problems(config) if args.files else []
    for line in problems:
        print(f"{path}: {line}", file=sys.stderr)
    if problems:
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
    return _end_now(daemon.exit_code)  # 4: a release on trial did not pass its gate


def _end_now(code: int) -> NoReturn:
    """The agent's process ends here, once every part is closed and what it had is written
    (or, past the stop deadline, counted and logged): what is left is the interpreter freeing
    a large site's objects one by one, near a second at 5,000 terminals, of the 5 s the agent
    has after SIGTERM (docs/updates.md names exit code 4)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


ADHOC_OPTIONS = ("unit", "table", "address", "count", "type", "timeout")
RTU_OPTIONS = ("baudrate", "parity", "bytesize", "stopbits")


def cmd_poll(args: argparse.Namespace) -> int:
    from agent.protocols.driver import DriverError, PollAnswer
    from agent.protocols.modbus.adhoc import RawPoll, adhoc_terminal, poll_raw, poll_raw_of
    from agent.protocols.modbus.driver import poll_terminal
    from agent.protocols.registry import poll_once
    from agent.render import poll_errors, poll_json, poll_table, raw_poll_json, raw_poll_view

    given = [o for o in ADHOC_OPTIONS + RTU_OPTIONS if getattr(args, o) is not None]
    adhoc = args.tcp is not None or args.rtu is not None
    if adhoc and args.terminal is not None:
        return _fail(f"give a terminal of the config ({args.terminal}) or --tcp/--rtu, not both")
    if not adhoc and args.terminal is None:
        return _fail("give a terminal of the config, or a device with --tcp HOST or --rtu DEVICE")
    if not adhoc and given:
        return _fail(f"--{given[0]} describes a device not in the config: give --tcp or --rtu")
    if args.tcp is not None and (serial := [o for o in given if o in RTU_OPTIONS]):
        return _fail(f"--{serial[0]} is a serial line setting: it goes with --rtu, not --tcp")
    configure_logging("error", "console")
    answer: PollAnswer | RawPoll
    try:
        if adhoc:
            options = {("type_" if o == "type" else o): getattr(args, o) for o in given}
            terminal = adhoc_terminal(tcp=args.tcp, rtu=args.rtu, **options)
            if args.raw:
                answer = asyncio.run(poll_raw(terminal))
            else:
                answer = asyncio.run(poll_terminal(terminal))
        else:
            config = _load_config(args.config)
            if config is None:
                return EXIT_USAGE
            if args.raw:
                answer = asyncio.run(poll_raw_of(config, args.terminal))
            else:
                answer = asyncio.run(poll_once(config, args.terminal))
    except (DriverError, ValueError) as exc:
        return _fail(str(exc))
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    if isinstance(answer, RawPoll):
        if args.json:
            print(json.dumps(raw_poll_json(answer), indent=2))
        else:
            _wide_console().print(raw_poll_view(answer))
        return EXIT_OK if answer.all_read else EXIT_FINDING
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
    from agent.commissioning import probe
    from agent.control import ControlError, NotRunning
    from agent.render import checks_json, checks_source_line, checks_table

    target = reach(args.config, args.socket)
    configure_logging("error", "console")
    source = "agent"
    try:
        results = [CheckResult.from_dict(r) for r in ask(target, "checks", {"run": True})]
    except NotRunning:
        if (config := target.config) is None:
            return _unreached(target)
        source = "probe"
        results = asyncio.run(probe(config, target.config_path))
    except ControlError as exc:
        return _unreached(target, str(exc)) if target.config is None else _fail(str(exc))
    if args.json:
        print(json.dumps(checks_json(results, source), indent=2))
    else:
        console = _wide_console()
        console.print(checks_table(results))
        console.print(checks_source_line(results, source))
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
            return offline_status(config, target.config_path)
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
    from agent.status import (
        config_outbox_on_disk,
        outbox_peek_table,
        outbox_stats_table,
        peek_outbox,
    )

    target = reach(args.config, args.socket)
    limit = args.limit if args.action == "peek" else 0
    where = None
    try:
        answer = ask(target, "outbox", {"limit": limit})
        stats, messages = {"source": "agent", **answer["stats"]}, answer["messages"]
    except NotRunning:
        if (config := target.config) is None:
            return _unreached(target)
        where = config.outbox_path
        stats = config_outbox_on_disk(config)
        try:
            messages = peek_outbox(where, limit) if limit else []
        except sqlite3.Error as exc:
            return _fail(f"cannot read {where}: {exc}", EXIT_FINDING)
    except ControlError as exc:
        return _unreached(target, str(exc)) if target.config is None else _fail(str(exc))
    if args.json:
        document = {
            "schema": OUTBOX_SCHEMA,
            "source": stats["source"],
            "stats": stats,
            "messages": messages,
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    console = _wide_console()
    console.print(outbox_stats_table(stats, where))
    if args.action == "peek" and messages:
        console.print(outbox_peek_table(messages))
    elif args.action == "peek":
        console.print("no messages waiting")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from agent.check_settings import ReportSettings
    from agent.checks.history import History
    from agent.checks.report import build_report, render
    from agent.checks.report_print import PrintError, print_pdf
    from agent.control import ControlError, NotRunning
    from agent.durations import parse_duration
    from agent.inspection import history_path, report_since

    try:
        parse_duration(args.since)
    except ValueError as exc:
        return _fail(f"--since: {exc}")
    if args.format == "pdf" and args.out is None:
        return _fail("--format pdf needs --out FILE (a PDF is not written to a terminal)")
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
    config = target.config
    settings = config.checks.report if config else ReportSettings()
    site = config.site if config else None
    language = args.lang or (site.language if site else "en")
    if not path.exists():
        return _fail(f"no history yet at {path}: the agent writes it while it runs")
    history = History(path)
    try:
        history.open()
        report = build_report(
            history,
            report_since(args.since),
            key_points=settings.key_points,
            max_trends=settings.max_trends,
            language=language,
            site=site,
            names=config.point_label if config else None,
        )
    except (OSError, sqlite3.Error, ValueError) as exc:
        return _fail(f"cannot write the report from {path}: {exc}")
    finally:
        history.close()
    text = render(report, "md" if args.format == "md" else "html")
    if args.format == "pdf":
        try:
            print_pdf(text, args.out)
        except PrintError as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"cannot write {args.out}: {exc.strerror or exc}")
    elif args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    else:
        try:
            write_atomic(args.out, text.encode())
        except OSError as exc:
            return _fail(f"cannot write {args.out}: {exc.strerror or exc}")
    print(f"wrote {args.out} ({args.format}, {language}, since {args.since})")
    return EXIT_OK


def cmd_support_bundle(args: argparse.Namespace) -> int:
    import base64

    from agent.control import ControlError, NotRunning
    from agent.diagnosis.support_bundle import OfflineSource, build, default_name

    since = args.since
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
    if args.sl651_command == "listen":
        return cmd_sl651_listen(args)
    return cmd_sl651_decode(args)


def cmd_sl651_listen(args: argparse.Namespace) -> int:
    from agent.protocols.sl651.listen import Event, Listener
    from agent.render import sl651_heard

    console = _wide_console()

    def show(event: Event) -> None:
        if args.json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
        else:
            console.print(sl651_heard(event, args.confirm))

    listener = Listener(show, confirm=args.confirm)
    try:
        if args.device is not None:
            asyncio.run(listener.serve_serial(args.device, args.baudrate))
        else:
            asyncio.run(listener.serve_tcp(args.host, args.port))
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C: the way to stop listening
    except OSError as exc:
        return _fail(f"sl651 listen: {exc.strerror or exc}")
    return EXIT_OK


def cmd_sl651_decode(args: argparse.Namespace) -> int:
    from agent.protocols.sl651 import describe_hex
    from agent.render import sl651_frame_view

    lines = list(args.frames) or [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not lines:
        return _fail("no frames: give hex frames as arguments or on stdin, one per line")
    described = [describe_hex(line) for line in lines]
    if args.json:
        document = {"schema": SL651_DECODE_SCHEMA, "frames": described}
        print(json.dumps(document, ensure_ascii=False, indent=2))
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
        print(json.dumps({"schema": KEYS_SCHEMA, **info}, indent=2))
        return EXIT_OK
    jwk = info["jwk"]
    print(f"key id:     {info['kid']}")
    print(f"algorithm:  EdDSA ({jwk.get('crv', 'Ed25519')})")
    print(f"public key: {jwk.get('x')} (JWK x, base64url)")
    print(f"\n{info['public_key_pem']}", end="" if info["public_key_pem"].endswith("\n") else "\n")
    return EXIT_OK


def _wide_console() -> Console:
    """A console that does not wrap tables at 80 columns when its output is piped."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.data import DEMO_CONFIG
    from agent.demo import run_demo
    from agent.outbox import OutboxError
    from agent.signing import KeyStoreError

    configure_logging("warning", "console")
    try:
        return asyncio.run(
            run_demo(
                _wide_console(),
                args.duration,
                args.config or DEMO_CONFIG,
                broker=args.broker,
                keep_state=args.keep_state,
            )
        )
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except (OSError, OutboxError, KeyStoreError, sqlite3.Error) as exc:
        # A port taken between its choice and its use, another --keep-state demo on the
        # same state: one line saying why.
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
