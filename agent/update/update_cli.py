"""`edge-agent update …`: apply, status, commit, rollback and the unit hooks (README "Updates").

A face over `agent.update.apply.Installer` and `agent.update.hooks`: it reads the config (the
state folder, `update:`), builds the installer for `--prefix`, calls it and prints one line.
Exit status: 0 ok, 1 a rejected release or a failed step (the check named), 2 bad usage or an
invalid config. The hooks always exit 0: they never keep the agent from starting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.update.apply import (
    ApplyError,
    Installer,
    Restart,
    VerifiedLike,
    Verifier,
    systemd_restart,
)
from agent.update.layout import InstallLayout
from agent.update.settings import UpdateConfig
from agent.update.state import BOOT_ID_FILE, StateError, UpdateStore, describe

if TYPE_CHECKING:
    from agent.config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "edge-agent update"


def add_update_parser(commands: Any) -> None:
    """`update` and its actions, on the CLI's sub-command parsers."""
    update = commands.add_parser("update", help="signed updates: apply, status, commit, rollback")
    actions = update.add_subparsers(dest="update_command", required=True, metavar="ACTION")

    apply = actions.add_parser("apply", help="verify a release, install it and put it on trial")
    _common(apply)
    which = apply.add_mutually_exclusive_group(required=True)
    which.add_argument("bundle", nargs="?", type=Path, metavar="FILE", help="a bundle file")
    which.add_argument(
        "--latest", action="store_true", help="the newest release of update.channel online"
    )
    which.add_argument(
        "--pending",
        action="store_true",
        help="what the agent asked for in state_dir/update/pending/request.json",
    )

    check = actions.add_parser(
        "check", help="the newest release of update.channel at update.repository_url"
    )
    _common(check)
    check.add_argument(
        "--json", action="store_true", help='print {"schema": 1, "current", "available"}'
    )

    status = actions.add_parser("status", help="the update state: current, trial, last outcome")
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON (shape in README)")

    commit = actions.add_parser("commit", help="end the trial of the current release: keep it")
    _common(commit)

    rollback = actions.add_parser("rollback", help="go back to the previous release")
    _common(rollback)
    rollback.add_argument("--reason", default="by hand", help='recorded reason (default "by hand")')
    rollback.add_argument(
        "--no-restart", action="store_true", help="switch the links only, do not restart"
    )

    hook = actions.add_parser("hook", help="the unit's ExecStartPre=/ExecStopPost= logic (root)")
    _common(hook)
    hook.add_argument("which", choices=("pre-start", "post-stop"))
    # The kernel's boot id (a power cut is a new one); another file in the tests.
    hook.add_argument("--boot-id-file", type=Path, default=BOOT_ID_FILE, help=argparse.SUPPRESS)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/config.yaml)",
    )
    parser.add_argument(
        "--prefix",
        type=Path,
        default=Path("/"),
        metavar="PATH",
        help="root of the installation (default /; tests use a temp folder)",
    )


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _load_config(args: argparse.Namespace, hook: bool) -> Config | None:
    from agent.config import ConfigError, default_config_path, load_config

    path = args.config or default_config_path()
    try:
        return load_config(path)
    except ConfigError as exc:
        if not hook:
            for line in exc.lines():
                print(line, file=sys.stderr)
        else:
            print(f"{PROG}: warning: {path} is invalid: using the defaults", file=sys.stderr)
        return None


def _restart_for(prefix: Path) -> Restart:
    """systemd's edge-agent.service runs the installation at /: one under another `--prefix`
    (a test's, an image being prepared) is not what it runs, so it is not restarted for it."""
    if prefix.resolve() == Path("/"):
        return systemd_restart
    return lambda: None


def _installer(args: argparse.Namespace, config: Config | None) -> Installer:
    layout = InstallLayout(args.prefix)
    restart = _restart_for(args.prefix)
    if config is None:  # a hook with a broken config: the unit's own state folder
        from agent.storage.layout import StateLayout

        return Installer(layout, UpdateStore(StateLayout(layout.state_dir)), restart=restart)
    settings = config.update
    return Installer(
        layout,
        UpdateStore(config.layout),
        probation=float(settings.probation),
        keep=settings.keep,
        restart=restart,
        control_socket=config.control.socket,
    )


