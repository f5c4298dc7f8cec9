"""The one cattrs converter for specs: strict types, constraints, sweeps, errors with paths.

cattrs on its own coerces loosely (``"3"`` -> 3, ``3.9`` -> 3, ``"no"`` -> True). Every
primitive hook here accepts exactly its own type (an int is accepted where a float is asked
for). Unknown keys are rejected with a did-you-mean. ``structure`` collects every error of a
document and returns them as ``(path, message, at_key)`` triples for ``engine.spec`` to locate.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from engine import schema
from engine.errors import shown
from engine.sweep import Values, is_sweep, parse_generator

MAX_INT = 2**63 - 1  # what torch and numpy hold (int64)


class Invalid(ValueError):
    """A value error whose message is already user-facing."""


def _describe(v: Any) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"{'true' if v else 'false'} (a boolean)"
    if isinstance(v, str):
        return f"{shown(v)} (a string)"
    return shown(v)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _int(v, _):
    if type(v) is not int:
        hint = f" (write {int(v)})" if type(v) is float and v.is_integer() and abs(v) < 1e18 else ""
        raise Invalid(f"expected an integer, got {_describe(v)}{hint}")
    if abs(v) > MAX_INT:
        raise Invalid(f"integer {shown(v)} is out of range (at most {MAX_INT} in magnitude)")
    return v


def _float(v, _):
    if type(v) not in (int, float):
        raise Invalid(f"expected a number, got {_describe(v)}")
    if not math.isfinite(v):
        raise Invalid(f"expected a finite number, got {v}")
    if abs(v) > 1e300:
        raise Invalid(f"number {v!r} is out of range")
    return float(v)


def _bool(v, _):
    if type(v) is not bool:
        raise Invalid(f"expected true or false, got {_describe(v)}")
    return v


def _str(v, _):
    if type(v) is not str:
        raise Invalid(f"expected a string, got {_describe(v)}")
    return v


def _literal_hook(t):
    choices = get_args(t)

    def hook(v, _):
        if type(v) is str and v in choices:
            return v
        listed = ", ".join(repr(c) for c in choices)
        got = _describe(v)
        raise Invalid(f"expected one of {listed}, got {got}" + (_suggest(v, choices) if isinstance(v, str) else ""))

    return hook


def _annotated_hook(conv: cattrs.Converter, t):
    base, *constraints = get_args(t)
    inner = conv.get_structure_hook(base)

    def hook(v, _):
        out = inner(v, base)
        for c in constraints:
            msg = c.check(out) if hasattr(c, "check") else None
            if msg:
                raise Invalid(msg)
        return out

    return hook


def _with_index(exc: Exception, index, t) -> Exception:
    exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(f"@ index {index}", index, t)]
    return exc


def _sequence_hook(conv: cattrs.Converter, t):
    args = get_args(t)
    item_type = args[0]

    def hook(v, _):
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {_describe(v)}")
        out, errors = [], []
        for i, item in enumerate(v):
            try:
                out.append(conv.structure(item, item_type))
            except Exception as e:  # noqa: BLE001 - collected and reported with its path
                errors.append(_with_index(e, i, item_type))
        if errors:
            raise IterableValidationError("invalid items", errors, t)
        return tuple(out) if get_origin(t) is tuple else out

    return hook


def _sweepable_hook(conv: cattrs.Converter, t):
    (inner,) = get_args(t)

    def hook(v, _):
        if isinstance(v, list):
            if not v:
                raise Invalid("an empty sweep: give at least one value")
            items, errors = [], []
            for i, item in enumerate(v):
                try:
                    items.append(conv.structure(item, inner))
                except Exception as e:  # noqa: BLE001
                    errors.append(_with_index(e, i, inner))
            if errors:
                raise IterableValidationError("invalid sweep values", errors, t)
            return Values(tuple(items))
        if isinstance(v, dict):
            sweep, err = parse_generator(v)
            if err:
                raise Invalid(err)
            for value in sweep.values():
                try:
                    sweep_value(value, inner, conv)
                except Invalid as e:
                    raise Invalid(f"{next(iter(v))} gives {value!r}: {e}") from None
            return sweep
        return conv.structure(v, inner)

    return hook


def sweep_value(value, inner, conv: cattrs.Converter | None = None):
    """A generated sweep value as the field's type (an integral float becomes an int)."""
    conv = conv or converter
    base = get_args(inner)[0] if get_origin(inner) is Annotated else inner
    if base is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    return conv.structure(value, inner)


