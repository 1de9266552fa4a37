"""The `checks:` and `health:` sections of the config (agent/config.py includes them).

Frozen, validated once at load like the rest of agent/config.py. Every default here is the one
documented in config/example.yaml. A threshold set to null turns that level off.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.durations import Duration, PositiveDuration

# The wall clock is obviously wrong before this: no build of this code existed earlier.
CLOCK_NOT_BEFORE = datetime(2026, 11, 1, tzinfo=UTC)
KINDS = ("range", "stuck", "spike", "gap", "counter")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class _Levels(_Frozen):
    """Mixin check: with both levels set, warn must come before fail in the bad direction."""

    def _order(self, warn: float | None, fail: float | None, higher_is_worse: bool) -> None:
        if warn is None or fail is None:
            return
        if (warn > fail) if higher_is_worse else (warn < fail):
            word = "above" if higher_is_worse else "below"
            raise ValueError(f"warn ({warn:g}) must not be {word} fail ({fail:g})")


class DiskSettings(_Levels):
    """Free space of state_dir's filesystem (what non-root users may still use)."""

    warn_free_percent: float | None = Field(default=15.0, ge=0, le=100)
    fail_free_percent: float | None = Field(default=5.0, ge=0, le=100)
    fail_free_bytes: int | None = Field(default=64 * 1024 * 1024, ge=0)  # whatever the percent

    @model_validator(mode="after")
    def _levels(self) -> DiskSettings:
        self._order(self.warn_free_percent, self.fail_free_percent, higher_is_worse=False)
        return self


class FreePercent(_Levels):
    """A resource measured as percent left: warn/fail when less is left."""

    warn_free_percent: float | None = Field(default=10.0, ge=0, le=100)
    fail_free_percent: float | None = Field(default=5.0, ge=0, le=100)

    @model_validator(mode="after")
    def _levels(self) -> FreePercent:
        self._order(self.warn_free_percent, self.fail_free_percent, higher_is_worse=False)
        return self


class Ceiling(_Levels):
    """A figure that is bad when high: warn/fail above these."""

    warn: float | None = None
    fail: float | None = None

    @model_validator(mode="after")
    def _levels(self) -> Ceiling:
        self._order(self.warn, self.fail, higher_is_worse=True)
        return self


class Floor(_Levels):
    """A figure that is bad when low: warn/fail below these."""

    warn: float | None = None
    fail: float | None = None

    @model_validator(mode="after")
    def _levels(self) -> Floor:
        self._order(self.warn, self.fail, higher_is_worse=False)
        return self


class ClockSettings(_Frozen):
    not_before: datetime = CLOCK_NOT_BEFORE  # a wall clock before this is wrong (fail)
    max_terminal_offset: PositiveDuration = 600.0  # warn when terminals' clocks disagree by more


class SystemChecks(_Frozen):
    interval: PositiveDuration = 60.0
    disk: DiskSettings = DiskSettings()
    inodes: FreePercent = FreePercent(warn_free_percent=10.0, fail_free_percent=3.0)
    memory: FreePercent = FreePercent(warn_free_percent=10.0, fail_free_percent=5.0)
    load_per_cpu: Ceiling = Ceiling(warn=1.5, fail=3.0)  # 5-minute load average / CPUs
    cpu_temp: Ceiling = Ceiling(warn=75.0, fail=85.0)  # °C
    clock: ClockSettings = ClockSettings()
    # A write probe in state_dir (create, write, fsync, delete) besides the read-only flag.
    write_probe: bool = True


class SoftwareChecks(_Frozen):
    interval: PositiveDuration = 300.0
    restarts_24h: Ceiling = Ceiling(warn=3, fail=10)
    log_window: PositiveDuration = 3600.0
    log_errors: Ceiling = Ceiling(warn=5, fail=60)  # error events in log_window


class UplinkRatioSettings(Floor):
    window: PositiveDuration = 3600.0


class BacklogSettings(_Frozen):
    grow_warn: PositiveDuration = 900.0  # warn when the backlog has grown for this long
    age_warn: Duration | None = 3600.0  # warn/fail when the oldest waiting message is this old
    age_fail: Duration | None = 86400.0


class NetworkChecks(_Frozen):
    interval: PositiveDuration = 60.0
    connect_timeout: PositiveDuration = 5.0  # TCP connect and DNS resolution, each
    connect_warn: PositiveDuration = 1.0  # a slower TCP connect is a warning
    uplink_ratio: UplinkRatioSettings = UplinkRatioSettings(warn=0.9, fail=0.5)
    backlog: BacklogSettings = BacklogSettings()
    eviction_window: PositiveDuration = 86400.0  # warn while an eviction happened this recently
    # Connected, but no PUBACK for this long while messages wait for one: warn (`network.acks`).
    ack_warn: PositiveDuration = 20.0


