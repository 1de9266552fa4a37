"""Telemetry on the wire (agent/telemetry.py, docs/telemetry.md): schema 2 bodies carry every
reading schema 1 carries, in a fraction of the bytes; the meta they name; compression a JOSE
library verifies; and the reference decoder of the docs, run as written against a real agent."""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from agent.model import PollReadings, Quality, Reading
from agent.outbox import AsyncOutbox, Outbox, Priority
from agent.signing import DeviceKey, envelope_from_encoded, init_key, load_key
from agent.sim.modbus_device import SimulatedModbusDevice
from agent.sinks import records
from agent.telemetry import (
    Meta,
    Receiver,
    Schema1,
    Schema2,
    UnknownMeta,
    count_readings,
    expand,
    open_token,
)
from agent.writer import OutboxWriter
from tests.agentproc import Agent, write_config
from tests.broker import Mosquitto, persistent
from tests.collector import Collector
from tests.conftest import tcp_terminal
from tests.test_store_forward import keys_show

ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
PLC_POINTS = [("level", "m", "holding:0"), ("flow", "m3/s", "holding:2"), ("gate", "", "coil:1")]
META = Meta({"plc": ("modbus-tcp", PLC_POINTS), "rain": ("sl651", [])})


def encode(encoder: Schema1 | Schema2, readings: list[Reading], batch: int = 500) -> Any:
    pieces = [encoder.encode(g) for g in encoder.groups(readings, batch)]
    return json.loads(encoder.body(pieces))


def by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In one order whatever the body's (a body groups by terminal and poll)."""
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def plc(point: int, value: Any, at: datetime = AT, **kw: Any) -> Reading:
    name, unit, source = PLC_POINTS[point]
    fields: dict[str, Any] = {"quality": Quality.GOOD, "error": None, "unit": unit} | kw
    return Reading(
        "plc", name, value, fields["unit"], fields["quality"], at, source, fields["error"]
    )


# -- the codec --------------------------------------------------------------------------


def test_schema_2_carries_every_reading_schema_1_carries_good_bad_and_unknown() -> None:
    later = AT + timedelta(seconds=1)
    readings = [
        plc(0, 3.25),
        plc(1, None, quality=Quality.BAD, error="timeout"),
        plc(2, True),
        plc(0, 3.5, later),
        plc(1, 0.5, later, quality=Quality.STALE),
        Reading("plc", "spare", 7, "", Quality.GOOD, later, "holding:9"),  # not in the meta
        plc(2, False, later, unit="V"),  # not the meta's unit: carried whole
        Reading("rain", "PJ", 0.5, "mm", Quality.GOOD, AT, "20"),  # a station, no point list
        Reading("ghost", "x", "text", "", Quality.UNCERTAIN, AT, "x", "odd"),  # not configured
        plc(0, None, later + timedelta(seconds=1)),  # good but no value: carried whole
    ]
    body = encode(Schema2(META), readings)
    assert body["schema"] == 2 and body["meta"] == META.id
    assert body["t0"] == 1772352000123  # to the millisecond, as schema 1's timestamps
    assert body["polls"] == {
        "plc": [
            [0, [3.25, None, True], [[1, "bad", "timeout"]]],
            [1000, [3.5, 0.5], [[1, "stale", None]]],
        ]
    }
    assert len(body["extra"]) == 5
    assert by_key(expand(body, {META.id: json.loads(META.body)})) == by_key(records(readings))
    assert count_readings(body) == len(readings)


def poll_of(layout: list[tuple[str, str, str]], values: list[Any]) -> PollReadings:
    """One all-good poll as a Modbus poller hands it over: its values in bulk."""
    return PollReadings.plain("plc", AT, tuple(layout), list(values))


@pytest.mark.parametrize(
    "order",
    [
        [0, 1, 2],  # the meta's order
        [2, 0, 1],  # the reads' order differs from the configured one
        [1, 0],  # not every configured point in the poll
    ],
)
def test_a_poll_in_bulk_encodes_as_its_readings_one_by_one(order: list[int]) -> None:
    poll = poll_of([PLC_POINTS[i] for i in order], [10 * i + 1 for i in order])
    encoder = Schema2(META)
    assert encode(encoder, poll) == encode(encoder, list(poll))
    assert encode(encoder, poll) == encode(encoder, poll)  # the worked-out layout, again


