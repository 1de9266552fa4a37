"""The demo starts from nothing every time: a fresh state directory (removed at exit) unless
`--keep-state`, free ports where the defaults are taken (printed), and two demos side by side."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import yaml

from agent.checks.view import AgentView
from agent.config import parse_config
from agent.demo import outbox_line
from agent.demo_setup import demo_place
from agent.outbox import OutboxStats
from tests.broker import free_port
from tests.test_cli import edge_agent


def site(tmp_path: Path, modbus: int, sl651: int) -> Path:
    """A small demo site whose default ports are `modbus` and `sl651`."""
    path = tmp_path / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "demo-test"},
                "state_dir": "/tmp/unused-demo/state",
                "control": {"socket": "/tmp/unused-demo/control.sock"},
                "sl651": {"listen": [f"127.0.0.1:{sl651}"]},
                "terminals": [
                    {
                        "name": "plc",
                        "protocol": "modbus-tcp",
                        "host": "127.0.0.1",
                        "port": modbus,
                        "points": [{"name": "a", "address": 0}],
                    },
                    {
                        "name": "rtu",
                        "protocol": "modbus-rtu",
                        "device": "/tmp/unused-demo/bus0",
                        "points": [{"name": "a", "address": 0}],
                    },
                    {"name": "gauge", "protocol": "sl651", "station": "0012345678"},
                ],
            }
        )
    )
    return path


def test_each_demo_has_a_fresh_directory_removed_at_exit(tmp_path: Path) -> None:
    config = site(tmp_path, free_port(), free_port())
    lock = tmp_path / "lock"
    with demo_place(config, lock=lock) as first:
        root = first.root
        assert first.config.state_dir == root / "state"
        assert first.config.control.socket == root / "control.sock"
        rtu = first.config.terminal("rtu")
        assert Path(str(getattr(rtu, "device", ""))).parent == root
        assert first.config_path == root / "demo.yaml" and first.config_path.exists()
        assert (first.config_path.stat().st_mode & 0o777) == 0o600
        (root / "state").mkdir()
        (root / "state" / "outbox.db").write_bytes(b"from this run")
        with demo_place(config, lock=lock) as second:
            assert second.root != root  # side by side: nothing shared
    assert not root.exists()
    with demo_place(config, lock=lock) as third:
        assert not (third.root / "state").exists()  # the next one starts empty


def test_keep_state_reuses_one_directory(tmp_path: Path) -> None:
    config = site(tmp_path, free_port(), free_port())
    kept = tmp_path / "kept"
    with demo_place(config, keep_state=True, kept_dir=kept, lock=tmp_path / "lock") as first:
        assert first.root == kept
        (kept / "state").mkdir()
        (kept / "state" / "outbox.db").write_bytes(b"kept")
    with demo_place(config, keep_state=True, kept_dir=kept, lock=tmp_path / "lock") as again:
        assert again.root == kept
        assert (kept / "state" / "outbox.db").read_bytes() == b"kept"


def test_a_taken_default_port_is_replaced_by_a_free_one_and_said(tmp_path: Path) -> None:
    modbus, sl651 = free_port(), free_port()
    config = site(tmp_path, modbus, sl651)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", sl651))
        taken.listen()
        with demo_place(config, lock=tmp_path / "lock") as place:
            said = {p.default: p for p in place.ports}
            assert said[modbus].port == modbus  # free: kept
            assert said[modbus].describe() == f"Modbus TCP {modbus} (plc)"
            moved = said[sl651]
            assert moved.port != sl651
            assert moved.describe() == f"SL651 listener 127.0.0.1:{moved.port} ({sl651} was taken)"
            assert place.config.sl651.listen == [f"127.0.0.1:{moved.port}"]


def test_while_one_demo_holds_the_defaults_another_takes_ports_of_its_own(tmp_path: Path) -> None:
    modbus, sl651 = free_port(), free_port()
    config = site(tmp_path, modbus, sl651)
    lock = tmp_path / "lock"
    with demo_place(config, lock=lock) as first, demo_place(config, lock=lock) as second:
        assert {p.port for p in first.ports} == {modbus, sl651}
        assert not {p.port for p in second.ports} & {modbus, sl651}


def ports_of(out: str) -> set[int]:
    line = next(line for line in out.splitlines() if line.startswith("ports: "))
    return {int(p) for p in re.findall(r"(?:TCP |:)(\d+)", line)}


async def test_two_demos_at_once_both_work(tmp_path: Path) -> None:
    """The embedded demo site twice, side by side: each prints its own directory and ports,
    both read every point good, and both directories are gone afterwards."""
    runs = await asyncio.gather(
        edge_agent("demo", "--duration", "4", timeout=90),
        edge_agent("demo", "--duration", "4", timeout=90),
    )
    roots = []
    for code, out, err in runs:
        assert code == 0, err
        assert "edge-agent demo: 6 simulated terminals, state in " in out
        roots.append(Path(out.split("state in ", 1)[1].split(" ", 1)[0]))
        assert "readings from" in out and " good " in out and " bad " not in out, out
    assert roots[0] != roots[1]
    assert not roots[0].exists() and not roots[1].exists()
    first, second = (ports_of(out) for _, out, _ in runs)
    assert len(first) == len(second) == 4  # two PLCs, the SL651 listener, metrics
    assert not first & second


def test_the_outbox_line_gives_the_oldest_age_in_words(tmp_path: Path) -> None:
    config = parse_config(site(tmp_path, 1502, 5001).read_text())
    stats = OutboxStats(0, 0, 40, 8192, 1 << 20, 2070.4, 0, 0, None, False, 40, None)
    line = outbox_line(AgentView(config, outbox=stats)).plain
    assert line.startswith("outbox: 40 messages, 8 KiB waiting, oldest 34m30s, evicted 0")
