"""The release's data files, found the same way from a checkout and from an installed wheel.

They live in this package (`agent/data/config/`, `agent/data/systemd/`, `README.md`); the
repository's `config/` and `systemd/` are symlinks to them. Stdlib only: the installer uses it.

| name | what |
|---|---|
| `config/example.yaml` (`EXAMPLE_CONFIG`) | every option, documented |
| `config/demo.yaml` (`DEMO_CONFIG`) | the embedded demo site |
| `systemd/...` | units, sysusers, tmpfiles, pre-start, rollback (installed by the .deb) |
| `README.md` | the project's README |
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DEMO_CONFIG", "EXAMPLE_CONFIG", "data_path"]


def data_path(name: str) -> Path:
    """The file `name` (e.g. "demo.yaml", "config/demo.yaml", "systemd/edge-agent.service").

    A bare config name ("demo.yaml", "example.yaml") is looked up under `config/`. Raises
    FileNotFoundError when the release does not hold it.
    """
    root = Path(str(files(__name__)))
    path = root / name
    if "/" not in name and not path.exists():
        path = root / "config" / name
    if not path.exists():
        raise FileNotFoundError(f"edge-agent data file {name!r} not found under {root}")
    return path


DEMO_CONFIG = data_path("config/demo.yaml")
EXAMPLE_CONFIG = data_path("config/example.yaml")
