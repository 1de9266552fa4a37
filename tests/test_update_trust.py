"""The gateway's checks (agent/update/trust.py) against real signed TUF metadata: one test per
attack TUF names, each failing with the right check and changing nothing the gateway trusts
(its metadata, its wheel cache); root rotation, versions, delta bundles, online fetching and
bundle safety."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from agent.config import load_config
from agent.update import release, trust, update_cli
from agent.update.apply import Installer
from agent.update.layout import InstallLayout
from agent.update.platforms import python_tag
from agent.update.state import UpdateStore
from agent.update.trust import Target, UpdateRejected
from tests.agentproc import write_config
from tests.update_repo import (
    GATEWAY_PLATFORM,
    make_wheel,
    make_wheelhouse,
    meta_of,
    new_repo,
    past,
    publish,
    resign,
    serve,
    signers,
)

BIG = 10**8


@dataclass
class Gateway:
    tmp: Path
    repo: Path

    @property
    def trust_dir(self) -> Path:
        return self.tmp / "trust"

    @property
    def cache(self) -> Path:
        return self.tmp / "wheels"

    @property
    def root(self) -> Path:
        return self.repo / "metadata" / "1.root.json"

    def target(self, running: str = "0.1.0", **extra: Any) -> Target:
        fields: dict[str, Any] = {
            "channel": "stable",
            "platform": GATEWAY_PLATFORM,
            "python": python_tag(),
            "running": running,
        }
        fields.update(extra)
        return Target(**fields)

    def bundle(self, version: str, name: str | None = None, **extra: Any) -> Path:
        out = self.tmp / "bundles" / (name or f"{version}.tar")
        release.bundle(
            self.repo, version=version, channel=extra.pop("channel", "stable"), out=out, **extra
        )
        return out

    def verify(self, source: trust.Source, running: str = "0.1.0", **extra: Any) -> trust.Verified:
        version = extra.pop("version", None)
        return trust.verify(
            source,
            trust_dir=self.trust_dir,
            trusted_root=self.root,
            target=self.target(running, **extra),
            wheel_cache=self.cache,
            work_dir=self.tmp / "work",
            version=version,
        )

    def verify_bundle(self, path: Path, running: str = "0.1.0", **extra: Any) -> trust.Verified:
        return self.verify(trust.bundle_source(path, extra.pop("max_bytes", BIG)), running, **extra)

    def state(self) -> dict[str, bytes | str]:
        """Everything the gateway trusts or caches: path → contents (or link target)."""
        found: dict[str, bytes | str] = {}
        for folder in (self.trust_dir, self.cache):
            if not folder.exists():
                continue
            for path in sorted(folder.rglob("*")):
                key = str(path.relative_to(self.tmp))
                if path.is_symlink():
                    found[key] = str(path.readlink())
                elif path.is_file():
                    found[key] = path.read_bytes()
        return found

    def rejects(self, check: str, attempt: Callable[[], object]) -> UpdateRejected:
        """`attempt` fails with `check`, and nothing the gateway trusts or caches changed."""
        trust.ensure_trust(self.trust_dir, self.root)
        before = self.state()
        with pytest.raises(UpdateRejected) as caught:
            attempt()
        assert caught.value.check == check, str(caught.value)
        assert "\n" not in str(caught.value)
        assert self.state() == before
        return caught.value


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path, new_repo(tmp_path, "0.1.0", "0.2.0"))


def rewrite(
    bundle: Path,
    out: Path,
    *,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A copy of a bundle with members replaced, added or dropped (the attacker's tar)."""
    replace, add = replace or {}, add or {}
    with tarfile.open(bundle) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            if member.name in drop:
                continue
            data = replace.get(member.name, src.extractfile(member).read())  # type: ignore[union-attr]
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