def test_a_poll_in_bulk_the_meta_does_not_describe_is_carried_whole() -> None:
    odd = [("level", "cm", "holding:0"), ("flow", "m3/s", "holding:2")]  # not the meta's unit
    body = encode(Schema2(META), poll_of(odd, [3, 4]))
    assert body["polls"] == {"plc": [[0, [None, 4]]]} and len(body["extra"]) == 1
    assert by_key(expand(body, {META.id: json.loads(META.body)})) == by_key(
        records(poll_of(odd, [3, 4]))
    )
    # The meta changes (a reload): the layout is checked again against the new one.
    encoder = Schema2(META)
    encode(encoder, poll_of(PLC_POINTS, [1, 2, 3]))
    encoder.meta = Meta({"plc": ("modbus-tcp", PLC_POINTS[::-1])})
    assert encode(encoder, poll_of(PLC_POINTS, [1, 2, 3]))["polls"] == {"plc": [[0, [3, 2, 1]]]}


def test_a_body_whose_meta_was_not_seen_is_refused_not_guessed() -> None:
    body = encode(Schema2(META), [plc(0, 1.0)])
    with pytest.raises(UnknownMeta):
        expand(body, {})


reading_strategy = st.builds(
    Reading,
    terminal=st.sampled_from(["plc", "rain", "other"]),
    point=st.sampled_from(["level", "flow", "gate", "PJ"]),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    ),
    unit=st.sampled_from(["m", "m3/s", "", "mm"]),
    quality=st.sampled_from(list(Quality)),
    observed_at=st.integers(0, 3).map(lambda s: AT + timedelta(milliseconds=500 * s)),
    source=st.sampled_from(["holding:0", "holding:2", "coil:1", "20"]),
    error=st.one_of(st.none(), st.text(max_size=8)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(reading_strategy, max_size=40), st.integers(1, 12))
def test_any_readings_expand_back_to_exactly_what_schema_1_says(
    readings: list[Reading], batch: int
) -> None:
    """Cut into bodies of at most `batch` readings, as the writer cuts them."""
    encoder = Schema2(META)
    pieces = [encoder.encode(g) for g in encoder.groups(readings, batch)]
    assert all(p.count <= batch for p in pieces)
    expanded = [
        r
        for i in range(len(pieces))
        for r in expand(
            json.loads(encoder.body(pieces[i : i + 1])), {META.id: json.loads(META.body)}
        )
    ]
    assert by_key(expanded) == by_key(records(readings))
    assert sum(p.count for p in pieces) == len(readings)


