"""The floor under Modbus TCP polling in asyncio: what a poll costs before the agent does anything.

Issue 14 asks for at most 6 µs of CPU per delivered point at K=1000 terminals × R=20 registers
polled every second: 120 µs per poll for everything — polling, history, encoding, signing,
SQLite, MQTT. This script measures how much of that the bare polling takes, in two shapes, with
no sink at all (the values are decoded, counted and dropped), against the same simulated
devices as bench/poll_scale.py (`agent.sim.modbus_farm` in child processes, so their CPU is not
counted):

- `task`: the agent's shape today: one asyncio task per terminal that sleeps until its slot,
  writes the request, and awaits a future the connection's `data_received` resolves, with a
  timeout timer per request — two task wake-ups, two timers and two futures per poll;
- `callback`: no task: a timer per slot whose callback writes the request, the reply decoded in
  `data_received`, the next slot's timer armed there — one timer and no future per poll;
- `epoll`: no asyncio at all: non-blocking sockets and one `select.epoll` in a plain loop, the
  slots on a heap (what the agent's TCP engine runs, bare);
- `driver (engine)` and `driver (asyncio)`: the agent's own Modbus driver — its pollers, their
  schedules, retries and statistics — with a sink that only counts the polls: the terminals
  named by address (polled by its TCP engine, agent/protocols/modbus/tcp_engine.py) or by a
  host name (polled by asyncio tasks, as before the engine).

It prints, per shape, polls/s, this process's user and system CPU per wall second (getrusage),
µs per poll and per point. The system time is the kernel's TCP on loopback (the send also runs
the device's receive path), which no user-space shape removes.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import resource
import select
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable

from procs import ROOT, start_farm, stop

sys.path.insert(0, str(ROOT))

from agent.config import parse_config
from agent.protocols.modbus.driver import ModbusDriver

REQUEST = struct.Struct(">HHHBBHH")  # MBAP header + read holding registers (function 3)
HEADER = 9  # MBAP (7) + function + byte count


class Connection(asyncio.Protocol):
    """A connection's bytes; wakes a waiting future, or calls `on_reply` (callback shape)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.on_reply: Callable[[Connection], None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.on_reply is not None:
            self.on_reply(self)
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def phase(index: int) -> float:
    return (zlib.crc32(str(index).encode()) % 1000) / 1000


class Counter:
    """Polls done so far (and the task shape's tasks, kept referenced)."""

    def __init__(self) -> None:
        self.polls = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = False


def task_shape(connections: list[Connection], registers: int, counter: Counter) -> None:
    loop = asyncio.get_running_loop()
    values = struct.Struct(f">{registers}H").unpack_from
    size = HEADER + 2 * registers

    async def poller(index: int, c: Connection) -> None:
        assert c.transport is not None
        t0, slot, transaction = loop.time() + phase(index), 0, 0
        while True:
            delay = t0 + slot - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            transaction = transaction % 0xFFFF + 1
            c.transport.write(REQUEST.pack(transaction, 0, 6, 1, 3, 0, registers))
            while len(c.buffer) < size:
                c.waiter = waiter = loop.create_future()
                timer = loop.call_at(loop.time() + 3.0, waiter.cancel)
                await waiter
                timer.cancel()
            list(values(c.buffer, HEADER))
            del c.buffer[:size]
            counter.polls += 1
            slot += 1

    counter.tasks = [loop.create_task(poller(i, c)) for i, c in enumerate(connections)]


def callback_shape(connections: list[Connection], registers: int, counter: Counter) -> None:
    loop = asyncio.get_running_loop()
    values = struct.Struct(f">{registers}H").unpack_from
    size = HEADER + 2 * registers
    start = loop.time()
    transactions = [0] * len(connections)
    slots = [0] * len(connections)
    phases = [phase(i) for i in range(len(connections))]

    def send(index: int) -> None:
        if counter.stopped:
            return
        c = connections[index]
        assert c.transport is not None
        transactions[index] = transactions[index] % 0xFFFF + 1
        c.transport.write(REQUEST.pack(transactions[index], 0, 6, 1, 3, 0, registers))

    def on_reply(c: Connection) -> None:
        if len(c.buffer) < size:
            return
        list(values(c.buffer, HEADER))
        del c.buffer[:size]
        counter.polls += 1
        index = c.index  # type: ignore[attr-defined]
        slots[index] += 1
        loop.call_at(start + phases[index] + slots[index], send, index)

    for i, c in enumerate(connections):
        c.index = i  # type: ignore[attr-defined]
        c.on_reply = on_reply
        loop.call_at(start + phases[i], send, i)


SHAPES = {"task": task_shape, "callback": callback_shape}


