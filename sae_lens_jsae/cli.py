"""`jsae` command line: thin sub-commands that parse, call the library and print.

Each sub-command lives beside the code it drives; this file only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Each entry: (name, module, help). The module defines `add_arguments(parser)` and `run(args)`.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    # -- sub-commands (one line each; keep this list sorted by workflow) --
    ("train", "sae_lens_jsae.cli_train", "Train a JSAE (or a sweep of them) from a YAML run config."),
    ("eval", "sae_lens_jsae.evals.cli_eval", "Evaluate a JSAE checkpoint (Jacobian sparsity, CE/KL, linearity, SAEBench core) and write report.md/html."),
    ("saebench", "sae_lens_jsae.evals.cli_saebench", "Run SAEBench evals (core, sparse probing, absorption, jacobian_*) on JSAE pairs from a config."),
    ("push", "sae_lens_jsae.cli_push", "Upload a JSAE's inference files and a model card to the Hub."),
    ("export-saelens", "sae_lens_jsae.cli_export", "Write a JSAE as two plain SAELens TopK SAE folders."),
    ("convert-reference", "sae_lens_jsae.cli_convert", "Convert the authors' reference artifact into a JSAE folder."),
    ("bench", "sae_lens_jsae.bench", "Benchmark training speed (vs a plain pair and sparsify), Jacobian vs jacrev, memory, sweeps."),
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="jsae", description="Jacobian sparse autoencoders on SAELens.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int | None] = args._run
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
