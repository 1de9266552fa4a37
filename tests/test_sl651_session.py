"""The central station's session rules, sans IO: frames in, frames out, with a clock we turn."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from agent.config import Sl651Config, Sl651Terminal
from agent.protocols.sl651 import encode, parse_frame
from agent.protocols.sl651.frame import Ctrl
from agent.protocols.sl651.session import MAX_NAKS, RESPONSE_TIMEOUT, Centre
from agent.sim.sl651_station import SimulatedStation

CODE = "0012345678"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def centre(clock: Clock, **terminal: object) -> Centre:
    config = Sl651Config.model_validate({"center": 1, "packet_timeout": "5s"})
    t = Sl651Terminal.model_validate(
        {"name": "camera", "protocol": "sl651", "station": CODE, "password": "1234", **terminal}
    )
    return Centre(config, [t], lambda: True, clock)


def pictures(sim: SimulatedStation, serial: int) -> list[bytes]:
    return encode.picture_report(
        sim.link, serial, sim.clock(), category=ord("H"), observed_at=sim.clock(),
        jpeg=os.urandom(500), max_body=200,
    )  # fmt: skip


def test_an_abandoned_transfer_never_completes_the_next_one() -> None:
    clock, link = Clock(), object()
    c = centre(clock)
    sim = SimulatedStation(CODE)
    first, second = pictures(sim, 1), pictures(sim, 2)
    assert len(first) == len(second) == 3
    for packet in first[:2]:  # the first picture stops after two packets
        assert c.receive(link, parse_frame(packet), datetime.now(UTC)).send == []
    replies = [c.receive(link, parse_frame(p), datetime.now(UTC)).send for p in second]
    assert replies[0] == replies[1] == []  # no confirm before the last packet of this transfer
    [confirm] = replies[2]
    frame = parse_frame(confirm)
    assert frame.packet == (3, 3)
    assert frame.end == Ctrl.EOT


def test_a_packet_that_never_comes_is_asked_for_at_most_max_naks_times() -> None:
    clock, link = Clock(), object()
    c = centre(clock)
    packets = pictures(SimulatedStation(CODE), 5)
    c.receive(link, parse_frame(packets[0]), datetime.now(UTC))
    c.receive(
        link, parse_frame(packets[2]), datetime.now(UTC)
    )  # packet 2 is lost; 3 (the last) came
    naks = 1  # the last packet's arrival NAKed packet 2 at once
    for _ in range(10):
        clock.t += 6
        sent = c.tick(link, datetime.now(UTC)).send
        naks += len(sent)
        assert all(parse_frame(f).end == Ctrl.NAK for f in sent)
    assert naks == MAX_NAKS
    state = c.stations[CODE]
    assert state.assemblies == {}
    assert state.last_error is not None
    assert "never came" in state.last_error


def test_an_unanswered_query_is_given_up_and_asked_again() -> None:
    clock, link = Clock(), object()
    c = centre(clock, query_period="10s")
    sim = SimulatedStation(CODE)
    out = c.receive(link, parse_frame(sim.keepalive()), datetime.now(UTC))
    assert out.send == []
    first = c.tick(link, datetime.now(UTC)).send
    assert [parse_frame(f).function for f in first] == [0x37]
    clock.t += 30
    assert c.tick(link, datetime.now(UTC)).send == []  # still waiting for the answer
    clock.t += RESPONSE_TIMEOUT
    c.receive(link, parse_frame(sim.keepalive()), datetime.now(UTC))  # still online
    again = c.tick(link, datetime.now(UTC)).send
    assert [parse_frame(f).function for f in again] == [0x37]
    state = c.stations[CODE]
    assert state.stats.failed_polls == 1
    assert state.last_error == f"no answer to 0x37 within {RESPONSE_TIMEOUT:g}s"


def test_an_unknown_station_leaves_no_state_when_its_link_closes() -> None:
    clock, link = Clock(), object()
    c = centre(clock)
    stranger = SimulatedStation("0099999999")
    c.receive(link, parse_frame(stranger.timed_report()), datetime.now(UTC))
    assert "0099999999" in c.stations
    c.link_closed(link)
    assert "0099999999" not in c.stations
    assert CODE in c.stations  # configured stations stay
