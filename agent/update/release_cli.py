"""`edge-agent release init|add|sign|rotate|bundle`: the vendor's command line.

A face over `agent.update.release` (imported when a command runs: the gateway's commands do
not pay for it). Exit status 0 done, 2 bad usage or input, with a one-line reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli_parser import count

EXIT_OK, EXIT_USAGE = 0, 2
ROLES = ("root", "targets", "snapshot", "timestamp")


def _role_value(text: str) -> tuple[str, str]:
    role, sep, value = text.partition("=")
    if not sep or role not in ROLES or not value:
        raise argparse.ArgumentTypeError(f"expected ROLE=VALUE with ROLE one of {', '.join(ROLES)}")
    return role, value


_count = count(0)  # keys to add, a threshold: zero or more


def _repo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", type=Path, metavar="REPO", help="the repository folder")
    parser.add_argument(
        "--keys-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the private keys (default: REPO-keys beside REPO; never under REPO)",
    )


def add_release_parser(commands: Any) -> None:
    """`release` and its subcommands, on the CLI's subparsers."""
    release = commands.add_parser("release", help="vendor: the signed update repository (TUF)")
    actions = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="a new repository and its keys")
    _repo_args(init)
    init.add_argument(
        "--threshold",
        type=_role_value,
        action="append",
        default=[],
        metavar="ROLE=N",
        help="signatures a role needs (default root=2, the others 1)",
    )
    init.add_argument(
        "--keys",
        type=_role_value,
        action="append",
        default=[],
        metavar="ROLE=N",
        help="keys made for a role (default root=3, the others 1)",
    )
    init.add_argument(
        "--expiry",
        type=_role_value,
        action="append",
        default=[],
        metavar="ROLE=DURATION",
        help="how long a role's metadata is valid (default root=365d targets=90d "
        "snapshot=7d timestamp=1d)",
    )

    add = actions.add_parser("add", help="publish a release (its wheels and manifest)")
    _repo_args(add)
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheelhouse", type=Path, metavar="DIR", help="the release's wheels")
    source.add_argument(
        "--project", type=Path, metavar="PATH", help="build the wheelhouse with pip wheel PATH"
    )
    add.add_argument("--channel", default="stable", help="the channel (default stable)")
    add.add_argument("--version", default=None, help="check the agent wheel is this version")
    add.add_argument(
        "--platform", default=None, help="amd64, arm64, armhf, any (default: from the wheels)"
    )
    add.add_argument(
        "--downgrade",
        action="store_true",
        help="gateways running a newer version may install this one",
    )

    sign = actions.add_parser("sign", help="re-sign snapshot and timestamp (fresh expiry)")
    _repo_args(sign)

    rotate = actions.add_parser("rotate", help="a new root: a role's keys or threshold changed")
    _repo_args(rotate)
    rotate.add_argument("role", choices=ROLES)
    rotate.add_argument("--add-keys", type=_count, default=0, metavar="N", help="new keys")
    rotate.add_argument(
        "--remove-key",
        action="append",
        default=[],
        metavar="NAME",
        help="a key to revoke (its name, e.g. timestamp-1, or key id); repeatable",
    )
    rotate.add_argument("--threshold", type=_count, default=None, metavar="N")

    bundle = actions.add_parser("bundle", help="one release as one file, for offline gateways")
    _repo_args(bundle)
    bundle.add_argument("--version", required=True)
    bundle.add_argument("--channel", default="stable")
    bundle.add_argument("--platform", default=None, help="needed when several are released")
    bundle.add_argument("--out", type=Path, required=True, metavar="FILE")
    bundle.add_argument(
        "--delta-from",
        default=None,
        metavar="V_OLD",
        help="leave out the wheels release V_OLD has already (gateways running it)",
    )


def run_release(args: argparse.Namespace) -> int:
    """Run `release ACTION` as parsed; the exit status."""
    from agent.update import release

    try:
        return _run(release, args)
    except release.ReleaseError as exc:
        print(f"edge-agent release {args.release_command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"edge-agent release {args.release_command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(release: Any, args: argparse.Namespace) -> int:
    action, repo, keys = args.release_command, args.repo, args.keys_dir
    if action == "init":
        keys_dir = release.init(
            repo,
            keys_dir=keys,
            thresholds={r: _int(v, "--threshold") for r, v in args.threshold},
            key_counts={r: _int(v, "--keys") for r, v in args.keys},
            expiry=dict(args.expiry),
        )
        print(f"repository {repo} made; private keys in {keys_dir} (keep them offline)")
    elif action == "add":
        manifest = release.add(
            repo,
            channel=args.channel,
            wheelhouse=args.wheelhouse,
            project=args.project,
            version=args.version,
            platform=args.platform,
            downgrade=args.downgrade,
            keys_dir=keys,
        )
        print(
            f"released {manifest['version']} on {manifest['channel']}/{manifest['platform']} "
            f"({manifest['python']}, {len(manifest['wheels'])} wheels)"
        )
    elif action == "sign":
        snapshot, timestamp = release.sign(repo, keys_dir=keys)
        print(f"signed snapshot v{snapshot}, timestamp v{timestamp}")
    elif action == "rotate":
        version = release.rotate(
            repo,
            args.role,
            add_keys=args.add_keys,
            remove_keys=args.remove_key,
            threshold=args.threshold,
            keys_dir=keys,
        )
        print(f"root v{version}: {args.role} keys changed")
    elif action == "bundle":
        info = release.bundle(
            repo,
            version=args.version,
            channel=args.channel,
            platform=args.platform,
            out=args.out,
            delta_from=args.delta_from,
            keys_dir=keys,
        )
        kind = f"delta from {args.delta_from}" if args.delta_from else "full"
        print(
            f"wrote {info.path}: {info.size} bytes ({kind}; the full bundle is "
            f"{info.full_size} bytes), {len(info.wheels)} wheels"
            + (f", {len(info.left_out)} left to the gateway's cache" if info.left_out else "")
        )
    return EXIT_OK


def _int(text: str, option: str) -> int:
    from agent.update.release import ReleaseError

    try:
        return int(text)
    except ValueError:
        raise ReleaseError(f"{option}: {text!r} is not a whole number") from None