def flipped(data: bytes) -> bytes:
    """The same length, other contents."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


AGENT2 = "targets/wheels/edge_agent-0.2.0-py3-none-any.whl"


# -- a release that passes ---------------------------------------------------------------------


def test_a_full_bundle_verifies_into_exactly_its_wheels_and_is_trusted_after(gw: Gateway) -> None:
    verified = gw.verify_bundle(gw.bundle("0.2.0"))
    assert verified.release.version == "0.2.0"
    names = sorted(p.name for p in verified.wheelhouse.iterdir())
    assert names == sorted(verified.release.wheels)
    assert len(names) == 3
    assert sorted(p.name for p in gw.cache.iterdir()) == names
    assert json.loads((gw.trust_dir / "timestamp.json").read_bytes())["signed"]["version"] >= 3


def test_no_trusted_root_refuses_everything(gw: Gateway) -> None:
    with pytest.raises(UpdateRejected) as caught:
        trust.verify(
            trust.bundle_source(gw.bundle("0.2.0"), BIG),
            trust_dir=gw.trust_dir,
            trusted_root=None,
            target=gw.target(),
            wheel_cache=gw.cache,
            work_dir=gw.tmp / "work",
        )
    assert caught.value.check == "no-trusted-root"
    assert not gw.trust_dir.exists()


# -- the attacks ----------------------------------------------------------------------------------


def test_arbitrary_installation(gw: Gateway) -> None:
    """A wheel's contents replaced (same length), in a bundle and on the server: hash."""
    bundle = gw.bundle("0.2.0")
    evil = rewrite(bundle, gw.tmp / "evil.tar", replace={AGENT2: flipped(member(bundle, AGENT2))})
    reason = gw.rejects("hash", lambda: gw.verify_bundle(evil))
    assert "edge_agent-0.2.0" in str(reason)

    wheel = gw.repo / AGENT2
    wheel.write_bytes(flipped(wheel.read_bytes()))
    with serve(gw.repo) as (url, _):
        gw.rejects("hash", lambda: gw.verify(trust.repository_source(url)))


def test_endless_data(gw: Gateway) -> None:
    """A wheel longer than its TUF length (bundle), a 1 MiB timestamp (server): length."""
    bundle = gw.bundle("0.2.0")
    longer = rewrite(
        bundle, gw.tmp / "long.tar", replace={AGENT2: member(bundle, AGENT2) + b"\0" * 4096}
    )
    gw.rejects("length", lambda: gw.verify_bundle(longer))

    huge = rewrite(
        bundle, gw.tmp / "huge.tar", replace={"metadata/timestamp.json": b" " * (1 << 20)}
    )
    gw.rejects("bundle", lambda: gw.verify_bundle(huge))  # the reader's cap comes first

    timestamp = gw.repo / "metadata" / "timestamp.json"
    timestamp.write_bytes(timestamp.read_bytes() + b" " * (1 << 20))
    with serve(gw.repo) as (url, _):
        reason = gw.rejects("length", lambda: gw.verify(trust.repository_source(url)))
    assert "timestamp.json" in str(reason)


def test_extraneous_dependencies(gw: Gateway) -> None:
    """A wheel smuggled beside a release is never installed; one added to its manifest fails."""
    evil_wheel = make_wheel(gw.tmp / "evil", "evil", "1.0").read_bytes()
    evil_name = "targets/wheels/evil-1.0-py3-none-any.whl"
    bundle = gw.bundle("0.2.0")
    smuggled = rewrite(bundle, gw.tmp / "smuggled.tar", add={evil_name: evil_wheel})
    verified = gw.verify_bundle(smuggled)
    assert "evil-1.0-py3-none-any.whl" not in {p.name for p in verified.wheelhouse.iterdir()}
    assert not (gw.cache / "evil-1.0-py3-none-any.whl").exists()

    path = "targets/releases/stable/any/0.2.0.json"
    manifest = member(bundle, path)
    swapped = manifest.replace(b"pyserial-3.5-py3-none-any.whl", b"evilxxxx-3.5-py3-none-any.whl")
    assert len(swapped) == len(manifest) and swapped != manifest
    fresh = Gateway(gw.tmp / "fresh", gw.repo)
    edited = rewrite(
        bundle, gw.tmp / "edited.tar", replace={path: swapped}, add={evil_name: evil_wheel}
    )
    fresh.rejects("hash", lambda: fresh.verify_bundle(edited))
    data = json.loads(manifest)
    data["wheels"].append("evil-1.0-py3-none-any.whl")
    grown = rewrite(bundle, gw.tmp / "grown.tar", replace={path: json.dumps(data).encode()})
    fresh.rejects("length", lambda: fresh.verify_bundle(grown))

    (gw.repo / evil_name).write_bytes(evil_wheel)
    online = Gateway(gw.tmp / "online", gw.repo)
    with serve(gw.repo) as (url, asked):
        verified = online.verify(trust.repository_source(url))
    assert "evil-1.0-py3-none-any.whl" not in {p.name for p in verified.wheelhouse.iterdir()}
    assert not any("evil" in p for p in asked)


