"""The viewer as a person uses it: headless Chromium (Playwright, pytest-playwright's `page`) opens
`jsae serve`'s page for a pair trained here, hovers an edge, clicks a latent, and must show that
latent's contexts without console errors; then the side-by-side view of three models (the pair, a
λ = 0 pair, a transcoder against it) on one prompt, where a token click redraws every panel as that
token's bipartite graph alone.

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
from sae_lens_jsae.graph import mlp_inputs, write_graphs, write_prompt_graph
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


@pytest.fixture(scope="module")
def side_by_side(served):
    """Three models' graphs of one prompt (per-node coverage pruning, the default) in the served folder."""
    from sae_lens.saes.sae import SAEMetadata

    from sae_lens_jsae.transcoder import TOPK_TRANSCODER, TRANSCODER_CLASSES

    data, _, url = served
    torch.manual_seed(2)
    model = make_tiny_model("gated_silu", dtype=torch.float32)
    sae = build_jacobian_sae(model, 1, d_sae=32, k=4, jacobian_coefficient=0.5)
    sae0 = build_jacobian_sae(model, 1, d_sae=32, k=4, jacobian_coefficient=0.0)
    inference_cls, cfg_cls = TRANSCODER_CLASSES[TOPK_TRANSCODER][:2]
    tc = inference_cls(cfg_cls(d_in=16, d_sae=24, d_out=16, k=4, dtype="float32", device="cpu",
                               metadata=SAEMetadata(hook_name=sae.cfg.metadata.hook_name, hook_name_out="blocks.1.hook_mlp_out")))
    with torch.no_grad():
        for p in (sae.b_enc_out, sae0.b_enc_out, tc.b_enc):
            p.add_(0.5)  # most picks active
    prompt = torch.arange(5, 15)
    results = write_graphs({"jsae": sae, "lambda0": sae0, "transcoder": tc}, model, [prompt], data, upstream=sae0)
    graphs = [json.loads(r.path.read_text()) for r in results]
    return url, graphs


@pytest.mark.skipif(not HAVE_PYTEST_PLAYWRIGHT, reason=NO_PLAYWRIGHT)
def test_side_by_side_token_clicks_update_every_panel(side_by_side, page, tmp_path):
    from playwright.sync_api import expect

    url, graphs = side_by_side
    slugs = [g["metadata"]["slug"] for g in graphs]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "assert") else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    page.goto(url)
    page.wait_for_function("document.body.dataset.graph !== undefined")
    page.select_option("#graph-select", ",".join(slugs))  # the side-by-side entry the viewer offers for a shared prompt
    page.wait_for_function(f"document.body.dataset.graph === {json.dumps(','.join(slugs))}")
    panels = page.locator(".panel")
    expect(panels).to_have_count(3)
    for g in graphs:  # all tokens: each panel draws its whole graph
        panel = page.locator(f'.panel[data-slug="{g["metadata"]["slug"]}"]')
        expect(panel.locator(".panel-title")).to_have_text(g["metadata"]["info"]["model"])
        expect(panel.locator(".node")).to_have_count(len(g["nodes"]))
        expect(panel.locator(".edge")).to_have_count(len(g["links"]))

    def expect_token(t):
        page.wait_for_function(f"document.body.dataset.token === {json.dumps(t)}")
        for g in graphs:
            panel = page.locator(f'.panel[data-slug="{g["metadata"]["slug"]}"]')
            nodes = [n for n in g["nodes"] if n["ctx_idx"] == int(t)] if t != "all" else g["nodes"]
            ids = {n["node_id"] for n in nodes}
            links = [link for link in g["links"] if link["source"] in ids and link["target"] in ids]
            expect(panel.locator("svg.graph")).to_have_attribute("data-token", t)
            expect(panel.locator(".node")).to_have_count(len(nodes))
            expect(panel.locator(".edge")).to_have_count(len(links))
            if t != "all":
                outputs = [n for n in nodes if n["layer"] == "1" and n["feature"] >= 0]
                expect(panel.locator(".panel-summary")).to_contain_text(f"token {t} ")
                expect(panel.locator(".panel-summary")).to_contain_text(f"{len(outputs)} layer-1 latents")
                for n in outputs:
                    expect(panel.locator(f'[data-node="{n["node_id"]}"]')).to_have_count(1)

    page.locator("#tok-3").click()
    expect_token("3")
    expect(page.locator("#tok-3")).to_have_class(re.compile(r"\bsel\b"))
    assert all(len([n for n in g["nodes"] if n["ctx_idx"] == 3]) < len(g["nodes"]) for g in graphs)
    page.locator("#tok-7").click()
    expect_token("7")
    shot = tmp_path / "side_by_side.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    page.locator("#tok-7").click()  # the selected token again: back to all tokens
    expect_token("all")
    page.locator("#tok-0").click()
    expect_token("0")
    page.locator("#all-tokens").click()
    expect_token("all")
    assert errors == []
