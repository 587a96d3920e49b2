#!/usr/bin/env python
"""Per-step cost of the training objectives for faithful graphs (issue 27), in ONE process run.

    python benchmarks/bench_objectives.py [--quick] [--batch 4096] [--repeats 5]

One full training step (forward with decoder renorm, backward, Adam) of each objective on the
offline default's shapes (SmolLM2-135M layer 3: d 576, gated SiLU MLP d_mlp 1536; d_sae 2304,
k 32; `jacobian_dtype` bfloat16 as configs/smollm2-135m-l3-reference.yaml) with a random MLP:
the plain pair (λ = 0), the paper's loss at the rule, the recommended loss (c = 1, h = 2, λ = 0),
the recommended loss plus the intervention-consistency term (w = 1) or the replacement term
(r = 1); a skip transcoder k = 32 with and without its consistency term. The objectives are
timed in interleaved rounds (round r times every objective once), so a background load slows
them alike; each ratio is the median over rounds of the per-round ratio. Writes one JSON under
benchmarks/results/ and prints it. The issue's target: ≤ 1.5× the recommended loss's step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import jsae_train_step, machine_info, make_pair, mlp_like_inputs, random_mlp  # noqa: E402

SIZE = (576, 1536, "silu", True, 2304, 32)
QUICK_SIZE = (36, 48, "silu", True, 192, 8)
RECOMMENDED = {"mlp_reconstruction_coefficient": 1.0, "edge_sparsity_coefficient": 2.0}
PAIRS: dict[str, tuple[float, dict[str, Any]]] = {
    "plain_pair": (0.0, {}),
    "paper_loss_rule": (-1.0, {}),  # -1: the rule 0.5·k²/d
    "recommended": (0.0, RECOMMENDED),
    "recommended+intervention_consistency": (0.0, {**RECOMMENDED, "intervention_consistency_coefficient": 1.0}),
    "recommended+replacement": (0.0, {**RECOMMENDED, "replacement_coefficient": 1.0}),
}


def pair_step(size: tuple, lam: float, fields: dict[str, Any], x: torch.Tensor):
    d, _, _, _, d_sae, k = size
    lam = 0.5 * k * k / d if lam < 0 else lam
    sae = make_pair(size, lam, torch.device("cpu"), jacobian_dtype="bfloat16")
    for name, value in fields.items():
        setattr(sae.cfg, name, value)
    return jsae_train_step(sae, x, lam)


def transcoder_step(size: tuple, consistency: float, x: torch.Tensor):
    from sae_lens.saes.sae import TrainStepInput

    from sae_lens_jsae.transcoder import TopKSkipTranscoderTrainingConfig, TopKTrainingSkipTranscoder

    d, d_mlp, act_fn, gated, d_sae, k = size
    torch.manual_seed(0)
    tc = TopKTrainingSkipTranscoder(TopKSkipTranscoderTrainingConfig(d_in=d, d_sae=d_sae, k=k, intervention_consistency_coefficient=consistency))
    tc.attach_mlp(random_mlp(d, d_mlp, act_fn, gated, torch.device("cpu"), torch.float32))
    opt = torch.optim.Adam(tc.parameters(), lr=5e-4)

    def step() -> None:
        out = tc.training_forward_pass(TrainStepInput(sae_in=x.clone(), coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(quick: bool, batch: int, repeats: int, warmup: int = 2) -> dict[str, Any]:
    size = QUICK_SIZE if quick else SIZE
    x = mlp_like_inputs(batch, size[0], torch.device("cpu"), torch.float32)
    steps = {name: pair_step(size, lam, fields, x) for name, (lam, fields) in PAIRS.items()}
    steps["skip_transcoder"] = transcoder_step(size, 0.0, x)
    steps["skip_transcoder+intervention_consistency"] = transcoder_step(size, 1.0, x)
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - t0)

    def ratio(a: str, b: str) -> float:
        return statistics.median(sa / sb for sa, sb in zip(seconds[a], seconds[b]))

    return {
        "benchmark": "bench_objectives",
        "size": {"d": size[0], "d_mlp": size[1], "act_fn": size[2], "gated": size[3], "d_sae": size[4], "k": size[5]},
        "batch_tokens": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "median_step_s": {name: round(statistics.median(s), 4) for name, s in seconds.items()},
        "step_ratio_vs_recommended": {name: round(ratio(name, "recommended"), 3) for name in PAIRS},
        "step_ratio_vs_plain_pair": {name: round(ratio(name, "plain_pair"), 3) for name in PAIRS},
        "step_ratio_vs_paper_loss": {name: round(ratio(name, "paper_loss_rule"), 3) for name in PAIRS},
        "transcoder_consistency_ratio": round(ratio("skip_transcoder+intervention_consistency", "skip_transcoder"), 3),
        "target": "intervention consistency ≤ 1.5× the recommended loss's step",
        "machine": machine_info(torch.device("cpu")),
        "samples_s": {name: [round(v, 4) for v in s] for name, s in seconds.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, numbers mean nothing")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    result = run(args.quick, 64 if args.quick else args.batch, 2 if args.quick else args.repeats)
    path = None
    if not args.quick:
        path = Path(__file__).parent / "results" / f"bench-objectives-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples_s"}, indent=2))
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
