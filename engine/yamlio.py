"""Strict YAML: the YAML 1.2 core schema on top of PyYAML, with positions for every value.

PyYAML alone follows YAML 1.1: ``1e-4`` loads as a string, ``no`` as False, and a duplicated
key silently keeps the last value. Here implicit types follow the 1.2 core schema (``true``/
``false`` only; ``1e-4`` is a float; ``010`` is ten), duplicate keys are errors, and
``load`` returns, next to the data, where each key and value sits in the file so that later
errors can point at ``file:line:col``. One extension: digits may be grouped with ``_``
(``4_000_000``), as in Python.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from engine.errors import Problem, shown

Path = tuple  # of str keys and int indices

MAX_DEPTH = 64  # nesting of mappings and sequences; a spec needs about 5


class NotASpec(yaml.MarkedYAMLError):
    """Valid YAML that no spec can be: nested too deeply, a number beyond float range."""


def _core_resolvers(cls) -> None:
    cls.yaml_implicit_resolvers = {}
    add = cls.add_implicit_resolver
    add("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), list("~nN") + [""])
    add("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    add(
        "tag:yaml.org,2002:int",
        re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
        list("-+0123456789"),
    )
    add(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+.0123456789"),
    )


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core implicit types and duplicate-key rejection."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node).replace("_", "").lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text == ".nan":
            return float("nan")
        value = float(text)
        if math.isinf(value):
            raise NotASpec(None, None, f"number {shown(self.construct_scalar(node), quote=False)} is out of range for a 64-bit float", node.start_mark)
        return value

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if key in seen:
                first = seen[key].start_mark
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {shown(key)} (first defined at line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_core_resolvers(StrictLoader)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


class StrictDumper(yaml.SafeDumper):
    """Quotes any string that the strict loader would read as another type."""


_core_resolvers(StrictDumper)


class Positions:
    """Where each path of a document sits: ``key`` for a mapping key, ``value`` for its value."""

    def __init__(self, file: str):
        self.file = file
        self.keys: dict[Path, tuple[int, int]] = {}
        self.values: dict[Path, tuple[int, int]] = {}

    def record(self, node: yaml.Node, path: Path = (), seen: set | None = None) -> None:
        """Positions below ``node``. A node reached again through an alias is not walked
        again (its problems point at the alias), so an alias bomb costs linear time."""
        seen = set() if seen is None else seen
        self.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is None:
                    continue
                child = path + (key,)
                self.keys.setdefault(child, (k.start_mark.line + 1, k.start_mark.column + 1))
                self.record(v, child, seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.record(v, path + (i,), seen)

    def problem(self, path: Path, message: str, at_key: bool = False) -> Problem:
        """A problem at ``path``, located at the nearest recorded ancestor."""
        table = self.keys if at_key else self.values
        probe = tuple(path)
        while probe and probe not in table and probe not in self.values:
            probe = probe[:-1]
        line, col = table.get(probe) or self.values.get(probe) or (None, None)
        return Problem(self.file, line, col, format_path(path), message)


def format_path(path: Path) -> str:
    """``('sae', 'l1', 2)`` -> ``sae.l1[2]``; a key that is not a plain word is quoted
    (``sources['a b']``) and a long one shortened (``engine.errors.shown``), so a path stays on
    one short line whatever the keys hold."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]{1,80}", str(p)):
            out += ("." if out else "") + str(p)
        else:
            out += f"[{shown(str(p))}]"
    return out


def load(text: str, file: str) -> tuple[Any, Positions]:
    """Parse one YAML document strictly. Raises ``yaml.YAMLError`` (use ``yaml_problem``)."""
    _check_depth(text)
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        positions = Positions(file)
        if node is None:
            return None, positions
        positions.record(node)
        return loader.construct_document(node), positions
    finally:
        loader.dispose()


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream, before the recursive
    composer would exhaust Python's stack."""
    depth = 0
    for event in yaml.parse(text, Loader=StrictLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise NotASpec(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def yaml_problem(err: yaml.YAMLError, file: str) -> Problem:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if isinstance(err, NotASpec):
        return Problem(file, mark.line + 1, mark.column + 1, "", err.problem)
    if isinstance(err, yaml.reader.ReaderError):
        return Problem(file, None, None, "", f"not YAML text: {err.reason} at byte {err.position}")
    message = " ".join(
        str(m).strip() for m in (getattr(err, "context", None), getattr(err, "problem", None)) if m
    ) or str(err).splitlines()[0]
    message = shown(message.replace("\t", "\\t").replace("\n", " "), limit=300, quote=False)  # it may quote the text
    if mark is None:
        return Problem(file, None, None, "", f"invalid YAML: {message}")
    return Problem(file, mark.line + 1, mark.column + 1, "", f"invalid YAML: {message}")


def dump(data: Any) -> str:
    """YAML text that ``load`` reads back to equal data (flow style for scalar lists)."""
    return yaml.dump(
        data, Dumper=StrictDumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )
