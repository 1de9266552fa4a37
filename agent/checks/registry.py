"""Every check of the agent, built from the config: the one place that knows all families."""

from __future__ import annotations

from collections.abc import Sequence

from agent.check_settings import ChecksConfig, checks_settings
from agent.checks import data, network, security, software, system, terminals
from agent.checks.data import DataMonitor
from agent.checks.framework import Check, CheckResult, CheckRunner, sort_results
from agent.checks.history import terminal_plans
from agent.checks.system import SystemPaths
from agent.checks.view import AgentView
from agent.config import Config


def terminal_intervals(config: Config) -> dict[str, float]:
    """Each terminal's expected interval between readings: its poll period, or its expected
    report interval for terminals that report on their own (SL651)."""
    return {name: plan.interval for name, plan in terminal_plans(config).items()}


def data_monitor(config: Config, settings: ChecksConfig | None = None) -> DataMonitor:
    """The monitor of the configured points; the daemon adds it to the reading sinks."""
    return DataMonitor(settings or checks_settings(config), terminal_intervals(config))


def build_checks(
    config: Config,
    settings: ChecksConfig | None = None,
    *,
    monitor: DataMonitor | None = None,
    paths: SystemPaths | None = None,
    overload: terminals.Overload | None = None,
) -> list[Check]:
    """Every enabled check for this config (per terminal, per bus, per configured point).
    `overload`: the running agent's, kept across reloads (terminals.checks)."""
    settings = settings or checks_settings(config)
    if not settings.enabled:
        return []
    monitor = monitor or data_monitor(config, settings)
    found = [
        *system.checks(settings, paths),
        *software.checks(settings, paths),
        *network.checks(settings, config.uplink.broker),
        *terminals.checks(settings, [t.info for t in config.terminals], overload),
        *data.checks(settings, monitor),
        *security.checks(settings, config.uplink.tls.cert),
    ]
    return [c for c in found if not settings.is_disabled(c.id, c.family)]


async def run_checks_once(view: AgentView, checks: Sequence[Check]) -> list[CheckResult]:
    """Run `checks` once now, all at once (`edge-agent check` without a daemon); failing
    first."""
    runner = CheckRunner(checks)
    try:
        done = await runner.run_all(view)
    finally:
        runner.close()
    return sort_results(done.results)
