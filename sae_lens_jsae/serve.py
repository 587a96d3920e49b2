"""`jsae serve DIR`: the offline graph viewer on 127.0.0.1 (stdlib http.server, no dependencies).

URL layout: `/` serves the viewer's own static files (sae_lens_jsae/viewer: HTML/JS/CSS written
in this project, nothing loaded from a CDN); `/data/...` serves DIR, the folder `jsae graph` and
`jsae latents` write (graph-metadata.json, {slug}.json, features/{scan}/{feature}.json) — the same
layout circuit-tracer's local server reads.

`screenshot_graph` drives a system Chromium through Playwright (the `browser` extra:
`pip install "sae-lens-jsae[browser]"`, and a Chromium, e.g. `apt-get install chromium`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ASSETS = Path(__file__).parent / "viewer"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executables `find_chromium` looks for on PATH, in this order."""


class ViewerHandler(SimpleHTTPRequestHandler):
    """Static files: `/data/*` from the data folder, everything else from the viewer assets."""

    def __init__(self, *args, data_dir: str, quiet: bool = True, **kwargs):
        self.data_dir, self.quiet = data_dir, quiet
        super().__init__(*args, directory=str(ASSETS), **kwargs)

    def translate_path(self, path: str) -> str:
        if path.startswith("/data/"):
            self.directory = self.data_dir
            path = path[len("/data"):]
        else:
            self.directory = str(ASSETS)
        return super().translate_path(path)  # normalises the path and keeps it inside self.directory

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if not self.quiet:
            super().log_message(format, *args)


def make_server(data_dir: str | Path, port: int = 8032, host: str = "127.0.0.1", quiet: bool = True) -> ThreadingHTTPServer:
    """A server for `data_dir` (port 0: any free port; read it from `server.server_address`)."""
    data = Path(data_dir)
    if not (data / "graph-metadata.json").is_file():
        raise FileNotFoundError(f"{data} has no graph-metadata.json: write graphs into it first (jsae graph PAIR \"prompt\" --out {data}).")
    handler = functools.partial(ViewerHandler, data_dir=str(data.resolve()), quiet=quiet)
    return ThreadingHTTPServer((host, port), handler)


def serve_in_thread(data_dir: str | Path, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server on a background thread; returns it (call `.shutdown()`) and its URL."""
    server = make_server(data_dir, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}/"


def find_chromium() -> str | None:
    """A system Chromium/Chrome for Playwright: $CHROMIUM if it names a file, else the first of
    `BROWSERS` on PATH, else None (Playwright's own browser download is not needed)."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def require_browser() -> str:
    """The Chromium `screenshot_graph` uses; an OSError saying what to install when Playwright or
    Chromium is missing (called before any work, so a long `jsae graph` does not fail at the end)."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        raise OSError('Screenshots need Playwright: pip install "sae-lens-jsae[browser]"')
    exe = find_chromium()
    if exe is None:
        raise OSError(f"No Chromium found (looked for $CHROMIUM and {', '.join(BROWSERS)} on PATH); on Debian: apt-get install -y chromium")
    return exe


def screenshot_graph(data_dir: str | Path, slug: str, png: str | Path, click_top_latent: bool = True, width: int = 1400) -> Path:
    """Serve `data_dir`, open graph `slug` in headless Chromium, click its strongest output latent,
    save a full-page PNG. Needs Playwright (the `browser` extra) and a system Chromium."""
    exe = require_browser()
    from playwright.sync_api import sync_playwright

    server, url = serve_in_thread(data_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe)
            try:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(f"{url}?slug={slug}")
                page.wait_for_function(f"document.body.dataset.graph === {json.dumps(slug)}")
                if click_top_latent:
                    node = page.evaluate(
                        "() => { const ns = state.graph.nodes.filter(n => n.layer === '1' && n.feature >= 0);"
                        " ns.sort((a, b) => (b.influence || 0) - (a.influence || 0)); return ns.length ? ns[0].node_id : null; }")
                    if node:
                        page.locator(f'[data-node="{node}"]').click()
                        page.locator("#latent-title, #latent .missing").first.wait_for()
                page.mouse.move(0, 0)
                page.screenshot(path=str(png), full_page=True)
            finally:
                browser.close()
    finally:
        server.shutdown()
    return Path(png)
