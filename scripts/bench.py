#!/usr/bin/env python
"""Benchmark the Jacobian SAE (see sae_lens_jsae/bench.py and docs/performance.md).

python scripts/bench.py [--quick] [--batch N] [--threads N] [--device cuda --bf16]
"""

import sys

from sae_lens_jsae.bench import main

if __name__ == "__main__":
    sys.exit(main())
