"""What the gateway checks before it installs anything: TUF metadata, the release, its wheels.

The pure verifying core (docs/updates.md, "What the gateway checks"), over python-tuf's
`ngclient.Updater`, one code path for both sources: online the default urllib3 fetcher reads
`<repository_url>/metadata/…` and `…/targets/…`; a bundle is served to the same `Updater` by
`_BundleFetcher`, which answers for a fake base URL from the bundle's members (read safely by
`agent.update.bundle`).

Order: the root chain from the trusted root (rotation, each step signed by a threshold of the
old and the new root), timestamp, snapshot, targets (signatures, expiry, versions never lower,
the versions and hashes each parent names); then the release manifest, a target (length,
hash); its channel, platform, Python (`wrong-software`), its version against the running one
(PEP 440: `downgrade`, `same-version`), refused versions (`refused`); then every wheel it
lists, from the wheel cache when its hash matches, else from the source (length, sha256).

All or nothing: the `Updater` works on a copy of `trust_dir` under `work_dir`, downloads land
under `work_dir`; only a verification that passed copies the new metadata back into
`trust_dir` and the new wheels into `wheel_cache`. A rejection changes neither. Every failure
is an `UpdateRejected(check, reason)`, the reason one line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import urllib3
from packaging.version import InvalidVersion, Version
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from agent.storage.atomic import copy_atomic, fsync_dir, write_atomic
from agent.update.bundle import BundleContents, BundleError, open_bundle
from agent.update.installer import AGENT_PROJECT, InstallError, parse_wheel
from agent.update.platforms import ANY_PLATFORM, gateway_platform, python_matches, python_tag

MANIFEST_SCHEMA = 1
_BUNDLE_BASE = "https://bundle.invalid/"
_TRUSTED_FILES = ("root.json", "timestamp.json", "snapshot.json", "targets.json")
_WHEEL = re.compile(r"^[A-Za-z0-9._+-]+\.whl$")


class UpdateRejected(Exception):
    """An update that did not pass a check; `str(exc)` is the one-line reason."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check
        self.reason = reason


@dataclass(frozen=True)
class Release:
    version: str
    channel: str
    platform: str
    python: str
    downgrade: bool
    wheels: tuple[str, ...]
    manifest: bytes


@dataclass(frozen=True)
class Verified:
    release: Release
    wheelhouse: Path  # exactly the release's wheels, each verified (length and sha256)


@dataclass(frozen=True)
class Target:
    """What this gateway takes: its channel, platform and Python, the version it runs."""

    channel: str
    platform: str
    python: str
    running: str
    refused: frozenset[str] = frozenset()
    automatic: bool = False

    @classmethod
    def here(
        cls, channel: str, running: str, refused: Iterable[str] = (), *, automatic: bool = False
    ) -> Target:
        """This gateway's target: its platform and Python, the channel and version given."""
        return cls(
            channel, gateway_platform(), python_tag(), running, frozenset(refused), automatic
        )


@dataclass(frozen=True)
class Source:
    """Where a release comes from: a bundle file or a repository URL (`name` says which)."""

    name: str
    bundle: Path | None = None
    url: str | None = None
    max_bytes: int = 0


def bundle_source(path: Path, max_bytes: int) -> Source:
    return Source(f"bundle:{Path(path).absolute()}", bundle=Path(path), max_bytes=max_bytes)


def repository_source(url: str) -> Source:
    return Source(url, url=url.rstrip("/") + "/")


# -- trust ----------------------------------------------------------------------------------------


def ensure_trust(trust_dir: Path, trusted_root: Path | None) -> None:
    """`trust_dir/root.json`, seeded from `trusted_root` (a self-signed root) when missing."""
    trust_dir = Path(trust_dir)
    if (trust_dir / "root.json").is_file():
        return
    if trusted_root is None:
        raise UpdateRejected(
            "no-trusted-root",
            f"no trusted root: {trust_dir / 'root.json'} is missing and update.trusted_root "
            "is not set",
        )
    try:
        data = Path(trusted_root).read_bytes()
        root = Metadata[Root].from_bytes(data)
        if not isinstance(root.signed, Root):
            raise ValueError("not root metadata")
        root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
    except OSError as exc:
        raise UpdateRejected(
            "no-trusted-root", f"no trusted root: cannot read {trusted_root}: {exc.strerror}"
        ) from exc
    except Exception as exc:
        raise UpdateRejected(
            "no-trusted-root", f"no trusted root: {trusted_root} is not a signed root: {exc}"
        ) from exc
    trust_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(trust_dir / "root.json", data, mode=0o644)


