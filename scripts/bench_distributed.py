#!/usr/bin/env python
"""Data-parallel scaling on CPU: training tokens/s of `torchrun --nproc_per_node N` (gloo, one
thread per rank) against one process (one thread) on the offline default
(configs/smollm2-135m-l3-demo.yaml: SmolLM2-135M layer 3, sotu), with each rank's
communication seconds per step (activation all-gather, DDP gradient all-reduce, statistics).

Both runs time `runner.run()` (the training loop with its LLM forward, after the model is
loaded): `speedup` is the ratio of wall-clock tokens/s. The host's load average is recorded: on a
shared machine the wall-clock ratio is only as good as the idle cores, so the CPU seconds of each
process are reported too (`cpu_time_speedup_bound`: the one process's over the busiest rank's).
The result is one JSON object, printed and written to
benchmarks/results/bench_distributed-cpu-<time>.json.

python scripts/bench_distributed.py [--tokens 32768] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smollm2-135m-l3-demo.yaml"


def worker(args: argparse.Namespace) -> None:
    """One process (or one rank): train on the demo config, write timings to args.out."""
    import torch

    torch.set_num_threads(1)
    from sae_lens_jsae.config import load_run_config
    from sae_lens_jsae.distributed import DistributedTrainingRunner, barrier_and_close, init_from_env
    from sae_lens_jsae.training import JacobianSAETrainingRunner

    overrides = [f"runner.training_tokens={args.tokens}", f"runner.output_path={args.work}/out", f"runner.checkpoint_path={args.work}/ckpt",
                 "checkpoint_every_tokens=null", "runner.n_checkpoints=0", f"log_path={args.work}/log.jsonl"]
    cfg, options = load_run_config(CONFIG, overrides)
    context = init_from_env(cfg.device, options.dist_backend, options.dist_timeout_s)
    runner = JacobianSAETrainingRunner(cfg, options) if context is None else DistributedTrainingRunner(cfg, options, context=context)
    t0, cpu0 = time.perf_counter(), time.process_time()
    runner.run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result = {"run_s": seconds, "cpu_s": cpu, "tokens_per_s": args.tokens / seconds, "steps": args.tokens // cfg.train_batch_size_tokens}
    if context is not None:
        times = context.times
        result |= {"rank": context.rank, **{f"{k}_per_step": v / result["steps"] for k, v in vars(times).items()}}
        result["comm_s_per_step"] = sum(vars(times).values()) / result["steps"]
    Path(f"{args.out}.{0 if context is None else context.rank}").write_text(json.dumps(result))
    barrier_and_close(context)


def launch(nproc: int, tokens: int, work: Path) -> dict:
    out = work / "result"
    cmd = [sys.executable, __file__, "--worker", "--tokens", str(tokens), "--work", str(work), "--out", str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    load = os.getloadavg()
    subprocess.run(cmd, env=env, check=True)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(nproc)]
    return {"nproc": nproc, "loadavg_at_start": [round(x, 2) for x in load], "rank0": ranks[0], "ranks": ranks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32768, help="training tokens per run (a multiple of the 2048-token batch)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        single = launch(1, args.tokens, Path(tmp) / "single")
        parallel = launch(args.nproc, args.tokens, Path(tmp) / "parallel")
    result = {
        "benchmark": "data_parallel_cpu",
        "config": str(CONFIG.relative_to(ROOT)),
        "training_tokens": args.tokens,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads_per_process": 1},
        "single": single,
        "parallel": parallel,
        "speedup": parallel["rank0"]["tokens_per_s"] / single["rank0"]["tokens_per_s"],
        # CPU seconds (all threads) of the one process / of the busiest rank: the speedup if
        # every rank had a core to itself (wall time on a shared machine also counts waiting)
        "cpu_time_speedup_bound": single["rank0"]["cpu_s"] / max(r["cpu_s"] for r in parallel["ranks"]),
        "comm_s_per_step_rank0": parallel["rank0"]["comm_s_per_step"],
        "step_s_parallel": parallel["rank0"]["run_s"] / parallel["rank0"]["steps"],
    }
    path = ROOT / "benchmarks" / "results" / f"bench_distributed-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
