"""`python -m agent …` under tracemalloc, for finding where an agent's memory goes.

`python bench/traced_agent.py SNAPSHOT -- run --config PATH` runs the agent's command line with
tracemalloc on (10 frames, started once the daemon's modules are imported: tracing the
imports would take minutes, and what they cost is the idle RSS); on SIGUSR1 it writes a snapshot to SNAPSHOT (a pickle, read with
`tracemalloc.Snapshot.load`). `poll_scale.py --tracemalloc SNAPSHOT` uses it and prints the
largest allocation sites at the end of the window. Tracing costs memory and CPU of its own:
the figures of a traced run are for finding sites, not for the table.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    snapshot_path, separator, *argv = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: traced_agent.py SNAPSHOT -- AGENT-ARGS…")
    sys.path.insert(0, str(ROOT))
    import agent.daemon  # noqa: F401 -- imported before tracing starts (see the docstring)
    from agent.cli import main as agent_main

    tracemalloc.start(10)

    def dump(signum: int, frame: FrameType | None) -> None:
        tracemalloc.take_snapshot().dump(snapshot_path)

    signal.signal(signal.SIGUSR1, dump)
    return agent_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
