"""The unit hooks' logic: judge a release on trial at each start and stop (docs/updates.md).

`edge-agent.service` runs `/usr/lib/edge-agent/pre-start` (`ExecStartPre=+`) and `post-stop`
(`ExecStopPost=+`) as root. While no update is under way they exit at once (no Python); during
one they hand over to the known-good release's `edge-agent update hook pre-start|post-stop`,
which lands here:

- `pre_start`: finish or undo an interrupted update (`Installer.resume`); on trial, a start in a
  new boot (a power cut, a reboot) gives the trial a fresh window and its count starts again;
  the start is counted; then roll back, without a restart (the start under way goes on with
  `current`, now the previous release), when the starts in this boot pass `MAX_STARTS`, the
  gate failed, the watchdog killed it, or the window ended without a commit.
- `post_stop`: a stop on trial that was the watchdog's kill (`SERVICE_RESULT=watchdog`) is
  recorded for the next pre-start.
"""

from __future__ import annotations

from agent.model import parse_timestamp
from agent.update.apply import Installer
from agent.update.state import UpdateStore, boot_id, ends_at, now_iso

MAX_STARTS = 3
"""More starts than this on trial in one boot is a crash loop."""


def pre_start(installer: Installer) -> str | None:
    """What the hook did (one line for the journal), None when nothing was on trial."""
    store = installer.store
    resumed = installer.resume(restart=False)
    record = store.read()
    if record["state"] != "trial":
        return resumed
    version = record["current"]
    boot = boot_id(installer.boot_id_file)
    now = installer.now()
    new_boot = record["trial_boot_id"] != boot
    if new_boot:
        with store.edit() as record:
            if record["state"] == "trial":
                record["trial_boot_id"] = boot
                record["trial_ends_at"] = ends_at(now, installer.probation)
    starts = store.add_starts(boot)
    if starts > MAX_STARTS:
        reason = f"crash loop: {starts} starts on trial"
    elif record["gate_failed"]:
        reason = f"gate: {record['gate_failed']}"
    elif record["watchdog"]:
        reason = "watchdog killed it"
    elif (
        not new_boot and record["trial_ends_at"] and now > parse_timestamp(record["trial_ends_at"])
    ):
        reason = "probation ended without commit"
    else:
        fresh = ", a new boot: fresh window" if new_boot else ""
        return f"{version} on trial: start {starts} in this boot{fresh}"
    installer.rollback(reason, restart=False)
    return f"rolled back {version}: {reason}"


def post_stop(store: UpdateStore, service_result: str | None) -> str | None:
    """Record a watchdog kill of a release on trial; what was recorded, or None."""
    if service_result != "watchdog" or store.read()["state"] != "trial":
        return None
    with store.edit() as record:
        if record["state"] != "trial":
            return None
        record["watchdog"] = now_iso()
        return f"{record['current']} on trial was killed by the watchdog"
