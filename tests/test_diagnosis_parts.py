"""The gateway's diagnosis parts one by one: audit chain, replay cache, consent, request checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.diagnosis.actions import ACTIONS, ALL
from agent.diagnosis.audit import GENESIS, AuditLog, tail, verify
from agent.diagnosis.consent import ConsentStore
from agent.diagnosis.replay import ReplayCache
from agent.diagnosis.request import Refused, RequestChecker
from agent.diagnosis.settings import ACTION_NAMES, DiagnosisConfig
from agent.storage.layout import StateLayout
from tests.agentproc import write_config
from tests.diag_client import EngineerKey, request

# -- audit ------------------------------------------------------------------------------------


def _audit(tmp_path: Path, count: int = 5) -> Path:
    log = AuditLog(tmp_path / "audit.log")
    for i in range(count):
        log.append({"id": f"r{i}", "action": "status", "outcome": "ok", "reason": None})
    return tmp_path / "audit.log"


def test_audit_lines_are_numbered_chained_private_and_resume_after_a_restart(
    tmp_path: Path,
) -> None:
    path = _audit(tmp_path, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    entries = [json.loads(line) for line in lines]
    assert [e["n"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    import hashlib

    assert entries[2]["prev"] == hashlib.sha256(lines[1]).hexdigest()
    assert path.stat().st_mode & 0o777 == 0o600
    # A new AuditLog (the agent restarted) continues the chain.
    line = AuditLog(path).append({"id": "r3", "outcome": "refused", "reason": "expired"})
    assert line["n"] == 4 and line["prev"] == hashlib.sha256(lines[2]).hexdigest()
    assert verify(path) == []
    assert [e["id"] for e in tail(path, 2)] == ["r2", "r3"]


def test_audit_verify_names_a_changed_a_removed_and_a_moved_line(tmp_path: Path) -> None:
    path = _audit(tmp_path)
    original = path.read_bytes().splitlines(keepends=True)

    changed = list(original)
    changed[1] = changed[1].replace(b'"outcome":"ok"', b'"outcome":"refused"')
    path.write_bytes(b"".join(changed))
    assert verify(path) == ["line 2 (n=2): changed (its hash is not the prev of line 3)"]

    path.write_bytes(b"".join(original[:2] + original[3:]))
    assert verify(path) == ["line 3 (n=4): the line(s) before it (n=3) removed"]

    moved = [original[0], original[2], original[1], *original[3:]]
    path.write_bytes(b"".join(moved))
    assert verify(path) == ["line 2: n=3 where n=2 belongs: lines moved"]

    path.write_bytes(b"".join(original))
    assert verify(path) == []


def test_diag_audit_cli_verifies_and_exits_1_on_a_broken_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    write_config(config, state, [])
    path = _audit(state)
    assert main(["diag", "audit", "--verify", "--config", str(config)]) == 0
    assert "audit chain intact" in capsys.readouterr().out
    assert main(["diag", "audit", "--json", "--tail", "2", "--config", str(config)]) == 0
    assert [json.loads(line)["n"] for line in capsys.readouterr().out.splitlines()] == [4, 5]
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    assert main(["diag", "audit", "--verify", "--config", str(config)]) == 1
    assert "(n=3): the line(s) before it (n=2) removed" in capsys.readouterr().err


# -- replay -------------------------------------------------------------------------------------


def test_replay_cache_remembers_across_a_restart_forgets_expired_and_stays_bounded(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    path = tmp_path / "diagnosis" / "replay.db"
    cache = ReplayCache(path, limit=100, tolerance=60, now=lambda: now[0])
    assert cache.seen_or_add("a", now[0] + 300) is False
    assert cache.seen_or_add("a", now[0] + 300) is True
    cache.close()
    cache = ReplayCache(path, limit=100, tolerance=60, now=lambda: now[0])  # restarted
    assert cache.seen_or_add("a", now[0] + 300) is True
    # Kept until exp + tolerance has passed; then forgotten (the time check refuses it anyway).
    now[0] += 300 + 61
    assert cache.seen_or_add("b", now[0] + 300) is False
    assert len(cache) == 1
    # At most `limit` ids: the ones expiring first go first, never the one just added.
    for i in range(150):
        cache.seen_or_add(f"id-{i}", now[0] + 100 + i)
    assert len(cache) == 100
    assert cache.seen_or_add("id-149", 0) is True  # the latest stays
    assert cache.seen_or_add("id-0", now[0] + 100) is False  # the earliest was dropped
    cache.close()


# -- consent ------------------------------------------------------------------------------------


def test_consent_window_opens_covers_its_actions_and_closes(tmp_path: Path) -> None:
    store = ConsentStore(StateLayout(tmp_path))
    assert store.read() is None
    consent = store.grant(2, "owner", ["poll", "logs"], now=1000.0)
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.read(1000.0 + 119) == consent
    assert store.allows("poll", 1001.0) and not store.allows("config", 1001.0)
    assert store.read(1000.0 + 120) is None  # closed by itself
    with pytest.raises(ValueError, match="1 to 1440"):
        store.grant(1441, "owner")
    with pytest.raises(ValueError, match="unknown actions shell"):
        store.grant(5, "owner", ["shell"])
    store.grant(5, "owner")
    assert store.revoke() is not None and store.read() is None and not store.path.exists()
    store.path.parent.mkdir(exist_ok=True)
    store.path.write_text("{not json")
    assert store.read() is None  # unreadable: no consent


# -- the checks, in order -----------------------------------------------------------------------


def _checker(
    tmp_path: Path, now: list[float], **settings: object
) -> tuple[RequestChecker, EngineerKey]:
    key = EngineerKey()
    config = DiagnosisConfig.model_validate(
        {
            "engineers": [
                {"name": "Li Wei", "role": "support", "public_key": key.public_pem()},
                {"name": "Gone", "role": "support", "public_key": str(tmp_path / "gone.pem")},
            ],
            "roles": {"support": ["status", "poll"]},
            **settings,
        }
    )
    replay = ReplayCache(tmp_path / "replay.db", limit=100, tolerance=60, now=lambda: now[0])
    consent = ConsentStore(StateLayout(tmp_path))
    return RequestChecker(config, "dam-01", replay, consent, now=lambda: now[0]), key


def test_checks_run_in_order_and_an_unreadable_key_leaves_only_that_engineer_out(
    tmp_path: Path,
) -> None:
    now = [time.time()]
    checker, key = _checker(tmp_path, now)
    assert len(checker.keys) == 1 and "Gone" in checker.problems[0]
    accepted = checker.check(key.sign(request("dam-01", "status")))
    assert (accepted.engineer, accepted.role, accepted.kid) == ("Li Wei", "support", key.kid)

    def reason(token: bytes) -> str:
        with pytest.raises(Refused) as caught:
            checker.check(token)
        return caught.value.reason

    # A wrong gateway AND expired: the target is checked first.
    late = request("dam-02", "status", iat=int(now[0]) - 3600)
    assert reason(key.sign(late)).startswith("wrong gateway")
    assert reason(key.sign(request("dam-01", "status", iat=int(now[0]) - 3600))) == "expired"
    future = request("dam-01", "status", iat=int(now[0]) + 120)
    assert reason(key.sign(future)) == "issued in the future (check the clocks)"
    # Replay is recorded before the role is checked: a refused action's id is spent too.
    shell = request("dam-01", "restart-terminal")
    assert reason(key.sign(shell)) == "role support may not ask for restart-terminal"
    assert reason(key.sign(shell)) == "replayed id"
    assert reason(b"garbage").startswith("not a request")
    malformed = key.sign({**request("dam-01", "status"), "args": []})
    assert reason(malformed) == "malformed request: args: an object is required"
    # Consent: grant mode with no window, then a window, then the clock passes it.
    poll = request("dam-01", "poll", {"terminal": "plc"})
    assert reason(key.sign(poll)).startswith("no consent")
    ConsentStore(StateLayout(tmp_path)).grant(1, "owner", now=now[0])
    accepted = checker.check(key.sign(request("dam-01", "poll")))
    assert checker.consent_open(accepted)
    now[0] += 61
    assert not checker.consent_open(accepted)


def test_consent_never_and_always(tmp_path: Path) -> None:
    now = [time.time()]
    never, key = _checker(tmp_path / "a", now, consent="never")
    with pytest.raises(Refused, match="consent is never"):
        never.check(key.sign(request("dam-01", "poll")))
    never.check(key.sign(request("dam-01", "status")))  # without_consent
    always, key = _checker(tmp_path / "b", now, consent="always")
    always.check(key.sign(request("dam-01", "poll")))


def test_every_allowed_action_has_exactly_one_spec() -> None:
    assert set(ACTIONS) == ACTION_NAMES and len(ALL) == len(ACTION_NAMES)
    for name in ("status", "checks", "ping-upstream", "update-check"):
        assert not ACTIONS[name].needs_consent
    for name in ("restart-terminal", "log-level", "update-rollback"):
        assert ACTIONS[name].changes
