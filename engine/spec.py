"""Loading a spec: strict YAML -> ``--set`` overrides -> typed ``Spec`` -> cross-field checks.

Every problem found is collected and raised at once as a ``SpecError`` whose lines read
``file:line:col: path: message``. The resolved spec (defaults filled in) dumps to YAML that
loads back to an equal object with the same ``spec_hash``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import yaml

from engine import convert, schema, sources, yamlio
from engine.errors import Problem, SpecError, shown, shown_path
from engine.hashing import SPEC_HASH_VERSION, tagged_hash
from engine.sweep import is_sweep, values_of
from engine.yamlio import format_path

MAX_SPEC_BYTES = 1 << 20


@attrs.frozen
class Override:
    """One ``--set path=value``; the value is YAML (``0.1``, ``[1, 2]``, ``{logspace: [-2, 2, 5]}``)."""

    path: tuple
    value: Any
    text: str


def parse_path(text: str) -> tuple | None:
    """``sae.train.steps`` -> ('sae','train','steps'); ``sae[1].k`` -> ('sae', 1, 'k') (an
    index only after the first key: the blocks of a list ``sae``, as ``format_path`` writes
    them); ``sae.l1[2]`` is not a path (None)."""
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(0|[1-9][0-9]{0,5})\])?((?:\.[A-Za-z_][A-Za-z0-9_]*)*)", text)
    if m is None:
        return None
    head, index, rest = m.groups()
    return (head,) + ((int(index),) if index is not None else ()) + tuple(rest.split(".")[1:])


def parse_override(text: str) -> tuple[Override | None, Problem | None]:
    where = f"--set {shown(text, quote=False)}"
    if "=" not in text:
        return None, Problem(where, None, None, "", "expected PATH=VALUE, e.g. sae.train.steps=500")
    key, _, value_text = text.partition("=")
    path = parse_path(key.strip())
    if path is None:
        return None, Problem(where, None, None, "", f"{shown(key.strip())} is not a dotted path like sae.train.steps")
    try:
        value, _ = yamlio.load(value_text, where)
    except yaml.YAMLError as e:
        p = yamlio.yaml_problem(e, where)
        return None, attrs.evolve(p, path=format_path(path), line=None, col=None)
    return Override(path, value, where), None


def _apply(raw: dict, override: Override) -> Problem | None:
    node = raw
    path = override.path
    for i, key in enumerate(path[:-1]):
        if isinstance(path[i + 1], int):  # sae[1]...: a block of a list
            child = node.get(key)
            if not isinstance(child, list):
                return Problem(override.text, None, None, format_path(path[: i + 1]), "is not a list, cannot index it")
            if path[i + 1] >= len(child):
                return Problem(override.text, None, None, format_path(path[: i + 2]), f"no such item: the list has {len(child)}")
            node = child
            continue
        child = node[key] if isinstance(key, int) else node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            return Problem(override.text, None, None, format_path(path[: i + 1]), "is not a mapping, cannot set a key inside it")
        node = child
    node[path[-1]] = override.value
    return None


def read_text(path: Path) -> tuple[str | None, Problem | None]:
    file = shown_path(path)
    if not path.exists():
        return None, Problem(file, None, None, "", "no such file")
    if path.is_dir():
        return None, Problem(file, None, None, "", "is a directory, expected a YAML spec file")
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, Problem(file, None, None, "", f"cannot read: {e.strerror}")
    if len(data) > MAX_SPEC_BYTES:
        return None, Problem(file, None, None, "", f"is {len(data)} bytes; a spec is at most {MAX_SPEC_BYTES}")
    if b"\0" in data:
        return None, Problem(file, None, None, "", "is a binary file, expected YAML text")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, Problem(file, None, None, "", f"is not UTF-8 text (bad byte at offset {e.start})")


def load_spec(path: str | Path, overrides: list[str] = ()) -> schema.Spec:
    path = Path(path)
    text, problem = read_text(path)
    if problem:
        raise SpecError([problem])
    return load_spec_text(text, shown_path(path), overrides)


def load_spec_text(text: str, file: str, overrides: list[str] = ()) -> schema.Spec:
    try:
        raw, positions = yamlio.load(text, file)
    except yaml.YAMLError as e:
        raise SpecError([yamlio.yaml_problem(e, file)]) from None
    problems: list[Problem] = []
    if raw is None:
        raise SpecError([Problem(file, None, None, "", "empty spec: expected a mapping with name, sources and sae")])
    if not isinstance(raw, dict):
        raise SpecError([positions.problem((), f"expected a mapping at the top level, got {convert._describe(raw)}")])

    set_paths: dict[tuple, str] = {}
    for text_ in overrides:
        override, problem = parse_override(text_)
        if problem is None:
            problem = _apply(raw, override)
        if problem:
            problems.append(problem)
        else:
            set_paths[override.path] = override.text
    if problems:
        raise SpecError(problems)

    def locate(path: tuple, message: str, at_key: bool = False) -> Problem:
        for set_path, where in set_paths.items():
            inside = path[: len(set_path)] == set_path
            created = set_path[: len(path)] == path and path not in positions.values
            if inside or created:
                return Problem(where, None, None, format_path(path), message)
        return positions.problem(path, message, at_key)

    spec, errors = convert.structure(raw, schema.Spec)
    if errors:
        raise SpecError([locate(p, m, k) for p, m, k in errors])
    problems = [locate(p, m) for p, m in check(spec)]
    if problems:
        raise SpecError(problems)
    return spec


# ------------------------------------------------------------------ cross-field rules


def sweep_fields(obj, path: tuple = ()) -> list[tuple[tuple, Any, Any]]:
    """Every swept field below ``obj``: ``(path, sweep, inner_type)`` in document order."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += sweep_fields(v, path + (k,))
    elif isinstance(obj, tuple) and obj and attrs.has(type(obj[0])):  # a list of SAE blocks
        for i, v in enumerate(obj):
            out += sweep_fields(v, path + (i,))
    elif attrs.has(type(obj)):
        hints = attrs.resolve_types(type(obj))
        for f in attrs.fields(hints):
            value = getattr(obj, f.name)
            if is_sweep(value):
                out.append((path + (f.name,), value, _sweepable_inner(f.type)))
            else:
                out += sweep_fields(value, path + (f.name,))
    return out