def run_update(args: argparse.Namespace) -> int:
    """Run `edge-agent update <action>`; the exit status."""
    hook = args.update_command == "hook"
    config = _load_config(args, hook)
    if config is None and not hook:
        return EXIT_USAGE
    installer = _installer(args, config)
    try:
        if hook:
            installer.boot_id_file = args.boot_id_file
            return _hook(args, installer)
        if args.update_command == "status":
            return _status(installer.store, args.json)
        if args.update_command == "check":
            assert config is not None
            return _check(installer, config, args.json)
        if args.update_command == "apply":
            assert config is not None
            return _apply(args, installer, config)
        installer.resume()
        if args.update_command == "commit":
            print(f"committed {installer.commit()}")
            return EXIT_OK
        installer.rollback(args.reason, restart=not args.no_restart)
        return EXIT_OK
    except ApplyError as exc:
        return _fail(f"{exc.check}: {exc.reason}")
    except (StateError, OSError) as exc:
        return _fail(str(exc))


# -- apply ----------------------------------------------------------------------------------------


def _apply(args: argparse.Namespace, installer: Installer, config: Config) -> int:
    if args.pending:
        return _apply_pending(installer, config)
    if args.latest:
        verify = _verifier(installer, config, None, None, automatic=False)
        source = f"repository:{config.update.repository_url}"
    else:
        bundle = args.bundle.resolve()
        if not bundle.is_file():
            return _fail(f"{args.bundle}: no such file", EXIT_USAGE)
        verify = _verifier(installer, config, bundle, None, automatic=False)
        source = f"bundle:{bundle}"
    installer.apply(verify, source)
    return EXIT_OK


