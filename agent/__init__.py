"""edge-agent: the field agent for water-conservancy and hydrology gateways."""

__version__ = "0.1.0"