def test_fast_forward_attack(gw: Gateway) -> None:
    """A stolen timestamp key signs version 999: the gateway then takes the vendor's real
    timestamps for a rollback, until the vendor rotates the timestamp key (a new root)."""
    bundle = gw.bundle("0.2.0")
    stolen = signers(gw.repo, "timestamp")
    forward = resign(
        gw.repo,
        "timestamp",
        lambda s: setattr(s, "version", 999),
        keys=stolen,
        write_to=gw.tmp / "ts",
    )
    attack = rewrite(bundle, gw.tmp / "forward.tar", replace={"metadata/timestamp.json": forward})
    gw.verify_bundle(attack)  # validly signed: the gateway cannot tell
    assert json.loads((gw.trust_dir / "timestamp.json").read_bytes())["signed"]["version"] == 999

    publish(gw.repo, "0.3.0")
    gw.rejects("rollback", lambda: gw.verify_bundle(gw.bundle("0.3.0"), running="0.2.0"))

    release.rotate(gw.repo, "timestamp", add_keys=1, remove_keys=["timestamp-1"])
    verified = gw.verify_bundle(gw.bundle("0.3.0", "0.3.0-rotated.tar"), running="0.2.0")
    assert verified.release.version == "0.3.0"
    assert json.loads((gw.trust_dir / "timestamp.json").read_bytes())["signed"]["version"] < 999


def test_indefinite_freeze(gw: Gateway) -> None:
    """A timestamp past its expiry (a replayed one, say): expired."""
    resign(
        gw.repo,
        "timestamp",
        lambda s: (setattr(s, "expires", past()), setattr(s, "version", s.version + 1)),
    )
    reason = gw.rejects("expired", lambda: gw.verify_bundle(gw.bundle("0.2.0")))
    assert "timestamp.json" in str(reason)


def test_mix_and_match(gw: Gateway) -> None:
    """targets.json of another snapshot beside this snapshot: mix-and-match."""
    old_targets = (gw.repo / "metadata" / "targets.json").read_bytes()
    publish(gw.repo, "0.3.0")
    bundle = gw.bundle("0.3.0")
    mixed = rewrite(bundle, gw.tmp / "mixed.tar", replace={"metadata/targets.json": old_targets})
    reason = gw.rejects("mix-and-match", lambda: gw.verify_bundle(mixed))
    assert "targets.json" in str(reason)

    # A snapshot that names those old targets, but that no timestamp names.
    snapshot = resign(
        gw.repo,
        "snapshot",
        lambda s: s.meta.__setitem__(
            "targets.json", meta_of(old_targets, s.meta["targets.json"].version - 1)
        ),
        write_to=gw.tmp / "snapshot.json",
    )
    mixed2 = rewrite(
        bundle,
        gw.tmp / "mixed2.tar",
        replace={"metadata/targets.json": old_targets, "metadata/snapshot.json": snapshot},
    )
    gw.rejects("mix-and-match", lambda: gw.verify_bundle(mixed2))


