"""The parser every `edge-agent` command is built on: what `--help` says, and argument types
that refuse a bad value.

`CommandParser` is the root parser's class, and argparse gives it to every sub-command parser
(also those that `agent/update`, `agent/diagnosis` add): each command's `--help` then has its
description (`DESCRIPTIONS`, or its one-line help), the default of every option, and the exit
codes it can return (0; 1 where `FINDINGS` says what it means for the command; 2; and its
`EXTRA_EXIT_CODES`). The manual page (agent/manpage.py) is written from the same parser, so it
says the same. The types (`count`, `positive_int`, `duration`, `seconds`, `seconds_or_zero`)
make argparse refuse a bad value with exit 2 and one line naming the option.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from agent.durations import parse_duration

T = TypeVar("T")

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
NEGATIVE = re.compile(r"^-\d*\.?\d+(ms|s|m|h|d)?$")  # -1, -0.5, -.5, -3d, -500ms

OK = (EXIT_OK, "ok")
USAGE = (EXIT_USAGE, "bad usage or bad input (an invalid option or config file), said on stderr")
NOT_RUNNING = (EXIT_NOT_RUNNING, "the agent is not running (nothing answers on its control socket)")
# The list `edge-agent --help` and the manual page give for the program as a whole.
EXIT_CODES = (
    OK,
    (
        EXIT_FINDING,
        "a finding: a failed check, a point or terminal that did not answer, a frame that did "
        "not decode, a rejected release (each command's --help says which)",
    ),
    USAGE,
    (EXIT_NOT_RUNNING, "the agent is not running (status, diag grant, diag revoke)"),
    (4, "run: a release on trial did not pass its gate (the pre-start hook rolls it back)"),
)
# What exit status 1 means, for the commands that have it; the others exit 0 or 2 (or a code
# of EXTRA_EXIT_CODES).
FINDINGS = {
    "poll": "a point did not give a good value (with --raw: a read failed)",
    "status": "something fails: a check, or a terminal failing or stale",
    "outbox": "the outbox database on disk could not be read",
    "check": "a check fails",
    "sl651 decode": "a frame did not decode, or its CRC is wrong",
    "install": "the new release failed its self-test, or a step of the install failed",
    "update apply": "the release was rejected, or a step failed (nothing changed then)",
    "update check": "the repository's metadata was rejected, or the update state is unreadable",
    "update status": "the update state could not be read",
    "update commit": "nothing to commit, or the update state could not be written",
    "update rollback": "no release to go back to, or a step of the rollback failed",
    "remote": "no verified answer in time, the broker unreachable, or the gateway refused or "
    "failed the request",
    "fleet": "a gateway is forged, offline or failing, none is found, or the broker is unreachable",
    "diag audit": "the audit log could not be read, or its chain is broken (--verify)",
}
# Exit codes beyond 0, 1 and 2, of the commands that have them.
EXTRA_EXIT_CODES: dict[str, tuple[tuple[int, str], ...]] = {
    "run": (
        (4, "a release on trial did not pass its gate (the unit's pre-start hook rolls it back)"),
    ),
    "status": (NOT_RUNNING,),
    "diag grant": (NOT_RUNNING,),
    "diag revoke": (NOT_RUNNING,),
}
# A command that only dispatches to its actions (`update`, `diag` …) points at theirs.
GROUP_EXIT_CODES = "exit codes: those of each ACTION, in its --help"

# What `COMMAND --help` says under its usage: the command's job in a few sentences. A command
# without an entry shows its one-line help.
DESCRIPTIONS = {
    "run": "Run the agent in the foreground: poll the terminals, keep every reading in the "
    "outbox, forward it upstream, run the self-checks. systemd runs this; it stops on SIGTERM "
    "and reloads its config on SIGHUP or when the file changes.",
    "demo": "Run the agent on a simulated site (Modbus TCP, Modbus RTU and SL651 terminals) "
    "with a live view; no hardware and no broker needed. Each run starts from a fresh state "
    "directory (removed at exit) unless --keep-state; a default port that is taken is replaced "
    "by a free one, printed on screen.",
    "poll": "Read every point of one configured terminal once, or of a Modbus device not in "
    "the config (--tcp or --rtu with --unit, --table, --address, --count, --type), and print "
    "each value with its quality; one line per distinct problem says what to check. --raw shows "
    "the register words in hex and each point decoded in every word order. Exits 1 when a point "
    "is not good.",
    "status": "The agent at a glance: uplink, outbox, terminals and the checks that warn or "
    "fail. Asks the running agent over its control socket; when none answers, shows what is on "
    "disk (the last health report, the outbox) and exits 3. Exits 1 when something fails.",
    "outbox": "What waits to be sent upstream: the messages per queue, their size and the age "
    "of the oldest (stats), and the next messages decoded (peek). From the running agent, else "
    "read-only from the database on disk; the output says which.",
    "check": "Run every self-check now and print the results, failing first. With no agent "
    "running, probe what can be probed from here: each terminal polled once, a session with the "
    "broker, the outbox read from disk. Exits 1 when a check fails.",
    "report": "Write the inspection report of a period up to now from the agent's history (a "
    "running agent writes what it holds in memory first), in English or Chinese, as HTML, "
    "Markdown or (through Chromium) PDF.",
    "support-bundle": "Write one .tar.gz for support: versions, the config with its secrets "
    "redacted, status, checks, logs, outbox, update state and the audit tail. Without a running "
    "agent, what the files on disk hold.",
    "keys": "The device identity: the Ed25519 key that signs everything the agent sends.",
    "keys init": "Create the device key under state_dir; an existing key is replaced only with "
    "--force (gateways and desks that trust the old one must be told).",
    "keys show": "Print the device key's id and public key: what a support desk trusts with "
    "`edge-agent remote trust`.",
    "sl651": "SL651-2014 tools for the field.",
    "sl651 decode": "Decode SL651 frames given as hex (arguments, or stdin one per line; spaces "
    "allowed): the header, then every element with its name, value and unit. Exits 1 when a "
    "frame does not decode or its CRC is wrong.",
    "sl651 listen": "Listen on a TCP port or a serial device and show live what SL651 stations "
    "send, decoded, as `sl651 decode` shows it. Answers nothing unless --confirm (then it "
    "confirms as the agent's central station does). Ctrl-C ends it.",
    "install": "Install a release from a wheelhouse into the install layout, self-test it and "
    "switch `current` to it (the package's postinst runs this). Exits 1 when the new release "
    "fails its self-test, 2 for a bad wheelhouse.",
    "update": "Signed updates of this gateway: apply a release and put it on trial, show the "
    "state, keep it, or go back.",
    "update apply": "Verify a release (a bundle file, the newest online, or what the agent "
    "asked for), install it beside the running one, switch to it and restart: it runs on trial "
    "until it passes its gate. Exits 1 when the release is rejected or a step fails; nothing "
    "changes then.",
    "update check": "Ask the update repository for the newest release of update.channel and "
    "say whether it is newer than the one running.",
    "update status": "The update state: the release running, whether it is on trial and until "
    "when, the previous one, and the last outcome.",
    "update commit": "End the trial of the running release now and keep it.",
    "update rollback": "Go back to the previous release and restart the agent on it.",
    "update hook": "The service unit's ExecStartPre=/ExecStopPost= logic: counts starts of a "
    "release on trial and rolls back one that does not start. Always exits 0.",
    "release": "Vendor side: the signed update repository (TUF metadata, keys, releases, "
    "offline bundles). Exits 2 on bad input.",
    "release init": "Make a new update repository and its keys (private keys beside it, never "
    "in it).",
    "release add": "Publish a release: its wheels and manifest as targets of a channel, with "
    "fresh snapshot and timestamp.",
    "release sign": "Sign snapshot and timestamp again, with a fresh expiry.",
    "release rotate": "Write a new root: add or revoke a role's keys, or change its threshold.",
    "release bundle": "One release as one file, for gateways without a network: the metadata, "
    "the wheels and the manifest.",
    "remote": "Support desk: send a signed diagnosis request to a gateway over the broker and "
    "print its verified answer; or make your key (keygen), or trust a gateway's key (trust). "
    "The first word is keygen, trust, or the gateway to ask; the words first, then the options "
    "(or the options first).",
    "fleet": "Support desk: every gateway under a topic prefix from the broker's retained "
    "state and health, verified with the gateways' keys, worst first. Exits 1 when one is "
    "forged, offline or failing, or none is found.",
    "diag": "The site owner's consent to remote diagnosis, and the audit trail of every request.",
    "diag grant": "Open a consent window: support engineers may use the actions that need "
    "consent for this many minutes. Asks the running agent.",
    "diag revoke": "Close the consent window now. Asks the running agent.",
    "diag status": "The consent mode and the window open now, if any.",
    "diag audit": "The audit trail of diagnosis requests, hash-chained; --verify checks the "
    "chain and exits 1 when it is broken.",
    "config": "Config file tools.",
    "config validate": "Check a config file as the agent loads it (every key and value, and what "
    "refers to what: data checks to points, SL651 stations to a listener) and the files it "
    "names (the TLS CA, certificate and key exist, and the service user can read them). "
    "Prints every problem with its key path; exits 2 when there is one.",
}


def option_help(action: argparse.Action) -> str:
    """An option's help as `--help` and the manual page show it: with its default when it has
    one worth saying (not None, off, or empty) and the text does not say it already. A flag
    (`--json`, `--no-files`) takes no value: its default is only the other side of its help."""
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return text
    default = action.default
    shown = default not in (None, False, [], "", argparse.SUPPRESS)
    flag = action.nargs == 0  # store_true, store_false, count
    takes_default = (bool(action.option_strings) and not flag) or action.nargs in ("?", "*")
    if shown and takes_default and "default" not in text:
        text = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
    if "%(" in text:
        text = text % {**vars(action), "default": default}
    return text


def exit_codes(command: str) -> tuple[tuple[int, str], ...]:
    """The exit codes `command` (its path: "status", "update apply"; "" the program) can
    return, each with its meaning for that command."""
    if not command:
        return EXIT_CODES
    finding = ((EXIT_FINDING, FINDINGS[command]),) if command in FINDINGS else ()
    return (OK, *finding, USAGE, *EXTRA_EXIT_CODES.get(command, ()))


def epilog(command: str) -> str:
    """The exit codes of `command` (its path: "status", "update apply"), for its --help."""
    lines = [f"  {code}  {meaning}" for code, meaning in exit_codes(command)]
    return "exit codes:\n" + "\n".join(lines)


class HelpFormatter(argparse.HelpFormatter):
    """Defaults in every option's help; the description wrapped, the exit codes kept as lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return option_help(action).replace("%", "%%")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if len(lines) > 1 and all(line.startswith("  ") for line in lines[1:]):
                # A list ("exit codes:" then "  0  ok" …): one item a line, wrapped under itself.
                items = [textwrap.fill(lines[0], width, initial_indent=indent)]
                for line in lines[1:]:
                    hang = len(line) - len(line.lstrip()) + len(line.split()[0]) + 2
                    items.append(
                        textwrap.fill(
                            line.strip(),
                            width,
                            initial_indent=indent + line[: len(line) - len(line.lstrip())],
                            subsequent_indent=indent + " " * hang,
                        )
                    )
                paragraphs.append("\n".join(items))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-commands that get their description and exit codes from the tables above."""

    command = ""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        command = f"{self.command} {name}".strip()
        kwargs["description"] = DESCRIPTIONS.get(command) or kwargs.get("description")
        kwargs["description"] = kwargs["description"] or kwargs.get("help")
        kwargs.setdefault("epilog", epilog(command))
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        if isinstance(parser, CommandParser):
            parser.command = command
        return parser


class CommandParser(argparse.ArgumentParser):
    """The root parser's class; argparse makes every sub-command's parser of it too."""

    command = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)
        # A value that looks like a negative number or period (`-1`, `-3d`) is an option's
        # value, which its type then refuses with the reason ("cannot be negative"), rather
        # than an unknown option ("expected one argument"). No option of ours looks like one.
        self._negative_number_matcher = NEGATIVE

    def add_subparsers(self, **kwargs: Any) -> Any:
        commands = super().add_subparsers(**kwargs)
        if isinstance(commands, _Commands):
            commands.command = self.command
        if self.command:  # a group: its actions have the exit codes
            self.epilog = GROUP_EXIT_CODES
        return commands


# -- argument types: a bad value is refused by argparse (exit 2, one line naming the option) ---


def _parsed(text: str, convert: Callable[[str], T], kind: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None


def count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """The type of a whole number of at least `minimum` and at most `maximum` (`--limit 10`,
    `--unit 1`)."""

    def whole_number(text: str) -> int:
        value = _parsed(text, int, "a whole number")
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum} to {maximum}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text!r}")
        return value

    return whole_number


positive_int = count(1)


def duration(text: str) -> float:
    """A period above zero as people write it (`24h`, `90m`, `7d`; a bare number is seconds),
    in seconds."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than zero, got {text!r}")
    return seconds


def seconds(text: str) -> float:
    """A number of seconds above zero (`--timeout 30`, `--wait 0.5`)."""
    value = _parsed(text, float, "a number of seconds")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above zero, got {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    """A number of seconds, 0 or more, where 0 means no limit (`demo --duration`)."""
    value = _parsed(text, float, "a number of seconds")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value
