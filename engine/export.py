"""Export cells of a result bundle for use elsewhere: SAELens's on-disk format, or plain safetensors.

``sae-export BUNDLE [--cell ID]... [--format saelens|safetensors] OUT``

The bundle is verified first (every file hash). ``OUT`` must not exist or be an empty
directory; the export is written into a temporary sibling and published with one rename, so a
failed export leaves nothing behind. One sub-folder per cell:

``--format saelens`` (the default): ``OUT/<cell id>/cfg.json`` and ``sae_weights.safetensors``,
    loadable with ``sae_lens.SAE.load_from_disk(OUT/<cell id>)`` (tested against sae-lens
    ``SAELENS_TESTED``). Tensors ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``
    (rows = atoms), ``b_dec [d_in]`` (zeros without a decoder bias), plus the kind's own
    (``threshold [d_sae]``; gated: ``b_gate``, ``r_mag``, ``b_mag`` instead of ``b_enc``);
    see ``KINDS``. ``apply_b_dec_to_input`` is false (no kind here subtracts ``b_dec`` from
    its input).

    Normalisation: with ``normalize: true`` an LM source multiplies every activation by one
    constant ``s`` (``metrics.json`` ``sources.<name>.activation_scale``) so that the mean
    squared norm is 1, and divides reconstructions by ``s`` when they are spliced back. SAELens
    has no loaded-SAE mode for a fixed constant (``expected_average_only_in`` is applied by
    its training data loader, not by a loaded SAE; its own saving folds the factor into the
    weights, ``fold_activation_norm_scaling_factor``), so the export folds it the same way:
    ``W_enc * s``, ``W_dec / s``, ``b_dec / s`` (computed in float64, stored float32), and writes
    ``normalize_activations: "none"``. The exported SAE then takes *raw* activations: its codes
    equal this project's codes of ``x * s`` and its reconstruction equals ours divided by ``s``
    (pre-activations are unchanged, so thresholds, top-k selection and gates are unchanged).
    ``metadata.sae_repro.activation_scale_folded`` records ``s``.

``--format safetensors``: ``OUT/<cell id>/sae.safetensors`` (the bundle's file, byte for byte:
    this project's tensor names and orientation, unfolded) and ``config.json`` (format
    ``PLAIN_FORMAT``) describing the kind, d, m, hyperparameters, the inference formula, every
    tensor's shape and meaning, the normalisation to apply (``x * activation_scale`` in,
    ``x_hat / activation_scale`` out), the source and site, metrics and provenance.

Errors (not a bundle, a bundle that does not verify, an unknown cell or format, an OUT that is
not empty) are ``UserError``: one line, exit status 2, nothing written.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import click
import torch

from engine import tensors as tensors_io
from engine.bundle import publish, temp_sibling, verify
from engine.errors import BundleError, UserError
from engine.hashing import stable_json

__all__ = [
    "FORMATS",
    "KINDS",
    "PLAIN_FORMAT",
    "SAELENS_TESTED",
    "ExportError",
    "KindMapping",
    "export",
    "fold_scale",
    "sae_export",
    "saelens_cfg",
    "saelens_state_dict",
]

FORMATS = ("saelens", "safetensors")
SAELENS_TESTED = "6.54.12"  # the sae-lens release whose loader this layout was tested against
PLAIN_FORMAT = "sae-repro-export/v1"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
PLAIN_CFG = "config.json"
PLAIN_WEIGHTS = "sae.safetensors"


class ExportError(UserError):
    """An export that cannot be made: bad cell, format, output directory, or kind."""


# ---------------------------------------------------------------------------------- the table


def _no_cfg(sae: dict) -> dict:
    return {}


def _topk_cfg(sae: dict) -> dict:
    if "k" not in sae:
        raise ExportError("a topk cell needs 'k' in its settings (cell.json sae.k)")
    return {"k": int(sae["k"]), "rescale_acts_by_decoder_norm": False}


@attrs.frozen
class KindMapping:
    """How one SAE kind of this project maps onto a SAELens inference architecture.

    ``tensors``: (this project's tensor name, SAELens state-dict name, shape in d/m), in order.
    ``threshold``: the kind saves ``threshold`` (a scalar or [m]); SAELens's JumpReLU wants it as
    [d_sae], so it is broadcast (as SAELens does when it saves BatchTopK as JumpReLU).
    ``forward``: the inference map this mapping assumes (what ``member_forward`` computes);
    ``status``: "implemented" (exported from real bundles and tested against SAELens) or
    "mapping" (the kind is being written; tested with hand-built tensors only)."""

    architecture: str
    tensors: tuple[tuple[str, str, str], ...]
    forward: str
    status: str
    cfg: Callable[[dict], dict] = _no_cfg
    threshold: bool = False
    apply_b_dec_to_input: bool = False

    def required(self) -> list[str]:
        return [ours for ours, _, _ in self.tensors] + (["threshold"] if self.threshold else [])


_COMMON = (("encoder.weight", "W_enc", "d,m"), ("encoder.bias", "b_enc", "m"), ("decoder", "W_dec", "m,d"))
_JUMP = "c = relu(pre) * (pre > threshold), pre = x @ W_enc + b_enc; x_hat = c @ W_dec + b_dec"

KINDS: dict[str, KindMapping] = {
    "relu_l1": KindMapping(
        "standard", _COMMON, "c = relu(x @ W_enc + b_enc); x_hat = c @ W_dec + b_dec", "implemented"
    ),
    "topk": KindMapping(
        "topk", _COMMON, "c = relu of the k largest entries of pre = x @ W_enc + b_enc per row, 0 elsewhere; x_hat = c @ W_dec + b_dec",
        "mapping", cfg=_topk_cfg,
    ),
    "jumprelu": KindMapping("jumprelu", _COMMON, _JUMP, "mapping", threshold=True),
    # BatchTopK selects over the batch while training and applies its threshold at inference:
    # SAELens saves it (and Matryoshka BatchTopK) as JumpReLU with the threshold broadcast
    "batchtopk": KindMapping("jumprelu", _COMMON, _JUMP, "mapping", threshold=True),
    "matryoshka_batchtopk": KindMapping("jumprelu", _COMMON, _JUMP, "mapping", threshold=True),
    # gated: encoder.bias is the gate bias; the magnitude path shares W_enc, scaled per atom
    "gated": KindMapping(
        "gated",
        (("encoder.weight", "W_enc", "d,m"), ("encoder.bias", "b_gate", "m"), ("r_mag", "r_mag", "m"), ("b_mag", "b_mag", "m"), ("decoder", "W_dec", "m,d")),
        "c = (x @ W_enc + b_gate > 0) * relu(x @ (W_enc * exp(r_mag)) + b_mag); x_hat = c @ W_dec + b_dec",
        "mapping",
    ),
}


def _mapping(kind: str) -> KindMapping:
    if kind not in KINDS:
        raise ExportError(f"SAE kind {kind!r} has no export mapping (known: {', '.join(KINDS)})")
    return KINDS[kind]


def _shape(spec: str, d: int, m: int) -> tuple[int, ...]:
    return tuple({"d": d, "m": m}[s] for s in spec.split(","))


def _sizes(tensors: dict[str, torch.Tensor], where: str) -> tuple[int, int]:
    w = tensors.get("encoder.weight")
    if w is None or w.dim() != 2:
        raise ExportError(f"{where}: no 2-D tensor 'encoder.weight'")
    return int(w.shape[0]), int(w.shape[1])


def fold_scale(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """This project's tensors of an SAE trained on ``x * scale``, changed to take raw ``x``:
    ``encoder.weight * scale``, ``decoder / scale``, ``decoder.bias / scale`` (float64 arithmetic,
    each tensor keeps its dtype); every other tensor is unchanged. ``scale == 1``: a copy."""
    if not (scale > 0 and scale < float("inf")):
        raise ExportError(f"activation scale {scale!r} is not a positive finite number")
    out = dict(tensors)
    if scale == 1.0:
        return out
    for name, op in (("encoder.weight", lambda t: t * scale), ("decoder", lambda t: t / scale), ("decoder.bias", lambda t: t / scale)):
        if name in out:
            t = out[name]
            out[name] = op(t.double()).to(t.dtype).contiguous()
    return out


def saelens_state_dict(kind: str, tensors: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """SAELens's state dict (float32) for one member of ``kind`` given this project's tensor
    names (``member_tensors``), with the activation scale folded in (``fold_scale``)."""
    km = _mapping(kind)
    d, m = _sizes(tensors, f"{kind} tensors")
    missing = [n for n in km.required() if n not in tensors]
    if missing:
        raise ExportError(f"{kind}: tensors {missing} missing (has: {', '.join(sorted(tensors))})")
    folded = fold_scale(tensors, scale)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, shape in km.tensors:
        t = folded[ours]
        if tuple(t.shape) != _shape(shape, d, m):
            raise ExportError(f"{kind}: tensor {ours!r} has shape {list(t.shape)}, expected {list(_shape(shape, d, m))} (d={d}, m={m})")
        out[theirs] = t.to(torch.float32).contiguous()
    b_dec = folded.get("decoder.bias")
    if b_dec is not None and tuple(b_dec.shape) != (d,):
        raise ExportError(f"{kind}: tensor 'decoder.bias' has shape {list(b_dec.shape)}, expected [{d}]")
    out["b_dec"] = (b_dec if b_dec is not None else torch.zeros(d)).to(torch.float32).contiguous()
    if km.threshold:
        th = folded["threshold"].to(torch.float32).reshape(-1)
        if th.numel() == 1:
            th = th.expand(m)
        if tuple(th.shape) != (m,):
            raise ExportError(f"{kind}: tensor 'threshold' has {th.numel()} values, expected 1 or m={m}")
        out["threshold"] = th.contiguous().clone()
    return out


def saelens_cfg(kind: str, d: int, m: int, sae: dict, metadata: dict) -> dict:
    """SAELens ``cfg.json`` for one cell: the inference config fields of the architecture and
    ``metadata`` (``hook_name``, ``model_name``, ... and the ``sae_repro`` provenance block)."""
    km = _mapping(kind)
    return {
        "architecture": km.architecture,
        "d_in": d,
        "d_sae": m,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": km.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **km.cfg(sae),
        "metadata": {"sae_lens_version": SAELENS_TESTED, "sae_lens_training_version": None, **metadata},
    }


# ---------------------------------------------------------------------------------- the bundle


@attrs.frozen
class _Cell:
    id: str
    key: str
    kind: str
    sae: dict
    metrics: dict
    source_name: str
    source: dict
    tensors: dict
    path: Path  # its sae.safetensors
    sha256: str


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: corrupt (expected a JSON object)")
    return data


def _verified(bundle: Path) -> dict:
    v = verify(bundle)  # BundleError (one line) if it is not a bundle at all
    if not v.ok:
        lines = v.lines()
        more = f" and {len(lines) - 1} more problem(s)" if len(lines) > 1 else ""
        raise BundleError(f"{lines[0]}{more}; refusing to export a bundle that does not verify (sae-run --verify {bundle} lists them)")
    return v.meta


def _cells(bundle: Path, meta: dict, wanted: list[str] | None) -> list[_Cell]:
    metrics = _read_json(bundle / "metrics.json")
    known = metrics.get("cells", {})
    sources = metrics.get("sources", {})
    if not isinstance(known, dict) or not known:
        raise BundleError(f"{bundle / 'metrics.json'}: no cells")
    ids = list(dict.fromkeys(wanted)) if wanted else sorted(known)
    unknown = [c for c in ids if c not in known]
    if unknown:
        shown = ", ".join(sorted(known)[:12]) + (", ..." if len(known) > 12 else "")
        raise ExportError(f"{bundle}: no cell {unknown[0]!r} (cells: {shown})")
    out = []
    for cid in ids:
        cdir = bundle / "cells" / cid
        cj = _read_json(cdir / "cell.json")
        sae = cj.get("sae", {})
        kind = sae.get("kind", "relu_l1")
        path = cdir / "sae.safetensors"
        sha = meta["files"].get(f"cells/{cid}/sae.safetensors")
        if sha is None:
            raise BundleError(f"{bundle}: cell {cid!r} has no cells/{cid}/sae.safetensors in bundle.json")
        data = path.read_bytes()
        fmt = tensors_io.meta_of(data).get("format", "")
        if fmt.split("/")[0] != kind:
            raise ExportError(f"{path}: tensor format {fmt!r} does not match the cell's kind {kind!r}")
        tensors = tensors_io.read_file(path, {"decoder": 2, "encoder.weight": 2, "encoder.bias": 1})
        src_name = known[cid].get("source", "")
        out.append(
            _Cell(cid, cj.get("key", ""), kind, sae, cj.get("metrics", {}), src_name, sources.get(src_name, {}), tensors, path, sha)
        )
    return out


def _scale(cell: _Cell) -> float:
    s = cell.source.get("activation_scale", 1.0)
    return float(s) if s is not None else 1.0


def _site(source: dict) -> str | None:
    return source.get("site") or source.get("module")


def _context(source: dict) -> int | None:
    cfg = source.get("config", {}) or {}
    return (cfg.get("model") or {}).get("context") or cfg.get("context")


def _provenance(bundle: Path, meta: dict, cell: _Cell) -> dict:
    return {
        "bundle": bundle.resolve().name,
        "spec_hash": meta["spec_hash"],
        "content_digest": meta["content_digest"],
        "cell": cell.id,
        "cell_key": cell.key,
        "sae_safetensors_sha256": cell.sha256,
    }


def _source_block(cell: _Cell) -> dict:
    src = cell.source
    keep = ("kind", "key", "lm_key", "site", "module", "path", "width", "corpus_hash")
    return {"name": cell.source_name, **{k: src[k] for k in keep if k in src}, "context": _context(src)}


def _model_name(cell: _Cell) -> str:
    src = cell.source
    if src.get("kind") == "lm":
        return f"sae-repro-tiny-lm/{src.get('lm_key', '')[:12]}"
    if src.get("path"):
        return str(src["path"])
    return f"sae-repro-{src.get('kind', 'source')}/{src.get('key', '')[:12]}"


def _write_saelens(dest: Path, bundle: Path, meta: dict, cell: _Cell) -> None:
    d, m = _sizes(cell.tensors, str(cell.path))
    scale = _scale(cell)
    state = saelens_state_dict(cell.kind, cell.tensors, scale)
    metadata = {
        "model_name": _model_name(cell),
        "hook_name": _site(cell.source),
        "hook_head_index": None,
        "context_size": _context(cell.source),
        "prepend_bos": False,
        "dataset_path": None,
        "sae_repro": {
            **_provenance(bundle, meta, cell),
            "kind": cell.kind,
            "hyperparameters": cell.sae,
            "activation_scale_folded": scale,
            "note": "weights take raw activations: the training-time activation scale is folded into W_enc (*s), W_dec and b_dec (/s)",
            "source": _source_block(cell),
            "metrics": cell.metrics,
        },
    }
    dest.mkdir()
    (dest / SAELENS_WEIGHTS).write_bytes(tensors_io.to_bytes(state, {"format": f"saelens/{KINDS[cell.kind].architecture}", "cell_key": cell.key}))
    (dest / SAELENS_CFG).write_text(stable_json(saelens_cfg(cell.kind, d, m, cell.sae, metadata)), encoding="utf-8")


_TENSOR_DOC = {
    "encoder.weight": ("d,m", "encoder weight; pre = x @ encoder.weight + encoder.bias"),
    "encoder.bias": ("m", "encoder bias (gated: the gate bias)"),
    "decoder": ("m,d", "decoder; rows are the dictionary atoms (unit L2 norm)"),
    "decoder.bias": ("d", "decoder bias, added to the reconstruction"),
    "firing_frequency": ("m", "share of the evaluation activations on which each atom fires (> 0)"),
    "threshold": ("m", "activation threshold (JumpReLU / BatchTopK at inference); a scalar for some kinds"),
    "r_mag": ("m", "gated: log of the per-atom scale of the magnitude path"),
    "b_mag": ("m", "gated: magnitude path bias"),
}


def _our_names(formula: str) -> str:
    """A ``KindMapping.forward`` formula in this project's tensor names."""
    for theirs, ours in (("W_enc", "encoder.weight"), ("b_enc", "encoder.bias"), ("b_gate", "encoder.bias"), ("W_dec", "decoder"), ("b_dec", "decoder.bias (0 if absent)")):
        formula = formula.replace(theirs, ours)
    return formula


def _write_plain(dest: Path, bundle: Path, meta: dict, cell: _Cell) -> None:
    d, m = _sizes(cell.tensors, str(cell.path))
    scale = _scale(cell)
    km = KINDS.get(cell.kind)
    tensors = {}
    for name, t in sorted(cell.tensors.items()):
        shape_doc, meaning = _TENSOR_DOC.get(name, ("", "kind-specific"))
        tensors[name] = {"shape": list(t.shape), "dims": shape_doc, "dtype": str(t.dtype).removeprefix("torch."), "meaning": meaning}
    config = {
        "format": PLAIN_FORMAT,
        "kind": cell.kind,
        "tensor_format": tensors_io.meta_of(cell.path.read_bytes()).get("format"),
        "d": d,
        "m": m,
        "hyperparameters": cell.sae,
        "forward": _our_names(km.forward) if km else f"see sae/{cell.kind}.py (member_forward)",
        "orientation": "row vectors: x [batch, d] @ encoder.weight [d, m]; codes [batch, m] @ decoder [m, d]",
        "tensors": tensors,
        "normalization": {
            "activation_scale": scale,
            "normalize": scale != 1.0,
            "use": "the SAE was trained on x_raw * activation_scale: encode x_raw * activation_scale, and divide the reconstruction by activation_scale to get raw units (the weights here are not folded)",
        },
        "source": _source_block(cell),
        "site": _site(cell.source),
        "metrics": cell.metrics,
        "provenance": _provenance(bundle, meta, cell),
    }
    dest.mkdir()
    shutil.copyfile(cell.path, dest / PLAIN_WEIGHTS)
    (dest / PLAIN_CFG).write_text(stable_json(config), encoding="utf-8")


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"{out}: exists and is not a directory; give a new or empty directory")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not empty; give a new or empty directory")


