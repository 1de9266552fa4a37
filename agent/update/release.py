"""The vendor's side of signed updates: the TUF repository, its keys, releases and bundles.

`edge-agent release init|add|sign|rotate|bundle` (`agent/update/release_cli.py`) is a thin
face over the functions here; docs/updates.md ("Trust", "Bundles") is the contract. The
repository is a folder any static HTTP server can serve:

    REPO/repository.json        thresholds, expiry periods, key names and ids per role (public)
    REPO/metadata/              1.root.json … N.root.json, root.json, targets/snapshot/timestamp
    REPO/targets/wheels/        every wheel of every release (TUF targets: length, sha256)
    REPO/targets/releases/<channel>/<platform>/<version>.json    the release manifests
    REPO-keys/<role>-<n>.pem    the private Ed25519 keys, 0600, never under REPO

Metadata is made with python-tuf's Metadata API and signed with securesystemslib's
`CryptoSigner`. `consistent_snapshot` is off (plain names: a static server). Every change
bumps the versions it touches: a gateway never sees a version go back.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from packaging.version import InvalidVersion, Version
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    T,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from agent.durations import parse_duration
from agent.model import format_timestamp
from agent.storage.atomic import write_atomic
from agent.update.installer import AGENT_PROJECT, InstallError, scan_wheelhouse
from agent.update.platforms import PlatformError, wheelhouse_platform, wheelhouse_python

ROLES = ("root", "targets", "snapshot", "timestamp")
SCHEMA = 1
DEFAULT_THRESHOLDS = {"root": 2, "targets": 1, "snapshot": 1, "timestamp": 1}
DEFAULT_KEY_COUNTS = {"root": 3, "targets": 1, "snapshot": 1, "timestamp": 1}
DEFAULT_EXPIRY = {
    "root": 365 * 86400.0,
    "targets": 90 * 86400.0,
    "snapshot": 7 * 86400.0,
    "timestamp": 86400.0,
}
CHANNEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
PLATFORM = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SETTINGS = "repository.json"
BUNDLE_SCHEMA = 1

_SERIALIZER = JSONSerializer(compact=False)


class ReleaseError(Exception):
    """Bad usage or input on the vendor's side: a one-line reason (the CLI exits 2)."""


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    size: int
    full_size: int  # the size the bundle has without --delta-from (== size for a full one)
    wheels: tuple[str, ...]  # the wheels it holds
    left_out: tuple[str, ...]  # the wheels a delta leaves to the gateway's cache


# -- the repository on disk -------------------------------------------------------------------


def default_keys_dir(repo: Path) -> Path:
    """REPO-keys beside REPO: the private keys are never inside what gets served."""
    repo = Path(repo).absolute()
    return repo.parent / f"{repo.name}-keys"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Repo:
    """An existing repository: its settings, metadata and keys."""

    def __init__(self, repo: Path, keys_dir: Path | None) -> None:
        self.path = Path(repo)
        self.keys_dir = Path(keys_dir) if keys_dir else default_keys_dir(self.path)
        try:
            self.settings: dict[str, Any] = json.loads((self.path / SETTINGS).read_bytes())
        except FileNotFoundError:
            raise ReleaseError(
                f"{self.path} is not a release repository (no {SETTINGS}): run release init"
            ) from None
        except (OSError, ValueError) as exc:
            raise ReleaseError(f"cannot read {self.path / SETTINGS}: {exc}") from exc
        if self.settings.get("schema") != SCHEMA:
            raise ReleaseError(f"{self.path / SETTINGS}: not of schema {SCHEMA}")
        _check_keys_outside(self.path, self.keys_dir)

    @property
    def metadata(self) -> Path:
        return self.path / "metadata"

    @property
    def targets(self) -> Path:
        return self.path / "targets"

    def load(self, role: str, kind: type[T]) -> Metadata[T]:
        path = self.metadata / f"{role}.json"
        try:
            md = Metadata[T].from_file(str(path))
        except Exception as exc:
            raise ReleaseError(f"cannot read {path}: {exc}") from exc
        if not isinstance(md.signed, kind):
            raise ReleaseError(f"{path} is not {role} metadata")
        return md

    def expiry(self, role: str) -> datetime:
        return _now() + timedelta(seconds=float(self.settings["expiry"][role]))

    def signers(self, role: str, names: Iterable[str] | None = None) -> list[CryptoSigner]:
        names = list(names if names is not None else self.settings["keys"][role])
        return [load_signer(self.keys_dir / f"{name}.pem") for name in names]

    def save_settings(self) -> None:
        _write(self.path / SETTINGS, json.dumps(self.settings, indent=2).encode() + b"\n")

    def write(self, role: str, md: Metadata[Any], signers: Sequence[CryptoSigner]) -> bytes:
        """Sign with every signer given and write `<role>.json` (and N.root.json for root)."""
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        data = md.to_bytes(_SERIALIZER)
        if role == "root":
            _write(self.metadata / f"{md.signed.version}.root.json", data)
        _write(self.metadata / f"{role}.json", data)
        return data

    def publish(self, *, targets: Metadata[Targets] | None = None) -> None:
        """Re-sign (new versions, fresh expiry) targets if given, then snapshot and timestamp."""
        snapshot = self.load("snapshot", Snapshot)
        if targets is not None:
            targets.signed.version += 1
            targets.signed.expires = self.expiry("targets")
            data = self.write("targets", targets, self.signers("targets"))
            snapshot.signed.meta["targets.json"] = MetaFile.from_data(
                targets.signed.version, data, ["sha256"]
            )
        self._snapshot_and_timestamp(snapshot)

    def _snapshot_and_timestamp(self, snapshot: Metadata[Snapshot]) -> None:
        timestamp = self.load("timestamp", Timestamp)
        snapshot.signed.version += 1
        snapshot.signed.expires = self.expiry("snapshot")
        data = self.write("snapshot", snapshot, self.signers("snapshot"))
        timestamp.signed.version += 1
        timestamp.signed.expires = self.expiry("timestamp")
        timestamp.signed.snapshot_meta = MetaFile.from_data(
            snapshot.signed.version, data, ["sha256"]
        )
        self.write("timestamp", timestamp, self.signers("timestamp"))