def test_rollback_attack(gw: Gateway) -> None:
    """Metadata older than the trusted (a bundle made before, replayed): rollback."""
    older = gw.bundle("0.2.0", "older.tar")
    publish(gw.repo, "0.3.0")
    gw.verify_bundle(gw.bundle("0.3.0"), running="0.2.0")
    reason = gw.rejects("rollback", lambda: gw.verify_bundle(older, running="0.1.0"))
    assert "timestamp.json" in str(reason)


def test_key_compromise_below_threshold(tmp_path: Path) -> None:
    """A root signed by 1 of the 2 root keys it needs (one stolen key): signature."""
    gw = Gateway(
        tmp_path,
        new_repo(tmp_path, "0.1.0", "0.2.0", thresholds={"root": 2}, key_counts={"root": 3}),
    )
    bundle = gw.bundle("0.2.0")
    mallory = CryptoSigner.generate_ed25519()
    stolen = signers(gw.repo, "root")[:1]

    def takeover(root: Root) -> None:
        root.version += 1
        for keyid in list(root.roles["timestamp"].keyids):
            root.revoke_key(keyid, "timestamp")
        root.add_key(mallory.public_key, "timestamp")

    forged = resign(gw.repo, "root", takeover, keys=stolen, write_to=tmp_path / "2.root.json")
    attack = rewrite(bundle, tmp_path / "attack.tar", add={"metadata/2.root.json": forged})
    reason = gw.rejects("signature", lambda: gw.verify_bundle(attack))
    assert "2.root.json" in str(reason)

    # And a timestamp signed by a key the root never named.
    rogue = resign(
        gw.repo,
        "timestamp",
        lambda s: setattr(s, "version", s.version + 1),
        keys=[mallory],
        write_to=tmp_path / "ts",
    )
    gw.rejects(
        "signature",
        lambda: gw.verify_bundle(
            rewrite(bundle, tmp_path / "rogue.tar", replace={"metadata/timestamp.json": rogue})
        ),
    )


def test_wrong_software(gw: Gateway) -> None:
    """A release for another platform, another channel, another Python: wrong-software."""
    other = "arm64" if GATEWAY_PLATFORM != "arm64" else "amd64"
    publish(gw.repo, "0.3.0", platform=other)
    reason = gw.rejects("wrong-software", lambda: gw.verify_bundle(gw.bundle("0.3.0")))
    assert other in str(reason)

    publish(gw.repo, "0.3.0", channel="beta")
    gw.rejects(
        "wrong-software", lambda: gw.verify_bundle(gw.bundle("0.3.0", "beta.tar", channel="beta"))
    )

    machine = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}.get(GATEWAY_PLATFORM)
    if machine is not None:
        house = make_wheelhouse(
            gw.tmp / "wh-cp39", "0.4.0", tags=f"cp39-cp39-manylinux_2_17_{machine}"
        )
        release.add(gw.repo, channel="stable", wheelhouse=house)
        reason = gw.rejects("wrong-software", lambda: gw.verify_bundle(gw.bundle("0.4.0")))
        assert "cp39" in str(reason)


# -- rotation, versions, refusal ----------------------------------------------------------------


def test_root_rotation_walks_several_versions(gw: Gateway) -> None:
    """The gateway trusts root v1; the bundle carries v1..v4, the first root key long gone."""
    release.rotate(gw.repo, "root", add_keys=1)
    release.rotate(gw.repo, "root", remove_keys=["root-1"])
    release.rotate(gw.repo, "targets", add_keys=1, remove_keys=["targets-1"])
    publish(gw.repo, "0.3.0")
    gw.verify_bundle(gw.bundle("0.3.0"))
    trusted = Metadata[Root].from_file(str(gw.trust_dir / "root.json"))
    assert trusted.signed.version == 4
    assert sorted(p.name for p in (gw.trust_dir / "root_history").iterdir()) == [
        f"{n}.root.json" for n in range(1, 5)
    ]


