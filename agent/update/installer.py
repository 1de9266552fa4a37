"""The one installer: a wheelhouse in, a self-tested release switched to `current` out.

Used by the Debian package's postinst (`install`) and by signed updates (`agent/update/apply.py`,
which calls `build_and_test`, `point`, `prune` and `install_lock` from here). It runs with only the
target's `python3` and the pypa `installer` library (imported where it is used): no pip, no
compiler, no network, no `python3-venv`. The postinst bootstrap, before any release exists:

    WH=/usr/lib/edge-agent/wheelhouse
    PYTHONPATH="$WH/$(basename $WH/edge_agent-*.whl):$WH/$(basename $WH/installer-*.whl)" \\
        python3 -m agent.update.installer --wheelhouse "$WH" --prefix /

Steps (paths from `InstallLayout`):

1. Find the agent wheel and its version; check every `Requires-Dist` of it (extras left out)
   has a wheel of a matching version in the wheelhouse. Bad input: exit 2.
2. `releases/<v>` complete (its marker, written last, holds the digest of this wheelhouse) and
   `current` → it: print "edge-agent <v> already installed", change nothing, exit 0.
3. Else build `releases/.<v>.tmp-<pid>`: `python3 -m venv --without-pip`, every wheel of the
   wheelhouse installed into it with `installer` (scripts for `releases/<v>/bin/python3`,
   bytecode compiled: /opt is read-only to the service), sync, rename to `releases/<v>`.
4. Self-test: `<release>/bin/edge-agent --version` prints the version, and `config validate
   --no-files` (the file, not the TLS files it names) passes on /etc/edge-agent/config.yaml (or the packaged example when there is none). A
   failure removes the new release, leaves `current` alone: exit 1 with the reason.
5. Keep the wheels: each copied into the wheel cache (`/opt/edge-agent/wheels/`; a delta bundle
   or an online update takes the unchanged ones from there, each checked against its signed
   target) and listed in `releases/<v>/.release.json` (unsigned: it only keeps them from being
   pruned). Write the marker; `previous` ← the old `current` target (if any, and different), `current` ←
   the new release, each a symlink made aside and renamed over (atomic), folder fsynced;
   `/usr/bin/edge-agent` → `/opt/edge-agent/current/bin/edge-agent` (relative, so it stays
   inside `--prefix`).
6. Keep at most `keep` releases (default 3), never `current` nor `previous`; wheels in the
   wheel cache that no kept release's `.release.json` lists go too (`prune`).

What an install killed half-way leaves (`releases/.<v>.tmp-<pid>`, a release without its marker,
a release set aside as `releases/.<v>.old-<pid>`) is cleaned up by the next one under the lock
(`clean_interrupted`).

Exit status: 0 installed (or already), 1 the new release failed its self-test or the install
failed on the way, 2 bad input (wheelhouse, arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.storage.atomic import copy_atomic, fsync_dir, write_atomic
from agent.update.layout import InstallLayout

AGENT_PROJECT = "edge-agent"
DEFAULT_KEEP = 3
RELEASE_FILE_MODE = 0o644  # what root writes under /opt: the agent's user reads it
SELF_TEST_TIMEOUT = 120.0

_WHEEL_NAME = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?-[^-]+-[^-]+-[^-]+\.whl$"
)
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*"
    r"(\(?\s*(?P<spec>[^;)]*?)\s*\)?)?\s*(;\s*(?P<marker>.*))?$"
)


class InstallError(Exception):
    """A one-line reason; `code` is the exit status (1 failed install, 2 bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def normalize(name: str) -> str:
    """A project name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class Wheel:
    path: Path
    name: str  # normalized
    version: str


def parse_wheel(path: Path) -> Wheel:
    match = _WHEEL_NAME.match(path.name)
    if match is None:
        raise InstallError(f"{path.name}: not a wheel file name", code=2)
    return Wheel(path, normalize(match["name"]), match["version"])


def read_metadata(wheel: Wheel) -> str:
    """The METADATA of a wheel, read from the zip (no importlib.metadata)."""
    try:
        with zipfile.ZipFile(wheel.path) as archive:
            names = [
                n
                for n in archive.namelist()
                if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(names) != 1:
                raise InstallError(f"{wheel.path.name}: no single .dist-info/METADATA", code=2)
            return archive.read(names[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile) as exc:
        raise InstallError(f"{wheel.path.name}: cannot read the wheel: {exc}", code=2) from exc


def requirements(metadata: str) -> list[tuple[str, str]]:
    """(normalized name, version specifier) of every Requires-Dist outside an extra.

    Markers other than `extra` are taken to apply (the agent's pins carry none): a requirement
    the wheelhouse must satisfy is never skipped by a marker we cannot evaluate here.
    """
    found: list[tuple[str, str]] = []
    for line in metadata.splitlines():
        if not line:
            break  # the headers end at the first empty line
        if not line.lower().startswith("requires-dist:"):
            continue
        match = _REQUIREMENT.match(line.split(":", 1)[1])
        if match is None:
            raise InstallError(f"cannot read requirement {line!r}", code=2)
        marker = match["marker"] or ""
        if re.search(r"\bextra\s*==", marker):
            continue
        found.append((normalize(match["name"]), (match["spec"] or "").strip()))
    return found


def _satisfies(version: str, spec: str) -> bool:
    """Only exact pins (`==X`) are checked against the wheel's version; others just need a wheel."""
    pins = [part.strip()[2:].strip() for part in spec.split(",") if part.strip().startswith("==")]
    return all(
        version.startswith(pin[:-1]) if pin.endswith(".*") else pin == version for pin in pins
    )


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    agent: Wheel
    wheels: tuple[Wheel, ...]
    digest: str

    @property
    def version(self) -> str:
        return self.agent.version


def scan_wheelhouse(folder: Path) -> Wheelhouse:
    """The wheels of `folder`, the agent's among them, checked against its requirements."""
    if not folder.is_dir():
        raise InstallError(f"wheelhouse {folder} is not a folder", code=2)
    wheels = tuple(parse_wheel(p) for p in sorted(folder.glob("*.whl")))
    agents = [w for w in wheels if w.name == AGENT_PROJECT]
    if not agents:
        raise InstallError(f"no {AGENT_PROJECT} wheel in {folder}", code=2)
    versions = sorted({w.version for w in agents})
    if len(versions) > 1:
        raise InstallError(
            f"{folder} holds {AGENT_PROJECT} {', '.join(versions)}: exactly one version", code=2
        )
    by_name: dict[str, list[Wheel]] = {}
    for wheel in wheels:
        by_name.setdefault(wheel.name, []).append(wheel)
    duplicates = sorted(name for name, ws in by_name.items() if len(ws) > 1)
    if duplicates:
        raise InstallError(f"{folder} holds several wheels of {', '.join(duplicates)}", code=2)
    agent = agents[0]
    missing = []
    for name, spec in requirements(read_metadata(agent)):
        have = by_name.get(name)
        if not have or not _satisfies(have[0].version, spec):
            missing.append(f"{name}{spec}")
    if missing:
        raise InstallError(f"{folder} has no wheel for {', '.join(missing)}", code=2)
    digest = hashlib.sha256()
    for wheel in wheels:
        digest.update(wheel.path.name.encode() + b"\0")
        with wheel.path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return Wheelhouse(agent, wheels, "sha256:" + digest.hexdigest())


# -- the filesystem -----------------------------------------------------------------------------


def replace_symlink(link: Path, target: str) -> None:
    """`link` → `target`, atomically: a symlink made aside, renamed over, the folder fsynced."""
    link.parent.mkdir(parents=True, exist_ok=True)
    aside = link.with_name(f"{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()
    aside.symlink_to(target)
    aside.replace(link)
    fsync_dir(link.parent)


def link_target(link: Path) -> str | None:
    try:
        return str(link.readlink())
    except (FileNotFoundError, OSError):
        return None


def release_of(layout: InstallLayout, link: Path) -> str | None:
    """The version a link (`current`, `previous`) points at, if it points into releases/."""
    target = link_target(link)
    if target is None:
        return None
    resolved = (link.parent / target).resolve()
    if resolved.parent != layout.releases_dir.resolve():
        return None
    return resolved.name


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def install_lock(layout: InstallLayout) -> Iterator[None]:
    layout.releases_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.opt_dir / ".install.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise InstallError("another install is running (lock held)") from exc
        yield
    finally:
        os.close(fd)


# -- building a release ---------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """The environment for the interpreters we start: no PYTHONPATH (the bootstrap sets one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.setdefault("PATH", "/usr/bin:/bin")
    return env


def _run(argv: Sequence[str], what: str, timeout: float = SELF_TEST_TIMEOUT) -> str:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        reason = detail[-1] if detail else f"exit status {done.returncode}"
        raise InstallError(f"{what} failed (exit {done.returncode}): {reason}")
    return done.stdout


def base_python() -> str:
    """The interpreter the release is built on: the system's, also when we run inside a venv."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


def build_release(wheelhouse: Wheelhouse, build: Path, final: Path) -> None:
    """A venv at `build` holding every wheel, its scripts written for `final` (its last name)."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    _run([base_python(), "-m", "venv", "--without-pip", str(build)], "python3 -m venv")
    probe = "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"
    paths = json.loads(_run([str(build / "bin" / "python3"), "-c", probe], "the new venv"))
    scheme = {
        "purelib": paths["purelib"],
        "platlib": paths["platlib"],
        "headers": paths["include"],
        "scripts": paths["scripts"],
        "data": paths["data"],
    }
    destination = SchemeDictionaryDestination(
        scheme,
        interpreter=str(final / "bin" / "python3"),
        script_kind="posix",
        bytecode_optimization_levels=(0,),
    )
    for wheel in wheelhouse.wheels:
        try:
            with WheelFile.open(wheel.path) as source:
                install(source, destination, {"INSTALLER": b"edge-agent\n"})
        except Exception as exc:
            raise InstallError(f"installing {wheel.path.name}: {exc}") from exc
    # pyvenv.cfg and the activate scripts name the folder they were made in: name the final one.
    for script in [build / "pyvenv.cfg", *(build / "bin").glob("activate*")]:
        text = script.read_text(encoding="utf-8")
        script.write_text(text.replace(str(build), str(final)), encoding="utf-8")
    os.sync()


def packaged_example(release: Path) -> Path:
    """config/example.yaml as the release holds it (without importing the release)."""
    found = sorted(release.glob("lib/python3*/site-packages/agent/data/config/example.yaml"))
    if not found:
        raise InstallError(f"{release} holds no agent/data/config/example.yaml")
    return found[0]


def self_test(layout: InstallLayout, release: Path, version: str) -> None:
    """The new release answers `--version` with its version and accepts the config."""
    entry = release / "bin" / "edge-agent"
    out = _run([str(entry), "--version"], "self-test: edge-agent --version").strip()
    if out != f"edge-agent {version}":
        raise InstallError(f"self-test: edge-agent --version printed {out!r}, not {version}")
    config = layout.config if layout.config.exists() else packaged_example(release)
    # --no-files: a TLS file the service user cannot read is this machine's problem, which the
    # release being replaced has too; it must not stop the update that may be its remedy.
    _run(
        [str(entry), "config", "validate", "--no-files", str(config)],
        f"self-test: config validate {config}",
    )


# -- the switch and the clean-up -------------------------------------------------------------------


def point(layout: InstallLayout, current: str, previous: str | None) -> None:
    """The links exactly so: `previous` first (or removed), then `current`, then the bin link.

    Each link is replaced atomically, so at every instant `current` names a whole release; done
    again after a crash it gives the same result (`update` resumes a switch with it).
    """
    if previous is None:
        if layout.previous.is_symlink():
            layout.previous.unlink()
            fsync_dir(layout.previous.parent)
    elif link_target(layout.previous) != f"releases/{previous}":
        replace_symlink(layout.previous, f"releases/{previous}")
    if link_target(layout.current) != f"releases/{current}":
        replace_symlink(layout.current, f"releases/{current}")
    bin_target = os.path.relpath(layout.bin_target, layout.bin_link.parent)
    if link_target(layout.bin_link) != bin_target:
        replace_symlink(layout.bin_link, bin_target)


def switch(layout: InstallLayout, version: str) -> None:
    """`previous` ← the old `current` (if any and different), `current` ← releases/<version>."""
    old = release_of(layout, layout.current)
    keep = release_of(layout, layout.previous)
    if old is not None and old != version and layout.release(old).is_dir():
        keep = old
    point(layout, version, keep if keep != version else None)


def is_complete(layout: InstallLayout, version: str) -> bool:
    """The release's marker is there: it was built, passed its self-test, and is whole."""
    return layout.marker(version).is_file()


def clean_interrupted(layout: InstallLayout) -> list[str]:
    """Undo what a killed install left in releases/ (call it holding `install_lock`).

    A build folder (`.<v>.tmp-<pid>`) goes; a release without its marker (killed during its
    self-test) goes, and the complete one it replaced (`.<v>.old-<pid>`) comes back; a folder
    set aside next to a complete release goes. `current` and `previous` are never touched.
    Returns what it removed or put back, one line each.
    """
    done: list[str] = []
    if not layout.releases_dir.is_dir():
        return done
    protected = {release_of(layout, layout.current), release_of(layout, layout.previous)}
    for entry in sorted(layout.releases_dir.iterdir()):
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            remove_tree(entry)
            done.append(f"removed the unfinished build {entry.name}")
    for entry in sorted(layout.releases_dir.iterdir()):
        if entry.name.startswith(".") or entry.name in protected or not entry.is_dir():
            continue
        if not is_complete(layout, entry.name):
            remove_tree(entry)
            done.append(f"removed the incomplete release {entry.name}")
    for entry in sorted(layout.releases_dir.iterdir()):
        if not (entry.name.startswith(".") and ".old-" in entry.name):
            continue
        version = entry.name[1:].split(".old-", 1)[0]
        if layout.release(version).exists():
            remove_tree(entry)
            done.append(f"removed the release set aside as {entry.name}")
        else:
            entry.replace(layout.release(version))
            done.append(f"put back release {version}")
    if done:
        fsync_dir(layout.releases_dir)
    return done


def manifest_wheels(layout: InstallLayout, version: str) -> set[str] | None:
    """The wheel file names the release's `.release.json` lists; empty without one; None if
    it cannot be read (then nothing is pruned from the wheel cache)."""
    try:
        data = json.loads(layout.release_manifest(version).read_bytes())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError):
        return None
    wheels = data.get("wheels") if isinstance(data, dict) else None
    if not isinstance(wheels, list) or not all(isinstance(w, str) for w in wheels):
        return None
    return set(wheels)


def prune(layout: InstallLayout, keep: int, out: TextIO) -> None:
    """At most `keep` releases (oldest go first), never current nor previous; stale builds go;
    then every wheel of the wheel cache that no kept release's manifest lists."""
    for line in clean_interrupted(layout):
        print(line, file=out)
    protected = {release_of(layout, layout.current), release_of(layout, layout.previous)}
    releases = []
    for entry in layout.releases_dir.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            releases.append(entry)
    releases.sort(key=lambda p: p.stat().st_mtime)
    excess = len(releases) - max(keep, 1)
    kept = []
    for entry in releases:
        if excess > 0 and entry.name not in protected:
            remove_tree(entry)
            print(f"removed old release {entry.name}", file=out)
            excess -= 1
        else:
            kept.append(entry.name)
    prune_wheel_cache(layout, kept, out)


def prune_wheel_cache(layout: InstallLayout, kept: Sequence[str], out: TextIO) -> None:
    if not layout.wheel_cache.is_dir():
        return
    listed: set[str] = set()
    for version in kept:
        wheels = manifest_wheels(layout, version)
        if wheels is None:
            print(f"release {version}: unreadable .release.json, wheel cache left alone", file=out)
            return
        listed |= wheels
    removed = 0
    for entry in layout.wheel_cache.iterdir():
        if entry.name not in listed:
            remove_tree(entry)
            removed += 1
    if removed:
        fsync_dir(layout.wheel_cache)
        print(f"removed {removed} wheels no kept release needs from the wheel cache", file=out)


def install(
    wheelhouse_dir: Path,
    layout: InstallLayout | None = None,
    keep: int = DEFAULT_KEEP,
    out: TextIO = sys.stdout,
) -> str:
    """Install the wheelhouse as a release and switch to it; returns the version.

    Raises InstallError (with its exit code) on any failure; `current` is then untouched.
    """
    layout = layout or InstallLayout()
    if keep < 1:
        raise InstallError("--keep must be at least 1", code=2)
    house = scan_wheelhouse(wheelhouse_dir)
    version = house.version
    release = layout.release(version)
    with install_lock(layout):
        complete = _marker(layout, version) == house.digest
        current = release_of(layout, layout.current)
        if not complete:
            build_and_test(layout, house, out, manifest=wheel_list(house))
        keep_wheels(layout, house)
        if complete and current == version and link_target(layout.bin_link) is not None:
            print(f"edge-agent {version} already installed", file=out)
            return version
        switch(layout, version)
        prune(layout, keep, out)
    print(f"edge-agent {version} installed in {release}", file=out)
    return version


def _marker(layout: InstallLayout, version: str) -> str | None:
    try:
        return layout.marker(version).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def build_and_test(
    layout: InstallLayout, house: Wheelhouse, out: TextIO, manifest: bytes | None = None
) -> None:
    """`releases/<v>` built from the wheelhouse, self-tested, its manifest kept (signed updates'
    `.release.json`), its marker written last. On any failure the release folders are as they
    were (a release of the same version built from other wheels is put back)."""
    version = house.version
    release = layout.release(version)
    pid = os.getpid()
    build = layout.releases_dir / f".{version}.tmp-{pid}"
    aside = layout.releases_dir / f".{version}.old-{pid}"
    remove_tree(build)
    print(f"building edge-agent {version} from {len(house.wheels)} wheels", file=out)
    try:
        build_release(house, build, release)
    except BaseException:
        remove_tree(build)
        raise
    # The same version, built from another wheelhouse (or left incomplete): set it aside.
    if release.exists():
        release.replace(aside)
    build.replace(release)
    fsync_dir(layout.releases_dir)
    try:
        self_test(layout, release, version)
    except BaseException:
        remove_tree(release)
        if aside.exists():
            aside.replace(release)
        fsync_dir(layout.releases_dir)
        raise
    remove_tree(aside)
    if manifest is not None:
        write_atomic(layout.release_manifest(version), manifest, mode=RELEASE_FILE_MODE)
    write_atomic(layout.marker(version), (house.digest + "\n").encode(), mode=RELEASE_FILE_MODE)


def wheel_list(house: Wheelhouse) -> bytes:
    """The `.release.json` of a release installed from a wheelhouse (the package's): the
    wheels it was built from, so the wheel cache keeps them. Unsigned, and trusted by nothing:
    a signed update checks every cached wheel against its own targets (length, sha256)."""
    data = {"schema": 1, "version": house.version, "wheels": [w.path.name for w in house.wheels]}
    return json.dumps(data, indent=1).encode() + b"\n"


def cache_wheels(layout: InstallLayout, house: Wheelhouse) -> None:
    """The wheelhouse's wheels into the wheel cache, each copied aside, synced and renamed in
    (a wheel there already, of the same size, is left as it is)."""
    cache = layout.wheel_cache
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    copied = False
    for wheel in house.wheels:
        dest = cache / wheel.path.name
        if dest.is_file() and dest.stat().st_size == wheel.path.stat().st_size:
            continue
        copy_atomic(wheel.path, dest, mode=RELEASE_FILE_MODE, sync_dir=False)
        copied = True
    if copied:
        fsync_dir(cache)


def keep_wheels(layout: InstallLayout, house: Wheelhouse) -> None:
    """The gateway keeps the wheels of its installed releases (docs/updates.md): a delta bundle
    or an online update takes the unchanged ones from the cache. A release without a
    `.release.json` (installed before there was one) gets the list of its wheels."""
    cache_wheels(layout, house)
    if not layout.release_manifest(house.version).exists():
        write_atomic(
            layout.release_manifest(house.version), wheel_list(house), mode=RELEASE_FILE_MODE
        )


# -- the command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edge-agent install` and of `python3 -m agent.update.installer`."""
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of wheels: the agent's and every dependency's",
    )
    parser.add_argument(
        "--prefix",
        type=Path,
        default=Path("/"),
        metavar="PATH",
        help="root of the installation (default /; tests use a temp folder)",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        metavar="N",
        help=f"releases to keep, current and previous among them (default {DEFAULT_KEEP})",
    )


def run(args: argparse.Namespace) -> int:
    """Install as the parsed arguments say; the exit status."""
    try:
        install(args.wheelhouse, InstallLayout(args.prefix), keep=args.keep)
    except InstallError as exc:
        print(f"edge-agent install: error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:  # a folder not writable, a disk full: one line, not a traceback
        print(f"edge-agent install: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m agent.update.installer",
        description="Install an edge-agent release from a wheelhouse and switch to it.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
