"""`jsae serve DIR`: the offline graph viewer on 127.0.0.1 (stdlib http.server, no dependencies).

URL layout: `/` serves the viewer's own static files (sae_lens_jsae/viewer: HTML/JS/CSS written
in this project, nothing loaded from a CDN); `/data/...` serves DIR, the folder `jsae graph` and
`jsae latents` write (graph-metadata.json, {slug}.json, features/{scan}/{feature}.json) — the same
layout circuit-tracer's local server reads.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ASSETS = Path(__file__).parent / "viewer"


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