def _write(path: Path, data: bytes) -> None:
    """A file written whole (temp, fsync, rename): a server never serves half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o644)


def _check_keys_outside(repo: Path, keys_dir: Path) -> None:
    repo_abs, keys_abs = Path(repo).resolve(), Path(keys_dir).resolve()
    if keys_abs == repo_abs or keys_abs.is_relative_to(repo_abs):
        raise ReleaseError(f"the keys folder {keys_dir} is inside {repo}: it would be served")


def load_signer(path: Path) -> CryptoSigner:
    """A private Ed25519 key from its PEM file."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ReleaseError(f"private key {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"cannot read private key {path}: {exc}") from exc
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


def _new_key(keys_dir: Path, name: str) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / f"{name}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, signer.private_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    return signer


def _next_key_names(
    settings: Mapping[str, Any], keys_dir: Path, role: str, count: int
) -> list[str]:
    used = {
        int(m[1])
        for p in keys_dir.glob(f"{role}-*.pem*")
        if (m := re.match(rf"^{role}-(\d+)\.pem", p.name))
    }
    used |= {int(n.rsplit("-", 1)[1]) for n in settings["keys"].get(role, {})}
    start = max(used, default=0) + 1
    return [f"{role}-{i}" for i in range(start, start + count)]


def _role_values(
    given: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str
) -> dict[str, Any]:
    values = dict(defaults)
    for role, value in (given or {}).items():
        if role not in ROLES:
            raise ReleaseError(f"{what}: unknown role {role!r} (one of {', '.join(ROLES)})")
        values[role] = value
    return values


# -- init ---------------------------------------------------------------------------------------