def test_the_meta_id_is_the_hash_of_its_terminals_and_changes_with_any_point() -> None:
    body = json.loads(META.body)
    text = json.dumps(body["terminals"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert META.id == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert Meta({"plc": ("modbus-tcp", PLC_POINTS), "rain": ("sl651", [])}).id == META.id
    renamed = [("level", "cm", "holding:0"), *PLC_POINTS[1:]]
    assert Meta({"plc": ("modbus-tcp", renamed), "rain": ("sl651", [])}).id != META.id


def signed_bytes_per_reading(values_max: int, compression: str | None) -> float:
    """A body as the writer cuts it at K=200 R=20 (500 readings: 25 polls), signed."""
    rng = random.Random(14)
    points = [(f"r{j}", "", f"holding:{j}") for j in range(20)]
    meta = Meta({f"t{i:04d}": ("modbus-tcp", points) for i in range(200)})
    readings = [
        Reading(
            f"t{i:04d}",
            f"r{j}",
            rng.randrange(values_max),
            "",
            Quality.GOOD,
            AT + timedelta(milliseconds=37 * i),
            f"holding:{j}",
        )
        for i in range(25)
        for j in range(20)
    ]
    encoder = Schema2(meta)
    body = encoder.body([encoder.encode(g) for g in encoder.groups(readings, 500)])
    envelope = envelope_from_encoded(
        "gw-site-0001", 123456789, "telemetry", "2026-03-01T08:00:00.000Z", body
    )
    return len(DeviceKey.generate().sign_compact(envelope, compression)) / len(readings)


def test_schema_2_meets_the_wire_target_signature_included() -> None:
    """≤ 12 bytes a reading uncompressed, ≤ 5 compressed (4-digit values changing at random;
    bench/poll_scale.py --broker measures it at the broker)."""
    assert signed_bytes_per_reading(10_000, None) <= 12
    assert signed_bytes_per_reading(10_000, "zlib") <= 5
    assert signed_bytes_per_reading(65_536, None) <= 12  # 5 digits: still under


# -- the writer and the outbox ----------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return init_key(tmp_path / "state")


async def test_the_meta_is_stored_before_the_telemetry_that_names_it_and_never_twice(
    tmp_path: Path, key: DeviceKey
) -> None:
    box = Outbox(
        tmp_path / "state" / "outbox.db",
        key,
        "gw",
        synchronous="normal",
        compression={"telemetry": "zlib", "meta": "zlib"},
    )
    with box:
        async with OutboxWriter(AsyncOutbox(box)) as writer:
            first = writer.set_meta(META)
            assert first is not None
            writer.submit([plc(0, 1.0), plc(1, 2.0)])
            assert (
                writer.set_meta(Meta({"plc": ("modbus-tcp", PLC_POINTS), "rain": ("sl651", [])}))
                is None
            )
            await writer.cut()
            await first
        pending = box.pending(10)
        assert [(m.kind, m.priority) for m in pending] == [
            ("meta", Priority.HEALTH),
            ("telemetry", Priority.TELEMETRY),
        ]
        meta, telemetry = (open_token(m.payload) for m in pending)
        assert meta["body"] == json.loads(META.body) and meta["seq"] < telemetry["seq"]
        assert expand(telemetry["body"], {META.id: meta["body"]}) == records(
            [plc(0, 1.0), plc(1, 2.0)]
        )


async def test_readings_gathered_before_a_new_meta_are_cut_with_the_old_one(
    tmp_path: Path, key: DeviceKey
) -> None:
    box = Outbox(tmp_path / "state" / "outbox.db", key, "gw", synchronous="normal")
    with box:
        async with OutboxWriter(AsyncOutbox(box), linger=60) as writer:
            writer.set_meta(META)
            writer.submit([plc(0, 1.0)])
            new = Meta({"plc": ("modbus-tcp", PLC_POINTS[::-1])})
            writer.set_meta(new)
            writer.submit([plc(0, 2.0)])
            await writer.cut()
        envelopes = [open_token(m.payload) for m in box.pending(10)]
    metas = {e["body"]["id"]: e["body"] for e in envelopes if e["kind"] == "meta"}
    bodies = [e["body"] for e in envelopes if e["kind"] == "telemetry"]
    assert [b["meta"] for b in bodies] == [META.id, new.id]
    assert [r["value"] for b in bodies for r in expand(b, metas)] == [1.0, 2.0]


def test_a_compressed_message_verifies_with_a_jose_library_and_says_cty_zlib(
    tmp_path: Path, key: DeviceKey
) -> None:
    with Outbox(
        tmp_path / "state" / "outbox.db", key, "gw", compression={"telemetry": "zlib"}
    ) as box:
        box.put("telemetry", {"readings": [{"value": 1}] * 50}, Priority.TELEMETRY)
        box.put("event", {"type": "alarm"}, Priority.EVENT)
        telemetry, event = sorted(box.pending(10), key=lambda m: m.kind, reverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        public = OKPKey.import_key(key.public_jwk())
        signed = jws.deserialize_compact(telemetry.payload, public, algorithms=["EdDSA"])
        plain = jws.deserialize_compact(event.payload, public, algorithms=["EdDSA"])
    assert signed.protected == {"alg": "EdDSA", "kid": key.kid, "cty": "zlib"}
    assert json.loads(zlib.decompress(signed.payload))["body"] == {"readings": [{"value": 1}] * 50}
    assert "cty" not in plain.protected and json.loads(plain.payload)["kind"] == "event"


# -- the reference decoder of docs/telemetry.md, as written -------------------------------


def reference_decoder() -> dict[str, Any]:
    """The one python block under "## Reference decoder", executed as a receiver would."""
    doc = (ROOT / "docs" / "telemetry.md").read_text()
    section = doc.split("## Reference decoder", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {"__name__": "reference_decoder"}
    exec(compile(code.group(1), "docs/telemetry.md", "exec"), namespace)  # noqa: S102 -- our doc
    return namespace


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    mosquitto = persistent(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


@pytest.mark.parametrize("settings", [{}, {"telemetry": {"schema": 1, "compression": "none"}}])
async def test_the_documented_decoder_gives_back_every_reading_a_running_agent_took(
    tmp_path: Path,
    device: tuple[SimulatedModbusDevice, int],
    broker: Mosquitto,
    agent_factory: Any,
    settings: dict[str, Any],
) -> None:
    sim, port = device
    sim.units[1].set_number("holding", 0, 7.5, "float32")
    sim.units[1].holes.add(40)  # a point the device does not have: bad readings, with a reason
    config = tmp_path / "config.yaml"
    points = [
        {"name": "level", "address": 0, "type": "float32", "unit": "m"},
        {"name": "count", "address": 2, "type": "uint16"},
        {"name": "missing", "address": 40, "type": "uint16"},
    ]
    write_config(
        config,
        tmp_path / "state",
        [tcp_terminal(port, points, period="100ms")],
        uplink={"broker": broker.url},
        **settings,
    )
    decoder = reference_decoder()
    jwk: dict[str, Any] = {}

    def envelopes() -> list[dict[str, Any]]:
        signed = [m for m in collector.messages if not m.topic.endswith("/state")]
        return sorted(
            (decoder["verify"](m.payload.decode(), jwk) for m in signed), key=lambda e: e["seq"]
        )

    def received() -> list[dict[str, Any]]:
        return [r for e in envelopes() for r in decoder["readings"](e)]

    async with Collector(broker.port, "edge/gw-test/#") as collector:
        agent: Agent = await agent_factory(config)
        await collector.wait_for("telemetry", lambda: len(collector.on("telemetry")) >= 5)
        assert await agent.stop() == 0
        polled = agent.readings()
        jwk.update(keys_show(config)["jwk"])  # the key the agent made at its start
        await collector.wait_for("every reading", lambda: len(received()) >= len(polled))
    assert {e["kind"] for e in envelopes()} >= {"meta", "telemetry"}
    assert any(r["quality"] == "bad" and r["error"] for r in received())
    assert received() == polled  # one terminal: in the order taken, every field as the local copy


def test_eviction_never_takes_the_meta_and_it_still_leaves_before_any_telemetry(
    tmp_path: Path, key: DeviceKey
) -> None:
    with Outbox(tmp_path / "state" / "outbox.db", key, "gw", max_bytes=20_000) as box:
        box.put("meta", META.body, Priority.HEALTH)
        for i in range(100):
            box.put("telemetry", {"readings": [{"n": i, "pad": "x" * 400}]}, Priority.TELEMETRY)
        stats = box.stats()
        first = box.pending(1)
    assert stats.evicted > 0 and stats.health == 1
    assert [m.kind for m in first] == ["meta"]


async def test_a_reload_that_changes_the_points_publishes_a_new_meta_that_telemetry_names(
    tmp_path: Path, device: tuple[SimulatedModbusDevice, int], agent_factory: Any
) -> None:
    _sim, port = device
    config = tmp_path / "config.yaml"
    state = tmp_path / "state"
    level = {"name": "level", "address": 0, "type": "uint16", "unit": "m"}
    write_config(config, state, [tcp_terminal(port, [level], period="100ms")])
    agent: Agent = await agent_factory(config)
    await agent.wait_for("readings", lambda: len(agent.readings()) >= 3)
    flow = {"name": "flow", "address": 1, "type": "uint16", "unit": "m3/s"}
    write_config(config, state, [tcp_terminal(port, [flow, level], period="100ms")])
    await agent.wait_for("reload", lambda: agent.events("config reloaded"))
    await agent.wait_for("flow", lambda: any(r["point"] == "flow" for r in agent.readings()))
    assert await agent.stop() == 0
    with Outbox(state / "outbox.db", load_key(state), "gw-test") as box:
        envelopes = [
            open_token(m.payload) for m in sorted(box.pending(10_000), key=lambda m: m.seq)
        ]
    metas = [e["body"] for e in envelopes if e["kind"] == "meta"]
    assert [[p[0] for p in m["terminals"]["plc"]["points"]] for m in metas] == [
        ["level"],
        ["flow", "level"],
    ]
    named = [e["body"]["meta"] for e in envelopes if e["kind"] == "telemetry"]
    assert named[0] == metas[0]["id"] and named[-1] == metas[1]["id"]
    switched = named.index(metas[1]["id"])
    assert set(named[:switched]) == {metas[0]["id"]} and set(named[switched:]) == {metas[1]["id"]}
    expanded = Receiver().readings(envelopes)
    assert {r["unit"] for r in expanded if r["point"] == "flow"} == {"m3/s"}
    assert len(expanded) == len(agent.readings())


async def test_a_poll_that_is_not_json_is_counted_lost_and_the_other_polls_are_stored(
    tmp_path: Path, key: DeviceKey
) -> None:
    later = AT + timedelta(seconds=1)
    with Outbox(tmp_path / "state" / "outbox.db", key, "gw", synchronous="normal") as box:
        async with OutboxWriter(AsyncOutbox(box)) as writer:
            writer.set_meta(META)
            good = [plc(0, 1.0), plc(1, 2.0)]
            writer.submit(
                [
                    plc(0, float("nan")),
                    plc(1, 3.0),
                    *[plc(i, v, later) for i, v in ((0, 1.0), (1, 2.0))],
                ]
            )
            await writer.cut()
        envelopes = [open_token(m.payload) for m in box.pending(10)]
    assert writer.stats.lost_readings == 2
    [loss] = [e["body"] for e in envelopes if e["kind"] == "event"]  # reported upstream, once
    assert loss["reason"] == "not storable"
    assert loss["terminals"] == {
        "plc": {"readings": 2, "from": "2026-03-01T08:00:00.123Z", "to": "2026-03-01T08:00:00.123Z"}
    }
    stored = Receiver().readings(envelopes)
    assert stored == records([plc(i, r.value, later) for i, r in enumerate(good)])
