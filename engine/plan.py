"""From a spec to a plan: sweeps expanded into concrete cells, each with a content key.

A *point* assigns one value to every swept field (cartesian product over sweeps, with zipped
groups moving together). At each point every source gets one *cell*: one SAE trained on that
source. A cell's key hashes what determines its bytes — the root seed, the concrete source,
the concrete SAE settings (with the dictionary size resolved), evaluation and determinism
context — and nothing else: not its position in the sweep, not which cells share its batch.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs

from engine import convert, schema
from engine import sources as source_kinds
from engine.errors import Problem, SpecError
from engine.hashing import (
    CELL_KEY_VERSION,
    SOURCE_KEY_VERSION,
    STREAM_ID_VERSION,
    tagged_hash,
)
from engine.spec import block_of, parse_path, spec_hash, sweep_fields
from engine.yamlio import format_path
from sae import base as sae_kinds


@attrs.frozen
class SAEConfig:
    """Concrete settings of one SAE (no sweeps; dictionary size resolved).

    ``hyper``: the kind's own hyperparameters (``{"l1": 0.1}`` for relu_l1), named as the
    model's ``params``. ``as_dict`` is the flat form that cell keys hash and ``cell.json``
    records: only the fields the kind has, so adding a kind changes no existing key."""

    kind: str
    m: int
    hyper: dict
    init: str
    decoder_bias: bool
    seed: int
    steps: int
    batch: int
    lr: float
    stop: dict | None = None  # a StopSpec as plain data: train to convergence
    recipe: dict | None = None  # a RecipeSpec as plain data

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "m": self.m, **self.hyper, "init": self.init, "decoder_bias": self.decoder_bias,
               "seed": self.seed, "steps": self.steps, "batch": self.batch, "lr": self.lr}
        if self.stop is not None:
            out["stop"] = self.stop
        if self.recipe is not None:
            out["recipe"] = self.recipe
        return out

    @property
    def max_steps(self) -> int:
        """The most steps it trains: ``steps``, or the stop rule's ``max_steps``."""
        return self.stop["max_steps"] if self.stop is not None else self.steps

    @property
    def options(self) -> dict:
        """The kind's fields that are not per-member hyperparameters (shared by a group)."""
        params = sae_kinds.get(self.kind).params
        return {k: v for k, v in self.hyper.items() if k not in params}

    @property
    def sparsity_name(self) -> str:
        """The kind's sparsity knob (the axis of sweeps and figures)."""
        return sae_kinds.get(self.kind).sparsity

    @property
    def sparsity(self) -> float:
        return self.hyper[self.sparsity_name]


@attrs.frozen
class SourcePlan:
    name: str  # the spec's name for it (with a key suffix when a sweep makes several)
    spec_name: str
    config: Any  # concrete ToySource | LMSource
    key: str
    width: int  # input width of the SAEs trained on it

    @property
    def kind(self) -> str:
        return self.config.kind


@attrs.frozen
class Cell:
    id: str
    key: str  # identity of its bytes: also hashes evaluation and the determinism context
    stream_id: str  # seeds its random streams: the source and SAE settings only, so that
    # running on other threads or devices draws the same numbers
    source: SourcePlan
    sae: SAEConfig
    params: dict  # swept values at this point, for people: {"sae.l1": 0.1, ...}

    @property
    def group(self) -> tuple:
        """Cells with equal groups can train as one batched ensemble."""
        s = self.sae
        return (self.source.key, s.kind, s.m, s.batch, s.steps, s.lr, s.decoder_bias, tuple(sorted(s.options.items())),
                repr(s.stop), repr(s.recipe))


@attrs.frozen
class Plan:
    spec: schema.Spec
    spec_hash: str
    sources: tuple[SourcePlan, ...]
    cells: tuple[Cell, ...]

    def cells_of(self, source: SourcePlan) -> list[Cell]:
        return [c for c in self.cells if c.source.key == source.key]


def _set(obj, path: tuple, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _set(obj[head], rest, value)}
    if isinstance(obj, tuple):  # a list of SAE blocks
        return obj[:head] + (_set(obj[head], rest, value),) + obj[head + 1 :]
    return attrs.evolve(obj, **{head: _set(getattr(obj, head), rest, value)})


def _get(obj, path: tuple):
    for p in path:
        obj = obj[p] if isinstance(obj, (dict, tuple)) else getattr(obj, p)
    return obj


def points(spec: schema.Spec, block: tuple | None = None) -> list[dict[tuple, Any]]:
    """Every assignment of values to swept fields, in a stable order. ``block`` (the path of
    one SAE block, ``Spec.sae_blocks``): only the sources' sweeps and that block's (a spec's
    blocks are swept one after the other, each crossed with the sources' sweeps)."""
    fields = sweep_fields(spec)
    if block is not None:
        fields = [f for f in fields if block_of(spec, f[0]) in (None, block)]
    values = {p: [convert.sweep_value(v, inner) for v in sweep.values()] for p, sweep, inner in fields}
    kept = {f[0] for f in fields}
    zipped = {parse_path(t): g for g, group in enumerate(spec.zip) for t in group if parse_path(t) in kept}
    axes: list[list[dict]] = []
    done: set[int] = set()
    for path, _, _ in fields:
        g = zipped.get(path)
        if g is None:
            axes.append([{path: v} for v in values[path]])
        elif g not in done:
            done.add(g)
            paths = [parse_path(t) for t in spec.zip[g] if parse_path(t) in kept]
            axes.append([dict(zip(paths, vs)) for vs in zip(*(values[p] for p in paths))])
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)]


def source_width(src) -> int:
    return source_kinds.of(src).width(src)


