"""A config file's problems in the words of the file: one line per problem, for people.

`describe(error, root, source)` turns one of pydantic's validation errors into
`<key path>: <problem>`, naming the config's keys and values in YAML's words, never a model's
class name nor pydantic's own wording: an unknown key gets the nearest known one ("did you mean
…"), a section given a single value is shown the keys it takes, a limit is said as one ("at most
247 (got 999)"), and text that YAML read as a number (`station: 0012345670`, octal to YAML) is
shown as written with the quotes it needs — when the quoted text would be a valid value; else
what is wrong with it. `DuplicateKey` is what the loader raises for a key given twice in one
mapping. Pure functions over the error, the model classes and the
file's text; the YAML source is composed again only to describe an error, never on the way to a
valid config.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, PydanticUserError, TypeAdapter, ValidationError

NAME_HINT = (
    "a name of letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit)"
)
PATTERN_HINTS = {
    "id": NAME_HINT,
    "name": NAME_HINT,
    "broker": "a broker URL: mqtt://host:1883 or mqtts://host:8883",
    "station": "a station address: 10 hex digits (5 bytes), e.g. 0012345678",
    "password": "an SL651 password: 4 hex digits, e.g. 1234",
    "utc_offset": "a UTC offset: +HH:MM or -HH:MM, e.g. +08:00",
    "repository_url": "the URL of the update repository: http(s)://host/path/",
    "channel": "a channel name: lower-case letters, digits, '.', '_' or '-', e.g. stable",
    "fleet_prefix": "a topic prefix without wildcards, e.g. edge/fleet",
    "password_credential": "a credential name: a file name of letters, digits, '.', '_' or '-'",
    "key_credential": "a credential name: a file name of letters, digits, '.', '_' or '-'",
}

# What a value of each kind is called in a message ("expected a whole number").
_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list (`[a, b]`, or one `- item` per line)",
    "tuple_type": "a list (`[a, b]`, or one `- item` per line)",
    "dict_type": "a mapping (`key: value` lines, or `{key: value}`)",
    "path_type": "a file path",
    "datetime_type": "a date and time, e.g. 2026-11-01T00:00:00Z",
    "datetime_parsing": "a date and time, e.g. 2026-11-01T00:00:00Z",
    "datetime_from_date_parsing": "a date and time, e.g. 2026-11-01T00:00:00Z",
    "finite_number": "a finite number",
    "set_type": "a list (`[a, b]`, or one `- item` per line)",
    "frozen_set_type": "a list (`[a, b]`, or one `- item` per line)",
}
# A limit on a number, said as people say it: ("at most", "le") -> "at most 247 (got 999)".
_LIMITS = {
    "greater_than": ("more than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
    "multiple_of": ("a multiple of", "multiple_of"),
}
_SECTION_KINDS = frozenset({"model_type", "model_attributes_type", "dataclass_type"})
_MAX_KEYS_SHOWN = 6
_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")  # YAML 1.1: a leading 0 makes digits octal


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping (YAML would keep the last one silently)."""

    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(f"line {line}: duplicate key {key!r}")

    def describe(self) -> str:
        return (
            f"line {self.line}: duplicate key {self.key!r} (first given on line "
            f"{self.first_line}): give each key once; YAML would keep only the last"
        )


def key_path(loc: Sequence[int | str], tags: Iterable[str]) -> str:
    """`terminals[1].points[0].type` for pydantic's location; the discriminator values pydantic
    adds after a list index (the union member it tried) are left out."""
    tags = frozenset(tags)
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags and i > 0 and isinstance(loc[i - 1], int):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _unwrap(annotation: Any) -> Any:
    """The type under Annotated and Optional (`X | None`)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a model takes in the file (a field's alias where it has one)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _field(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f.annotation
    return None


def _tagged(union: Any, tag: str) -> Any:
    """The member of a discriminated union of models whose `protocol` literal is `tag`."""
    for member in get_args(union):
        member = _unwrap(member)
        if _is_model(member):
            protocol = _unwrap(_field(member, "protocol"))
            if get_origin(protocol) is Literal and tag in get_args(protocol):
                return member
    return None


def model_at(root: type[BaseModel], loc: Sequence[int | str]) -> Any:
    """The type the config expects at `loc` (a model class, a list type …), None if unknown."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        origin = get_origin(current)
        if _is_model(current) and isinstance(part, str):
            current = _field(current, part)
        elif origin in (list, tuple) and isinstance(part, int):
            current = get_args(current)[0]
        elif origin is dict and isinstance(part, str):
            current = get_args(current)[1]
        elif origin in (Union, types.UnionType) and isinstance(part, str):
            current = _tagged(current, part)
        else:
            return None
        if current is None:
            return None
    return _unwrap(current)


