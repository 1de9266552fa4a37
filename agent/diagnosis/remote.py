"""`edge-agent remote …`: the support engineer asks one gateway one thing (docs/diagnosis.md).

    edge-agent remote keygen --out FILE [--force] [--json]
    edge-agent remote trust GATEWAY FILE --known PATH
    edge-agent remote GATEWAY ACTION [NAME=VALUE …] --broker URL --key KEY --known PATH …

`ask_gateway` subscribes to ``<prefix>/diag/resp`` first, then publishes the signed request on
``<prefix>/diag/req`` (QoS 1) and waits for the answer with the request's id: each message is
verified with the gateway's key from the known-gateways file (one that fails is reported as
"forged or unverifiable answer ignored" and does not count), answers to other requests are
passed over, chunks are joined. The rest of this module is the command's face: arguments,
rendering (a tree or table, or the JSON), exit status: 0 ok, 1 refused, failed or no answer in
time, 2 bad usage (a key, the known-gateways file, a NAME=VALUE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.cli_parser import seconds
from agent.diagnosis.connect import (
    Broker,
    add_broker_arguments,
    broker_from_args,
    describe_connect_error,
)
from agent.diagnosis.engineer import (
    ChunkError,
    DeskError,
    EngineerKey,
    KnownGateways,
    NotOurs,
    Reassembler,
    Unverifiable,
    sign_request,
    verify_answer,
)

if TYPE_CHECKING:  # rich only where the desk shows something: the agent's parser never loads it
    from rich.console import RenderableType
    from rich.table import Table
    from rich.tree import Tree

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2
JSON_SCHEMA = 1  # of what `remote … --json` prints: keygen's key, a request's answer
DEFAULT_PREFIX = "edge/{gateway_id}"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_LONG_TEXT = 160  # characters of one value shown in the table view (--json prints everything)
USAGE = """edge-agent remote keygen --out FILE [--force] [--json]
       edge-agent remote trust GATEWAY FILE --known PATH
       edge-agent remote GATEWAY ACTION [NAME=VALUE ...] --broker URL --key KEY --known PATH
                         [--username U --password-file F] [--tls-ca FILE] [--prefix P]
                         [--timeout S] [--json]"""


class NoAnswer(Exception):
    """No whole answer with the request's id within the time limit."""


class Unreachable(Exception):
    """The broker could not be reached, or refused us."""


@dataclass(frozen=True)
class Answered:
    """A verified, whole answer and how it came."""

    request_id: str
    body: dict[str, Any]
    seconds: float
    chunks: int