def _tagged_hook(conv: cattrs.Converter, kinds: dict[str, type], what: str, default: str | None = None):
    """Structure a mapping into the class its ``kind`` names (``default`` when absent)."""

    def hook(v, _):
        if not isinstance(v, dict):
            raise Invalid(f"expected a mapping with a 'kind', got {_describe(v)}")
        kind = v.get("kind", default)
        if kind is None:
            raise Invalid(f"missing 'kind' (one of {', '.join(map(repr, kinds))})")
        if kind not in kinds:
            e = Invalid(
                f"unknown {what} kind {shown(kind)}, expected one of {', '.join(map(repr, kinds))}"
                + (_suggest(kind, kinds) if isinstance(kind, str) else "")
            )
            e.subpath = ("kind",)
            raise e
        return conv.structure(v, kinds[kind])

    return hook


def _sae_blocks_hook(block_hook):
    """The ``sae`` field: one block (a mapping, structured by ``block_hook``) or a non-empty
    list of blocks, structured into a tuple; errors inside the list carry the block's index."""

    def hook(v, t):
        if not isinstance(v, list):
            return block_hook(v, t)
        if not v:
            raise Invalid("an empty list of SAE blocks: give at least one mapping")
        out, errors = [], []
        for i, item in enumerate(v):
            try:
                out.append(block_hook(item, t))
            except Exception as e:  # noqa: BLE001 - collected and reported with its path
                errors.append(_with_index(e, i, t))
        if errors:
            raise IterableValidationError("invalid SAE blocks", errors, tuple)
        return tuple(out)

    return hook


def _attrs_hook(conv: cattrs.Converter, cl):
    inner = make_dict_structure_fn(cl, conv, _cattrs_forbid_extra_keys=True)

    def hook(v, _):
        if not isinstance(v, dict):
            raise Invalid(f"expected a mapping of {cl.__name__} settings, got {_describe(v)}")
        for k in v:
            if type(k) is not str:
                e = Invalid(f"a key must be a string, got {_describe(k)}")
                e.subpath = (str(k),)  # where the key sits: positions are recorded by key text
                raise e
        return inner(v, cl)

    return hook


def _dict_hook(conv: cattrs.Converter, t):
    key_type, value_type = get_args(t)

    def hook(v, _):
        if not isinstance(v, dict):
            raise Invalid(f"expected a mapping, got {_describe(v)}")
        if not v:
            raise Invalid("expected at least one entry")
        out, errors = {}, []
        for k, item in v.items():
            try:
                key = conv.structure(k, key_type)
                out[key] = conv.structure(item, value_type)
            except Exception as e:  # noqa: BLE001
                errors.append(_with_index(e, k, value_type))
        if errors:
            raise IterableValidationError("invalid entries", errors, t)
        return out

    return hook


def _unstructure_sweep(v):
    return v.unstructure()


def _has_added_fields(cl) -> bool:
    return attrs.has(cl) and any(f.metadata.get("omit_if_default") for f in attrs.fields(cl))


