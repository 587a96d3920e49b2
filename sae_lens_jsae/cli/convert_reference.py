"""`jsae convert-reference DIR OUT`: convert an authors' reference artifact into a JSAE folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="reference artifact folder (cfg.json + safetensors state dict)")
    parser.add_argument("out_dir", help="where to write cfg.json and sae_weights.safetensors")
    parser.add_argument("--mlp-act-fn", default=None, help="the MLP's activation (default: from cfg, else gelu)")
    parser.add_argument("--allow-pickle", action="store_true", help="accept a pickled .pt/.bin state dict (trusted files only)")


def run(args: argparse.Namespace) -> int:
    from sae_lens_jsae.reference import convert_reference

    sae = convert_reference(args.directory, args.out_dir, mlp_act_fn=args.mlp_act_fn, allow_pickle=args.allow_pickle)
    print(f"Wrote a Jacobian SAE pair (d_sae={sae.cfg.d_sae}, k={sae.cfg.k}) to {args.out_dir}")
    return 0
