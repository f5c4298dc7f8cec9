"""sae-export: bundles -> SAELens's on-disk format and plain safetensors.

The SAELens round trip loads every export with ``sae_lens.SAE.load_from_disk`` in a subprocess
of an interpreter that has sae-lens: this one if it can import ``sae_lens``, else the one at
``$SAE_LENS_PYTHON`` (``.ci/saelens-venv.sh`` makes it). Without either it is skipped, unless
``SAE_REQUIRE_SAELENS=1`` (CI), where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine import tensors as tensors_io
from engine.bundle import verify
from engine.cli import sae_run
from engine.errors import UserError
from engine.export import KINDS, PLAIN_FORMAT, SAELENS_TESTED, ExportError, export, fold_scale, sae_export, saelens_cfg, saelens_state_dict
from sae.relu_l1 import ReluL1

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "and", "then", "it", "was", "red", "big"]

SPEC = """\
name: tiny_export
seed: 0
sources:
  toy: {{kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}}
  lm:
    kind: lm
    corpus: {{files: ["{corpus}"], val_fraction: 0.4}}
    tokenizer: {{kind: bpe, vocab_size: 300}}
    model: {{d_model: 16, n_layers: 2, n_heads: 2, d_mlp: 32, context: 16}}
    train: {{tokens: 4000, batch: 8, eval_every: 50, eval_tokens: 256, warmup: 5}}
    site: blocks.0.mlp.post
    activations: {{tokens: 2048, ce_tokens: 256}}
sae:
  dict_size: [16]
  l1: [0.03, 0.1]
  decoder_bias: true
  train: {{steps: 40, batch: 32, lr: 3.0e-3}}
