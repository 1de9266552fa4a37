"""edge-agent(1): generated from the parser, it names every command and option, and groff takes it."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from agent.cli import build_parser
from agent.manpage import manpage


def _walk(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    commands: set[str] = set()
    options: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands.add(name)
                more_commands, more_options = _walk(sub)
                commands |= more_commands
                options |= more_options
        elif action.help != argparse.SUPPRESS:
            options.update(o for o in action.option_strings if o not in ("-h", "--help"))
    return commands, options


def test_every_command_and_option_is_on_the_page() -> None:
    page = manpage(date="2026-01-01")
    plain = page.replace("\\-", "-")
    commands, options = _walk(build_parser())
    assert {"run", "demo", "install", "config", "validate", "keys", "show"} <= commands
    assert {"--wheelhouse", "--prefix", "--keep", "--config", "--json"} <= options
    for command in commands:
        assert f".SS {command}" in plain or f" {command}\n" in plain, command
    for option in options:
        assert f"\\fB{option}" in plain, option
    for section in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "EXIT STATUS",
        "FILES",
        "SEE ALSO",
    ):
        assert f".SH {section}\n" in page
    assert "/opt/edge-agent/current" in plain and "/etc/edge-agent/config.yaml" in plain


def test_each_command_has_its_description_defaults_and_own_exit_codes() -> None:
    plain = manpage(date="2026-01-01").replace("\\-", "-")
    validate = plain.split(".SS config validate\n", 1)[1].split(".SS ", 1)[0]
    assert "Check a config file as the agent loads it" in validate
    status = plain.split(".SS status\n", 1)[1].split(".SS ", 1)[0]
    assert "\\fBExit status 3:\\fR the agent is not running" in status
    assert "\\fBExit status 1:\\fR something fails" in status
    decode = plain.split(".SS sl651 decode\n", 1)[1].split(".SS ", 1)[0]
    assert "\\fBExit status 1:\\fR a frame did not decode, or its CRC is wrong" in decode
    assert "release" not in decode
    assert "Exit status 1" not in validate
    # A flag (--no-files) has no "default: True": its default is the other side of its help.
    assert "(default: True)" not in plain and "(default: False)" not in plain
    outbox = plain.split(".SS outbox\n", 1)[1].split(".SS ", 1)[0]
    assert "messages to show with peek (default: 10)" in outbox
    exit_status = plain.split(".SH EXIT STATUS\n", 1)[1].split(".SH ", 1)[0]
    for code in ("0", "1", "2", "3", "4"):
        assert f"\\fB{code}\\fR" in exit_status


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_renders_it_without_warnings() -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"],
        input=manpage(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stderr == ""
