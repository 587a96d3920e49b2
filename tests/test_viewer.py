"""The viewer as a person uses it: headless Chromium opens `jsae serve`'s page for a pair trained
here, hovers an edge, clicks a latent, and must show that latent's contexts without console errors."""

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_model
from sae_lens.saes.sae import TrainStepInput

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.chromium import Chromium, find_chromium
from sae_lens_jsae.graph import mlp_inputs, write_prompt_graph
from sae_lens_jsae.latents import LatentPageConfig, write_latent_pages
from sae_lens_jsae.serve import serve_in_thread


@pytest.fixture(scope="session")
def chromium():
    path = find_chromium()
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, capture_output=True, env=env, timeout=900)
            path = find_chromium()
            if path:
                break
    if path is None:
        reason = "no Chromium on PATH and `apt-get install -y chromium` did not provide one (not root, no apt, or no network)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny pair trained for a few steps, its latent pages and one graph, served on 127.0.0.1."""
    torch.manual_seed(0)
    model = make_tiny_model("gated_silu", dtype=torch.float32)
    sae = build_jacobian_sae(model, 1, d_sae=32, k=4, jacobian_coefficient=0.5)
    corpus = torch.randint(1, model.cfg.d_vocab, (16, 16), generator=torch.Generator().manual_seed(1))
    x = mlp_inputs(model, sae, corpus.flatten()[:32])[0].detach()
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(20):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"jacobian_coefficient": 0.5}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    data = tmp_path_factory.mktemp("viewer")
    write_latent_pages(sae, model, corpus, data, cfg=LatentPageConfig(n_top=4, n_quantiles=2, n_per_quantile=2))
    path, _ = write_prompt_graph(sae, model, corpus[0, :12], data, slug="tiny", node_threshold=1.0, edge_threshold=1.0)
    server, url = serve_in_thread(data)
    yield data, json.loads(path.read_text()), url
    server.shutdown()


def test_server_serves_assets_and_data_only(served):
    data, graph, url = served
    assert b"viewer.js" in urllib.request.urlopen(url).read()
    assert json.loads(urllib.request.urlopen(url + "data/graph-metadata.json").read())["graphs"][0]["slug"] == "tiny"
    for bad in ("data/../../etc/passwd", "data/%2e%2e/%2e%2e/etc/passwd"):
        try:
            body = urllib.request.urlopen(url + bad).read()
        except urllib.error.HTTPError as e:
            assert e.code == 404
        else:
            assert b"root:" not in body
    assets = Path(__file__).parents[1] / "sae_lens_jsae" / "viewer"
    for f in assets.iterdir():  # nothing from a CDN: no absolute URL but the SVG namespace name
        assert re.findall(r"https?://[^\s\"'`]+", f.read_text()) in ([], ["http://www.w3.org/2000/svg"]), f


def test_click_latent_shows_its_contexts(served, chromium, tmp_path):
    data, graph, url = served
    outputs = [n for n in graph["nodes"] if n["layer"] == "1" and n["feature"] >= 0]
    node = max(outputs, key=lambda n: n["activation"])
    page = json.loads((data / node["feature_file"]).read_text())
    with Chromium(chromium) as browser:
        browser.goto(url + "?slug=tiny")
        browser.wait_for("document.body.dataset.graph === 'tiny'")
        assert browser.evaluate("document.querySelectorAll('.node').length") == len(graph["nodes"])
        assert browser.evaluate("document.querySelectorAll('.edge').length") == len(graph["links"])
        # hover the middle of an edge: the tooltip shows J, the activation and the attribution
        x, y = browser.evaluate(
            "(() => { const p = document.querySelector('.edge'); p.scrollIntoView({block: 'center', inline: 'center'});"
            " const q = p.getPointAtLength(p.getTotalLength() / 2).matrixTransform(p.getScreenCTM()); return [q.x, q.y]; })()")
        browser.mouse(x, y)
        tip = browser.wait_for("!document.getElementById('tooltip').hidden && document.getElementById('tooltip').textContent")
        assert "J = " in tip and "s_x = " in tip and "attribution = " in tip

        browser.click(f'[data-node="{node["node_id"]}"]')
        browser.wait_for("!!document.getElementById('contexts')")
        title = browser.evaluate("document.getElementById('latent-title').textContent")
        assert f"output latent {node['latent']}" in title
        shown = browser.evaluate("document.getElementById('contexts').textContent")
        top = page["examples_quantiles"][0]["examples"][0]
        assert "".join(top["tokens"]) in shown
        partners = browser.evaluate("document.querySelectorAll('#partners a.partner').length")
        assert partners == len(page["partners"]) > 0
        shot = browser.screenshot(tmp_path / "viewer.png")
        errors = browser.console_errors()
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
