"""edge-agent(1), written from the argument parser: `python -m agent.manpage > edge-agent.1`.

Every command (and action of `keys`, `sl651`, `config`) with its arguments and options comes from
`agent.cli.build_parser()`, so the page cannot drift from the program; EXIT STATUS and FILES
(the install layout, `agent.update.layout`) are written here. `make man` writes
build/edge-agent.1.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from agent import __version__
from agent.cli import build_parser
from agent.cli_parser import exit_codes, option_help
from agent.update.layout import InstallLayout


def escape(text: str) -> str:
    """Text safe in a troff line: backslashes, hyphens and leading dots or quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every subcommand of `parser`, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, str(helps.get(name, "")), sub))
    return found


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    return " ".join(usage.removeprefix("usage:").split())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += " " + (action.metavar or action.dest.upper())  # type: ignore[operator]
        else:
            names = str(action.metavar or action.dest).upper()
            if action.choices:
                names = "{" + ",".join(str(c) for c in action.choices) + "}"
        lines += [".TP", f"\\fB{escape(names)}\\fR", escape(option_help(action))]
    return lines


def _command(name: str, help_text: str, parser: argparse.ArgumentParser) -> list[str]:
    """One command's section: its one line, its description, usage, options, and the exit
    codes it has beyond 0 and 2 (what 1 means for it, 3, 4)."""
    out = [f".SS {escape(name)}", escape(help_text)]
    if parser.description and parser.description != help_text:
        out += [".PP", escape(" ".join(parser.description.split()))]
    out += [".PP", f"\\fBUsage:\\fR {escape(_usage(parser))}"]
    out += _options(parser)
    extra = [(code, meaning) for code, meaning in exit_codes(name) if code not in (0, 2)]
    for code, meaning in extra:
        out += [".PP", f"\\fBExit status {code}:\\fR {escape(meaning)}"]
    return out


def manpage(parser: argparse.ArgumentParser | None = None, date: str | None = None) -> str:
    """The whole page, troff (man macros)."""
    parser = parser or build_parser()
    date = date or datetime.now(UTC).strftime("%Y-%m-%d")
    layout = InstallLayout()
    out = [
        f'.TH EDGE\\-AGENT 1 "{date}" "edge\\-agent {escape(__version__)}" "User Commands"',
        ".SH NAME",
        f"edge\\-agent \\- {escape(parser.description or '')}",
        ".SH SYNOPSIS",
        ".B edge\\-agent",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        "The field agent of a hydrology gateway: polls Modbus and SL651 terminals, keeps every",
        "reading in a signed, durable outbox and forwards it upstream over MQTT, and checks",
        "itself and the gateway. systemd runs",
        "\\fBedge\\-agent run \\-\\-config /etc/edge\\-agent/config.yaml\\fR;",
        "the other commands are for people and scripts.",
        ".SH OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
    ]
    for name, help_text, sub in _subcommands(parser):
        actions = _subcommands(sub)
        if actions:
            for action, action_help, action_parser in actions:
                out += _command(f"{name} {action}", action_help, action_parser)
        else:
            out += _command(name, help_text, sub)
    out.append(".SH EXIT STATUS")
    for code, meaning in exit_codes(""):
        out += [".TP", f"\\fB{code}\\fR", escape(meaning)]
    out.append(".SH FILES")
    files = [
        (layout.config, "the config (root:edge\\-agent 0640)"),
        (layout.credentials_dir, "secrets handed over as systemd credentials"),
        (layout.state_dir, "outbox, history, device key and state files"),
        (layout.runtime_dir / "control.sock", "the running agent's control socket"),
        (layout.releases_dir / "VERSION", "one release: a virtual environment with the agent"),
        (layout.current, "the release systemd runs (symlink)"),
        (layout.previous, "the release before (symlink), the rollback target"),
        (layout.bin_link, "symlink to /opt/edge\\-agent/current/bin/edge\\-agent"),
        (layout.wheelhouse, "the wheels the package installs from"),
    ]
    for path, meaning in files:
        shown = escape(str(path)).replace("VERSION", "\\fIVERSION\\fR\\fB")
        out += [".TP", f"\\fB{shown}\\fR", meaning]
    out += [
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.exec\\fR(5),",
        "\\fBsystemd\\-creds\\fR(1);",
        "/usr/share/doc/edge\\-agent/README.md",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(manpage())
    return 0


if __name__ == "__main__":
    sys.exit(main())