def _sweepable_inner(t):
    from typing import get_args, get_origin

    if get_origin(t) is schema.Sweepable:
        return get_args(t)[0]
    for arg in get_args(t):  # Optional[Sweepable[T]]
        if get_origin(arg) is schema.Sweepable:
            return get_args(arg)[0]
    raise TypeError(f"{t} is not sweepable")


def check(spec: schema.Spec) -> list[tuple[tuple, str]]:
    """Rules that span fields; each problem as ``(path, message)``."""
    out: list[tuple[tuple, str]] = []
    blocks = spec.sae_blocks()
    for at, sae in blocks:
        if (sae.dict_ratio is None) == (sae.dict_size is None):
            which = "both" if sae.dict_ratio is not None else "neither"
            out.append((at, f"give exactly one of dict_ratio or dict_size (got {which})"))
    for name, src in spec.sources.items():
        kind = sources.of(src)
        out += kind.check(src, ("sources", name))
        for at, sae in blocks:
            if sae.dict_ratio is not None:
                smallest = min(values_of(sae.dict_ratio)) * min(kind.ratio_bases(src))
                if round(smallest) < 1:
                    out.append((at + ("dict_ratio",), f"ratio {min(values_of(sae.dict_ratio)):g} gives a dictionary of {round(smallest)} atoms for source {shown(name)}"))
    for at, sae in blocks:
        stop = sae.train.stop
        if stop is None:
            continue
        if sae.train.steps != schema.SAETrainSpec.__attrs_attrs__.steps.default:
            out.append((at + ("train", "steps"), "give steps or stop, not both (with stop, training runs to convergence or stop.max_steps)"))
        if stop.max_steps < 2 * stop.window:
            out.append((at + ("train", "stop", "max_steps"), f"must be at least two windows ({2 * stop.window}): convergence compares the last two windows"))
        if stop.metric == "mmcs_truth":
            for name, src in spec.sources.items():
                if not sources.of(src).has_truth:
                    out.append((at + ("train", "stop", "metric"), f"mmcs_truth needs planted features, and source {name!r} ({src.kind}) has none; use metric: loss"))
    if not spec.analyses:
        out.append((("analyses",), "expected at least one analysis"))
    seen = set()
    for i, a in enumerate(spec.analyses):
        if a in seen:
            out.append((("analyses", i), f"{shown(a)} is listed twice"))
        seen.add(a)

    swept = {p: s for p, s, _ in sweep_fields(spec)}
    grouped: dict[tuple, int] = {}
    for g, group in enumerate(spec.zip):
        if len(group) < 2:
            out.append((("zip", g), "a zip group needs at least two paths"))
        lengths = {}
        for i, text in enumerate(group):
            path = parse_path(text)
            if path is None or path not in swept:
                known = ", ".join(format_path(p) for p in swept) or "none"
                out.append((("zip", g, i), f"{shown(text)} is not a swept field (swept: {known})"))
                continue
            if path in grouped:
                out.append((("zip", g, i), f"{shown(text)} is already in zip group {grouped[path]}"))
            grouped[path] = g
            lengths[text] = len(swept[path].values())
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k} has {v}" for k, v in lengths.items())
            out.append((("zip", g), f"zipped sweeps must have equal lengths: {sizes}"))
        if len(blocks) > 1:
            paths = [p for p in map(parse_path, group) if p is not None and p in swept]
            within = sorted({p[:2] for p in paths if p[0] == "sae"})
            if len(within) > 1:
                out.append((("zip", g), f"a zip group stays within one SAE block; this one has {' and '.join(format_path(b) for b in within)}"))
            elif within and any(p[0] != "sae" for p in paths):
                out.append((("zip", g), "with several SAE blocks a zip group cannot mix sources and sae paths (source sweeps apply to every block)"))
    return out


def block_of(spec: schema.Spec, path: tuple) -> tuple | None:
    """The path of the SAE block that a swept field's ``path`` lies in (``("sae",)`` or
    ``("sae", i)``); None for a field outside ``sae`` (a source's)."""
    if path[0] != "sae":
        return None
    return path[:2] if isinstance(spec.sae, tuple) else path[:1]


# ------------------------------------------------------------------ resolved form and identity


def resolved(spec: schema.Spec) -> dict:
    """The spec with every default filled in, as plain data."""
    return {"schema": schema.SCHEMA_VERSION, **convert.unstructure(spec)}


def dump_spec(spec: schema.Spec) -> str:
    header = f"# resolved spec (schema {schema.SCHEMA_VERSION}); `sae-run` on this file re-runs it\n"
    data = resolved(spec)
    data.pop("schema")
    return header + yamlio.dump(data)


def spec_hash(spec: schema.Spec) -> str:
    return tagged_hash(SPEC_HASH_VERSION, resolved(spec))