def epoll_shape(ports: list[int], args: argparse.Namespace) -> None:
    """No asyncio: non-blocking sockets, one epoll, slots on a heap, in this thread."""
    registers = args.registers
    values = struct.Struct(f">{registers}H").unpack_from
    size = HEADER + 2 * registers
    sockets = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    poller = select.epoll()
    by_fd: dict[int, int] = {}
    for i, sock in enumerate(sockets):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = i
    buffers = [bytearray() for _ in sockets]
    transactions = [0] * len(sockets)
    start = time.monotonic()
    due = [(start + phase(i), i) for i in range(len(sockets))]
    heapq.heapify(due)
    slots = [0] * len(sockets)
    phases = [phase(i) for i in range(len(sockets))]
    polls = 0
    measure_at, end_at = start + args.warmup, start + args.warmup + args.duration
    usage = None
    mark = 0
    while True:
        now = time.monotonic()
        if usage is None and now >= measure_at:
            usage, mark, wall = resource.getrusage(resource.RUSAGE_SELF), polls, time.time()
        if now >= end_at:
            break
        while due and due[0][0] <= now:
            _, i = heapq.heappop(due)
            transactions[i] = transactions[i] % 0xFFFF + 1
            sockets[i].send(REQUEST.pack(transactions[i], 0, 6, 1, 3, 0, registers))
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        for fd, _ in poller.poll(timeout):
            i = by_fd[fd]
            buffer = buffers[i]
            buffer += sockets[i].recv(4096)
            if len(buffer) >= size:
                list(values(buffer, HEADER))
                del buffer[:size]
                polls += 1
                slots[i] += 1
                heapq.heappush(due, (start + phases[i] + slots[i], i))
    finish = resource.getrusage(resource.RUSAGE_SELF)
    assert usage is not None
    report("epoll", polls - mark, time.time() - wall, usage, finish, registers)
    for sock in sockets:
        sock.close()


def report(
    shape: str,
    polls: int,
    seconds: float,
    usage: resource.struct_rusage,
    end: resource.struct_rusage,
    registers: int,
) -> None:
    user, system = end.ru_utime - usage.ru_utime, end.ru_stime - usage.ru_stime
    per_poll = 1e6 * (user + system) / polls
    print(
        f"{shape:>16}: {polls / seconds:.0f} polls/s, cpu {(user + system) / seconds:.3f} s/s "
        f"(user {user / seconds:.3f}, system {system / seconds:.3f}): "
        f"{per_poll:.1f} µs per poll, {per_poll / registers:.2f} µs per point"
    )


async def measure(shape: str, ports: list[int], args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    connections = []
    for port in ports:
        _, c = await loop.create_connection(Connection, "127.0.0.1", port)
        connections.append(c)
    counter = Counter()
    SHAPES[shape](connections, args.registers, counter)
    await asyncio.sleep(args.warmup)
    polls, usage, wall = counter.polls, resource.getrusage(resource.RUSAGE_SELF), time.time()
    await asyncio.sleep(args.duration)
    end = resource.getrusage(resource.RUSAGE_SELF)
    report(shape, counter.polls - polls, time.time() - wall, usage, end, args.registers)
    counter.stopped = True
    for task in counter.tasks:
        task.cancel()
    await asyncio.gather(*counter.tasks, return_exceptions=True)
    for c in connections:
        assert c.transport is not None
        c.transport.close()


class CountingSink:
    """Counts the polls handed over (a poll's readings come as one batch)."""

    def __init__(self) -> None:
        self.polls = 0

    def submit(self, readings: object) -> None:
        self.polls += 1


async def measure_driver(host: str, ports: list[int], args: argparse.Namespace) -> None:
    terminals = [
        {
            "name": f"t{i:04d}", "protocol": "modbus-tcp", "host": host, "port": port,
            "unit": 1, "period": "1s", "timeout": "3s", "retries": 0,
            "points": [{"name": f"r{j}", "address": j} for j in range(args.registers)],
        }
        for i, port in enumerate(ports)
    ]  # fmt: skip
    config = parse_config(
        json.dumps({"gateway": {"id": "floor"}, "state_dir": "unused", "terminals": terminals}),
        "floor.yaml",
    )
    sink = CountingSink()
    async with ModbusDriver(config.terminals, sink):
        await asyncio.sleep(args.warmup)
        polls, usage, wall = sink.polls, resource.getrusage(resource.RUSAGE_SELF), time.time()
        await asyncio.sleep(args.duration)
        end = resource.getrusage(resource.RUSAGE_SELF)
    shape = "driver (engine)" if host == "127.0.0.1" else "driver (asyncio)"
    report(shape, sink.polls - polls, time.time() - wall, usage, end, args.registers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="K simulated terminals")
    parser.add_argument("--registers", type=int, default=20, help="R registers read per poll")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()
    print("command: python bench/poll_floor.py " + " ".join(sys.argv[1:]))
    sims, ports = start_farm(args.devices, args.registers, 2, 10_000, 50, 1.0)
    try:
        for shape in SHAPES:
            asyncio.run(measure(shape, ports, args))
        epoll_shape(ports, args)
        for host in ("127.0.0.1", "localhost"):
            asyncio.run(measure_driver(host, ports, args))
    finally:
        for proc in sims:
            stop(proc)


if __name__ == "__main__":
    main()
