"""`jsae push CHECKPOINT_DIR REPO_ID`: upload a pair's inference files and a model card."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint_dir", help="folder with cfg.json and sae_weights.safetensors")
    parser.add_argument("repo_id", help="Hub repo id, 'org/name' (created if missing)")
    parser.add_argument("--sae-id", default=None, help="sub-folder in the repo (default: blocks.L.mlp)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--eval-json", default=None, help="eval JSON whose headline metrics go on the card")
    parser.add_argument("--dry-run", metavar="DIR", default=None, help="only stage the upload into DIR (no network)")


def run(args: argparse.Namespace) -> int:
    from sae_lens_jsae.card import push_to_hub, stage_for_push

    if args.dry_run:
        staged = stage_for_push(args.checkpoint_dir, args.dry_run, args.repo_id, args.sae_id, args.eval_json)
        print(f"Staged {', '.join(staged.files)} in {staged.folder}")
        return 0
    print(push_to_hub(args.checkpoint_dir, args.repo_id, args.sae_id, private=args.private, eval_json=args.eval_json))
    return 0