def init(
    repo: Path,
    *,
    keys_dir: Path | None = None,
    thresholds: Mapping[str, int] | None = None,
    key_counts: Mapping[str, int] | None = None,
    expiry: Mapping[str, float | str] | None = None,
) -> Path:
    """A new repository: settings, keys, 1.root.json, targets/snapshot/timestamp v1."""
    repo = Path(repo)
    keys_dir = Path(keys_dir) if keys_dir else default_keys_dir(repo)
    _check_keys_outside(repo, keys_dir)
    if (repo / SETTINGS).exists() or (repo / "metadata").exists():
        raise ReleaseError(f"{repo} already holds a repository")
    if keys_dir.exists() and any(keys_dir.glob("*.pem")):
        raise ReleaseError(f"{keys_dir} already holds keys: give another --keys-dir")
    wanted = _role_values(thresholds, DEFAULT_THRESHOLDS, "--threshold")
    counts = _role_values(key_counts, DEFAULT_KEY_COUNTS, "--keys")
    periods: dict[str, float] = {}
    for role, value in _role_values(expiry, DEFAULT_EXPIRY, "--expiry").items():
        try:
            periods[role] = parse_duration(value)
        except ValueError as exc:
            raise ReleaseError(f"--expiry {role}: {exc}") from exc
        if periods[role] <= 0:
            raise ReleaseError(f"--expiry {role}: must be more than zero")
    for role in ROLES:
        if not 1 <= int(wanted[role]) <= int(counts[role]):
            raise ReleaseError(
                f"{role}: threshold {wanted[role]} with {counts[role]} keys "
                "(1 <= threshold <= keys)"
            )
    (repo / "metadata").mkdir(parents=True)
    (repo / "targets").mkdir(exist_ok=True)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "schema": SCHEMA,
        "thresholds": {r: int(wanted[r]) for r in ROLES},
        "expiry": periods,
        "keys": {},
    }
    root = Root(version=1, expires=_now() + timedelta(seconds=periods["root"]))
    root.consistent_snapshot = False
    for role in ROLES:
        names = [f"{role}-{i}" for i in range(1, int(counts[role]) + 1)]
        settings["keys"][role] = {}
        for name in names:
            signer = _new_key(keys_dir, name)
            root.add_key(signer.public_key, role)
            settings["keys"][role][name] = signer.public_key.keyid
        root.roles[role].threshold = int(wanted[role])
    _write(repo / SETTINGS, json.dumps(settings, indent=2).encode() + b"\n")
    state = _Repo(repo, keys_dir)
    state.write("root", Metadata(root), state.signers("root"))
    targets = Metadata(Targets(version=1, expires=state.expiry("targets")))
    data = state.write("targets", targets, state.signers("targets"))
    snapshot = Snapshot(version=1, expires=state.expiry("snapshot"))
    snapshot.meta["targets.json"] = MetaFile.from_data(1, data, ["sha256"])
    data = state.write("snapshot", Metadata(snapshot), state.signers("snapshot"))
    timestamp = Timestamp(
        version=1,
        expires=state.expiry("timestamp"),
        snapshot_meta=MetaFile.from_data(1, data, ["sha256"]),
    )
    state.write("timestamp", Metadata(timestamp), state.signers("timestamp"))
    return keys_dir


# -- add ----------------------------------------------------------------------------------------


def manifest_path(channel: str, platform: str, version: str) -> str:
    """The target path of a release manifest (under REPO/targets/)."""
    return f"releases/{channel}/{platform}/{version}.json"


def _checked_version(version: str) -> str:
    try:
        Version(version)
    except InvalidVersion:
        raise ReleaseError(f"version {version!r} is not a PEP 440 version") from None
    return version