eval: {{samples: 256, curve_every: 20}}
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    paras = [" ".join(" ".join(rng.choice(WORDS, size=6)).capitalize() + "." for _ in range(3)) for _ in range(100)]
    (root / "corpus.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    (root / "spec.yaml").write_text(SPEC.format(corpus=root / "corpus.txt"), encoding="utf-8")
    r = CliRunner().invoke(sae_run, [str(root / "spec.yaml"), "--results", str(root / "results"), "--quiet"])
    assert r.exit_code == 0, r.output
    (path,) = [p for p in (root / "results").iterdir() if p.name.startswith("tiny_export-")]
    return path


def _metrics(b: Path) -> dict:
    return json.loads((b / "metrics.json").read_text())


def _cells_of(b: Path, source: str) -> list[str]:
    return sorted(c for c, v in _metrics(b)["cells"].items() if v["source"] == source)


def _project_model(b: Path, cid: str) -> ReluL1:
    t = tensors_io.read_file(b / "cells" / cid / "sae.safetensors")
    sae = json.loads((b / "cells" / cid / "cell.json").read_text())["sae"]
    return ReluL1.from_member_tensors([t], [{"l1": sae["l1"]}])


def _scale(b: Path, cid: str) -> float:
    src = _metrics(b)["cells"][cid]["source"]
    return float(_metrics(b)["sources"][src].get("activation_scale", 1.0))


def _raw_inputs(d: int, scale: float, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Fixed inputs at the raw activation scale (mean squared norm about 1 / scale^2)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) / (d**0.5 * scale)


@torch.no_grad()
def _ours(model, x_raw: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """This project's map on raw activations, as the LM source uses it: codes of x * s and the
    reconstruction divided by s."""
    x_hat, c = model.member_forward(x_raw * scale, 0)
    return c, x_hat / scale


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(1.0, float(expected.abs().max())))


def _no_temp_left(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------- layouts


def test_saelens_layout_and_cfg(bundle, tmp_path):
    out = tmp_path / "out"
    written = export(bundle, out, None, "saelens")
    cells = sorted(_metrics(bundle)["cells"])
    assert sorted(p.name for p in out.iterdir()) == cells == [p.name for p in written]
    _no_temp_left(tmp_path)
    for cid in cells:
        assert sorted(p.name for p in (out / cid).iterdir()) == ["cfg.json", "sae_weights.safetensors"]
        cfg = json.loads((out / cid / "cfg.json").read_text())
        st = load_file(out / cid / "sae_weights.safetensors")
        d, m = st["W_enc"].shape
        assert {k: tuple(v.shape) for k, v in st.items()} == {"W_enc": (d, m), "b_enc": (m,), "W_dec": (m, d), "b_dec": (d,)}
        assert all(v.dtype == torch.float32 for v in st.values())
        assert cfg["architecture"] == "standard" and (cfg["d_in"], cfg["d_sae"]) == (d, m)
        assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
        assert cfg["dtype"] == "float32" and cfg["metadata"]["sae_lens_version"] == SAELENS_TESTED
        prov = cfg["metadata"]["sae_repro"]
        assert prov["cell"] == cid and prov["spec_hash"] == json.loads((bundle / "bundle.json").read_text())["spec_hash"]
        assert prov["activation_scale_folded"] == _scale(bundle, cid)
        ours = tensors_io.read_file(bundle / "cells" / cid / "sae.safetensors")
        s = _scale(bundle, cid)
        torch.testing.assert_close(st["W_enc"], (ours["encoder.weight"].double() * s).float(), rtol=0, atol=0)
        torch.testing.assert_close(st["W_dec"], (ours["decoder"].double() / s).float(), rtol=0, atol=0)
        torch.testing.assert_close(st["b_enc"], ours["encoder.bias"], rtol=0, atol=0)
    lm = _cells_of(bundle, "lm")[0]
    meta = json.loads((out / lm / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.0.mlp.post" and meta["context_size"] == 16
    assert _scale(bundle, lm) != 1.0  # the LM source is normalised: the fold is exercised
    toy = _cells_of(bundle, "toy")[0]
    assert json.loads((out / toy / "cfg.json").read_text())["metadata"]["hook_name"] is None
    assert verify(bundle).ok  # the bundle is read, never touched


def test_fold_is_exact(bundle):
    """Folding the scale gives the same map on raw activations: exactly in exact arithmetic
    (float64 here, 1e-12), to float32 rounding in the stored float32 weights."""
    cid = _cells_of(bundle, "lm")[0]
    s = _scale(bundle, cid)
    t = tensors_io.read_file(bundle / "cells" / cid / "sae.safetensors")
    x = _raw_inputs(t["decoder"].shape[1], s).double()
    t64 = {k: v.double() for k, v in t.items()}
    c_ref = torch.relu(x * s @ t64["encoder.weight"] + t64["encoder.bias"])
    xh_ref = (c_ref @ t64["decoder"] + t64["decoder.bias"]) / s
    f = fold_scale(t64, s)
    c = torch.relu(x @ f["encoder.weight"] + f["encoder.bias"])
    xh = c @ f["decoder"] + f["decoder.bias"]
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xh, xh_ref, rtol=1e-12, atol=1e-12)
    st = saelens_state_dict("relu_l1", t, s)  # float32, as exported
    x32 = x.float()
    c32 = torch.relu(x32 @ st["W_enc"] + st["b_enc"])
    c_ours, xh_ours = _ours(_project_model(bundle, cid), x32, s)
    _close(c32, c_ours)
    _close(c32 @ st["W_dec"] + st["b_dec"], xh_ours)
    assert fold_scale(t, 1.0) == t


def test_plain_safetensors_round_trip(bundle, tmp_path):
    out = tmp_path / "plain"
    r = CliRunner().invoke(sae_export, [str(bundle), "--format", "safetensors", str(out)])
    assert r.exit_code == 0, r.output
    for cid in sorted(_metrics(bundle)["cells"]):
        d = out / cid
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "sae.safetensors"]
        assert (d / "sae.safetensors").read_bytes() == (bundle / "cells" / cid / "sae.safetensors").read_bytes()
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["format"] == PLAIN_FORMAT and cfg["kind"] == "relu_l1" and cfg["tensor_format"] == "relu_l1/v1"
        assert cfg["tensors"]["encoder.weight"]["shape"] == [cfg["d"], cfg["m"]]
        assert cfg["tensors"]["decoder"]["shape"] == [cfg["m"], cfg["d"]]
        assert set(cfg["tensors"]) == {"encoder.weight", "encoder.bias", "decoder", "decoder.bias", "firing_frequency"}
        assert cfg["normalization"]["activation_scale"] == _scale(bundle, cid)
        assert cfg["provenance"]["cell"] == cid
        # rebuilt from the export alone, with the normalisation config.json describes
        t = load_file(d / "sae.safetensors")
        model = ReluL1.from_member_tensors([t], [{"l1": cfg["hyperparameters"]["l1"]}])
        s = cfg["normalization"]["activation_scale"]
        x = _raw_inputs(cfg["d"], s)
        for a, b in zip(_ours(model, x, s), _ours(_project_model(bundle, cid), x, s)):
            assert torch.equal(a, b)
    lm = _cells_of(bundle, "lm")[0]
    assert json.loads((out / lm / "config.json").read_text())["site"] == "blocks.0.mlp.post"


def test_cell_selection_and_empty_out(bundle, tmp_path):
    cells = sorted(_metrics(bundle)["cells"])
    out = tmp_path / "empty"
    out.mkdir()  # an existing empty directory is fine
    r = CliRunner().invoke(sae_export, [str(bundle), "--cell", cells[1], "--cell", cells[1], str(out)])
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.iterdir()] == [cells[1]]
    assert r.stdout.strip() == f"exported: {out} (1 cell, format saelens)"


# ----------------------------------------------------------------------------- other kinds


def _kind_tensors(kind: str, d: int = 6, m: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """Hand-built tensors of one member of ``kind``, in this project's names (no decoder bias)."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "encoder.weight": torch.randn(d, m, generator=g),
        "encoder.bias": torch.randn(m, generator=g) * 0.1,
        "decoder": torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1),
        "firing_frequency": torch.rand(m, generator=g),
    }
    if kind == "jumprelu":
        t["threshold"] = torch.rand(m, generator=g) * 0.5
    if kind in ("batchtopk", "matryoshka_batchtopk"):
        t["threshold"] = torch.tensor(0.3)  # one global threshold
    if kind == "gated":
        t["r_mag"] = torch.randn(m, generator=g) * 0.2
        t["b_mag"] = torch.randn(m, generator=g) * 0.1
    return t


KIND_SETTINGS = {"topk": {"kind": "topk", "k": 3}, "jumprelu": {"kind": "jumprelu"}, "batchtopk": {"kind": "batchtopk", "k": 2.5},
                 "matryoshka_batchtopk": {"kind": "matryoshka_batchtopk", "k": 2.5}, "gated": {"kind": "gated"}}


def _kind_reference(kind: str, t: dict, x: torch.Tensor, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference map each mapping assumes (KINDS[kind].forward), on this project's tensors."""
    pre = x @ t["encoder.weight"] + t["encoder.bias"]
    if kind == "topk":
        vals, idx = pre.topk(settings["k"], dim=-1)
        c = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    elif kind == "gated":
        mag = torch.relu(x @ (t["encoder.weight"] * t["r_mag"].exp()) + t["b_mag"])
        c = (pre > 0).float() * mag
    else:
        c = torch.relu(pre) * (pre > t["threshold"]).float()
    return c, c @ t["decoder"] + t.get("decoder.bias", 0)


@pytest.mark.parametrize("kind", sorted(KIND_SETTINGS))
def test_kind_mapping_names_and_shapes(kind):
    t = _kind_tensors(kind)
    d, m = t["encoder.weight"].shape
    st = saelens_state_dict(kind, t, 2.0)
    shapes = {k: tuple(v.shape) for k, v in st.items()}
    expected = {"W_enc": (d, m), "W_dec": (m, d), "b_dec": (d,)}
    expected.update({"b_gate": (m,), "r_mag": (m,), "b_mag": (m,)} if kind == "gated" else {"b_enc": (m,)})
    if kind in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
        expected["threshold"] = (m,)
    assert shapes == expected
    assert torch.equal(st["W_enc"], t["encoder.weight"] * 2.0) and torch.equal(st["b_dec"], torch.zeros(d))
    if "threshold" in t:
        assert torch.equal(st["threshold"], t["threshold"].expand(m))  # broadcast, not rescaled
    cfg = saelens_cfg(kind, d, m, KIND_SETTINGS[kind], {})
    assert cfg["architecture"] == KINDS[kind].architecture
    assert cfg["architecture"] == {"topk": "topk", "gated": "gated"}.get(kind, "jumprelu")
    if kind == "topk":
        assert cfg["k"] == 3 and cfg["rescale_acts_by_decoder_norm"] is False
    # the map on raw inputs equals the project's on x * s (thresholds and gates see the same pre-activations)
    x = _raw_inputs(d, 0.5, n=32, seed=3) * 0.5
    ours = _kind_reference(kind, t, x * 2.0, KIND_SETTINGS[kind])
    theirs = _kind_reference(kind, {"encoder.weight": st["W_enc"], "encoder.bias": st.get("b_enc", st.get("b_gate")), "decoder": st["W_dec"],
                                    "decoder.bias": st["b_dec"], **{k: st[k] for k in ("threshold", "r_mag", "b_mag") if k in st}}, x, KIND_SETTINGS[kind])
    _close(theirs[0], ours[0])
    _close(theirs[1], ours[1] / 2.0)


def test_kind_mapping_errors():
    t = _kind_tensors("jumprelu")
    del t["threshold"]
    with pytest.raises(ExportError, match=r"jumprelu: tensors \['threshold'\] missing"):
        saelens_state_dict("jumprelu", t)
    with pytest.raises(ExportError, match="has no export mapping"):
        saelens_state_dict("sparsemax", _kind_tensors("relu_l1"))
    with pytest.raises(ExportError, match="needs 'k'"):
        saelens_cfg("topk", 6, 10, {"kind": "topk"}, {})
    bad = _kind_tensors("relu_l1")
    bad["decoder"] = bad["decoder"][:3]
    with pytest.raises(ExportError, match="'decoder' has shape"):
        saelens_state_dict("relu_l1", bad)


# ----------------------------------------------------------------------------- SAELens itself

LOADER = r"""
import json, pathlib, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file, save_file
import sae_lens
from sae_lens import SAE

inputs, out = load_file(sys.argv[1]), pathlib.Path(sys.argv[2])
for folder in sys.argv[3:]:
    folder = pathlib.Path(folder)
    sae = SAE.load_from_disk(folder, device="cpu")
    x = inputs[folder.name]
    with torch.no_grad():
        c = sae.encode(x)
        x_hat = sae.decode(c)
        fwd = sae(x)
    save_file({"c": c.contiguous(), "x_hat": x_hat.contiguous(), "forward": fwd.contiguous()}, str(out / (folder.name + ".safetensors")),
              metadata={"class": type(sae).__name__, "version": sae_lens.__version__, "hook_name": str(sae.cfg.metadata.hook_name)})
"""


def _saelens_python() -> str | None:
    if importlib.util.find_spec("sae_lens") is not None:
        return sys.executable
    env = os.environ.get("SAE_LENS_PYTHON")
    if env and Path(env).exists():
        return env
    return None


@pytest.fixture(scope="module")
def saelens_python() -> str:
    py = _saelens_python()
    if py is None:
        why = f"sae_lens is not importable and SAE_LENS_PYTHON ({os.environ.get('SAE_LENS_PYTHON')!r}) is not an interpreter; make one with .ci/saelens-venv.sh"
        if os.environ.get("SAE_REQUIRE_SAELENS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return py


def test_saelens_loads_exports_and_matches(saelens_python, bundle, tmp_path):
    """Every exported cell and every mapped kind, loaded by SAELens's own loader: encode, decode
    and forward on fixed raw inputs match this project's map to 1e-5."""
    out = tmp_path / "sl"
    export(bundle, out, None, "saelens")
    inputs, expected, folders = {}, {}, []
    for cid in sorted(_metrics(bundle)["cells"]):
        s = _scale(bundle, cid)
        model = _project_model(bundle, cid)
        x = _raw_inputs(model.d, s)
        inputs[cid] = x
        expected[cid] = (_ours(model, x, s), "StandardSAE")
        folders.append(out / cid)
    scale = 2.0  # the mapped kinds, exported with a folded scale too
    for kind, settings in KIND_SETTINGS.items():
        t = _kind_tensors(kind)
        d, m = t["encoder.weight"].shape
        folder = tmp_path / "kinds" / kind
        folder.mkdir(parents=True)
        save_file(saelens_state_dict(kind, t, scale), str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps(saelens_cfg(kind, d, m, settings, {"hook_name": "blocks.0.mlp.post"})))
        x = _raw_inputs(d, 1.0, n=32, seed=5) / scale
        c, x_hat = _kind_reference(kind, t, x * scale, settings)
        cls = {"topk": "TopKSAE", "gated": "GatedSAE"}.get(kind, "JumpReLUSAE")
        inputs[kind], expected[kind] = x, ((c, x_hat / scale), cls)
        folders.append(folder)
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "loader.py").write_text(LOADER)
    res = tmp_path / "res"
    res.mkdir()
    p = subprocess.run([saelens_python, str(tmp_path / "loader.py"), str(tmp_path / "inputs.safetensors"), str(res), *map(str, folders)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    assert p.returncode == 0, p.stderr[-3000:]
    for name, ((c, x_hat), cls) in expected.items():
        got = load_file(res / f"{name}.safetensors")
        with safe_open(res / f"{name}.safetensors", "pt") as f:
            meta = f.metadata()
        assert meta["class"] == cls, name
        assert meta["version"] == SAELENS_TESTED
        _close(got["c"], c)
        _close(got["x_hat"], x_hat)
        _close(got["forward"], x_hat)
    lm = _cells_of(bundle, "lm")[0]
    with safe_open(res / f"{lm}.safetensors", "pt") as f:
        assert f.metadata()["hook_name"] == "blocks.0.mlp.post"


# ----------------------------------------------------------------------------- bad input


def _one_line_exit_2(args: list, needle: str) -> str:
    r = CliRunner().invoke(sae_export, [str(a) for a in args])
    assert isinstance(r.exception, SystemExit) and r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    return lines[0]


def _corrupt_copy(bundle: Path, tmp_path: Path) -> Path:
    b = tmp_path / "corrupt"
    shutil.copytree(bundle, b)
    p = b / "cells" / _cells_of(bundle, "lm")[0] / "sae.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    return b


def test_bad_inputs(bundle, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "plain_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    _one_line_exit_2([tmp_path / "nothing_here", out], "no such bundle")
    _one_line_exit_2([tmp_path / "plain_dir", out], "not a bundle (no bundle.json)")
    _one_line_exit_2([tmp_path / "a_file", out], "not a bundle (not a directory)")
    line = _one_line_exit_2([_corrupt_copy(bundle, tmp_path), out], "changed file cells/")
    assert "refusing to export a bundle that does not verify" in line
    _one_line_exit_2([bundle, "--cell", "lm-nope", out], "no cell 'lm-nope' (cells: ")
    _one_line_exit_2([bundle, "--format", "onnx", out], "--format: unknown format 'onnx' (known: saelens, safetensors)")
    _one_line_exit_2([bundle, tmp_path / "a_file"], "exists and is not a directory")
    assert not out.exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    _one_line_exit_2([bundle, full], "exists and is not empty")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    _one_line_exit_2([bundle, bundle / "cells" / "x"], "inside the bundle")
    assert verify(bundle).ok
    _no_temp_left(tmp_path)
    with pytest.raises(UserError):
        export(bundle, out, ["nope"], "saelens")
    assert not out.exists()
