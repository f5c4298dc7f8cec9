"""Sweep values: what a ``Sweepable[T]`` field holds when it is swept.

YAML forms::

    l1: [0.01, 0.1, 1]                    # Values
    l1: {logspace: [-2, 2, 17]}           # 10**linspace(-2, 2, 17)
    dict_ratio: {logspace: [-3, 5, 9], base: 2}
    lr: {linspace: [1.0e-4, 1.0e-3, 4]}
    seed: {range: [0, 5]}                 # 0..4 (optional third item: step)

Generated floats are rounded to 12 significant digits: the values then print readably and do
not depend on the last bits of a platform's ``pow``, so cell keys agree across machines.
"""

from __future__ import annotations

import difflib
import math

import attrs

from engine.errors import shown


def _round12(v: float) -> float:
    return float(f"{v:.12g}")


@attrs.frozen
class Values:
    items: tuple

    def values(self) -> tuple:
        return self.items

    def unstructure(self):
        return list(self.items)


@attrs.frozen
class Logspace:
    start: float
    stop: float
    num: int
    base: float = 10.0

    def values(self) -> tuple:
        if self.num == 1:
            return (_round12(self.base**self.start),)
        step = (self.stop - self.start) / (self.num - 1)
        return tuple(_round12(self.base ** (self.start + i * step)) for i in range(self.num))

    def unstructure(self):
        out = {"logspace": [self.start, self.stop, self.num]}
        if self.base != 10.0:
            out["base"] = self.base
        return out


@attrs.frozen
class Linspace:
    start: float
    stop: float
    num: int

    def values(self) -> tuple:
        if self.num == 1:
            return (_round12(self.start),)
        step = (self.stop - self.start) / (self.num - 1)
        return tuple(_round12(self.start + i * step) for i in range(self.num))

    def unstructure(self):
        return {"linspace": [self.start, self.stop, self.num]}


@attrs.frozen
class Range:
    start: int
    stop: int
    step: int = 1

    def values(self) -> tuple:
        return tuple(range(self.start, self.stop, self.step))

    def unstructure(self):
        items = [self.start, self.stop] + ([self.step] if self.step != 1 else [])
        return {"range": items}


Sweep = Values | Logspace | Linspace | Range
GENERATORS = ("logspace", "linspace", "range")


def is_sweep(v) -> bool:
    return isinstance(v, (Values, Logspace, Linspace, Range))


def parse_generator(raw: dict) -> tuple[Sweep | None, str | None]:
    """Turn ``{logspace: [a, b, n]}`` etc. into a sweep; return (sweep, None) or (None, error)."""
    keys = set(raw)
    gen = keys & set(GENERATORS)
    if len(gen) != 1:
        close = [difflib.get_close_matches(str(k), GENERATORS, n=1, cutoff=0.6) for k in keys] if not gen else []
        hint = next((f" (did you mean {c[0]!r}?)" for c in close if c), "")
        return None, f"expected a value, a list, or one of {{{', '.join(GENERATORS)}}}: [...]{hint}"
    name = gen.pop()
    allowed = {name, "base"} if name == "logspace" else {name}
    extra = keys - allowed
    if extra:
        return None, f"unexpected key {shown(min(extra, key=str))} in a {name} generator"
    args = raw[name]
    if not isinstance(args, list) or not all(_is_number(a) for a in args):
        return None, f"{name} expects a list of numbers"
    if name == "range":
        if len(args) not in (2, 3) or not all(type(a) is int for a in args):
            return None, "range expects [start, stop] or [start, stop, step] integers"
        r = Range(*args)
        if r.step == 0:
            return None, "range step must not be 0"
        if not r.values():
            return None, f"range {args} is empty"
        return r, None
    if len(args) != 3 or type(args[2]) is not int or args[2] < 1:
        return None, f"{name} expects [start, stop, num] with an integer num >= 1"
    start, stop, num = float(args[0]), float(args[1]), args[2]
    if not all(math.isfinite(v) for v in (start, stop)):
        return None, f"{name} bounds must be finite"
    if num > 10_000:
        return None, f"{name} num {num} is too large (max 10000)"
    if name == "linspace":
        return Linspace(start, stop, num), None
    base = raw.get("base", 10.0)
    if not _is_number(base) or not (base > 0 and base != 1 and math.isfinite(base)):
        return None, "logspace base must be a positive number other than 1"
    sweep = Logspace(start, stop, num, float(base))
    try:
        values = sweep.values()
    except OverflowError:
        values = (math.inf,)
    if not all(math.isfinite(v) and v > 0 for v in values):
        return None, f"logspace values overflow ({float(base):g}**{max(start, stop):g} is beyond float range)"
    return sweep, None


def _is_number(v) -> bool:
    return type(v) in (int, float)


def values_of(v) -> tuple:
    """Every value a field can take: a sweep's values, or the plain value alone."""
    return v.values() if is_sweep(v) else (v,)
