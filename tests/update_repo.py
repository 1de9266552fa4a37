"""Test helpers for signed updates: tiny synthetic wheelhouses and a vendor repository.

A synthetic wheel is a real zip with `<name>-<ver>.dist-info/METADATA`, `WHEEL` and `RECORD`:
enough for `scan_wheelhouse` and for TUF, in milliseconds (the real `pip wheel` takes minutes).
The agent wheel requires exactly the dependency wheels made beside it.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import JSONSerializer

from agent.update import release
from agent.update.platforms import gateway_platform

DEPS = {"pymodbus": "3.16.1", "pyserial": "3.5"}


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires: dict[str, str] | None = None,
    tags: str = "py3-none-any",
    payload: bytes = b"",
) -> Path:
    """A minimal valid wheel `<name>-<version>-<tags>.whl` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-{tags}.whl"
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    for dep, pin in (requires or {}).items():
        metadata += f"Requires-Dist: {dep}=={pin}\n"
    files = {
        f"{dist}/__init__.py": b"# synthetic\n" + payload,
        f"{info}/METADATA": (metadata + "\n").encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nTag: {tags}\n".encode(),
        f"{info}/RECORD": b"",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            # A fixed date: the same wheel made twice is the same file (as a rebuild must be).
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return path


def make_wheelhouse(
    folder: Path,
    version: str,
    *,
    deps: dict[str, str] | None = None,
    agent_payload: bytes = b"",
    dep_payload: bytes = b"",
    tags: str = "py3-none-any",
) -> Path:
    """A wheelhouse: edge_agent-<version> requiring `deps` (default DEPS), and their wheels."""
    deps = dict(DEPS if deps is None else deps)
    make_wheel(folder, "edge-agent", version, requires=deps, payload=agent_payload)
    for name, pin in deps.items():
        make_wheel(folder, name, pin, tags=tags, payload=dep_payload)
    return folder


def new_repo(tmp: Path, *versions: str, channel: str = "stable", **init: Any) -> Path:
    """An initialised repository (fast: root 1 of 1 unless asked) with `versions` released
    for this machine's platform ("any": the synthetic wheels are pure)."""
    repo = tmp / "repo"
    init.setdefault("thresholds", {"root": 1})
    init.setdefault("key_counts", {"root": 1})
    release.init(repo, **init)
    for version in versions:
        publish(repo, version, channel=channel)
    return repo


def publish(repo: Path, version: str, *, channel: str = "stable", **extra: Any) -> Path:
    house = make_wheelhouse(repo.parent / f"wh-{channel}-{version}", version, **extra.pop("wh", {}))
    extra.setdefault("platform", "any")
    release.add(repo, channel=channel, wheelhouse=house, **extra)
    return house


GATEWAY_PLATFORM = gateway_platform()


# -- the attacker's (or the clock's) hand on metadata ------------------------------------------


def signers(repo: Path, role: str) -> list[CryptoSigner]:
    state = release._Repo(repo, None)
    return state.signers(role)


def resign(
    repo: Path,
    role: str,
    edit: Any,
    *,
    keys: list[CryptoSigner] | None = None,
    write_to: Path | None = None,
) -> bytes:
    """Load REPO's `role`.json, let `edit(signed)` change it, sign it with `keys` (default the
    role's own), write it (to `write_to`, default in place) and return the bytes."""
    path = repo / "metadata" / f"{role}.json"
    md = Metadata.from_file(str(path))
    edit(md.signed)
    md.signatures.clear()
    for signer in keys if keys is not None else signers(repo, role):
        md.sign(signer, append=True)
    data = md.to_bytes(JSONSerializer(compact=False))
    (write_to or path).write_bytes(data)
    return data


def meta_of(data: bytes, version: int) -> MetaFile:
    return MetaFile.from_data(version, data, ["sha256"])


def past(days: float = 1) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(days=days)


# -- a repository served over HTTP on loopback ---------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server of `folder`; yields its URL and the paths it was asked for."""
    asked: list[str] = []

    class Counting(_Handler):
        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Counting, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", asked
    finally:
        server.shutdown()
        server.server_close()
