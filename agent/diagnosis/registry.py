"""What an action is: its spec, the context it runs in, how it fails (docs/diagnosis.md).

`agent/diagnosis/actions.py` lists the actions (`ALL`); `agent/diagnosis/part.py` checks a
request, then runs `ACTIONS[name]` with the request's `args`, within `timeout`, and answers with
what it returns (any JSON value) or with the `ActionError`'s reason. An action never stops
polling or forwarding: it runs on the agent's loop like any other task and only asks the
running agent through `ActionContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config import Config
    from agent.operations import Operations


# Who asked for the action being run: the request's engineer (set by the part around each
# action, in the action's own task), None when nobody remote asked.
REQUESTER: ContextVar[str | None] = ContextVar("diagnosis_requester", default=None)


class ActionError(Exception):
    """The action could not do what was asked: the one-line reason the answer carries."""


class ActionContext(Protocol):
    """What an action may use of the running agent (the daemon provides it)."""

    @property
    def operations(self) -> Operations: ...

    @property
    def config(self) -> Config: ...

    def recent_logs(self, level: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        """Recent log events (newest last) at `level` or above, since a UNIX time."""
        ...

    def set_log_level(self, level: str, seconds: float) -> str:
        """Log at `level` for `seconds`, then back by itself; the level it returns to."""
        ...

    async def restart_terminal(self, name: str) -> dict[str, Any]:
        """Close and reopen one terminal's link; raises ActionError for an unknown one."""
        ...

    async def ping_upstream(self) -> dict[str, Any]:
        """The broker's round trip now (connected, milliseconds) or why not."""
        ...


Run = Callable[[ActionContext, Mapping[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action of the allow-list.

    `site_data`: it reads what the site measures or is configured with; `changes`: it changes
    something. Either needs consent (docs/diagnosis.md); neither may be in `without_consent`.
    """

    name: str
    run: Run
    summary: str
    site_data: bool = False
    changes: bool = False
    timeout: float | None = None  # None: diagnosis.action_timeout

    @property
    def needs_consent(self) -> bool:
        return self.site_data or self.changes