def _apply_pending(installer: Installer, config: Config) -> int:
    """The agent's request (`pending/request.json`), removed whatever the outcome."""
    pending = config.layout.update_pending
    request = pending / "request.json"
    try:
        try:
            data = json.loads(request.read_bytes())
        except FileNotFoundError:
            return _fail(f"no pending request ({request})", EXIT_USAGE)
        except ValueError as exc:
            return _fail(f"{request}: not JSON ({exc})", EXIT_USAGE)
        if isinstance(data, dict) and data.get("rollback") is True:
            return _rollback_pending(installer, data)
        bundle, version = _pending_source(pending, data)
        if bundle is not None:
            try:
                verify = _verifier(installer, config, bundle, None, automatic=True)
                installer.apply(verify, f"pending:bundle:{bundle.name}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    bundle.unlink()
        else:
            verify = _verifier(installer, config, None, version, automatic=True)
            installer.apply(verify, f"pending:repository:{version or 'latest'}")
        return EXIT_OK
    finally:
        with contextlib.suppress(FileNotFoundError):
            request.unlink()
        # What the agent fetched for it is in a release now (and in root's wheel cache).
        shutil.rmtree(config.layout.update_downloads, ignore_errors=True)


def _rollback_pending(installer: Installer, data: dict[str, Any]) -> int:
    """`{"rollback": true, "reason": R}`: the agent relays a rollback asked remotely
    (docs/diagnosis.md, action `update-rollback`); the reason is recorded as given."""
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ApplyError("request", "rollback: a reason is required")
    installer.resume()
    installer.rollback(reason.strip()[:500])
    return EXIT_OK


def _pending_source(pending: Path, data: Any) -> tuple[Path | None, str | None]:
    """(bundle file, None) or (None, version): what request.json asks for, checked."""
    if isinstance(data, dict) and isinstance(data.get("bundle"), str):
        name = data["bundle"]
        if "/" in name or name in ("", ".", "..", "request.json"):
            raise ApplyError("request", f"bundle {name!r}: not a file name in {pending}")
        path = pending / name
        if path.is_symlink() or not path.is_file():
            raise ApplyError("request", f"{path}: not a regular file")
        return path, None
    if isinstance(data, dict) and data.get("repository") is True:
        version = data.get("version")
        if version is not None and not isinstance(version, str):
            raise ApplyError("request", f"version {version!r}: not a string")
        return None, version
    raise ApplyError(
        "request",
        'expected {"bundle": NAME}, {"repository": true, "version": V} or {"rollback": true, '
        '"reason": R}',
    )


def _verifier(
    installer: Installer,
    config: Config,
    bundle: Path | None,
    version: str | None,
    *,
    automatic: bool,
) -> Verifier:
    def verify(work_dir: Path) -> VerifiedLike:
        return _verify_with_trust(
            installer, config.update, work_dir, bundle=bundle, version=version, automatic=automatic
        )

    return verify


def _verify_with_trust(
    installer: Installer,
    settings: UpdateConfig,
    work_dir: Path,
    *,
    bundle: Path | None,
    version: str | None,
    automatic: bool,
) -> VerifiedLike:
    """`agent.update.trust.verify` with root's own trusted metadata (docs/updates.md).

    Wheels the agent fetched for a pending online update (`state_dir/update/downloads/`) are
    taken from there, each checked again, rather than fetched twice; so are the wheels the .deb
    shipped (`/usr/lib/edge-agent/wheelhouse/`): a release installed by the package has none in
    the wheel cache, and a delta bundle made for it leaves them out.
    """
    from agent.update import trust

    layout = installer.layout
    record = installer.store.read()
    target = trust.Target.here(
        settings.channel, record["current"] or "0", record["refused"], automatic=automatic
    )
    if bundle is not None:
        source = trust.bundle_source(bundle, settings.max_bundle_bytes)
    elif settings.repository_url:
        source = trust.repository_source(settings.repository_url)
    else:
        raise ApplyError("verify", "update.repository_url is not set in the config")
    return trust.verify(
        source,
        trust_dir=layout.trust_dir,
        trusted_root=settings.root_to_trust(layout.trust_dir),
        target=target,
        wheel_cache=layout.wheel_cache,
        work_dir=work_dir,
        version=version,
        also_in=[installer.store.layout.update_downloads, layout.wheelhouse],
    )


def newest_release(
    config: Config, prefix: Path = Path("/"), *, agent_copy: bool = False
) -> dict[str, Any]:
    """`{"schema", "current", "available"}`: is there a newer release? Read only: nothing is
    fetched but metadata. Raises ApplyError (no repository set) or `trust.UpdateRejected`.

    Root checks with its own trusted metadata; anyone else (the agent's user, an engineer in its
    group) with the agent's copy in `state_dir/update/metadata/`, and so does the running agent
    for a remote `update-check` (`agent_copy`), whichever user it runs as.
    """
    from agent import __version__
    from agent.update import trust

    settings = config.update
    if not settings.repository_url:
        raise ApplyError("config", "update.repository_url is not set in the config")
    install = InstallLayout(prefix)
    record = UpdateStore(config.layout).read()
    running = record["current"] or __version__
    own = agent_copy or os.geteuid() != 0
    trust_dir = config.layout.update_metadata if own else install.trust_dir
    target = trust.Target.here(settings.channel, running, record["refused"])
    release = trust.newest(
        trust.repository_source(settings.repository_url),
        trust_dir=trust_dir,
        trusted_root=settings.root_to_trust(install.trust_dir),
        target=target,
    )
    available = release.version if release is not None else None
    return {"schema": 1, "current": running, "available": available}


def _check(installer: Installer, config: Config, as_json: bool) -> int:
    """`update check`: `newest_release` printed."""
    from agent.update import trust

    try:
        found = newest_release(config, installer.layout.prefix)
    except ApplyError as exc:
        return _fail(exc.reason, EXIT_USAGE)
    except trust.UpdateRejected as exc:
        return _fail(f"{exc.check}: {exc.reason}")
    running, available = found["current"], found["available"]
    if as_json:
        print(json.dumps(found))
    elif available is None:
        print(f"up to date: {running} is the newest release of {config.update.channel}")
    else:
        print(f"{available} available on {config.update.channel} (running {running})")
    return EXIT_OK


# -- status and the hooks -------------------------------------------------------------------------


def _status(store: UpdateStore, as_json: bool) -> int:
    summary = store.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    print(describe(summary))
    last = summary["last"]
    if last is not None and summary["state"] != "rolled_back" and last["outcome"] == "rejected":
        print(f"last: rejected {last['version'] or 'a release'}: {last['reason']} ({last['at']})")
    return EXIT_OK


def _hook(args: argparse.Namespace, installer: Installer) -> int:
    from agent.update.hooks import post_stop, pre_start

    try:
        if args.which == "pre-start":
            done = pre_start(installer)
        else:
            done = post_stop(installer.store, os.environ.get("SERVICE_RESULT"))
    except (ApplyError, StateError, OSError) as exc:
        print(f"{PROG} hook {args.which}: error: {exc}", file=sys.stderr)
        return EXIT_OK
    if done:
        print(f"{PROG} hook {args.which}: {done}")
    return EXIT_OK