def _omit_added_defaults(conv: cattrs.Converter, cl):
    """Unstructure ``cl`` leaving out fields added after schema 1 while at their default."""
    added = {f.name: override(omit_if_default=True) for f in attrs.fields(cl) if f.metadata.get("omit_if_default")}
    return make_dict_unstructure_fn(cl, conv, **added)


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook_factory(lambda t: get_origin(t) is Literal, _literal_hook)
    conv.register_structure_hook_factory(
        lambda t: get_origin(t) in (tuple, list) and len(get_args(t)) in (1, 2) and (len(get_args(t)) == 1 or get_args(t)[1] is Ellipsis),
        lambda t: _sequence_hook(conv, t),
    )
    conv.register_structure_hook_factory(lambda t: get_origin(t) is dict, lambda t: _dict_hook(conv, t))
    conv.register_structure_hook_factory(attrs.has, lambda cl: _attrs_hook(conv, cl))
    conv.register_structure_hook_factory(lambda t: get_origin(t) is Annotated, lambda t: _annotated_hook(conv, t))
    conv.register_structure_hook_factory(lambda t: get_origin(t) is schema.Sweepable, lambda t: _sweepable_hook(conv, t))
    conv.register_structure_hook(schema.Source, _tagged_hook(conv, schema.SOURCE_KINDS, "source"))
    conv.register_structure_hook(schema.SAESpec, _sae_blocks_hook(_tagged_hook(conv, schema.SAE_KINDS, "SAE", default="relu_l1")))
    conv.register_unstructure_hook(schema.SAESpec, lambda v: [conv.unstructure(b, unstructure_as=type(b)) for b in v] if isinstance(v, tuple) else conv.unstructure(v, unstructure_as=type(v)))
    conv.register_unstructure_hook_func(is_sweep, _unstructure_sweep)
    conv.register_unstructure_hook_factory(_has_added_fields, lambda cl: _omit_added_defaults(conv, cl))
    conv.register_unstructure_hook_factory(
        lambda t: get_origin(t) is schema.Sweepable,
        lambda t: lambda v: v.unstructure() if is_sweep(v) else conv.unstructure(v),
    )
    return conv


converter = make_converter()


# ------------------------------------------------------------------ errors -> (path, message)


def _note_step(note):
    if isinstance(note, AttributeValidationNote):
        return note.name
    if isinstance(note, IterableValidationNote):
        return note.index
    return None


def _field_names(cl) -> list[str]:
    return [f.name for f in attrs.fields(cl)] if attrs.has(cl) else []


def flatten_errors(exc: BaseException, path: tuple = ()) -> list[tuple[tuple, str, bool]]:
    """Every leaf error of a (nested) cattrs exception group as ``(path, message, at_key)``."""
    out: list[tuple[tuple, str, bool]] = []
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        extra_keys: set[str] = set()
        missing: set[str] = set()
        for sub in exc.exceptions:
            if isinstance(sub, ForbiddenExtraKeysError):
                extra_keys |= set(sub.extra_fields)
        for sub in exc.exceptions:
            steps = [s for s in (_note_step(n) for n in getattr(sub, "__notes__", [])) if s is not None]
            if isinstance(sub, KeyError) and steps and not isinstance(sub, ForbiddenExtraKeysError):
                missing.add(steps[0])
        names = _field_names(getattr(exc, "cl", None))
        for sub in exc.exceptions:
            steps = [s for s in (_note_step(n) for n in getattr(sub, "__notes__", [])) if s is not None]
            if isinstance(sub, ForbiddenExtraKeysError):
                for key in sorted(sub.extra_fields, key=str):
                    candidates = [n for n in names if n not in extra_keys]
                    out.append((path + (key,), f"unknown key {shown(key)}" + _suggest(key, candidates), True))
                continue
            if isinstance(sub, KeyError) and steps:
                key = steps[0]
                # a misspelt required key already reads "unknown key ... did you mean"
                if any(difflib.get_close_matches(key, [str(e) for e in extra_keys], n=1, cutoff=0.6)):
                    continue
                out.append((path, f"missing required key {key!r}", False))
                continue
            out.extend(flatten_errors(sub, path + tuple(steps)))
        return out
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            out.extend(flatten_errors(sub, path))
        return out
    if isinstance(exc, ForbiddenExtraKeysError):
        names = _field_names(exc.cl)
        for key in sorted(exc.extra_fields, key=str):
            out.append((path + (key,), f"unknown key {shown(key)}" + _suggest(key, names), True))
        return out
    # the enclosing group already turned this leaf's notes into path steps
    message = str(exc) if isinstance(exc, Invalid) else f"invalid value: {shown(str(exc), 200, quote=False)}"
    out.append((path + getattr(exc, "subpath", ()), message, False))
    return out


def structure(raw: Any, cl: type):
    """Structure ``raw`` into ``cl``; returns ``(obj, [])`` or ``(None, errors)``."""
    try:
        return converter.structure(raw, cl), []
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError, Invalid) as e:
        return None, flatten_errors(e)


def unstructure(obj) -> Any:
    """Plain JSON/YAML data: dicts in field order, lists for tuples."""
    return _plain(converter.unstructure(obj))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