def build_wheelhouse(project: Path, out: Path) -> Path:
    """`pip wheel PROJECT -w OUT`: the agent's wheel and one of every pinned dependency."""
    if not (Path(project) / "pyproject.toml").is_file():
        raise ReleaseError(f"{project} is not a project (no pyproject.toml)")
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q"]
    argv += ["--only-binary=:all:", "--no-binary=" + AGENT_PROJECT, str(project), "-w", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ReleaseError(
            f"pip wheel {project} failed: {detail[-1] if detail else done.returncode}"
        )
    return Path(out)


def add(
    repo: Path,
    *,
    channel: str,
    wheelhouse: Path | None = None,
    project: Path | None = None,
    version: str | None = None,
    platform: str | None = None,
    downgrade: bool = False,
    keys_dir: Path | None = None,
) -> dict[str, Any]:
    """Publish a release: its wheels and manifest as targets, then targets/snapshot/timestamp
    re-signed. Returns the manifest."""
    if (wheelhouse is None) == (project is None):
        raise ReleaseError("give exactly one of --wheelhouse and --project")
    if not CHANNEL.match(channel):
        raise ReleaseError(f"channel {channel!r}: lower-case letters, digits, . _ - (up to 32)")
    state = _Repo(repo, keys_dir)
    if project is not None:
        with tempfile.TemporaryDirectory(prefix="edge-agent-wheelhouse-") as tmp:
            return add(
                repo,
                channel=channel,
                wheelhouse=build_wheelhouse(project, Path(tmp)),
                version=version,
                platform=platform,
                downgrade=downgrade,
                keys_dir=keys_dir,
            )
    assert wheelhouse is not None
    try:
        house = scan_wheelhouse(Path(wheelhouse))
    except InstallError as exc:
        raise ReleaseError(str(exc)) from exc
    found = _checked_version(house.version)
    if version is not None and version != found:
        raise ReleaseError(f"--version {version}, but the wheelhouse holds edge-agent {found}")
    names = [w.path.name for w in house.wheels]
    try:
        found_platform = wheelhouse_platform(names)
        python = wheelhouse_python(names)
    except PlatformError as exc:
        raise ReleaseError(str(exc)) from exc
    if platform is not None and platform != found_platform and found_platform != "any":
        raise ReleaseError(f"--platform {platform}, but the wheels are for {found_platform}")
    platform = platform or found_platform
    if not PLATFORM.match(platform):
        raise ReleaseError(f"platform {platform!r}: lower-case letters, digits, _ -")
    targets = state.load("targets", Targets)
    path = manifest_path(channel, platform, found)
    if path in targets.signed.targets:
        raise ReleaseError(f"{found} is already released on {channel}/{platform}")
    for wheel in house.wheels:
        data = wheel.path.read_bytes()
        info = TargetFile.from_data(f"wheels/{wheel.path.name}", data, ["sha256"])
        known = targets.signed.targets.get(info.path)
        if known is not None and known.hashes != info.hashes:
            raise ReleaseError(
                f"{wheel.path.name} is already in the repository with other contents: "
                "a wheel's name stands for one file (rebuild it with another version)"
            )
        stored = state.targets / info.path
        if known is None or not stored.exists():
            _write(stored, data)
        targets.signed.targets[info.path] = info
    manifest = {
        "schema": SCHEMA,
        "version": found,
        "channel": channel,
        "platform": platform,
        "python": python,
        "downgrade": bool(downgrade),
        "created": format_timestamp(_now(), "seconds"),
        "wheels": sorted(names),
    }
    data = json.dumps(manifest, indent=2).encode() + b"\n"
    info = TargetFile.from_data(path, data, ["sha256"])
    info.unrecognized_fields["custom"] = {
        "edge-agent": {k: manifest[k] for k in ("version", "channel", "platform", "downgrade")}
    }
    _write(state.targets / path, data)
    targets.signed.targets[path] = info
    state.publish(targets=targets)
    return manifest


# -- sign, rotate ---------------------------------------------------------------------------------


def sign(repo: Path, *, keys_dir: Path | None = None) -> tuple[int, int]:
    """Snapshot and timestamp re-signed (new versions, fresh expiry): the vendor runs this
    more often than the timestamp expires. Returns their new versions."""
    state = _Repo(repo, keys_dir)
    state.publish()
    return (
        state.load("snapshot", Snapshot).signed.version,
        state.load("timestamp", Timestamp).signed.version,
    )


def rotate(
    repo: Path,
    role: str,
    *,
    add_keys: int = 0,
    remove_keys: Sequence[str] = (),
    threshold: int | None = None,
    keys_dir: Path | None = None,
) -> int:
    """A new root (N+1) with `role`'s keys or threshold changed, signed by a threshold of the
    old root's keys and of the new one's; the role itself re-signed with its new keys. The
    removed keys' files move to REPO-keys/retired/. Returns the new root version."""
    if role not in ROLES:
        raise ReleaseError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if add_keys < 0:
        raise ReleaseError("--add-keys must be zero or more")
    state = _Repo(repo, keys_dir)
    old = state.load("root", Root)
    new = Metadata[Root].from_bytes(old.to_bytes())
    held: dict[str, str] = dict(state.settings["keys"][role])
    by_id = {keyid: name for name, keyid in held.items()}
    removed = []
    for wanted in remove_keys:
        name = wanted if wanted in held else by_id.get(wanted)
        if name is None:
            raise ReleaseError(f"{role} has no key {wanted!r} (keys: {', '.join(held)})")
        new.signed.revoke_key(held.pop(name), role)
        removed.append(name)
    names = _next_key_names(state.settings, state.keys_dir, role, add_keys)
    for name in names:
        signer = _new_key(state.keys_dir, name)
        new.signed.add_key(signer.public_key, role)
        held[name] = signer.public_key.keyid
    wanted_threshold = threshold if threshold is not None else new.signed.roles[role].threshold
    if not 1 <= wanted_threshold <= len(held):
        raise ReleaseError(f"{role}: threshold {wanted_threshold} with {len(held)} keys")
    if not (add_keys or removed or threshold is not None):
        raise ReleaseError("nothing to change: give --add-keys, --remove-key or --threshold")
    new.signed.roles[role].threshold = wanted_threshold
    new.signed.version += 1
    new.signed.expires = state.expiry("root")
    old_root_names = list(state.settings["keys"]["root"])
    state.settings["keys"][role] = held
    state.settings["thresholds"][role] = wanted_threshold
    signers = {s.public_key.keyid: s for s in state.signers("root", old_root_names)}
    signers.update({s.public_key.keyid: s for s in state.signers("root")})
    state.write("root", new, list(signers.values()))
    state.save_settings()
    retired = state.keys_dir / "retired"
    for name in removed:
        retired.mkdir(mode=0o700, exist_ok=True)
        (state.keys_dir / f"{name}.pem").replace(retired / f"{name}.pem")
    if role == "targets":
        state.publish(targets=state.load("targets", Targets))
    elif role in ("snapshot", "timestamp"):
        state.publish()
    return new.signed.version


# -- bundle ---------------------------------------------------------------------------------------


class _Counter:
    """A write-only file that only counts: the size a tar would have."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _release_targets(targets: Targets, channel: str, version: str) -> dict[str, TargetFile]:
    """platform → manifest target of `version` on `channel`."""
    found = {}
    prefix = f"releases/{channel}/"
    for path, info in targets.targets.items():
        if path.startswith(prefix) and path.endswith(f"/{version}.json"):
            parts = path.split("/")
            if len(parts) == 4:
                found[parts[2]] = info
    return found


def _pick(targets: Targets, channel: str, version: str, platform: str | None) -> TargetFile:
    found = _release_targets(targets, channel, version)
    if platform is not None:
        if platform not in found:
            raise ReleaseError(f"no release {version} on {channel}/{platform}")
        return found[platform]
    if not found:
        raise ReleaseError(f"no release {version} on channel {channel}")
    if len(found) > 1:
        raise ReleaseError(
            f"{version} on {channel} is released for {', '.join(sorted(found))}: give --platform"
        )
    return next(iter(found.values()))


def _manifest(state: _Repo, info: TargetFile) -> dict[str, Any]:
    path = state.targets / info.path
    try:
        data = path.read_bytes()
        info.verify_length_and_hashes(data)
        manifest: dict[str, Any] = json.loads(data)
    except Exception as exc:
        raise ReleaseError(f"{path} does not match targets.json: {exc}") from exc
    return manifest


def bundle(
    repo: Path,
    *,
    version: str,
    channel: str,
    out: Path,
    platform: str | None = None,
    delta_from: str | None = None,
    keys_dir: Path | None = None,
) -> BundleInfo:
    """Write the bundle of one release (docs/updates.md, "Bundles") to `out`."""
    state = _Repo(repo, keys_dir)
    targets = state.load("targets", Targets).signed
    info = _pick(targets, channel, version, platform)
    platform = info.path.split("/")[2]
    manifest = _manifest(state, info)
    wheels = [str(w) for w in manifest["wheels"]]
    left_out: list[str] = []
    if delta_from is not None:
        old = _pick(targets, channel, delta_from, platform)
        old_wheels = set(_manifest(state, old)["wheels"])
        left_out = [w for w in wheels if w in old_wheels and f"wheels/{w}" in targets.targets]
    root_version = state.load("root", Root).signed.version
    label = {
        "schema": BUNDLE_SCHEMA,
        "version": version,
        "channel": channel,
        "platform": platform,
        "delta_from": delta_from,
    }
    members: list[tuple[str, Path | bytes]] = [("bundle.json", json.dumps(label).encode() + b"\n")]
    for n in range(1, root_version + 1):
        members.append((f"metadata/{n}.root.json", state.metadata / f"{n}.root.json"))
    for role in ("timestamp", "snapshot", "targets"):
        members.append((f"metadata/{role}.json", state.metadata / f"{role}.json"))
    members.append((f"targets/{info.path}", state.targets / info.path))
    full = list(members)
    for wheel in wheels:
        member = (f"targets/wheels/{wheel}", state.targets / "wheels" / wheel)
        full.append(member)
        if wheel not in left_out:
            members.append(member)
    for _, source in full:
        if isinstance(source, Path) and not source.is_file():
            raise ReleaseError(f"{source} is missing from the repository")
    counter = _Counter()
    _write_tar(cast(BinaryIO, counter), full)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as stream:
            _write_tar(stream, members)
            stream.flush()
            os.fsync(stream.fileno())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BundleInfo(
        out,
        out.stat().st_size,
        counter.size,
        tuple(w for w in wheels if w not in left_out),
        tuple(left_out),
    )


def _write_tar(stream: BinaryIO, members: Sequence[tuple[str, Path | bytes]]) -> None:
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            info.mtime = int(_now().timestamp())
            if isinstance(source, bytes):
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
            else:
                info.size = source.stat().st_size
                with source.open("rb") as data:
                    tar.addfile(info, data)