# -- fetching -------------------------------------------------------------------------------------


class _BundleFetcher(FetcherInterface):
    """Serves the bundle's members for `_BUNDLE_BASE`; a missing one is a 404."""

    def __init__(self, contents: BundleContents) -> None:
        self.contents = contents
        self.last = ""

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = unquote(url[len(_BUNDLE_BASE) :]) if url.startswith(_BUNDLE_BASE) else url
        self.last = name
        if name not in self.contents:
            raise tuf_errors.DownloadHTTPError(f"{name} is not in the bundle", 404)
        return self.contents.chunks(name)


class _WebFetcher(Urllib3Fetcher):
    """The default urllib3 fetcher, remembering what it fetched last (for the reasons)."""

    def __init__(self, base: str) -> None:
        super().__init__(socket_timeout=30, app_user_agent="edge-agent")
        self.base = base
        self.last = ""
        self._responses: list[urllib3.response.BaseHTTPResponse] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last = url[len(self.base) :] if url.startswith(self.base) else url
        return super()._fetch(url)

    def _chunks(self, response: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
        self._responses.append(response)
        return super()._chunks(response)

    def close(self) -> None:
        """Close every response (one cut short by a length check too) and the kept-alive
        connections python-tuf's pool managers hold."""
        for response in self._responses:
            response.close()
        self._responses.clear()
        for manager in self._proxy_env._pool_managers.values():
            manager.clear()


@dataclass
class _Session:
    source: Source
    fetcher: _BundleFetcher | _WebFetcher
    staging: Path
    downloads: Path
    contents: BundleContents | None
    updater: Updater = field(init=False)

    def refresh(self) -> None:
        with _mapped(self, "metadata"):
            self.updater.refresh()

    def targets(self) -> dict[str, TargetFile]:
        """targets.json as refresh() verified it (and persisted it in the staging copy)."""
        md = Metadata[Targets].from_file(str(self.staging / "targets.json"))
        return dict(md.signed.targets)

    def fetch(self, info: TargetFile, dest: Path, what: str) -> Path:
        with _mapped(self, what, target=info.path):
            return Path(self.updater.download_target(info, str(dest)))


@contextlib.contextmanager
def _session(
    source: Source, trust_dir: Path, trusted_root: Path | None, work: Path
) -> Iterator[_Session]:
    """An Updater over a private copy of the trusted metadata (under `work`)."""
    ensure_trust(trust_dir, trusted_root)
    work.mkdir(parents=True, exist_ok=True)
    staging = work / f".trust-{os.getpid()}"
    downloads = work / f".downloads-{os.getpid()}"
    for folder in (staging, downloads):
        if folder.exists():
            shutil.rmtree(folder)
    shutil.copytree(trust_dir, staging, symlinks=True)
    downloads.mkdir()
    contents: BundleContents | None = None
    fetcher: _BundleFetcher | _WebFetcher | None = None
    try:
        if source.bundle is not None:
            try:
                contents = open_bundle(source.bundle, source.max_bytes)
            except BundleError as exc:
                raise UpdateRejected("bundle", str(exc)) from exc
            fetcher = _BundleFetcher(contents)
            base = _BUNDLE_BASE
        else:
            assert source.url is not None
            base = source.url
            fetcher = _WebFetcher(base)
        bootstrap = (staging / "root.json").read_bytes()
        session = _Session(source, fetcher, staging, downloads, contents)
        with _mapped(session, "metadata"):
            session.updater = Updater(
                str(staging),
                base + "metadata/",
                target_dir=str(downloads),
                target_base_url=base + "targets/",
                fetcher=fetcher,
                bootstrap=bootstrap,
            )
        yield session
    finally:
        if contents is not None:
            contents.close()
        if isinstance(fetcher, _WebFetcher):
            fetcher.close()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)


