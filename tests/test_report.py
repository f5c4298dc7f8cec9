"""report/: written into a tiny toy + LM bundle, rebuilt by sae-report, and opened in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.bundle import verify
from engine.cli import sae_report, sae_run

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "quickly", "slowly", "and", "then", "it", "was", "red", "blue", "big", "small"]

SPEC = """\
name: tiny_report
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
  dict_size: [16, 32]
  l1: [0.03, 0.1]
  train: {{steps: 40, batch: 32, lr: 3.0e-3}}
eval: {{samples: 256, curve_every: 20}}
"""


def _corpus(path: Path) -> None:
    """Paragraphs of a few sentences from a small vocabulary, drawn with a fixed seed."""
    rng = np.random.default_rng(0)
    paras = []
    for _ in range(120):
        sents = [" ".join(rng.choice(WORDS, size=rng.integers(4, 9))).capitalize() + "." for _ in range(rng.integers(2, 5))]
        paras.append(" ".join(sents))
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")


RUN_OUTPUT: list[str] = []


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    _corpus(root / "corpus.txt")
    spec = root / "tiny_report.yaml"
    spec.write_text(SPEC.format(corpus=root / "corpus.txt"), encoding="utf-8")
    results = root / "results"
    r = CliRunner().invoke(sae_run, [str(spec), "--results", str(results)])
    assert r.exit_code == 0, r.output
    RUN_OUTPUT.append(r.output)
    (path,) = [p for p in results.iterdir() if p.name.startswith("tiny_report-")]
    return path


def test_report_files_are_in_the_bundle_and_outside_the_digest(bundle):
    files = json.loads((bundle / "bundle.json").read_text())["files"]
    report = sorted(f for f in files if f.startswith("report/"))
    for name in ("index.html", "features_lm.json", "toy.png", "lm.png", "toy_vs_lm.png", "toy_grid.png", "lm_grid.png", "curves.png"):
        assert f"report/{name}" in report, name
    assert verify(bundle).ok
    page = (bundle / "report/index.html").read_text(encoding="utf-8")
    # self-contained: every image inline, no stylesheet or script fetched from anywhere
    assert page.count("<img ") == len([f for f in report if f.endswith(".png")])
    assert re.findall(r'<img [^>]*src="(?!data:image/png;base64,)', page) == []
    assert re.findall(r'\s(?:src|href)="(?!data:)', page) == []
    assert "feature_count[toy]" in page and "labelled features[lm]" in page and "tiny_report" in page
    assert re.search(r"^labelled features\[lm\]: \d+ of \d+ live", RUN_OUTPUT[0], re.MULTILINE), RUN_OUTPUT[0]


def test_feature_analysis_of_the_lm_source(bundle):
    a = json.loads((bundle / "report/features_lm.json").read_text())
    metrics = json.loads((bundle / "metrics.json").read_text())
    cell = metrics["cells"][a["cell"]]
    assert cell["source"] == "lm" and cell["sae"]["m"] == 32 and cell["sae"]["l1"] == 0.03
    assert len(a["features"]) == 32 and a["summary"]["live"] == sum(f["fires"] > 0 for f in a["features"])
    assert a["summary"]["labelled"] == sum(bool(f.get("label", {}).get("labelled")) for f in a["features"])
    assert a["tokens"]["fit"] + a["tokens"]["held_out"] == a["tokens"]["analysed"] > 0
    live = [f for f in a["features"] if f["fires"]]
    assert live, "some feature fires"
    for f in live:
        assert sum(f["hist"]) == f["fires"]
        acts = [c["act"] for c in f["contexts"]]
        assert acts == sorted(acts, reverse=True) and acts[0] == f["max"]
        for c in f["contexts"]:
            assert 0 <= c["at"] < len(c["tokens"]) <= 1 + 10 + 4


def test_sae_report_rebuilds_the_same_report_and_keeps_the_digest(bundle, tmp_path):
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    before = json.loads((copy / "bundle.json").read_text())
    pages = (copy / "report/index.html").read_bytes()
    (copy / "report/index.html").unlink()
    (copy / "report/toy.png").write_bytes(b"damaged")
    (copy / "report/stray.txt").write_text("x")
    r = CliRunner().invoke(sae_report, [str(copy)])
    assert r.exit_code == 0, r.output
    assert "rebuilt:" in r.output
    after = json.loads((copy / "bundle.json").read_text())
    assert verify(copy).ok
    assert after == before  # same report bytes, so the same file list; digest unchanged
    assert (copy / "report/index.html").read_bytes() == pages
    assert not list(copy.parent.glob(".tmp-report-*")) and not list(copy.parent.glob(".old-report-*"))


def test_sae_report_with_an_older_report_updates_the_file_list(bundle, tmp_path):
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    shutil.rmtree(copy / "report")
    (copy / "report").mkdir()
    (copy / "report/old.png").write_bytes(b"an older rendering")
    from engine.bundle import content_digest
    from engine.hashing import sha256_file, stable_json

    files = {k: v for k, v in meta["files"].items() if not k.startswith("report/")}
    files["report/old.png"] = sha256_file(copy / "report/old.png")
    (copy / "bundle.json").write_text(stable_json({**meta, "files": files}))
    assert verify(copy).ok
    r = CliRunner().invoke(sae_report, [str(copy)])
    assert r.exit_code == 0, r.output
    after = json.loads((copy / "bundle.json").read_text())
    assert after["files"] == meta["files"] and after["content_digest"] == meta["content_digest"] == content_digest(files)
    assert verify(copy).ok


def test_sae_report_refuses_a_damaged_bundle_and_changes_nothing(bundle, tmp_path):
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    metrics = copy / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"schema": 1', '"schema": 1 '))
    snapshot = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    r = CliRunner().invoke(sae_report, [str(copy)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "fails verification" in lines[0] and "metrics.json" in lines[0], r.output
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == snapshot
    r = CliRunner().invoke(sae_report, [str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such bundle" in r.output and "Traceback" not in r.output


def _browser():
    """A headless Chromium driver, or a skip (a failure when SAE_REQUIRE_BROWSER=1)."""
    required = os.environ.get("SAE_REQUIRE_BROWSER") == "1"
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not Path(p).exists()]
    if missing:
        if required:
            pytest.fail(f"SAE_REQUIRE_BROWSER=1 but {', '.join(missing)} is not installed")
        pytest.skip(f"no headless browser: {', '.join(missing)} not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def test_page_in_a_headless_browser(bundle):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        driver.get((bundle / "report/index.html").resolve().as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
        imgs = driver.find_elements(By.TAG_NAME, "img")
        assert len(imgs) >= 6
        sizes = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
        assert all(done and width > 0 for done, width in sizes), sizes
        rows = driver.find_elements(By.CSS_SELECTOR, ".browser .feats tbody tr")
        assert rows, "the feature browser lists features"
        rows[0].click()
        contexts = WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".browser .detail .ctx"))
        assert contexts[0].is_displayed() and contexts[0].find_element(By.TAG_NAME, "mark").text != ""
        assert driver.find_elements(By.CSS_SELECTOR, ".browser .detail svg rect")  # the histogram
        # search narrows the list; sorting by id puts feature 0 first
        search = driver.find_element(By.CSS_SELECTOR, ".browser .q")
        search.send_keys("#1")
        shown = [r.find_element(By.TAG_NAME, "td").text for r in driver.find_elements(By.CSS_SELECTOR, ".browser .feats tbody tr")]
        assert shown and all(s.startswith("1") for s in shown)
        # a click right after typing (the box loses focus) still opens the feature
        driver.find_elements(By.CSS_SELECTOR, ".browser .feats tbody tr")[0].click()
        title = WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".browser .detail h3"))
        assert title[0].text == f"feature {shown[0]}"
        search.clear()
        driver.execute_script("var s = document.querySelector('.browser .sort'); s.value = 'id'; s.dispatchEvent(new Event('change'));")
        driver.find_element(By.CSS_SELECTOR, ".browser .live").click()  # dead features too
        first = driver.find_element(By.CSS_SELECTOR, ".browser .feats tbody tr td").text
        assert first == "0"
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
    finally:
        driver.quit()
