"""What every config model shares: frozen, strict pydantic models and the terminal base.

The protocol drivers define their own config models (`agent/protocols/<name>/config.py`) on
these bases; `agent/config.py` assembles them into the whole config. Nothing here imports a
protocol, so every driver's config module can import it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.model import TerminalInfo

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# The languages of what the agent writes for people (the inspection report): English and
# Simplified Chinese.
Language = Literal["en", "zh"]


class Frozen(BaseModel):
    """A config model: immutable after validation, unknown keys refused, strings stripped."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class TerminalModel(Frozen):
    """A terminal in the config: a unique name and its protocol (the discriminator).

    Each protocol's terminal models subclass this, narrow `protocol` to a `Literal`, and say
    what protocol-neutral parts (checks, history, status, metrics) see of them in `info`.
    """

    name: str = Field(pattern=NAME_PATTERN)
    protocol: str

    @property
    def info(self) -> TerminalInfo:
        raise NotImplementedError(f"{type(self).__name__} must describe itself in `info`")

    @property
    def points_meta(self) -> tuple[tuple[str, str, str], ...] | None:
        """(name, unit, source) of each configured point, in order, for the `…/meta` message
        telemetry refers to (agent/telemetry.py); None where the terminal decides what it
        sends (its readings are then carried whole)."""
        return None

    def point_label(self, point: str, language: Language) -> str | None:
        """A point's plain name for people (the inspection report), None where there is none:
        a configured `label`, or what the protocol's standard calls it."""
        return None
