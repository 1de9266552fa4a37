"""edge-agent: the field agent for water-conservancy and hydrology gateways."""

import sys
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-agent")  # pyproject.toml's version: the one place it is written
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"

# structlog imports rich when it is installed, for pretty tracebacks on a terminal; the agent
# formats exceptions itself (agent/logs.py: format_exc_info) and the daemon logs JSON, so rich —
# the command line's terminal UI, 4 MB of a daemon's memory — stays out of structlog: it is
# imported first here, with rich hidden (an entry of None in sys.modules fails the import).
if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    except ImportError:  # the installer, run from the wheels with the stdlib alone
        pass
    finally:
        del sys.modules["rich"]
