"""SAELens export of real bundles of every SAE kind: trained here, exported, loaded by SAELens's
own ``SAE.load_from_disk`` (the interpreter of tests/test_export.py), and its encode/decode
compared with this project's inference map on the same inputs."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_export import LOADER, _close, saelens_python  # noqa: F401 - the fixture

from engine import layout
from engine.export import export
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec_text
from sae import base as sae_kinds
from test_kinds_engine import SPECS, spec_text

CLASSES = {"relu_l1": "StandardSAE", "topk": "TopKSAE", "gated": "GatedSAE"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = {}
    for kind in sorted(sae_kinds.kinds()):
        results = tmp_path_factory.mktemp(f"exp_{kind}")
        out[kind] = run(make_plan(load_spec_text(spec_text(kind, SPECS[kind]), "k.yaml")), results).path
    return out


def test_every_kind_exports_and_saelens_reproduces_it(saelens_python, bundles, tmp_path):  # noqa: F811
    inputs, expected, folders = {}, {}, []
    g = torch.Generator().manual_seed(3)
    for kind, bundle in bundles.items():
        out = tmp_path / kind
        export(bundle, out, None, "saelens")
        metrics = layout.read_metrics(bundle)
        for cid, cell in sorted(metrics.cells.items()):
            model = layout.load_member(load_file(bundle / layout.cell_file(cid, layout.CELL_TENSORS)), cell.sae)
            x = torch.rand(48, model.d, generator=g)
            with torch.no_grad():
                x_hat, c = model.member_forward(x, 0)
            name = f"{kind}-{cid}"
            (out / cid).rename(out / name)
            inputs[name], expected[name] = x, (c, x_hat, CLASSES.get(kind, "JumpReLUSAE"))
            folders.append(out / name)
            assert json.loads((out / name / "cfg.json").read_text())["d_sae"] == cell.sae["m"]
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "loader.py").write_text(LOADER)
    res = tmp_path / "res"
    res.mkdir()
    p = subprocess.run([saelens_python, str(tmp_path / "loader.py"), str(tmp_path / "inputs.safetensors"), str(res), *map(str, folders)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    assert p.returncode == 0, p.stderr[-3000:]
    for name, (c, x_hat, cls) in expected.items():
        got = load_file(res / f"{name}.safetensors")
        with safe_open(res / f"{name}.safetensors", "pt") as f:
            assert f.metadata()["class"] == cls, name
        _close(got["c"], c)
        _close(got["x_hat"], x_hat)
