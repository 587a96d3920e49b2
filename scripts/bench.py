#!/usr/bin/env python
"""Benchmark the Jacobian SAE (see sae_lens_jsae/bench.py and docs/performance.md).

python scripts/bench.py [--quick] [--batch N] [--threads N] [--device cuda --bf16]
python scripts/bench.py --data-parallel-only   # torchrun: 2 gloo ranks vs 1 process (needs 2 idle cores)
"""

import sys

from sae_lens_jsae.bench import main

if __name__ == "__main__":
    sys.exit(main())
