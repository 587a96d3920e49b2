"""`jsae` command line: thin sub-commands that parse, call the library and print.

One module per sub-command in this package, each with `add_arguments(parser)` and `run(args)`.
The modules import only argparse at load time (heavy imports live inside `run`), so `jsae --help`
and `jsae COMMAND --help` answer at once. User errors (a missing file, an unknown config key, a bad
value: `OSError`/`ValueError` raised where the bad input enters) print one line
`jsae: error: …` and exit 2, as argparse does for bad arguments; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

# Each entry: (name, module, help). The module defines `add_arguments(parser)` and `run(args)`.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    # -- sub-commands (one line each; keep this list sorted by workflow) --
    ("train", "sae_lens_jsae.cli.train", "Train a JSAE (or a sweep of them) from a YAML run config."),
    ("eval", "sae_lens_jsae.cli.eval", "Evaluate a JSAE checkpoint (Jacobian sparsity, CE/KL, linearity, SAEBench core) and write report.md/html."),
    ("saebench", "sae_lens_jsae.cli.saebench", "Run SAEBench evals (core, sparse probing, absorption, jacobian_*) on JSAE pairs from a config."),
    ("graph", "sae_lens_jsae.cli.graph", "Write a prompt's attribution graph (input latents -> output latents) in the attribution-graph format."),
    ("latents", "sae_lens_jsae.cli.latents", "Write every latent's page (contexts, histogram, logits, Jacobian partners) from a token corpus."),
    ("serve", "sae_lens_jsae.cli.serve", "Serve the offline graph viewer for a folder of graphs and latent pages on 127.0.0.1."),
    ("push", "sae_lens_jsae.cli.push", "Upload a JSAE's inference files and a model card to the Hub."),
    ("export-saelens", "sae_lens_jsae.cli.export_saelens", "Write a JSAE as two plain SAELens TopK SAE folders."),
    ("convert-reference", "sae_lens_jsae.cli.convert_reference", "Convert the authors' reference artifact into a JSAE folder."),
]

USER_ERRORS = (OSError, ValueError)
"""Exceptions reported as one line (bad paths, configs and values are raised as these where they enter)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jsae", description="Jacobian sparse autoencoders on SAELens.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int | None] = args._run
    try:
        return int(run(args) or 0)
    except USER_ERRORS as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"jsae: error: {message} (--debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