def _node_at(root: yaml.Node | None, loc: Sequence[int | str], tags: Iterable[str]) -> Any:
    """The YAML node the file has at `loc` (as written: its text and line), None if not found."""
    tags = frozenset(tags)
    node = root
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in tags and i > 0 and isinstance(loc[i - 1], int):
            continue
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        elif isinstance(node, yaml.MappingNode):
            node = next((v for k, v in reversed(node.value) if k.value == part), None)
        else:
            return None
    return node


def _shown(value: object) -> str:
    """A value as YAML would write it (`[{point: a.nope}]`, `true`, `'text'`), short."""
    if value is None:
        return "nothing (an empty value or null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
        except yaml.YAMLError:
            text = repr(value)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _items(field: str, count: int) -> str:
    """`count` entries of the list `field`, named after it: "1 point", "2 terminals"."""
    noun = field[:-1] if field.endswith("s") and not field.endswith("ss") else "entry"
    if count != 1:
        noun = noun[:-1] + "ies" if noun == "entry" else noun + "s"
    return f"{count} {noun}"


def _length(kind: str, field: str, value: object, ctx: dict[str, Any]) -> str:
    """A list or text too short or too long, in the config's words."""
    size = len(value) if isinstance(value, str | list | tuple | dict) else None
    got = "" if size is None else f" (got {size})"
    if kind == "string_too_short":
        least = ctx["min_length"]
        return "must not be empty" if least == 1 else f"needs at least {least} characters{got}"
    if kind == "string_too_long":
        return f"too long: at most {ctx['max_length']} characters{got}"
    if kind == "too_short":
        got = " (got none)" if not size else got
        return f"needs at least {_items(field, ctx['min_length'])}{got}"
    return f"too long: at most {_items(field, ctx['max_length'])}{got}"


def _as_read(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"the {type(value).__name__} {value}"


def _declared(root: type[BaseModel], loc: Sequence[int | str]) -> Any:
    """The type declared at `loc` with its constraints (pattern, validators), None if unknown."""
    if not loc:
        return None
    parent, last = model_at(root, loc[:-1]), loc[-1]
    if _is_model(parent) and isinstance(last, str):
        for name, f in parent.model_fields.items():
            if last in (name, f.alias):
                return Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    elif get_origin(parent) in (list, tuple) and isinstance(last, int):
        return get_args(parent)[0]
    return None


def _as_text_problem(
    raw: str, loc: Sequence[int | str], root: type[BaseModel], tags: Sequence[str]
) -> str | None:
    """What is wrong with `raw` as text at `loc` (None when quoting it makes a valid value)."""
    declared = _declared(root, loc)
    if declared is None:
        return None
    try:
        TypeAdapter(declared).validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _problem({**first, "loc": (*loc, *first["loc"])}, root, tags, None)
    except PydanticUserError:  # a type pydantic cannot check alone: quoting is the hint
        return None
    return None


def _quote_it(
    loc: Sequence[int | str],
    value: object,
    root: type[BaseModel],
    tags: Sequence[str],
    source: yaml.Node | None,
) -> str:
    """Text YAML read as something else (a number, true/false, a date): the quotes it needs
    to stay text when that makes a valid value, else what is wrong with it as text."""
    if value is None:
        return "expected text, got nothing (an empty value or null)"
    node = _node_at(source, loc, tags)
    raw = node.value if isinstance(node, yaml.ScalarNode) else None
    if not raw:
        return f"expected text, got {_as_read(value)}: quote it"
    if (problem := _as_text_problem(raw, loc, root, tags)) is not None:
        return problem
    field = loc[-1] if loc else "value"
    why = " (a leading 0 makes it octal)" if _OCTAL.match(raw) else ""
    quoted = f'"{raw}"' if isinstance(field, int) else f'{field}: "{raw}"'  # a list item, a key
    return (
        f"YAML reads {raw} on line {node.start_mark.line + 1} as {_as_read(value)}{why}; "
        f"quote it: {quoted}"
    )


def _section(field: str, value: object, model: Any) -> str:
    """A section (a mapping of keys) given as one value: what keys it takes, and which of them
    the value would fit."""
    if get_origin(model) in (
        Union,
        types.UnionType,
    ):  # one of several (a terminal): the keys all take
        members = [_keys(m) for m in map(_unwrap, get_args(model)) if _is_model(m)]
        common = (
            [key for key in members[0] if all(key in keys for keys in members)] if members else []
        )
        return f"expected a section of keys ({', '.join(common)} ...), got {_shown(value)}"
    if not _is_model(model):
        return f"expected a section of keys, got {_shown(value)}"
    keys = _keys(model)
    fits = [
        key
        for key in keys
        if get_origin(choice := _unwrap(_field(model, key))) is Literal
        and any(value == c and type(value) is type(c) for c in get_args(choice))
    ]
    hint = f"; did you mean {field}: {{{fits[0]}: {value}}}?" if fits else ""
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    if len(keys) > _MAX_KEYS_SHOWN:
        shown += ", ... (config/example.yaml has them all)"
    return f"expected a section with the keys {shown}, got {_shown(value)}{hint}"


def nearest(word: str, known: Iterable[str]) -> str | None:
    """The known word closest to a misspelt one, if any is close enough."""
    import difflib  # only when there is an error to describe

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(key: str, model: Any) -> str:
    close = nearest(key, _keys(model) if _is_model(model) else [])
    if close:
        return f"unknown key (did you mean {close!r}?)"
    return "unknown key (see config/example.yaml for every option)"


def _choices(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected))


