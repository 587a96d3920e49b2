"""`jsae train CONFIG [--set key=value ...] [--sweep key=v1,v2,...[;key2=...]] ... [--resume DIR]`; under torchrun, data parallel."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/); sections runner:, sae: and top-level options")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted keys: sae.k=16, runner.lr=1e-3, dataset=sotu (repeatable)")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append", default=[],
                        help="train one JSAE per value of an SAE field from ONE activation stream, "
                             "e.g. jacobian_coefficient=0,0.5,1,2 (0 = plain TopK pair); several keys joined "
                             "by ';' form a grid; a repeated --sweep adds its pairs to the same stream")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue a killed run: a checkpoint dir, or a run's checkpoint root (latest complete one)")


def run(args: argparse.Namespace) -> int:
    # before the imports below (sae_lens, torch: seconds), so a mistyped path answers at once
    if not os.path.isfile(args.config):
        raise FileNotFoundError(f"config file {args.config} does not exist" + (" (it is a directory)" if os.path.isdir(args.config) else "") + ".")
    if args.resume and not os.path.exists(args.resume):
        raise FileNotFoundError(f"--resume {args.resume} does not exist (a checkpoint dir, or a run's checkpoint root).")
    from sae_lens_jsae.config import load_run_config
    from sae_lens_jsae.training import JacobianSAETrainingRunner, TrainingInterrupted, train_variants

    overrides = list(args.overrides)
    if args.resume:
        # a checkpoint root holds every run that used it: the runner, which knows this run's SAEs,
        # picks the latest checkpoint of this run's shape there (training.resume_point)
        overrides.append(f"runner.resume_from_checkpoint={args.resume}")
    cfg, options = load_run_config(args.config, overrides)
    if options.keep_freed_memory is None:  # this process is the CLI's own: on unless the config says no
        options.keep_freed_memory = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_distributed(args, cfg, options)
    if args.sweep:
        saes = train_variants(cfg, _parse_sweep(args.sweep), options)
        print(f"trained {describe_trained(saes)} under {cfg.output_path}: {', '.join(saes)}")
        return 0
    try:
        JacobianSAETrainingRunner(cfg, options).run()
    except TrainingInterrupted as stop:
        resume = f"; continue with the same arguments plus --resume {stop.checkpoint}" if stop.checkpoint else ""
        print(f"jsae: {stop}{resume}", file=sys.stderr)
        return 130
    print(f"trained {_kind(cfg.sae)} saved to {cfg.output_path}")
    return 0


def _kind(sae_cfg: Any) -> str:
    """"JSAE" for a pair's config, "transcoder" for a transcoder's."""
    return "JSAE" if sae_cfg.architecture() == "jacobian" else "transcoder"


def describe_trained(saes: dict[str, Any]) -> str:
    """What a sweep trained, in words: "2 JSAEs and 1 transcoder", "3 JSAEs", "nothing"."""
    counts: dict[str, int] = {}
    for sae in saes.values():
        kind = _kind(sae.cfg)
        counts[kind] = counts.get(kind, 0) + 1
    parts = [f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in sorted(counts.items())]
    return " and ".join(parts) or "nothing"


def _parse_sweep(specs: list[str]) -> list[dict[str, Any]]:
    """The pairs of `--sweep` specs (a ValueError, reported as `jsae: error: …`, when malformed)."""
    from sae_lens_jsae.training import sweep_grid

    return sweep_grid(specs)


def _run_distributed(args: argparse.Namespace, cfg: Any, options: Any) -> int:
    """One rank of `torchrun ... -m sae_lens_jsae train` (sae_lens_jsae/distributed.py)."""
    from sae_lens_jsae.distributed import (
        barrier_and_close,
        init_from_env,
        progress_bars_disabled,
        train_distributed,
        train_variants_over_ranks,
    )

    context = init_from_env(cfg.device, options.dist_backend, options.dist_timeout_s)
    assert context is not None
    with progress_bars_disabled(not context.is_main):  # one progress bar per job (rank 0's)
        if args.sweep:
            saes = train_variants_over_ranks(cfg, _parse_sweep(args.sweep), options, context)
            print(f"rank {context.rank}/{context.world_size} trained {describe_trained(saes)} under {cfg.output_path}: {', '.join(saes)}")
        else:
            train_distributed(cfg, options, context)
            if context.is_main:
                print(f"trained {_kind(cfg.sae)} saved to {cfg.output_path} ({context.world_size} ranks, {context.backend})")
    barrier_and_close(context)
    return 0
