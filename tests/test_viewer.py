"""The viewer as a person uses it: headless Chromium (Playwright, pytest-playwright's `page`) opens
`jsae serve`'s page for a pair trained here, hovers an edge, clicks a latent, and must show that
latent's contexts without console errors.

The browser test needs the `browser` extra (playwright, pytest-playwright) and a system Chromium
(`scripts/install.sh` installs one with apt-get when run as root; or set $CHROMIUM); without them
it is skipped with the reason (`pytest -rs` lists it). Playwright's own browser download is not used.
"""

import importlib.util
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_model
from sae_lens.saes.sae import TrainStepInput

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.graph import mlp_inputs, write_prompt_graph
from sae_lens_jsae.latents import LatentPageConfig, write_latent_pages
from sae_lens_jsae.serve import find_chromium, serve_in_thread

HAVE_PYTEST_PLAYWRIGHT = importlib.util.find_spec("pytest_playwright") is not None
NO_PLAYWRIGHT = 'pytest-playwright is not installed: pip install -e ".[browser]" (scripts/install.sh does)'


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, pointed at the system Chromium."""
    path = find_chromium()
    if path is None:
        pytest.skip("no system Chromium ($CHROMIUM, chromium, chromium-browser, google-chrome): "
                    "run scripts/install.sh as root (apt-get install -y chromium) or set $CHROMIUM")
    return {**browser_type_launch_args, "executable_path": path}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


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
    (data.parent / "outside.txt").write_text("not served")  # what a path escaping the data folder would reach
    server, url = serve_in_thread(data)
    yield data, json.loads(path.read_text()), url
    server.shutdown()


def test_server_serves_assets_and_data_only(served):
    data, graph, url = served
    assert b"viewer.js" in urllib.request.urlopen(url).read()
    assert json.loads(urllib.request.urlopen(url + "data/graph-metadata.json").read())["graphs"][0]["slug"] == "tiny"
    up = "../" * len(data.parts)  # enough to reach / from the data folder
    for bad in ("data/../outside.txt", "data/%2e%2e/outside.txt", "data/..%2foutside.txt", "../outside.txt",
                f"data/{up}etc/passwd", "data/" + up.replace("..", "%2e%2e") + "etc/passwd", "data/missing.json"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + bad)
        assert e.value.code == 404, bad
    assets = Path(__file__).parents[1] / "sae_lens_jsae" / "viewer"
    for f in assets.iterdir():  # nothing from a CDN: no absolute URL but the SVG namespace name
        assert re.findall(r"https?://[^\s\"'`]+", f.read_text()) in ([], ["http://www.w3.org/2000/svg"]), f


@pytest.mark.skipif(not HAVE_PYTEST_PLAYWRIGHT, reason=NO_PLAYWRIGHT)
def test_click_latent_shows_its_contexts(served, page, tmp_path):
    from playwright.sync_api import expect

    data, graph, url = served
    outputs = [n for n in graph["nodes"] if n["layer"] == "1" and n["feature"] >= 0]
    node = max(outputs, key=lambda n: n["activation"])
    latent_page = json.loads((data / node["feature_file"]).read_text())
    errors: list[str] = []  # console errors, uncaught exceptions, failed loads
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "assert") else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    page.goto(url + "?slug=tiny")
    page.wait_for_function("document.body.dataset.graph === 'tiny'")
    expect(page.locator(".node")).to_have_count(len(graph["nodes"]))
    expect(page.locator(".edge")).to_have_count(len(graph["links"]))
    # hover the middle of an edge (a curve: its bounding box's centre may miss it): the tooltip shows J, the activation and the attribution
    x, y = page.evaluate(
        "() => { const p = document.querySelector('.edge'); p.scrollIntoView({block: 'center', inline: 'center'});"
        " const q = p.getPointAtLength(p.getTotalLength() / 2).matrixTransform(p.getScreenCTM()); return [q.x, q.y]; }")
    page.mouse.move(x, y)
    tip = page.locator("#tooltip")
    expect(tip).to_be_visible()
    for text in ("J = ", "s_x = ", "attribution = "):
        expect(tip).to_contain_text(text)

    page.locator(f'[data-node="{node["node_id"]}"]').click()
    expect(page.locator("#latent-title")).to_contain_text(f"output latent {node['latent']}")
    top = latent_page["examples_quantiles"][0]["examples"][0]
    expect(page.locator("#contexts")).to_contain_text("".join(top["tokens"]))
    assert len(latent_page["partners"]) > 0
    expect(page.locator("#partners a.partner")).to_have_count(len(latent_page["partners"]))
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
