"""edge-agent: the field agent for water-conservancy and hydrology gateways."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-agent")  # pyproject.toml's version: the one place it is written
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"
