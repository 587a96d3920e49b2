"""`jsae bench`: training-speed, Jacobian and memory benchmarks (sae_lens_jsae.bench)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes (~1 min): checks the benchmark runs, numbers mean nothing")
    parser.add_argument("--batch", type=int, default=None, help="tokens per step (default 4096; 64 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs; written as a separate result file)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median; >= 5)")
    parser.add_argument("--skip-offline", action="store_true", help="skip the offline-model sections (sweep, activations, end-to-end)")
    parser.add_argument("--profile", action="store_true", help="also profile JSAE steps (top ops, self CPU time per step; CPU only)")
    parser.add_argument(
        "--no-keep-freed-memory", action="store_true", help="leave glibc's default (unmap large freed blocks) instead of util.keep_freed_memory"
    )
    parser.add_argument("--post-norm-only", action="store_true", help="run only section 6 (penalty with vs without a post-MLP norm)")
    parser.add_argument("--data-parallel-only", action="store_true",
                        help="run only section 7: torchrun 2 gloo ranks vs 1 process on the offline default (needs 2 idle cores, ≈ 5 min)")
    parser.add_argument("--out-dir", default="benchmarks/results", help="where the JSON result is written")


def run(args: argparse.Namespace) -> int:
    import json

    from sae_lens_jsae.bench import run_benchmark, write_result

    result = run_benchmark(
        quick=args.quick,
        batch=args.batch,
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
        repeats=max(5, args.repeats),
        skip_offline=args.skip_offline,
        keep_memory=not args.no_keep_freed_memory,
        profile=args.profile,
        post_norm_only=args.post_norm_only,
        data_parallel_only=args.data_parallel_only,
    )
    path = write_result(result, args.out_dir)
    result["result_file"] = str(path)
    print(json.dumps(result, indent=2, default=str))
    return 0
