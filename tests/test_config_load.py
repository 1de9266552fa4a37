"""Loading a large config: the YAML is read without PyYAML's node graph (agent/config_yaml.py)
into exactly what PyYAML's safe loader gives, and points configured alike share one object."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.config_yaml import SafeLoader, _EventBuilder, load_yaml


def pyyaml(text: str) -> tuple[str, Any]:
    """('ok', data) or ('error', message with its marks) from PyYAML's own safe loader."""
    try:
        return "ok", yaml.load(text, Loader=SafeLoader)  # noqa: S506 -- a safe loader
    except yaml.YAMLError as exc:
        return "error", str(exc)


def ours(text: str) -> tuple[str, Any]:
    try:
        return "ok", load_yaml(text)
    except yaml.YAMLError as exc:
        return "error", str(exc)


BUILT = {  # what the event builder reads itself
    "empty": "",
    "comment only": "# nothing\n",
    "scalar document": "just text",
    "implicit types": (
        "octal: 012\nnot octal: 0o12\nhex: 0x1F\nunderscores: 1_000\nsexagesimal: 1:30\n"
        "float: 1.5e3\ninf: .inf\nnull: ~\nyes: yes\noff: off\nquoted: '012'\n"
        "stamp: 2001-12-14t21:59:43.10-05:00\ndate: 2002-12-14\n"
    ),
    "station address unquoted": "station: 0012345670\n",
    "explicit scalar tags": "a: !!str 12\nb: !!binary aGVsbG8=\nc: !!float 1\n",
    "flow and block": "a: [1, {b: c}, [d]]\ne:\n  - f: 1\n    g: [2, 3]\n",
    "anchors and aliases": "base: &b {x: 1}\nuse: *b\nlist: &l [1, 2]\nagain: *l\ns: &s v\nt: *s\n",
    "merge key": "base: &b {x: 1, y: 2}\nt: {<<: *b, y: 3, z: 4}\n",
    "merge list, first wins": "t: {<<: [{a: 1}, {a: 2, b: 2}], c: 3}\n",
    "two merge keys, later wins": "<<: {a: 1}\n<<: {a: 2, b: 1}\n",
    "merge of a merged mapping": "a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}\n",
    "value key": "= : 1\n",
    "unicode": "名称: 水位\n",
}
LEFT_TO_PYYAML = {  # what the node-based loader decides (the event builder leaves these to it)
    "key given twice": "a: 1\na: 2\n",
    "equal keys of two types": "1: a\ntrue: b\n",
    "explicit collection tag": "a: !!set {x}\nb: !!omap [{k: v}]\n",
    "recursive alias": "a: &x [1, *x]\n",
    "undefined alias": "a: *nowhere\n",
    "duplicate anchor": "a: &a {b: 1}\nc: &a 2\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "unhashable key": "? [1]\n: 2\n",
    "merge of a scalar": "<<: 1\n",
    "merge of a list with a scalar": "<<: [{a: 1}, 2]\n",
    "bad base64": "a: !!binary zz\n",
    "unknown tag": "a: !custom 1\n",
    "value tag as a value": "a: =\n",
    "broken syntax": "a: [1, 2\nb: 3\n",
    "tab indentation": "a:\n\t- 1\n",
}
CASES = BUILT | LEFT_TO_PYYAML


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_gives_what_pyyaml_gives_data_or_error(text: str) -> None:
    assert repr(ours(text)) == repr(pyyaml(text))  # repr: order, types, recursion


@pytest.mark.parametrize("text", BUILT.values(), ids=BUILT.keys())
def test_the_event_builder_reads_these_itself(text: str) -> None:
    """Not handed over to PyYAML: the reading without a node graph is what loads them."""
    assert repr(_EventBuilder(text).load()) == repr(pyyaml(text)[1])


def test_aliases_are_the_same_object_as_in_pyyaml() -> None:
    data = load_yaml("base: &b {x: 1}\nuse: *b\n")
    assert data["use"] is data["base"]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["012", "0x1f", "1:30", "yes", "~", "<<", "=", "2024-01-02", "1_0"]),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(data=documents, flow=st.sampled_from([False, True, None]), share=st.booleans())
def test_any_dumped_document_loads_as_pyyaml_loads_it(
    data: Any, flow: bool | None, share: bool
) -> None:
    if share:  # the same object twice: the dumper writes an anchor and an alias
        data = {"first": data, "second": data}
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    assert repr(ours(text)) == repr(pyyaml(text))  # repr: order, types, recursion
    assert repr(_EventBuilder(text).load()) == repr(pyyaml(text)[1])  # read without PyYAML's


def site(terminals: int, points: int) -> str:
    """A site written out as an operator might: the first terminal anchored, odd ones merging
    its settings (`<<`) and reusing its register map by alias, even ones written in full."""
    register_map = ", ".join(f"{{name: r{j}, address: {j}, type: uint16}}" for j in range(points))
    lines = ["gateway: {id: big}", "terminals:"]
    lines.append(
        f"  - &first {{name: t0, protocol: modbus-tcp, host: h, points: &map [{register_map}]}}"
    )
    for i in range(1, terminals):
        if i % 2:
            lines.append(f"  - {{<<: *first, name: t{i}, port: {1502 + i}, points: *map}}")
            continue
        lines += [f"  - name: t{i}", "    protocol: modbus-tcp", "    host: h", "    points:"]
        lines += [
            f"      - name: r{j}\n        address: {j}\n        type: uint16" for j in range(points)
        ]
    return "\n".join(lines) + "\n"


def test_a_large_config_loads_without_the_node_graph() -> None:
    """PyYAML's node graph of a 1000-terminal site took about 50 times the file's size; the
    data alone takes about 10 times (measured: 68 MB and 11 MB at the peak for 1 MB)."""
    text = site(200, 20)
    tracemalloc.start()
    try:
        data = load_yaml(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == pyyaml(text)[1]
    assert peak < 15 * len(text), f"peak {peak} bytes for {len(text)} bytes of YAML"


def test_points_configured_alike_are_one_object() -> None:
    config = parse_config(site(4, 3))
    first, second, third, _ = config.terminals
    assert first.points[1] is second.points[1] is third.points[1]  # type: ignore[attr-defined]


def test_points_that_differ_in_anything_stay_apart() -> None:
    text = """
gateway: {id: gw}
terminals:
  - name: a
    protocol: modbus-tcp
    host: h
    points:
      - {name: level, address: 0}
      - {name: flow, address: 1, offset: 0.0}
  - name: b
    protocol: modbus-tcp
    host: h
    points:
      - {name: level, address: 0, table: holding}
      - {name: flow, address: 1, offset: -0.0}
  - name: c
    protocol: modbus-rtu
    device: /dev/ttyS0
    points:
      - {name: level, address: 0}
      - {name: flow, address: 1, offset: 0.0}
"""
    a, b, c = parse_config(text).terminals
    # written differently (table given), or a different value (-0.0): not shared
    assert a.points[0] is not b.points[0]  # type: ignore[attr-defined]
    assert a.points[0] == b.points[0]  # type: ignore[attr-defined]
    assert a.points[1] is not b.points[1]  # type: ignore[attr-defined]
    assert b.points[0].model_fields_set == {"name", "address", "table"}  # type: ignore[attr-defined]
    # the same point on another transport is the same value
    assert a.points[0] is c.points[0] and a.points[1] is c.points[1]  # type: ignore[attr-defined]
