"""Fast, bounded YAML reading: plain Python data plus a line for every key and item.

ruamel's round-trip loader keeps lines but composes every node in Python: a
10,000-tag site took 26 s. Here ruamel's parser (libyaml via
``ruamel.yaml.clib`` when installed) produces events, and one iterative
loop builds plain dicts and lists, resolves scalars by the YAML 1.2 core
schema, and records the line of each mapping key and sequence item. No
recursion (deep nesting cannot overflow the stack), and aliases are counted
as they are met so a "billion laughs" file is refused before it expands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

__all__ = ["LineMap", "YamlLimitError", "read_yaml"]

_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?[0-9][0-9_]*\Z")
_OCT = re.compile(r"0o[0-7_]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F_]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")

_STR_TAG = "tag:yaml.org,2002:str"


class YamlLimitError(ValueError):
    """The document is refused for its shape (too many aliases, nodes or levels)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _resolve(value: str) -> Any:
    first = value[:1]
    if first.isalpha() and first not in "tTfFnN":
        return value  # the common case: a name
    if value in _NULL:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if _INT.match(value):
        return int(value.replace("_", ""))
    if _FLOAT.match(value):
        return float(value.replace("_", ""))
    if _INF.match(value):
        return float("-inf") if value.startswith("-") else float("inf")
    if _NAN.match(value):
        return float("nan")
    if _OCT.match(value):
        return int(value[2:].replace("_", ""), 8)
    if _HEX.match(value):
        return int(value[2:].replace("_", ""), 16)
    return value


@dataclass(slots=True)
class LineMap:
    """1-based lines of mapping keys and sequence items, by container identity."""

    keys: dict[int, dict[str, int]] = field(default_factory=dict)
    items: dict[int, list[int]] = field(default_factory=dict)

    def key_line(self, mapping: object, key: str) -> int | None:
        return self.keys.get(id(mapping), {}).get(key)

    def item_line(self, sequence: object, index: int) -> int | None:
        lines = self.items.get(id(sequence))
        return lines[index] if lines is not None and index < len(lines) else None


def _scalar(event: ScalarEvent) -> Any:
    tag = event.tag
    if tag is not None and tag != "!":
        if tag == _STR_TAG:
            return event.value
        if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            return _resolve(event.value)
        raise YamlLimitError(f"unsupported YAML tag {tag}", _line(event))
    if event.style:  # quoted or block scalar: always a string
        return event.value
    return _resolve(event.value)


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def read_yaml(
    text: str, *, max_nodes: int, max_aliases: int, max_depth: int
) -> tuple[Any, LineMap]:
    """Parse one YAML document into plain data and its line map.

    Raises ruamel's ``YAMLError`` for malformed YAML and :class:`YamlLimitError`
    for a document over the limits (or with a duplicate key).
    """
    lines = LineMap()
    anchors: dict[str, Any] = {}
    sizes: dict[int, int] = {}  # expanded size of anchored containers
    # stack entries: [container, pending key (mappings), key line, anchor]
    stack: list[list[Any]] = []
    root: Any = None
    have_root = False
    nodes = 0
    aliases = 0

    def attach(value: Any, line: int | None, weight: int) -> None:
        nonlocal root, have_root, nodes
        nodes += weight
        if nodes > max_nodes:
            raise YamlLimitError(
                f"expands to more than {max_nodes} nodes (alias bomb?); refused", line
            )
        if not stack:
            if have_root:
                raise YamlLimitError("more than one YAML document in the file", line)
            root, have_root = value, True
            return
        top = stack[-1]
        container = top[0]
        if isinstance(container, list):
            container.append(value)
            lines.items[id(container)].append(line or 0)
            return
        if top[1] is _NO_KEY:
            if isinstance(value, dict | list):
                raise YamlLimitError("a mapping or sequence as a mapping key is not allowed", line)
            key = "" if value is None else str(value)
            if key in container:
                raise YamlLimitError(f'found duplicate key "{key}"', line)
            top[1], top[2] = key, line
            return
        key = top[1]
        container[key] = value
        lines.keys[id(container)][key] = top[2] or 0
        top[1] = _NO_KEY

    parser = YAML(typ="safe")
    for event in parser.parse(text):
        if isinstance(event, ScalarEvent):
            value = _scalar(event)
            if event.anchor:
                anchors[event.anchor] = value
            attach(value, _line(event), 1)
        elif isinstance(event, MappingStartEvent | SequenceStartEvent):
            if len(stack) >= max_depth:
                raise YamlLimitError(
                    f"nested deeper than {max_depth} levels; refused", _line(event)
                )
            container: Any
            if isinstance(event, MappingStartEvent):
                container = {}
                lines.keys[id(container)] = {}
            else:
                container = []
                lines.items[id(container)] = []
            line = _line(event)
            # attach first (so a key's value is in place), then descend
            attach(container, line, 1)
            stack.append([container, _NO_KEY, None, event.anchor, nodes])
            if event.anchor:
                anchors[event.anchor] = container
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            container, _, _, anchor, started = stack.pop()
            if anchor:
                sizes[id(container)] = nodes - started + 1
        elif isinstance(event, AliasEvent):
            aliases += 1
            if aliases > max_aliases:
                raise YamlLimitError(
                    f"more than {max_aliases} alias references; refused", _line(event)
                )
            if event.anchor not in anchors:
                raise YamlLimitError(f"unknown alias *{event.anchor}", _line(event))
            target = anchors[event.anchor]
            attach(target, _line(event), sizes.get(id(target), 1))
    if not have_root:
        return None, lines
    return root, lines


class _NoKey:
    pass


_NO_KEY: Any = _NoKey()