def export(bundle: Path, out: Path, cells: list[str] | None = None, fmt: str = "saelens") -> list[Path]:
    """Export ``cells`` (all when None or empty) of ``bundle`` in ``fmt`` into ``out``; returns
    the cell folders written. Raises ``UserError`` (one line) and writes nothing on bad input."""
    bundle, out = Path(bundle), Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    meta = _verified(bundle)
    chosen = _cells(bundle, meta, list(cells) if cells else None)
    if fmt == "saelens":
        for c in chosen:
            try:
                _mapping(c.kind)
            except ExportError as e:
                raise ExportError(f"cell {c.id}: {e}; --format safetensors exports any kind") from None
    _check_out(out)
    if out.resolve().is_relative_to(bundle.resolve()):
        raise ExportError(f"{out}: inside the bundle {bundle}; choose a directory outside it")
    write = _write_saelens if fmt == "saelens" else _write_plain
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        for c in chosen:
            write(tmp / c.id, bundle, meta, c)
        if not publish(tmp, out):
            raise ExportError(f"{out}: appeared while exporting; nothing was written")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / c.id for c in chosen]


# ---------------------------------------------------------------------------------- the command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--cell", "cells", multiple=True, metavar="ID", help="A cell to export (repeatable); default: every cell.")
@click.option("--format", "fmt", default="saelens", show_default=True, metavar="saelens|safetensors", help="saelens: cfg.json + sae_weights.safetensors for SAE.load_from_disk; safetensors: this project's tensors + a documented config.json.")
def sae_export(bundle, out, cells, fmt):
    """Export cells of a result BUNDLE into the new directory OUT, one folder per cell.

    Exit status: 0 written, 2 unusable input (nothing is written)."""
    try:
        written = export(bundle, out, list(cells), fmt)
    except UserError as e:
        for line in e.lines():
            click.echo(line, err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        click.echo(f"{e.filename or out}: cannot write the export ({e.strerror or e})", err=True)
        sys.exit(2)
    click.echo(f"exported: {out} ({len(written)} cell{'s' if len(written) != 1 else ''}, format {fmt})")