def test_downgrade_refused_unless_the_manifest_allows_it(gw: Gateway) -> None:
    gw.rejects("downgrade", lambda: gw.verify_bundle(gw.bundle("0.1.0"), running="0.2.0"))
    gw.rejects("same-version", lambda: gw.verify_bundle(gw.bundle("0.2.0"), running="0.2.0"))
    publish(gw.repo, "0.1.1", downgrade=True)
    assert gw.verify_bundle(gw.bundle("0.1.1"), running="0.2.0").release.downgrade


def test_refused_only_for_automatic_updates(gw: Gateway) -> None:
    bundle = gw.bundle("0.2.0")
    gw.rejects(
        "refused", lambda: gw.verify_bundle(bundle, refused=frozenset({"0.2.0"}), automatic=True)
    )
    assert gw.verify_bundle(bundle, refused=frozenset({"0.2.0"})).release.version == "0.2.0"


def test_pep440_ordering_online(gw: Gateway) -> None:
    """0.10.0 is newer than 0.9.0; 1.0.0rc1 older than 1.0.0 (never compared as text)."""
    for version in ("0.9.0", "0.10.0"):
        publish(gw.repo, version)
    with serve(gw.repo) as (url, _):
        source = trust.repository_source(url)
        kw: dict[str, Any] = {"trust_dir": gw.trust_dir, "trusted_root": gw.root}
        found = trust.newest(source, target=gw.target("0.2.0"), **kw)
        assert found is not None and found.version == "0.10.0"
        assert trust.newest(source, target=gw.target("0.10.0"), **kw) is None
        publish(gw.repo, "1.0.0rc1")
        publish(gw.repo, "1.0.0")
        found = trust.newest(source, target=gw.target("1.0.0rc1"), **kw)
        assert found is not None and found.version == "1.0.0"
        gw.rejects("downgrade", lambda: gw.verify(source, running="1.0.0", version="1.0.0rc1"))
        refused = gw.target("0.10.0", refused=frozenset({"1.0.0"}), automatic=True)
        found = trust.newest(source, target=refused, **kw)
        assert found is not None and found.version == "1.0.0rc1"


# -- delta bundles, online ------------------------------------------------------------------------


def test_delta_bundle_needs_the_cached_wheels(gw: Gateway) -> None:
    delta = gw.bundle("0.2.0", "delta.tar", delta_from="0.1.0")
    fresh = Gateway(gw.tmp / "fresh", gw.repo)
    reason = fresh.rejects("incomplete", lambda: fresh.verify_bundle(delta))
    assert "pymodbus" in str(reason) or "pyserial" in str(reason)

    gw.verify_bundle(gw.bundle("0.1.0"), running="0.0.9")
    verified = gw.verify_bundle(delta)
    assert len(list(verified.wheelhouse.iterdir())) == 3


def test_root_takes_a_delta_bundles_missing_wheels_from_the_packaged_wheelhouse(
    gw: Gateway,
) -> None:
    """A gateway whose 0.1.0 came from the .deb has an empty wheel cache: `update apply` takes
    the wheels the delta leaves out from /usr/lib/edge-agent/wheelhouse, each checked."""
    delta = gw.bundle("0.2.0", "delta.tar", delta_from="0.1.0")
    root = gw.tmp / "gateway"
    config = gw.tmp / "config.yaml"
    write_config(config, gw.tmp / "state", [], update={"trusted_root": str(gw.root)})
    settings = load_config(config)
    store = UpdateStore(settings.layout)

    def apply_verify(packaged: Path | None) -> trust.Verified | UpdateRejected:
        layout = InstallLayout(root)
        shutil.rmtree(root, ignore_errors=True)
        if packaged is not None:
            shutil.copytree(packaged, layout.wheelhouse)
        work = root / "work"
        work.mkdir(parents=True)
        installer = Installer(layout, store)
        try:
            verified = update_cli._verify_with_trust(
                installer, settings.update, work, bundle=delta, version=None, automatic=False
            )
        except UpdateRejected as exc:
            return exc
        assert isinstance(verified, trust.Verified)
        return verified

    shipped = gw.repo.parent / "wh-stable-0.1.0"  # what `publish` released as 0.1.0
    verified = apply_verify(shipped)
    assert isinstance(verified, trust.Verified), verified
    assert sorted(p.name for p in verified.wheelhouse.iterdir()) == sorted(verified.release.wheels)
    assert sorted(p.name for p in InstallLayout(root).wheel_cache.iterdir()) == sorted(
        verified.release.wheels
    )
    # The control: without the packaged wheels, or with one that is not the released file.
    missing = apply_verify(None)
    assert isinstance(missing, UpdateRejected) and missing.check == "incomplete", missing
    tampered = gw.tmp / "tampered"
    shutil.copytree(shipped, tampered)
    make_wheel(tampered, "pyserial", "3.5", payload=b"# not the released bytes\n")
    wrong = apply_verify(tampered)
    assert isinstance(wrong, UpdateRejected) and wrong.check == "incomplete", wrong
    assert "pyserial" in wrong.reason