def describe(
    err: Any, root: type[BaseModel], tags: Sequence[str], source: yaml.Node | None = None
) -> str:
    """One line for one pydantic error of the whole config `root`; `tags` are the values of the
    terminals' discriminator (`protocol`), `source` the composed YAML (for "quote it")."""
    loc = err["loc"]
    key = key_path(loc, tags)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        key = f"{key}.protocol" if key else "protocol"
    problem = _problem(err, root, tags, source)
    return f"{key}: {problem}" if key else problem


def _problem(err: Any, root: type[BaseModel], tags: Sequence[str], source: yaml.Node | None) -> str:
    """The problem of one pydantic error, in the config's words (`describe` adds the key)."""
    loc = err["loc"]
    kind = err["type"]
    field = str(loc[-1]) if loc else "value"
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind in ("literal_error", "enum"):
        problem = f"unknown {field} {_shown(value)} (expected one of: {_choices(ctx['expected'])})"
    elif kind == "union_tag_invalid":
        problem = f"unknown protocol {ctx['tag']!r} (expected one of: {', '.join(tags)})"
    elif kind == "union_tag_not_found":
        problem = f"missing protocol (one of: {', '.join(tags)})"
    elif kind in _LIMITS and _LIMITS[kind][1] in ctx:
        words, limit = _LIMITS[kind]
        problem = f"must be {words} {ctx[limit]} (got {_shown(value)})"
    elif kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        problem = _length(kind, field, value, ctx)
    elif kind == "missing":
        problem = "required key is missing"
    elif kind == "extra_forbidden":
        problem = _unknown_key(field, model_at(root, loc[:-1]))
    elif kind == "value_error":
        problem = str(ctx["error"])
    elif kind == "string_pattern_mismatch":
        problem = f"{_shown(value)} is not {PATTERN_HINTS.get(field, 'in the expected form')}"
    elif kind == "string_type" and not isinstance(value, list | dict):
        problem = _quote_it(loc, value, root, tags, source)
    elif kind in _SECTION_KINDS:
        problem = _section(field, value, model_at(root, loc))
    elif kind in _EXPECTED:
        problem = f"expected {_EXPECTED[kind]}, got {_shown(value)}"
    else:  # a kind without words of ours: pydantic's, without its "Input should be"
        said = re.sub(r"^Input should be ", "expected ", str(err["msg"]))
        problem = f"{said} (got {_shown(value)})"
    return problem
