"""The `diagnosis:` section of the config (docs/diagnosis.md; defaults in config/example.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config_base import Frozen
from agent.durations import PositiveDuration

# The allow-list: every action a request may name (agent/diagnosis/actions.py runs them).
ACTION_NAMES = frozenset({
    "status", "checks", "logs", "read-point", "poll", "ping-upstream", "restart-terminal",
    "log-level", "config", "outbox", "update-check", "update-rollback", "support-bundle",
})  # fmt: skip
# Actions that read neither site data nor change anything: the only ones `without_consent` may
# name (docs/diagnosis.md, "Consent").
HEALTH_ACTIONS = frozenset({"status", "checks", "ping-upstream", "update-check"})
DEFAULT_WITHOUT_CONSENT = ("status", "checks")


class Engineer(Frozen):
    """A support engineer who may sign requests: a name, a role, an Ed25519 public key."""

    name: str = Field(pattern=r"^[^\s].{0,63}$")
    role: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,31}$")
    # A PEM string ("-----BEGIN PUBLIC KEY-----…") or the path of a PEM file.
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _pem_or_path(cls, value: str) -> str:
        text = value.strip()
        if "-----BEGIN" in text and not text.startswith("-----BEGIN PUBLIC KEY-----"):
            raise ValueError("not a public key PEM (-----BEGIN PUBLIC KEY-----)")
        return text

    @property
    def is_pem(self) -> bool:
        return self.public_key.startswith("-----BEGIN PUBLIC KEY-----")


class DiagnosisConfig(Frozen):
    """Who may ask what of this gateway, and under which consent."""

    # always: no grant needed; grant: the site owner opens a window (`edge-agent diag grant`);
    # never: only the `without_consent` actions are ever answered.
    consent: Literal["always", "grant", "never"] = "grant"
    without_consent: list[str] = Field(default_factory=lambda: list(DEFAULT_WITHOUT_CONSENT))
    engineers: list[Engineer] = Field(default_factory=list)
    # role -> the actions it may ask for (see docs/diagnosis.md for the list).
    roles: dict[str, list[str]] = Field(default_factory=dict)
    # A request's iat/exp are checked with this much slack for the two clocks.
    clock_tolerance: PositiveDuration = 60.0
    # Request ids remembered against replay (the oldest expired ones go first).
    replay_cache: int = Field(default=10_000, ge=100, le=1_000_000)
    # Answers larger than this are sent in numbered chunks of at most this many bytes.
    chunk_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # Limits of one action.
    action_timeout: PositiveDuration = 30.0
    max_answer_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)

    @field_validator("without_consent")
    @classmethod
    def _health_only(cls, value: list[str]) -> list[str]:
        other = sorted(set(value) - HEALTH_ACTIONS)
        if other:
            raise ValueError(
                f"{', '.join(other)}: only {', '.join(sorted(HEALTH_ACTIONS))} may run without "
                "consent (every other action reads site data or changes something)"
            )
        return value

    @field_validator("roles")
    @classmethod
    def _actions_known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, actions in value.items():
            unknown = sorted(set(actions) - ACTION_NAMES)
            if unknown:
                raise ValueError(
                    f"role {role}: unknown actions {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(ACTION_NAMES))})"
                )
        return value

    @model_validator(mode="after")
    def _roles_known(self) -> DiagnosisConfig:
        unknown = sorted({e.role for e in self.engineers} - set(self.roles))
        if unknown:
            raise ValueError(f"engineers with a role not in diagnosis.roles: {', '.join(unknown)}")
        return self