def test_online_fetches_only_the_missing_wheels(gw: Gateway) -> None:
    with serve(gw.repo) as (url, asked):
        gw.verify(trust.repository_source(url), running="0.0.9", version="0.1.0")
        first = [p for p in asked if "/wheels/" in p]
        asked.clear()
        verified = gw.verify(trust.repository_source(url), running="0.1.0")
        second = [p for p in asked if "/wheels/" in p]
    assert len(first) == 3
    assert second == ["/targets/wheels/edge_agent-0.2.0-py3-none-any.whl"]
    assert verified.release.version == "0.2.0"


def test_unreachable_repository(gw: Gateway) -> None:
    with serve(gw.tmp) as (url, _):
        pass  # the port is closed again
    gw.rejects("unreachable", lambda: gw.verify(trust.repository_source(url)))


# -- bundle safety --------------------------------------------------------------------------------


def _tar_with(path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bundle.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        build(tar)
    return path


def _file(name: str, data: bytes = b"x") -> Callable[[tarfile.TarFile], None]:
    def build(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return build


def _link(name: str, kind: bytes) -> Callable[[tarfile.TarFile], None]:
    def build(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/shadow"
        tar.addfile(info)

    return build


@pytest.mark.parametrize(
    ("case", "build"),
    [
        ("absolute path", _file("/etc/cron.d/evil")),
        ("dot-dot", _file("targets/../../evil")),
        ("symlink", _link("targets/wheels/a.whl", tarfile.SYMTYPE)),
        ("hard link", _link("targets/wheels/a.whl", tarfile.LNKTYPE)),
        ("device", _link("targets/wheels/a.whl", tarfile.CHRTYPE)),
        ("stray name", _file("install.sh")),
        (
            "duplicate",
            lambda tar: (
                _file("metadata/timestamp.json")(tar),
                _file("metadata/timestamp.json")(tar),
            ),
        ),
        ("metadata over its cap", _file("metadata/timestamp.json", b" " * 20000)),
    ],
)
def test_bundle_safety(gw: Gateway, case: str, build: Callable[[tarfile.TarFile], None]) -> None:
    bad = _tar_with(gw.tmp / "bad.tar", build)
    gw.rejects("bundle", lambda: gw.verify_bundle(bad))


def test_bundle_over_the_size_limit_or_truncated(gw: Gateway) -> None:
    bundle = gw.bundle("0.2.0")
    gw.rejects("bundle", lambda: gw.verify_bundle(bundle, max_bytes=bundle.stat().st_size - 1))
    truncated = gw.tmp / "truncated.tar"
    truncated.write_bytes(bundle.read_bytes()[:5000])
    gw.rejects("bundle", lambda: gw.verify_bundle(truncated))
    gw.rejects("bundle", lambda: gw.verify_bundle(gw.tmp / "missing.tar"))