class TerminalChecks(_Frozen):
    interval: PositiveDuration = 30.0
    success_window: int = Field(default=20, ge=1, le=100)  # the last polls the ratio is taken over
    success_ratio: Floor = Floor(warn=0.9, fail=0.5)
    latency_p95: Ceiling = Ceiling(warn=0.5, fail=1.0)  # as a fraction of the poll period
    stale_periods: float = Field(default=3.0, gt=0)  # last good reading older than this: stale
    stale_reports: float = Field(default=1.5, gt=0)  # ... x the expected report interval (SL651)
    bus_utilisation: Ceiling = Ceiling(warn=0.7, fail=0.9)
    # Share of the poll slots of all terminals skipped because the agent was behind (too late
    # to start, or held back by the outbox) since the check ran before: one alarm for the site.
    overload: Ceiling = Ceiling(warn=0.01, fail=0.1)


class PointChecks(_Frozen):
    """Data checks of one point; each anomaly is off until set."""

    range: tuple[float, float] | None = None  # physical range [lo, hi]: outside is a fail
    stuck_samples: int | None = Field(default=None, ge=2)  # this many equal samples in a row: warn
    spike_per_s: float | None = Field(default=None, gt=0)  # |change| / second beyond this: warn
    gap_factor: float | None = Field(default=None, gt=1)  # samples further apart than f x period
    counter: bool = False  # a value that must never go down (rain accumulation): fail if it does

    @model_validator(mode="after")
    def _range(self) -> PointChecks:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range [{self.range[0]:g}, {self.range[1]:g}]: lo is above hi")
        return self

    @property
    def kinds(self) -> list[str]:
        on = {
            "range": self.range is not None,
            "stuck": self.stuck_samples is not None,
            "spike": self.spike_per_s is not None,
            "gap": self.gap_factor is not None,
            "counter": self.counter,
        }
        return [k for k in KINDS if on[k]]


class SecurityChecks(_Frozen):
    interval: PositiveDuration = 3600.0
    cert_days: Floor = Floor(warn=30, fail=7)  # TLS client certificate days to expiry
    root: Literal["ok", "warn", "fail"] = "warn"  # the status of running as root


class AlarmSettings(_Frozen):
    """Hysteresis of alarms (agent/checks/alarms.py states the rule)."""

    raise_after: int = Field(default=2, ge=1)  # evaluations a worse status must persist
    clear_after: int = Field(default=3, ge=1)  # evaluations a better status must persist
    confirm_after: Duration | None = None  # ... or this long, whichever comes first
    min_interval: Duration = 600.0  # between two alarms of one check, unless it gets worse


class HistorySettings(_Frozen):
    """The bounded history behind the inspection report (<state_dir>/history.db)."""

    enabled: bool = True
    retention: PositiveDuration = 90 * 86400.0
    flush_interval: PositiveDuration = 300.0
    max_events: int = Field(default=100_000, ge=100)  # rows of alarms, anomalies, changes each


class ReportSettings(_Frozen):
    key_points: list[str] = Field(default_factory=list)  # "<terminal>.<point>"; empty: all numeric
    max_trends: int = Field(default=12, ge=0, le=100)


class ChecksConfig(_Frozen):
    """The `checks:` section."""

    enabled: bool = True
    timeout: PositiveDuration = 10.0  # a check without a result after this is unknown
    disabled: list[str] = Field(default_factory=list)  # check ids, or families, to skip
    system: SystemChecks = SystemChecks()
    software: SoftwareChecks = SoftwareChecks()
    network: NetworkChecks = NetworkChecks()
    terminals: TerminalChecks = TerminalChecks()
    data_interval: PositiveDuration = 30.0
    anomaly_hold: PositiveDuration = 3600.0  # a spike, gap or backwards counter counts this long
    data: dict[str, PointChecks] = Field(default_factory=dict)  # "<terminal>.<point>": checks
    security: SecurityChecks = SecurityChecks()
    alarms: AlarmSettings = AlarmSettings()
    history: HistorySettings = HistorySettings()
    report: ReportSettings = ReportSettings()

    def is_disabled(self, check_id: str, family: str) -> bool:
        name = check_id.split(":", 1)[0]
        return any(d in (check_id, name, family) for d in self.disabled)


class HealthConfig(_Frozen):
    """The `health:` section: the retained health report on `…/health`."""

    interval: PositiveDuration = 300.0  # published at least this often
    min_gap: Duration = 5.0  # changes closer than this are published together
    # Terminals listed in the report, the worst first (all are counted in its summary).
    max_terminals: int = Field(default=50, ge=0, le=1000)


def split_key(key: str, terminals: Sequence[str]) -> tuple[str, str] | None:
    """("terminal", "point") of a `checks.data` key "<terminal>.<point>" (terminal names may
    hold dots: the longest terminal name that fits wins); None when no terminal fits."""
    matches = [t for t in terminals if key.startswith(f"{t}.") and len(key) > len(t) + 1]
    if not matches:
        return None
    name = max(matches, key=len)
    return name, key[len(name) + 1 :]


def checks_settings(config: Any) -> ChecksConfig:
    """The config's `checks` section (the defaults for objects without one)."""
    value = getattr(config, "checks", None)
    return value if isinstance(value, ChecksConfig) else ChecksConfig()


def health_settings(config: Any) -> HealthConfig:
    """The config's `health` section (the defaults for objects without one)."""
    value = getattr(config, "health", None)
    return value if isinstance(value, HealthConfig) else HealthConfig()
