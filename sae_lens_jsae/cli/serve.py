"""`jsae serve DIR [--port 8032]`: the offline graph viewer on http://127.0.0.1:PORT/."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="folder written by `jsae graph` (and `jsae latents`)")
    p.add_argument("--port", type=int, default=8032, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from sae_lens_jsae.serve import make_server

    server = make_server(args.directory, args.port, quiet=not args.verbose)
    host, port = server.server_address[:2]
    print(f"serving {args.directory} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
