"""`edge-agent diag …`: the site owner's consent and the audit trail (README "Remote diagnosis").

`grant`, `revoke` and `status` ask the running agent over its control socket (the agent
writes `consent.json` and says so upstream); `status` reads the file when no agent runs.
`audit` reads `state_dir/audit.log` (`--verify` checks its chain). Exit status: 0 ok, 1 a
finding (`audit --verify` found a problem), 2 bad usage or an invalid config, 3 the agent is
not running (grant, revoke).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli_parser import positive_int
from agent.diagnosis.consent import MAX_MINUTES, MIN_MINUTES, ConsentStore, consent_state

if TYPE_CHECKING:
    from agent.config import Config

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
STATUS_SCHEMA = 1  # `diag status --json`
PROG = "edge-agent diag"


def add_diag_parser(commands: Any) -> None:
    """`diag` and its actions, on the CLI's sub-command parsers."""
    diag = commands.add_parser("diag", help="remote diagnosis: consent and the audit trail")
    actions = diag.add_subparsers(dest="diag_command", required=True, metavar="ACTION")

    grant = actions.add_parser("grant", help="let support engineers in for a while")
    _common(grant)
    grant.add_argument(
        "--minutes", type=int, required=True, help=f"how long ({MIN_MINUTES} to {MAX_MINUTES})"
    )
    grant.add_argument("--by", default=None, help="who grants (default: your user name)")
    grant.add_argument(
        "--actions", default=None, metavar="A,B", help="only these actions (default: all)"
    )

    revoke = actions.add_parser("revoke", help="close the consent window now")
    _common(revoke)
    revoke.add_argument("--by", default=None, help="who revokes (default: your user name)")

    status = actions.add_parser("status", help="the consent mode and the open window")
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    audit = actions.add_parser("audit", help="the audit trail of diagnosis requests")
    _common(audit)
    audit.add_argument("--verify", action="store_true", help="check the hash chain (exit 1)")
    audit.add_argument("--json", action="store_true", help="print JSON lines")
    audit.add_argument(
        "--tail",
        type=positive_int,
        default=None,
        metavar="N",
        help="the last N lines only, 1 or more (default: the whole log)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/config.yaml)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        help="the running agent's control socket (default: the config's control.socket)",
    )


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def run_diag(args: argparse.Namespace) -> int:
    """Run `edge-agent diag <action>`; the exit status."""
    from agent.config import ConfigError, default_config_path, load_config

    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_USAGE
    if args.diag_command == "audit":
        return _audit(config, args)
    socket = args.socket or config.control.socket
    if args.diag_command == "status":
        return _status(config, socket, args.json)
    if args.diag_command == "grant":
        if not MIN_MINUTES <= args.minutes <= MAX_MINUTES:
            return _fail(f"--minutes: {MIN_MINUTES} to {MAX_MINUTES} (24 hours)")
        request: dict[str, Any] = {"minutes": args.minutes, "by": args.by or _user()}
        if args.actions is not None:
            request["actions"] = [a.strip() for a in args.actions.split(",") if a.strip()]
        return _change(socket, "diag-grant", request)
    return _change(socket, "diag-revoke", {"by": args.by or _user()})


def _ask(socket: Path, name: str, request: dict[str, Any] | None = None) -> Any:
    from agent.control import request as control_request

    return asyncio.run(control_request(socket, name, request))


def _change(socket: Path, name: str, request: dict[str, Any]) -> int:
    from agent.control import ControlError, NotRunning

    try:
        answer = _ask(socket, name, request)
    except NotRunning:
        return _fail(
            f"the agent is not running (nothing answers on {socket}): consent is given to a "
            "running agent",
            EXIT_NOT_RUNNING,
        )
    except ControlError as exc:
        return _fail(str(exc))
    if name == "diag-grant":
        window = answer["window"]
        which = ", ".join(window["actions"]) if window["actions"] else "every action"
        print(f"consent granted until {window['until']} by {window['granted_by']}: {which}")
        if answer["consent"] != "grant":
            print(f"note: diagnosis.consent is {answer['consent']!r}: the window changes nothing")
    elif answer.get("revoked"):
        print(f"consent revoked (it was open until {answer['revoked']['until']})")
    else:
        print("no consent window was open")
    return EXIT_OK


def _status(config: Config, socket: Path, as_json: bool) -> int:
    from agent.control import ControlError, NotRunning

    try:
        state = _ask(socket, "diag-status")
    except (NotRunning, ControlError):
        settings = config.diagnosis
        state = {
            **consent_state(settings.consent, ConsentStore(config.layout).read()),
            "without_consent": list(settings.without_consent),
        }
    if as_json:
        print(json.dumps({"schema": STATUS_SCHEMA, **state}, indent=2))
        return EXIT_OK
    window = state["window"]
    free = ", ".join(state["without_consent"]) or "none"
    print(f"consent: {state['consent']} (always allowed: {free})")
    if window is None:
        print("no consent window open")
    else:
        which = ", ".join(window["actions"]) if window["actions"] else "every action"
        print(f"open until {window['until']}, granted by {window['granted_by']}: {which}")
    return EXIT_OK


def _audit(config: Config, args: argparse.Namespace) -> int:
    from agent.diagnosis.audit import tail, verify

    path = config.layout.audit_log
    try:
        entries = tail(path, args.tail)
        problems = verify(path) if args.verify else []
    except OSError as exc:
        return _fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_FINDING)
    if args.json:
        for entry in entries:
            print(json.dumps(entry, ensure_ascii=False))
    else:
        for e in entries:
            reason = f" ({e.get('reason')})" if e.get("reason") else ""
            print(
                f"{e.get('n'):>5} {e.get('at')} {e.get('engineer') or '-'} "
                f"{e.get('action') or '-'} {e.get('outcome')}{reason}"
            )
    if args.verify:
        for problem in problems:
            print(f"{PROG} audit: {problem}", file=sys.stderr)
        if problems:
            return EXIT_FINDING
        if not args.json:
            print(f"audit chain intact ({path})")
    return EXIT_OK
