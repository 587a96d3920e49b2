"""`jsae train CONFIG [--set key=value ...] [--sweep key=v1,v2,...] [--resume DIR]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/); sections runner:, sae: and top-level options")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted keys: sae.k=16, runner.lr=1e-3, dataset=sotu (repeatable)")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="train one JSAE per value of an SAE field from ONE activation stream, "
                             "e.g. jacobian_coefficient=0,0.5,1,2 (0 = plain TopK pair)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue a killed run: a checkpoint dir, or a run's checkpoint root (latest complete one)")


def run(args: argparse.Namespace) -> int:
    import yaml

    from sae_lens_jsae.config import load_run_config
    from sae_lens_jsae.training import (
        JacobianSAETrainingRunner,
        latest_checkpoint,
        train_sweep,
    )

    overrides = list(args.overrides)
    if args.resume:
        checkpoint = latest_checkpoint(args.resume) or args.resume
        overrides.append(f"runner.resume_from_checkpoint={checkpoint}")
    cfg, options = load_run_config(args.config, overrides)
    if args.sweep:
        key, _, raw = args.sweep.partition("=")
        values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--sweep {args.sweep!r}: expected KEY=V1,V2,... (e.g. jacobian_coefficient=0,0.5,1)")
        saes = train_sweep(cfg, key.removeprefix("sae."), values, options)
        print(f"trained {len(saes)} JSAEs under {cfg.output_path}: {', '.join(saes)}")
        return 0
    JacobianSAETrainingRunner(cfg, options).run()
    print(f"trained JSAE saved to {cfg.output_path}")
    return 0
