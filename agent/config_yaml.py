"""A config file's YAML → plain Python data, built straight from the parser's events.

PyYAML's loader first composes the whole document into a graph of nodes (two position marks
each) and only then constructs the data: for a site of a thousand terminals that graph is
about 50 times the size of the file, and it was the agent's peak memory. `load_yaml` builds
the data as the parser's events come — the same parser, the same tag resolution and the same
constructor for every scalar, anchors, aliases and merge keys (`<<`) as SafeConstructor
flattens them — and holds nothing else. Whatever it does not handle the same way (an error of
any kind, a collection with an explicit tag such as `!!set`, a key given twice) it leaves to
the node-based loader, which then decides (the data, or the error with its mark): the result
is always what `yaml.load(text, Loader=loader)` gives.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

# libyaml's loader where it is built in: a large site's config parses several times faster.
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE, _VALUE, _STR = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value", "tag:yaml.org,2002:str"


class _Unhandled(Exception):
    """What the node-based loader must decide."""


def load_yaml(text: str, loader: type[yaml.SafeLoader] = SafeLoader) -> Any:
    """The single document of `text` as plain data (None if empty), as
    `yaml.load(text, Loader=loader)` gives it; raises yaml.YAMLError as that does."""
    try:
        return _EventBuilder(text).load()
    except (yaml.YAMLError, _Unhandled, RecursionError):
        return yaml.load(text, Loader=loader)  # noqa: S506 -- a safe loader


class _EventBuilder(SafeLoader):  # type: ignore[misc,valid-type]
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._anchors: dict[str, Any] = {}
        self._open: set[int] = set()  # the collections being built (ids)

    def load(self) -> Any:
        try:
            self.get_event()  # stream start
            if self.check_event(StreamEndEvent):
                return None
            self.get_event()  # document start
            value = self._build()
            self.get_event()  # document end
            if not self.check_event(StreamEndEvent):
                raise _Unhandled("more than one document")
            return value
        finally:
            self.dispose()

    def _build(self, tag: str | None = None) -> Any:
        """The next node's value; `tag`: its scalar tag, when the caller resolved it already."""
        event = self.get_event()
        if isinstance(event, AliasEvent):
            if event.anchor not in self._anchors:
                raise _Unhandled("undefined alias")
            value = self._anchors[event.anchor]
            if id(value) in self._open:  # PyYAML would give it whole, as it ends up: recursive
                raise _Unhandled("an alias to a collection that encloses it")
            return value
        if event.anchor is not None and event.anchor in self._anchors:
            raise _Unhandled("duplicate anchor")
        if isinstance(event, ScalarEvent):
            value = self._scalar(event, tag or self._scalar_tag(event))
            if event.anchor is not None:
                self._anchors[event.anchor] = value
        elif isinstance(event, SequenceStartEvent):
            value = self._collection(event, SequenceNode, _SEQ, [])
            while not self.check_event(SequenceEndEvent):
                value.append(self._build())
            self.get_event()
            self._open.discard(id(value))
        elif isinstance(event, MappingStartEvent):
            value = self._collection(event, MappingNode, _MAP, {})
            self._fill(value)
            self.get_event()
            self._open.discard(id(value))
        else:  # pragma: no cover -- the parser emits nothing else where a node starts
            raise _Unhandled(f"unexpected {event}")
        return value

    def _scalar_tag(self, event: Any) -> str:
        if event.tag is None or event.tag == "!":
            return str(self.resolve(ScalarNode, event.value, event.implicit))
        return str(event.tag)

    def _scalar(self, event: Any, tag: str) -> Any:
        """The scalar's value, by PyYAML's own constructor for its tag."""
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self.construct_object(node, deep=True)
        finally:
            self.constructed_objects.pop(node, None)

    def _collection(self, event: Any, node_type: type, default: str, empty: Any) -> Any:
        """The empty list or dict a start event opens."""
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolve(node_type, None, event.implicit)
        if tag != default:
            raise _Unhandled(f"explicit tag {tag}")
        if event.anchor is not None:
            self._anchors[event.anchor] = empty
            self._open.add(id(empty))
        return empty

    def _fill(self, mapping: dict[Any, Any]) -> None:
        """A mapping's pairs until its end, merge keys (`<<`) as SafeConstructor flattens them:
        merged pairs first (of two `<<`, the later wins; in a list of mappings, the first),
        then the mapping's own, which win over both."""
        merged: dict[Any, Any] = {}
        own: dict[Any, Any] = {}
        while not self.check_event(MappingEndEvent):
            event = self.peek_event()
            tag = self._scalar_tag(event) if isinstance(event, ScalarEvent) else None
            if tag in (_MERGE, _VALUE) and event.anchor is not None:
                raise _Unhandled("an anchor on a merge or value key")
            if tag == _MERGE:
                self.get_event()
                self._merge(merged, self._build())
                continue
            if tag == _VALUE:
                self.get_event()  # `=` as a key is the string "=" (SafeConstructor)
                key = self._scalar(event, _STR)
            else:
                key = self._build(tag)  # the key's tag resolved once (a site has thousands)
            try:
                seen = key in own
            except TypeError:  # unhashable
                raise _Unhandled("unhashable key") from None
            if seen:
                raise _Unhandled("a key given twice")
            own[key] = self._build()
        mapping.update(merged)
        mapping.update(own)

    @staticmethod
    def _merge(merged: dict[Any, Any], source: Any) -> None:
        if isinstance(source, dict):
            merged.update(source)
        elif isinstance(source, list) and all(isinstance(item, dict) for item in source):
            for item in reversed(source):
                merged.update(item)
        else:
            raise _Unhandled("not a mapping or list of mappings to merge")
