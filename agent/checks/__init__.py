"""Self-checks, alarms, the health report and the inspection report.

One module per family of checks (system, software, network, terminals, data, security); the
framework (`framework`: Check, CheckResult, CheckRunner), the snapshot they read (`view`:
AgentView), alarms with hysteresis (`alarms`), the health report and its schedule (`health`),
the bounded history (`history`) and the report rendered from it (`report`: imported by the
command that renders it, never with the package, so that the daemon does not load it). The
checks never import the daemon: it builds an AgentView and calls in here.
"""

from __future__ import annotations

from agent.check_settings import ChecksConfig, HealthConfig, checks_settings, health_settings
from agent.checks.alarms import AlarmTracker
from agent.checks.data import Anomaly, DataMonitor
from agent.checks.framework import (
    Check,
    CheckResult,
    CheckRunner,
    Outcome,
    Round,
    Status,
    sort_results,
    worst,
)
from agent.checks.health import HealthSchedule, build_health, summarise
from agent.checks.history import History, TerminalPlan, terminal_plans
from agent.checks.registry import build_checks, data_monitor, run_checks_once, terminal_intervals
from agent.checks.system import SystemPaths
from agent.checks.view import (
    AgentView,
    LogCounter,
    LogCounts,
    load_restarts,
    record_start,
)

__all__ = [
    "AgentView",
    "AlarmTracker",
    "Anomaly",
    "Check",
    "CheckResult",
    "CheckRunner",
    "ChecksConfig",
    "DataMonitor",
    "HealthConfig",
    "HealthSchedule",
    "History",
    "LogCounter",
    "LogCounts",
    "Outcome",
    "Round",
    "Status",
    "SystemPaths",
    "TerminalPlan",
    "build_checks",
    "build_health",
    "checks_settings",
    "data_monitor",
    "health_settings",
    "load_restarts",
    "record_start",
    "run_checks_once",
    "sort_results",
    "summarise",
    "terminal_intervals",
    "terminal_plans",
    "worst",
]
