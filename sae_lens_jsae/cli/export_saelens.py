"""`jsae export-saelens DIR OUT`: write the pair as two plain SAELens TopK SAE folders."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a JSAE folder, or a Hub repo id 'org/name'")
    parser.add_argument("out_dir", help="writes OUT/input_sae and OUT/output_sae")
    parser.add_argument("--sae-id", default=None, help="sub-folder of SOURCE holding the pair")


def run(args: argparse.Namespace) -> int:
    from sae_lens_jsae.hub import export_saelens

    paths = export_saelens(args.source, args.out_dir, args.sae_id)
    print(f"Wrote {paths.input_sae} and {paths.output_sae} (architecture 'topk')")
    return 0