def topic_prefix(template: str, gateway: str) -> str:
    return template.replace("{gateway_id}", gateway)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` words as the request's args; a VALUE that parses as JSON (numbers,
    true/false, null, lists…) is that value, anything else the text. DeskError when malformed."""
    args: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not _NAME.match(name):
            raise DeskError(f"{pair!r}: arguments are NAME=VALUE (e.g. terminal=dam-plc)")
        if name in args:
            raise DeskError(f"{name} is given twice")
        try:
            args[name] = json.loads(value)
        except ValueError:
            args[name] = value
    return args


def _stderr(line: str) -> None:
    print(f"edge-agent: {line}", file=sys.stderr)


async def ask_gateway(
    broker: Broker,
    key: EngineerKey,
    *,
    gateway: str,
    known: dict[str, Any],
    action: str,
    args: dict[str, Any],
    prefix: str,
    timeout: float,
    warn: Callable[[str], None] = _stderr,
) -> Answered:
    """Sign, publish, wait for and verify the answer (module docstring); NoAnswer, Unreachable."""
    response_topic, request_topic = f"{prefix}/diag/resp", f"{prefix}/diag/req"
    started = time.monotonic()
    try:
        async with broker.client("remote", timeout=min(timeout, 10.0)) as client:
            codes = await client.subscribe(response_topic, qos=1)
            for code in codes:
                if isinstance(code, ReasonCode) and code.is_failure:
                    raise Unreachable(
                        f"{broker.url} refused the subscription to {response_topic}: {code} "
                        "(check the broker's ACL for this account)"
                    )
            request_id, token = sign_request(key, gateway=gateway, action=action, args=args)
            await client.publish(request_topic, token, qos=1)
            joiner = Reassembler(request_id)
            try:
                async with asyncio.timeout(max(0.0, timeout - (time.monotonic() - started))):
                    async for message in client.messages:
                        if message.topic.value != response_topic:
                            continue
                        payload = message.payload
                        if not isinstance(payload, bytes | str):
                            payload = b""
                        try:
                            body = verify_answer(payload, known, request_id, gateway=gateway)
                        except NotOurs:
                            continue  # a genuine answer to another request
                        except Unverifiable as exc:
                            warn(f"forged or unverifiable answer ignored: {exc}")
                            continue
                        try:
                            whole = joiner.add(body)
                        except ChunkError as exc:
                            warn(f"answer chunk ignored: {exc}")
                            continue
                        if whole is not None:
                            return Answered(
                                request_id, whole, time.monotonic() - started, joiner.of or 1
                            )
            except TimeoutError:
                got = f" ({joiner.received} of {joiner.of} chunks came)" if joiner.of else ""
                raise NoAnswer(
                    f"no answer from {gateway} within {timeout:g} s{got}: is it online, "
                    f"and does it listen on {request_topic}?"
                ) from None
    except aiomqtt.MqttError as exc:
        raise Unreachable(describe_connect_error(broker, exc)) from exc
    raise NoAnswer(f"the connection to {broker.url} ended before {gateway} answered")


# -- rendering ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) > _LONG_TEXT:
        return f"{text[:_LONG_TEXT]}… ({len(text)} characters; --json prints all)"
    return text


def _rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _grow(tree: Tree, value: Any) -> None:
    from rich.text import Text

    items: list[tuple[str, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
    for name, item in items:
        if isinstance(item, list) and item and all(isinstance(r, dict) for r in item):
            tree.add(_rows_table(str(name), item))
        elif isinstance(item, list) and not any(isinstance(v, dict | list) for v in item):
            line = Text(f"{name}: ", "bold")
            line.append(_cell(", ".join(_cell(v) for v in item) or "-"))
            tree.add(line)
        elif isinstance(item, dict | list) and item:
            _grow(tree.add(Text(str(name), "bold")), item)
        else:
            line = Text(f"{name}: ", "bold")
            line.append(_cell(item))
            tree.add(line)


def result_view(action: str, result: Any) -> RenderableType:
    """A readable view of an answer's result: `status` and `checks` as the local commands show
    them, any other JSON as a tree (lists of objects as tables)."""
    from rich.text import Text
    from rich.tree import Tree

    if action == "status" and isinstance(result, dict) and "running" in result:
        from agent.status import status_view

        try:
            return status_view(result)
        except (KeyError, TypeError, ValueError):
            pass
    if action == "checks":
        from agent.checks.framework import CheckResult
        from agent.render import checks_table

        rows: Any = result.get("results") if isinstance(result, dict) else result
        try:
            return checks_table([CheckResult.from_dict(r) for r in rows or ()])
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
    if isinstance(result, list) and result and all(isinstance(r, dict) for r in result):
        return _rows_table(action, result)
    if isinstance(result, dict | list) and result:
        tree = Tree(Text(action, "bold"))
        _grow(tree, result)
        return tree
    return Text(_cell(result))


def answer_view(gateway: str, action: str, answered: Answered) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    head = Text(f"{gateway} · {action} · ")
    head.append("ok", "bold green")
    chunks = f" in {answered.chunks} chunks" if answered.chunks > 1 else ""
    head.append(
        f" · answered in {answered.seconds:.1f} s{chunks} · id {answered.request_id}", "dim"
    )
    return Group(head, result_view(action, answered.body.get("result")))


# -- the command ----------------------------------------------------------------------------------


def add_remote_parser(commands: Any) -> None:
    """`remote` on the CLI's sub-command parsers (one parser: keygen, trust, or a request)."""
    remote = commands.add_parser(
        "remote",
        help="support desk: ask a gateway for a diagnosis action (signed, consented, audited)",
        usage=USAGE,
        description="The first word is keygen, trust, or the gateway to ask. "
        "Give the words first, then the options (or the options first).",
    )
    remote.add_argument(
        "words",
        nargs="*",
        metavar="WORD",
        help="keygen | trust GATEWAY FILE | GATEWAY ACTION [NAME=VALUE ...]",
    )
    keygen = remote.add_argument_group("keygen")
    keygen.add_argument("--out", type=Path, default=None, metavar="FILE", help="private key file")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    trust = remote.add_argument_group("trust, and a request")
    trust.add_argument(
        "--known", type=Path, default=None, metavar="PATH", help="the known gateways (JSON)"
    )
    request = remote.add_argument_group("a request")
    request.add_argument("--key", type=Path, default=None, metavar="KEY", help="your private key")
    add_broker_arguments(request)
    request.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"the gateway's uplink.topic_prefix (default {DEFAULT_PREFIX})",
    )
    request.add_argument(
        "--timeout", type=seconds, default=30.0, help="seconds to wait for the answer (default 30)"
    )
    remote.add_argument("--json", action="store_true", help="print JSON")


def run_remote(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    try:
        if not words:
            raise DeskError("say what: keygen, trust GATEWAY FILE, or GATEWAY ACTION")
        if words[0] == "keygen":
            return _keygen(args, words[1:])
        if words[0] == "trust":
            return _trust(args, words[1:])
        return _request(args, words)
    except DeskError as exc:
        _stderr(str(exc))
        return EXIT_USAGE


def _keygen(args: argparse.Namespace, rest: list[str]) -> int:
    if rest:
        raise DeskError(f"remote keygen takes no words ({' '.join(rest)})")
    if args.out is None:
        raise DeskError("remote keygen: --out FILE is required (the private key is written there)")
    key = EngineerKey.generate()
    key.save(args.out, overwrite=args.force)
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, **key.public_info()}, indent=2))
    else:
        print(key.public_pem(), end="")
    print(
        f"edge-agent: wrote engineer key {key.kid} to {args.out} (0600); the public key "
        "above goes into the gateway's diagnosis.engineers",
        file=sys.stderr,
    )
    return EXIT_OK


def _trust(args: argparse.Namespace, rest: list[str]) -> int:
    if len(rest) != 2:
        raise DeskError("remote trust GATEWAY FILE --known PATH")
    if args.known is None:
        raise DeskError("remote trust: --known PATH is required")
    gateway, source = rest
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise DeskError(f"{source}: {exc.strerror or exc}") from exc
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise DeskError(
            f"{source}: not JSON ({exc}); give what `edge-agent keys show --json` printed"
        ) from exc
    known = KnownGateways(args.known).load(missing_ok=True)
    before = known.gateways.get(gateway, {}).get("kid")
    known.add(gateway, info)
    if before and before != info["kid"]:
        _stderr(f"warning: {gateway}'s key was {before}; it is {info['kid']} now")
    print(f"trusted {gateway} (key {info['kid']}) in {args.known}")
    return EXIT_OK


def _request(args: argparse.Namespace, words: list[str]) -> int:
    if len(words) < 2:
        raise DeskError("remote GATEWAY ACTION [NAME=VALUE ...]: which action?")
    gateway, action, pairs = words[0], words[1], words[2:]
    params = parse_params(pairs)
    if args.known is None or args.key is None:
        raise DeskError("a request needs --key KEY and --known PATH")
    if not args.timeout > 0:
        raise DeskError("--timeout must be more than 0 seconds")
    broker = broker_from_args(args)
    info = KnownGateways(args.known).load().get(gateway)
    key = EngineerKey.load(args.key)
    try:
        answered = asyncio.run(
            ask_gateway(
                broker,
                key,
                gateway=gateway,
                known=info,
                action=action,
                args=params,
                prefix=topic_prefix(args.prefix, gateway),
                timeout=args.timeout,
            )
        )
    except (NoAnswer, Unreachable) as exc:
        _stderr(str(exc))
        return EXIT_FINDING
    except KeyboardInterrupt:
        return EXIT_FINDING
    body = answered.body
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, **body}, indent=2, ensure_ascii=False))
    if body["status"] != "ok":
        _stderr(f"{gateway} {body['status']} {action}: {body.get('reason') or 'no reason given'}")
        return EXIT_FINDING
    if not args.json:
        from rich.console import Console

        console = Console() if sys.stdout.isatty() else Console(width=120)
        console.print(answer_view(gateway, action, answered))
    return EXIT_OK
