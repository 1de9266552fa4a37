"""Can the agent read the files its config names? What `edge-agent config validate` adds to
loading the config, on the machine the config is for.

The TLS files (`uplink.tls.ca`, `cert`, `key`, when given) must exist, be files, and be
readable by whoever runs the check (`os.access`). When that is root and the service user
(`edge-agent`, as systemd/edge-agent.service runs the agent) exists, they must also be readable
by that user — judged from the owner, group and mode bits of the file and of each folder above
it (ACLs and capabilities are not looked at). The daemon does not run this: it reads the files
when it connects, and says there what fails.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from agent.config import Config

SERVICE_USER = "edge-agent"
_READ, _SEARCH = 4, 1  # "other" permission bits; shifted for group (3) and owner (6)


def file_problems(config: Config, service_user: str = SERVICE_USER) -> list[str]:
    """One line per file the config names that the agent could not read, with its key."""
    tls = config.uplink.tls
    problems = []
    for name in ("ca", "cert", "key"):
        path = getattr(tls, name)
        if path is not None and (problem := unreadable(path, service_user)):
            problems.append(f"uplink.tls.{name}: {problem}")
    return problems


def unreadable(path: Path, service_user: str = SERVICE_USER) -> str | None:
    """Why `path` cannot be read (by us, or by the service user when we are root), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"cannot look at {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return f"{path} is not a file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable (by uid {os.geteuid()}, who runs this check)"
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(service_user)
    except KeyError:
        return None  # no service user here (a development machine): root's check is all
    groups = set(os.getgrouplist(service_user, user.pw_gid))
    for folder in reversed(path.absolute().parents):
        if not _allowed(folder, user.pw_uid, groups, _SEARCH):
            return (
                f"the service user {service_user} cannot reach {path}: {folder} is closed to "
                "it (chmod o+x, or a group it is in)"
            )
    if not _allowed(path, user.pw_uid, groups, _READ):
        return (
            f"{path} is not readable by the service user {service_user}: e.g. "
            f"chgrp {service_user} {path} && chmod g+r {path}"
        )
    return None


def _allowed(path: Path, uid: int, groups: set[int], bit: int) -> bool:
    """Whether the mode bits give `uid` (in `groups`) the permission `bit` on `path`."""
    st = path.stat()
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in groups:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)