def source_key(seed: int, src) -> str:
    data = {"seed": seed, "source": convert.unstructure(src)}
    content = source_kinds.of(src).content_id(src)
    if content is not None:  # e.g. a user's model: a re-saved model is another source
        data["content"] = content
    return tagged_hash(SOURCE_KEY_VERSION, data)


def resolve_device(requested: str) -> str:
    """'cpu' | 'cuda' | 'auto' -> the device that runs (auto: cuda where a GPU exists)."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise SpecError([Problem("<run>", None, None, "run.device", "cuda requested, but no CUDA GPU is available here (use cpu or auto)")])
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def make_plan(spec: schema.Spec) -> Plan:
    """Expand ``spec`` into cells. ``run.device: auto`` is resolved here, so a cell's key
    names the device that computes it. With several SAE blocks (``sae:`` a list) each block's
    points (``points(spec, block)``) are planned in block order; a cell two blocks plan (same
    key: the key never names the block) is planned once."""
    spec = attrs.evolve(spec, run=attrs.evolve(spec.run, device=resolve_device(spec.run.device)))
    problems: list[tuple[tuple, str]] = []
    sources: dict[str, SourcePlan] = {}
    cells: dict[str, Cell] = {}
    pts = [(at, point) for at, _ in spec.sae_blocks() for point in points(spec, at)]
    for name, _ in spec.sources.items():
        variants = {}
        for _, point in pts:
            src = _substitute(spec, point).sources[name]
            variants.setdefault(source_key(spec.seed, src), src)
        for key, src in variants.items():
            label = name if len(variants) == 1 else f"{name}-{key[:8]}"
            sources[key] = SourcePlan(label, name, src, key, source_width(src))

    for at, point in pts:
        concrete = _substitute(spec, point)
        for name, src in concrete.sources.items():
            sp = sources[source_key(spec.seed, src)]
            sae = _get(concrete, at)
            if sae.dict_size is not None:
                m = sae.dict_size
            else:
                base = source_kinds.of(src).ratio_base(src)
                m = round(sae.dict_ratio * base)
                if m < 1:
                    problems.append((at + ("dict_ratio",), f"ratio {sae.dict_ratio:g} of {base} gives a dictionary of {m} atoms for source {name!r}"))
                    continue
            cfg = SAEConfig(
                kind=sae.kind, m=m, hyper=kind_hyper(sae), init=sae.init, decoder_bias=sae.decoder_bias, seed=sae.seed,
                steps=sae.train.steps, batch=sae.train.batch, lr=sae.train.lr,
                stop=convert.unstructure(sae.train.stop) if sae.train.stop is not None else None,
                recipe=convert.unstructure(sae.train.recipe) if sae.train.recipe is not None else None,
            )
            key = tagged_hash(
                CELL_KEY_VERSION,
                {
                    "seed": spec.seed,
                    "source": sp.key,
                    "sae": cfg.as_dict(),
                    "eval": convert.unstructure(spec.eval),
                    "run": convert.unstructure(spec.run),
                },
            )
            stream_id = tagged_hash(STREAM_ID_VERSION, {"source": sp.key, "sae": cfg.as_dict()})
            params = {format_path(p): v for p, v in point.items() if p[0] == "sae" or p[:2] == ("sources", name)}
            params["m"] = m
            cells.setdefault(key, Cell(f"{sp.name}-{key[:12]}", key, stream_id, sp, cfg, params))
    if problems:
        seen = set()
        unique = [p for p in problems if not (p in seen or seen.add(p))]
        raise SpecError([Problem("<plan>", None, None, format_path(p), m) for p, m in unique])
    return Plan(spec, spec_hash(spec), tuple(sources.values()), tuple(cells.values()))


def _set_fields(obj) -> dict:
    """An attrs object's fields as plain data, less the fields added after schema 1 that are
    at their default (so that keys of cells that do not use them never change)."""
    return {f.name: getattr(obj, f.name) for f in attrs.fields(type(obj)) if not (f.metadata.get("omit_if_default") and getattr(obj, f.name) == f.default)}


def kind_hyper(sae) -> dict:
    """The concrete values of a kind's own fields (everything but the common ones)."""
    common = set(schema.SAE_COMMON_HEAD + schema.SAE_COMMON_TAIL)
    return {k: v for k, v in _set_fields(sae).items() if k not in common}


def _substitute(spec: schema.Spec, point: dict) -> schema.Spec:
    for path, value in point.items():
        spec = _set(spec, path, value)
    return spec


def step_flops(cell: Cell) -> float:
    """FLOPs of one training step: the five B x d x m matrix products (2 FLOPs per MAC)."""
    return 10.0 * cell.sae.batch * cell.source.width * cell.sae.m


def sparsity_of(sae: dict) -> tuple[str, float]:
    """(name, value) of the sparsity knob of a cell's recorded settings (``cell.json`` "sae")."""
    name = sae_kinds.get(sae["kind"]).sparsity
    return name, sae[name]


def kind_order(kind: str) -> tuple[int, str]:
    """Sort key of SAE kinds: the order of ``engine.schema.SAE_KINDS`` (relu_l1, topk,
    batchtopk, matryoshka_batchtopk, jumprelu, gated), unknown kinds after, by name."""
    order = list(schema.SAE_KINDS)
    return (order.index(kind) if kind in order else len(order), kind)


def kinds_of(saes) -> list[str]:
    """The distinct kinds of SAE settings ``saes`` (recorded ``sae`` dicts of ``cell.json`` /
    ``metrics.json``, or ``SAEConfig``), in ``kind_order``."""
    return sorted({s["kind"] if isinstance(s, dict) else s.kind for s in saes}, key=kind_order)