def _commit_metadata(session: _Session, trust_dir: Path) -> None:
    """The verified metadata of the staging copy into `trust_dir`, file by file (atomic)."""
    staging = session.staging
    history = staging / "root_history"
    if history.is_dir():
        (trust_dir / "root_history").mkdir(exist_ok=True)
        for path in sorted(history.glob("*.root.json")):
            dest = trust_dir / "root_history" / path.name
            if not dest.exists():
                write_atomic(dest, path.read_bytes(), mode=0o644)
    for name in _TRUSTED_FILES:
        path = staging / name
        dest = trust_dir / name
        if path.is_symlink():
            target = str(path.readlink())
            if not dest.is_symlink() or str(dest.readlink()) != target:
                aside = dest.with_name(f".{name}.tmp-{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    aside.unlink()
                aside.symlink_to(target)
                aside.replace(dest)
        elif path.is_file():
            data = path.read_bytes()
            if not dest.is_file() or dest.read_bytes() != data:
                write_atomic(dest, data, mode=0o644)
    fsync_dir(trust_dir)


# -- the failures ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _mapped(session: _Session, what: str, target: str | None = None) -> Iterator[None]:
    """tuf's exceptions as `UpdateRejected(check, reason)` naming the file."""
    try:
        yield
    except UpdateRejected:
        raise
    except tuf_errors.DownloadLengthMismatchError as exc:
        name = target or _file(session)
        raise UpdateRejected(
            "length", f"{name}: longer than allowed (endless data): {exc}"
        ) from exc
    except tuf_errors.DownloadHTTPError as exc:
        raise _missing(session, target, exc) from exc
    except (tuf_errors.DownloadError, urllib3.exceptions.HTTPError) as exc:
        raise UpdateRejected(
            "unreachable",
            f"cannot fetch {target or _file(session)} from {session.source.name}: {exc}",
        ) from exc
    except tuf_errors.UnsignedMetadataError as exc:
        raise UpdateRejected(
            "signature", f"{_file(session)}: not signed by a threshold of trusted keys: {exc}"
        ) from exc
    except tuf_errors.ExpiredMetadataError as exc:
        raise UpdateRejected(
            "expired", f"{_file(session)}: expired (frozen metadata): {exc}"
        ) from exc
    except tuf_errors.BadVersionNumberError as exc:
        text = str(exc)
        if text.startswith("Expected") and not text.startswith("Expected root"):
            check, why = "mix-and-match", "not the version its parent role names"
        else:
            check, why = "rollback", "an older version than the trusted one"
        raise UpdateRejected(check, f"{_file(session)}: {why}: {text}") from exc
    except tuf_errors.LengthOrHashMismatchError as exc:
        if target is None:  # metadata not matching what timestamp / snapshot say of it
            raise UpdateRejected(
                "mix-and-match",
                f"{_file(session)}: not the file its parent role names: {exc}",
            ) from exc
        check = "length" if str(exc).startswith("Observed length") else "hash"
        raise UpdateRejected(check, f"{target}: does not match targets.json: {exc}") from exc
    except tuf_errors.RepositoryError as exc:
        text = str(exc)
        if "missing info" in text:
            check = "rollback"
        elif "snapshot" in text.lower() or "delegated" in text:
            check = "mix-and-match"
        else:
            check = "signature"  # not valid signed metadata at all
        raise UpdateRejected(check, f"{_file(session)}: {text}") from exc
    except OSError as exc:
        if target is None and what == "metadata":
            raise UpdateRejected(
                "unreachable", f"cannot use the metadata of {session.source.name}: {exc}"
            ) from exc
        raise


def _file(session: _Session) -> str:
    last = session.fetcher.last
    return last.split("/")[-1] if last.startswith("metadata/") else (last or "metadata")


def _missing(session: _Session, target: str | None, exc: Exception) -> UpdateRejected:
    name = target or _file(session)
    if session.contents is not None:
        if target is not None and target.startswith("wheels/"):
            return UpdateRejected(
                "incomplete",
                f"{name} is neither in the bundle nor in the wheel cache (a delta bundle "
                "for another installed release?)",
            )
        return UpdateRejected("bundle", f"{session.source.name}: {name} is not in the bundle")
    return UpdateRejected("not-found", f"{name}: not on {session.source.name}: {exc}")


# -- choosing and checking the release --------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    version: Version
    path: str
    info: TargetFile
    downgrade: bool


def _candidates(session: _Session, target: Target) -> list[_Candidate]:
    """The releases targets.json lists for this gateway's channel and platform, newest first."""
    found = []
    platforms = {target.platform, ANY_PLATFORM}
    for path, info in session.targets().items():
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "releases" or not parts[3].endswith(".json"):
            continue
        if parts[1] != target.channel or parts[2] not in platforms:
            continue
        custom = (info.custom or {}).get("edge-agent", {}) if isinstance(info.custom, dict) else {}
        try:
            version = Version(str(custom.get("version", parts[3][: -len(".json")])))
        except InvalidVersion:
            continue
        found.append(_Candidate(version, path, info, custom.get("downgrade") is True))
    found.sort(key=lambda c: c.version, reverse=True)
    return found


def _acceptable(candidate: _Candidate, target: Target) -> bool:
    running = _version(target.running)
    if target.automatic and str(candidate.version) in target.refused:
        return False
    return candidate.version > running or (candidate.version < running and candidate.downgrade)


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise UpdateRejected(
            "wrong-software", f"the running version {text!r} is not PEP 440"
        ) from None


def _bundle_release(session: _Session) -> str:
    """The manifest target the bundle carries (a bundle holds one release)."""
    assert session.contents is not None
    found = [n for n in session.contents.members if n.startswith("targets/releases/")]
    if len(found) != 1:
        raise UpdateRejected(
            "bundle", f"{session.source.name} holds {len(found)} release manifests, not one"
        )
    return found[0][len("targets/") :]


def _find(session: _Session, target: Target, version: str | None) -> TargetFile:
    """The manifest target to verify: the bundle's, the version asked for, or the newest."""
    targets = session.targets()
    if session.contents is not None:
        path = _bundle_release(session)
        info = targets.get(path)
        if info is None:
            raise UpdateRejected("not-found", f"{path}: not a target of the bundle's targets.json")
        if version is not None and not path.endswith(f"/{version}.json"):
            raise UpdateRejected("not-found", f"{session.source.name} holds {path}, not {version}")
        return info
    candidates = _candidates(session, target)
    if version is not None:
        wanted = _version(version)
        for candidate in candidates:
            if candidate.version == wanted:
                return candidate.info
        raise UpdateRejected(
            "not-found",
            f"no release {version} for {target.channel}/{target.platform} on {session.source.name}",
        )
    if not candidates:
        raise UpdateRejected(
            "not-found",
            f"no release for {target.channel}/{target.platform} on {session.source.name}",
        )
    chosen = next((c for c in candidates if _acceptable(c, target)), candidates[0])
    return chosen.info


def _load_release(session: _Session, info: TargetFile) -> Release:
    """Download and check the manifest (a target: length, hash), then parse it."""
    path = session.fetch(info, session.downloads / "manifest.json", "manifest")
    data = path.read_bytes()
    try:
        manifest: dict[str, Any] = json.loads(data)
        if manifest.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"schema {manifest.get('schema')!r}, not {MANIFEST_SCHEMA}")
        wheels = tuple(str(w) for w in manifest["wheels"])
        release = Release(
            version=str(manifest["version"]),
            channel=str(manifest["channel"]),
            platform=str(manifest["platform"]),
            python=str(manifest["python"]),
            downgrade=manifest.get("downgrade") is True,
            wheels=wheels,
            manifest=data,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpdateRejected(
            "wrong-software", f"{info.path}: not a release manifest: {exc}"
        ) from exc
    expected = f"releases/{release.channel}/{release.platform}/{release.version}.json"
    if info.path != expected:
        raise UpdateRejected(
            "wrong-software", f"{info.path}: its manifest says {expected}: not the same release"
        )
    return release


def _check_release(release: Release, target: Target) -> None:
    """Channel, platform, Python, version and refusal: the gateway's own rules."""
    what = f"release {release.version} ({release.channel}/{release.platform}/{release.python})"
    if release.channel != target.channel:
        raise UpdateRejected(
            "wrong-software", f"{what} is for channel {release.channel}, not {target.channel}"
        )
    if release.platform not in (target.platform, ANY_PLATFORM):
        raise UpdateRejected(
            "wrong-software", f"{what} is for {release.platform}, this gateway is {target.platform}"
        )
    if not python_matches(release.python, target.python):
        raise UpdateRejected(
            "wrong-software", f"{what} is for {release.python}, this gateway runs {target.python}"
        )
    new, running = _version(release.version), _version(target.running)
    if new == running:
        raise UpdateRejected("same-version", f"{release.version} is the version running")
    if new < running and not release.downgrade:
        raise UpdateRejected(
            "downgrade",
            f"{release.version} is older than the running {target.running} and its manifest "
            "does not allow a downgrade",
        )
    if target.automatic and release.version in target.refused:
        raise UpdateRejected(
            "refused", f"{release.version} was rolled back on this gateway: not taken automatically"
        )
    _check_wheel_names(release)


def _check_wheel_names(release: Release) -> None:
    if len(set(release.wheels)) != len(release.wheels):
        raise UpdateRejected("wrong-software", f"release {release.version} lists a wheel twice")
    agents = []
    for name in release.wheels:
        if not _WHEEL.match(name):
            raise UpdateRejected(
                "wrong-software", f"release {release.version}: bad wheel name {name!r}"
            )
        try:
            wheel = parse_wheel(Path(name))
        except InstallError as exc:
            raise UpdateRejected("wrong-software", f"release {release.version}: {exc}") from exc
        if wheel.name == AGENT_PROJECT:
            agents.append(wheel)
    if len(agents) != 1 or _version(agents[0].version) != _version(release.version):
        raise UpdateRejected(
            "wrong-software",
            f"release {release.version} does not list exactly one {AGENT_PROJECT} "
            f"{release.version} wheel",
        )


# -- the public entry points ------------------------------------------------------------------------


def newest(
    source: Source,
    *,
    trust_dir: Path,
    trusted_root: Path | None,
    target: Target,
    work_dir: Path | None = None,
) -> Release | None:
    """Refresh, then the newest acceptable release for the gateway; None when nothing newer.

    A bundle holds one release: it is returned if acceptable (its wrong software raises).
    """
    with contextlib.ExitStack() as stack:
        work = Path(work_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        session = stack.enter_context(_session(source, Path(trust_dir), trusted_root, work))
        session.refresh()
        if session.contents is not None:
            chosen: TargetFile | None = _find(session, target, None)
        else:
            acceptable = [c for c in _candidates(session, target) if _acceptable(c, target)]
            chosen = acceptable[0].info if acceptable else None
        release = _load_release(session, chosen) if chosen is not None else None
        if release is not None:
            try:
                _check_release(release, target)
            except UpdateRejected as exc:
                if exc.check not in ("same-version", "downgrade", "refused"):
                    raise
                release = None
        _commit_metadata(session, Path(trust_dir))
        return release


def verify(
    source: Source,
    *,
    trust_dir: Path,
    trusted_root: Path | None,
    target: Target,
    wheel_cache: Path,
    work_dir: Path,
    version: str | None = None,
    also_in: Sequence[Path] = (),
) -> Verified:
    """Verify one release from `source` completely; `work_dir/wheelhouse` holds its wheels.

    A wheel is taken from `wheel_cache`, else from a folder of `also_in` (another side's cache,
    read only), else from the source; each is checked against its target (length, sha256)
    wherever it comes from, and what was not in `wheel_cache` is copied there.
    """
    trust_dir, wheel_cache, work_dir = Path(trust_dir), Path(wheel_cache), Path(work_dir)
    with _session(source, trust_dir, trusted_root, work_dir) as session:
        session.refresh()
        info = _find(session, target, version)
        release = _load_release(session, info)
        _check_release(release, target)
        found: dict[str, tuple[Path, bool]] = {}  # name → (file, downloaded now)
        for name in release.wheels:
            with _mapped(session, "wheel", target=f"wheels/{name}"):
                wheel_info = session.updater.get_targetinfo(f"wheels/{name}")
            if wheel_info is None:
                raise UpdateRejected(
                    "not-found", f"wheels/{name}: listed by release {release.version}, not a target"
                )
            cached = session.updater.find_cached_target(wheel_info, str(wheel_cache / name))
            if cached is not None:
                found[name] = (Path(cached), False)
                continue
            other = _copy_verified(session, wheel_info, name, also_in)
            if other is not None:
                found[name] = (other, True)
                continue
            found[name] = (session.fetch(wheel_info, session.downloads / name, "wheel"), True)
        wheel_cache.mkdir(parents=True, exist_ok=True)
        for name, (path, fresh) in found.items():
            if fresh:
                copy_atomic(path, wheel_cache / name, mode=0o644, sync_dir=False)
        if any(fresh for _, fresh in found.values()):
            fsync_dir(wheel_cache)
        _commit_metadata(session, trust_dir)
    wheelhouse = work_dir / "wheelhouse"
    if wheelhouse.exists():
        shutil.rmtree(wheelhouse)
    wheelhouse.mkdir(parents=True)
    for name in release.wheels:
        _link(wheel_cache / name, wheelhouse / name)
    return Verified(release, wheelhouse)


def _copy_verified(
    session: _Session, info: TargetFile, name: str, folders: Sequence[Path]
) -> Path | None:
    """The wheel `name` copied from the first of `folders` that holds it intact, or None.

    Copied first, checked after: the folders may be writable by someone else (the agent's
    downloads, read by root), so what is checked is what will be installed.
    """
    for folder in folders:
        candidate = Path(folder) / name
        if not candidate.is_file():
            continue
        copy = session.downloads / name
        try:
            shutil.copyfile(candidate, copy)
        except OSError:
            continue
        if session.updater.find_cached_target(info, str(copy)) is not None:
            return Path(copy)
        copy.unlink()
    return None


def _link(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
