#!/usr/bin/env python
"""The closed-form active Jacobian vs `torch.func.jacrev`, and its peak memory chunked vs not.

Pythia-70m-like sizes (d=512, d_mlp=2048, dense GELU, d_sae=16384, k=32), 1024 tokens, CPU.
Prints one JSON object. jacrev is slow at these sizes: it is timed on a handful of tokens
(one jacrev per token, the active sets held fixed) and scaled per token; the JSON says so.
Targets: closed form >= 1000x faster than jacrev; chunked peak memory <= 1/4 of unchunked.

    python benchmarks/bench_jacobian.py [--tokens 1024] [--jacrev-tokens 8] [--full-jacrev-tokens 2] [--threads N] [--quick]
"""

import argparse
import json
import sys

import torch
from bench import QUICK_SIZES, SIZES, bench_jacrev, bench_memory, machine_info  # benchmarks/bench.py: this script's folder is on sys.path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--jacrev-tokens", type=int, default=8)
    parser.add_argument("--full-jacrev-tokens", type=int, default=2, help="tokens for jacrev of the whole d_sae x d_sae map")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = (QUICK_SIZES if args.quick else SIZES)["pythia70m_like"]
    tokens = 64 if args.quick else args.tokens
    device = torch.device("cpu")
    result = {"sizes": dict(zip(("d_model", "d_mlp", "act_fn", "gated", "d_sae", "k"), size)), "machine": machine_info(device)}
    result.update(bench_jacrev(size, tokens, 4 if args.quick else args.jacrev_tokens, device, n_full_jacrev=args.full_jacrev_tokens))
    memory = bench_memory(size, tokens, device, chunk_bytes=(1 << 16) if args.quick else 256 * 2**20)
    result.update({k: v for k, v in memory.items() if k != "tokens"})
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
