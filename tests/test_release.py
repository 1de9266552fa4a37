"""`edge-agent release …` end to end (the vendor's side), and the platform tags it reads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from agent.cli import main
from agent.update import trust
from agent.update.platforms import (
    PlatformError,
    gateway_platform,
    wheelhouse_platform,
    wheelhouse_python,
)
from tests.update_repo import GATEWAY_PLATFORM, make_wheel, make_wheelhouse


def release(*argv: str | Path) -> int:
    return main(["release", *(str(a) for a in argv)])


def version_of(repo: Path, role: str) -> int:
    return int(json.loads((repo / "metadata" / f"{role}.json").read_bytes())["signed"]["version"])


def test_release_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "repo-keys"
    assert release("init", repo) == 0
    pems = sorted(keys.glob("*.pem"))
    assert [p.name for p in pems] == [
        "root-1.pem", "root-2.pem", "root-3.pem", "snapshot-1.pem", "targets-1.pem", "timestamp-1.pem",
    ]  # fmt: skip
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    assert not list(repo.rglob("*.pem"))
    root = Metadata[Root].from_file(str(repo / "metadata" / "1.root.json")).signed
    assert root.roles["root"].threshold == 2 and len(root.roles["root"].keyids) == 3
    assert root.consistent_snapshot is False
    assert (repo / "metadata" / "root.json").read_bytes() == (
        repo / "metadata" / "1.root.json"
    ).read_bytes()

    # A release whose only change is the agent wheel: big dependencies, stored uncompressed.
    payload = os.urandom(200_000)
    old = make_wheelhouse(tmp_path / "wh1", "0.1.0", dep_payload=payload)
    new = make_wheelhouse(tmp_path / "wh2", "0.2.0", dep_payload=payload)
    assert release("add", repo, "--wheelhouse", old, "--platform", "any") == 0
    assert release("add", repo, "--wheelhouse", new, "--version", "0.2.0") == 0
    assert (repo / "targets/releases/stable/any/0.2.0.json").is_file()
    assert len(list((repo / "targets" / "wheels").iterdir())) == 4
    targets = json.loads((repo / "metadata" / "targets.json").read_bytes())["signed"]["targets"]
    custom = targets["releases/stable/any/0.2.0.json"]["custom"]["edge-agent"]
    assert custom == {
        "version": "0.2.0",
        "channel": "stable",
        "platform": "any",
        "downgrade": False,
    }
    assert version_of(repo, "targets") == 3

    before = version_of(repo, "timestamp"), version_of(repo, "snapshot")
    assert release("sign", repo) == 0
    assert (version_of(repo, "timestamp"), version_of(repo, "snapshot")) == (
        before[0] + 1,
        before[1] + 1,
    )

    assert release("rotate", repo, "root", "--add-keys", "1", "--remove-key", "root-1") == 0
    assert (repo / "metadata" / "2.root.json").is_file()
    assert (keys / "retired" / "root-1.pem").is_file()

    capsys.readouterr()
    full, delta = tmp_path / "full.tar", tmp_path / "delta.tar"
    assert release("bundle", repo, "--version", "0.2.0", "--out", full) == 0
    assert (
        release("bundle", repo, "--version", "0.2.0", "--out", delta, "--delta-from", "0.1.0") == 0
    )
    out = capsys.readouterr().out
    assert (
        f"{delta.stat().st_size} bytes (delta from 0.1.0; the full bundle is {full.stat().st_size}"
        in out
    )
    assert delta.stat().st_size < 50_000 < 400_000 < full.stat().st_size

    # What the vendor made, a gateway that trusts root v1 takes.
    verified = trust.verify(
        trust.bundle_source(full, 10**8),
        trust_dir=tmp_path / "trust",
        trusted_root=repo / "metadata" / "1.root.json",
        target=trust.Target("stable", GATEWAY_PLATFORM, "cp311", "0.1.0"),
        wheel_cache=tmp_path / "cache",
        work_dir=tmp_path / "work",
    )
    assert verified.release.version == "0.2.0"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert release("init", repo, "--threshold", "root=1", "--keys", "root=1") == 0
    assert release("add", repo, "--wheelhouse", make_wheelhouse(tmp_path / "wh", "0.1.0")) == 0
    return repo


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["init", "{repo}"], "already holds a repository"),
        (["init", "{tmp}/other", "--keys-dir", "{tmp}/other/keys"], "inside"),
        (["init", "{tmp}/other", "--threshold", "root=4"], "threshold 4 with 3 keys"),
        (["init", "{tmp}/other", "--expiry", "timestamp=soon"], "--expiry timestamp"),
        (["add", "{tmp}/nothing", "--wheelhouse", "{tmp}/wh"], "not a release repository"),
        (["add", "{repo}", "--wheelhouse", "{tmp}/wh"], "0.1.0 is already released on stable/any"),
        (["add", "{repo}", "--wheelhouse", "{tmp}/wh", "--version", "9.9"], "--version 9.9"),
        (["add", "{repo}", "--wheelhouse", "{tmp}/empty"], "no edge-agent wheel"),
        (
            ["add", "{repo}", "--wheelhouse", "{tmp}/changed"],
            "already in the repository with other contents",
        ),
        (["add", "{repo}", "--wheelhouse", "{tmp}/wh", "--channel", "Bad Channel"], "channel"),
        (
            ["rotate", "{repo}", "timestamp", "--remove-key", "timestamp-1"],
            "threshold 1 with 0 keys",
        ),
        (["rotate", "{repo}", "root"], "nothing to change"),
        (["bundle", "{repo}", "--version", "0.2.0", "--out", "{tmp}/b.tar"], "no release 0.2.0"),
        (
            [
                "bundle",
                "{repo}",
                "--version",
                "0.1.0",
                "--out",
                "{tmp}/b.tar",
                "--delta-from",
                "0.0.1",
            ],
            "no release 0.0.1",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str], args: list[str], reason: str
) -> None:
    (tmp_path / "empty").mkdir()
    make_wheelhouse(tmp_path / "changed", "0.2.0")
    make_wheel(
        tmp_path / "changed", "pymodbus", "3.16.1", payload=b"rebuilt"
    )  # same name, new bytes
    capsys.readouterr()
    assert release(*(a.format(repo=repo, tmp=tmp_path) for a in args)) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1, err


def test_platform_tags() -> None:
    assert gateway_platform("x86_64") == "amd64"
    assert gateway_platform("aarch64") == "arm64"
    assert gateway_platform("armv7l") == gateway_platform("armv8l") == "armhf"
    assert gateway_platform("riscv64") == "riscv64"
    pure = ["edge_agent-0.1.0-py3-none-any.whl", "pyserial-3.5-py2.py3-none-any.whl"]
    assert wheelhouse_platform(pure) == "any" and wheelhouse_python(pure) == "py3"
    amd = [*pure, "pydantic_core-2.50.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    assert wheelhouse_platform(amd) == "amd64" and wheelhouse_python(amd) == "cp311"
    assert (
        wheelhouse_platform(["cryptography-48.0.0-cp311-abi3-manylinux_2_34_aarch64.whl"])
        == "arm64"
    )
    assert wheelhouse_python(["cryptography-48.0.0-cp311-abi3-manylinux_2_34_aarch64.whl"]) == "py3"
    assert wheelhouse_platform(["x-1-cp311-cp311-linux_armv7l.whl"]) == "armhf"
    with pytest.raises(PlatformError, match="several architectures"):
        wheelhouse_platform([*amd, "x-1-cp311-cp311-manylinux_2_17_aarch64.whl"])
    with pytest.raises(PlatformError, match="not Linux"):
        wheelhouse_platform(["x-1-cp311-cp311-win_amd64.whl"])
