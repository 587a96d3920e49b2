"""`jsae eval CHECKPOINT [--baseline λ0_CHECKPOINT] [--saes release/id …]`: metrics, JSONs and report.

`jsae eval SWEEP_DIR [SWEEP_DIR …] [--randomized-sweep DIR …]`: every pair of the sweeps (what
`jsae train --sweep` writes) on the same tokens, and a report led by the λ frontier.
"""

from __future__ import annotations

import argparse
from typing import Any


SPLICE_CHOICES = ("input", "output", "replacement")
"""`evals.splice.SPLICES`, spelled out so that `--help` imports no torch (tests/test_cli.py)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="+", help="JSAE checkpoint directory (cfg.json + sae_weights.safetensors), "
                   "or one or more sweep directories (subfolders = pairs, as `jsae train --sweep` writes)")
    p.add_argument("--baseline", help="λ=0 pair checkpoint to compare against (single-checkpoint mode)")
    p.add_argument("--randomized-sweep", nargs="*", default=[], metavar="DIR",
                   help="sweep directories (or checkpoints) trained on the randomized model; evaluated on it (--seed) with the same tokens")
    p.add_argument("--saes", nargs="*", default=[], help="other SAELens SAEs on the same hook: 'release/sae_id' or a directory (SAEBench core eval)")
    p.add_argument("--also", nargs="*", default=[], help="summary JSONs of earlier `jsae eval` runs to include (λ sweep, randomized control)")
    p.add_argument("--output-dir", default="eval_results", help="where JSONs, PNGs and report.md/html go")
    p.add_argument("--model-source", default="gguf-smollm2", help="sae_lens_jsae.sources model source ('gguf-smollm2' or 'hub')")
    p.add_argument("--model-name", default=None, help="model name (default: the checkpoint's cfg metadata model_name)")
    p.add_argument("--randomized", action="store_true", help="evaluate on the re-initialised model (randomized-LLM control); --seed picks the init")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--n-tokens", type=int, default=102_400, help="tokens for Jacobian sparsity")
    p.add_argument("--n-splice-tokens", type=int, default=32_768, help="tokens for the CE/KL splices and explained variances")
    p.add_argument("--n-core-reconstruction-tokens", type=int, default=4096, help="tokens for SAEBench core CE/KL")
    p.add_argument("--n-core-sparsity-tokens", type=int, default=32_768, help="tokens for SAEBench core variance/L0/dead latents")
    p.add_argument("--n-linearity-tokens", type=int, default=512)
    p.add_argument("--n-edge-tokens", type=int, default=32_768,
                   help="tokens for the edge measure (edges per downstream node for 80%%/90%% of its attribution; 0: off)")
    p.add_argument("--n-intervention-tokens", type=int, default=8192,
                   help="tokens for intervention faithfulness (weaken the top-8 upstream latents, rerun the MLP; 0: skip)")
    p.add_argument("--n-edge-path-tokens", type=int, default=0,
                   help="pairs: the edge measure again with integrated gradients (8 midpoints) on this many tokens (0: skip)")
    p.add_argument("--splices", nargs="+", choices=SPLICE_CHOICES, default=None,
                   help="sweep mode: which splices to score (default: all three; `replacement` alone is what the "
                        "frontier reads and a third of the pairs' model runs)")
    p.add_argument("--first-rows", action="store_true",
                   help="score the eval split's first rows (its earliest speeches, 1792-1824) instead of rows spread over every speech")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--no-core", action="store_true", help="skip SAEBench's core eval of the two SAEs (single-checkpoint mode)")
    p.add_argument("--core", action="store_true", help="sweep mode: also run SAEBench's core eval of every SAE (off by default there)")
    p.add_argument("--processes", type=int, default=1,
                   help="sweep mode: evaluate the pairs in this many worker processes, one thread each (e.g. the number of CPU cores)")
    p.add_argument("--n-graphs", type=int, default=3,
                   help="attribution graphs of this many sotu sentences in the report, for the JSAE and its λ=0 pair (0: none)")


def run(args: argparse.Namespace) -> int:
    from functools import partial
    from pathlib import Path

    import torch

    from sae_lens_jsae.evals.pipeline import evaluate_and_compare
    from sae_lens_jsae.evals.sweep import evaluate_sweeps_and_compare, find_pairs
    from sae_lens_jsae.graph import pair_layer_and_model
    from sae_lens_jsae.sources import check_layer, load_hooked_model, sotu_token_dataset

    sweep_mode = len(args.checkpoint) > 1 or bool(args.randomized_sweep) or not (Path(args.checkpoint[0]) / "cfg.json").exists()
    if args.processes < 1:
        raise ValueError(f"--processes must be ≥ 1, got {args.processes}.")
    if args.processes > 1 and not sweep_mode:
        raise ValueError("--processes is for sweeps (several pairs); a single checkpoint is evaluated in one process.")
    if args.splices and not sweep_mode:
        raise ValueError("--splices is for sweeps; a single checkpoint is scored on all three splices.")
    if sweep_mode and args.baseline:
        raise ValueError("--baseline is for one checkpoint; a sweep directory brings its own λ=0 pair (jacobian_coefficient=0).")
    from sae_lens_jsae.evals.sweep import is_transcoder_dir
    from sae_lens_jsae.hub import check_pair_files

    for source in [*args.checkpoint, *args.randomized_sweep, *([args.baseline] if args.baseline else [])]:
        for pair in find_pairs(source):
            check_pair_files(pair)  # a bad cfg.json or a truncated safetensors file: one line, before the model loads
    first = find_pairs(args.checkpoint[0])[0]
    if not sweep_mode and is_transcoder_dir(first):
        raise ValueError(f"{first} is a transcoder: evaluate it beside a JSAE pair, e.g. the sweep folder holding both (jsae eval SWEEP_DIR).")
    layer, saved_name = pair_layer_and_model(first)
    model_name = args.model_name or saved_name
    check_layer(args.model_source, model_name, layer)  # before the weights load
    model = load_hooked_model(args.model_source, model_name, device=args.device, randomize=args.randomized, seed=args.seed)
    n_wanted = max(args.n_tokens, args.n_splice_tokens, args.n_core_sparsity_tokens, args.n_edge_tokens, args.n_intervention_tokens,
                   args.n_edge_path_tokens)
    heldout = None
    if args.first_rows:
        ds = sotu_token_dataset(model.tokenizer, args.context_size, split="eval")
        tokens = torch.tensor(ds["input_ids"][: min(-(-n_wanted // args.context_size), len(ds))])
    else:  # rows spread over every eval speech, recorded; intervals clustered by speech (evals/heldout.py)
        from sae_lens_jsae.evals.heldout import sotu_heldout

        held = sotu_heldout(model.tokenizer, args.context_size, n_wanted, seed=args.seed)
        tokens, heldout = held.tokens, held.record()
        print(f"held-out tokens: {tokens.shape[0]} rows of {args.context_size} spread over {heldout['n_speeches']} eval speeches (seed {args.seed})")
    if tokens.numel() < max(args.n_tokens, args.n_splice_tokens):
        print(f"note: the eval split has {tokens.numel()} tokens (< the requested {max(args.n_tokens, args.n_splice_tokens)}); using all of them")
    kw = dict(n_tokens=args.n_tokens, n_splice_tokens=args.n_splice_tokens, n_core_reconstruction_tokens=args.n_core_reconstruction_tokens,
              n_core_sparsity_tokens=args.n_core_sparsity_tokens, n_linearity_tokens=args.n_linearity_tokens,
              n_edge_tokens=args.n_edge_tokens, n_intervention_tokens=args.n_intervention_tokens, batch_size=args.batch_size,
              heldout=heldout, **({"n_edge_path_tokens": args.n_edge_path_tokens} if args.n_edge_path_tokens else {}))
    if sweep_mode:
        kw["splices"] = args.splices
        rmodel = load_hooked_model(args.model_source, model_name, device=args.device, randomize=True, seed=args.seed) if args.randomized_sweep else None
        report = evaluate_sweeps_and_compare(args.checkpoint, model, tokens, args.output_dir, randomized_dirs=args.randomized_sweep,
                                             randomized_model=rmodel, randomized=args.randomized, also=args.also, core=args.core,
                                             processes=args.processes, model_factory=partial(load_hooked_model, args.model_source, model_name,
                                                                                             device=args.device, randomize=args.randomized, seed=args.seed), **kw)
        pairs = graph_pairs([p for d in args.checkpoint for p in find_pairs(d)])
    else:
        report = evaluate_and_compare(args.checkpoint[0], model, tokens, args.output_dir, baseline=args.baseline, saes=args.saes, also=args.also,
                                      randomized=args.randomized, core=not args.no_core, **kw)
        pairs = {"jsae": args.checkpoint[0], **({"lambda0": args.baseline} if args.baseline else {})}
    if args.n_graphs > 0 and pairs and not args.randomized:
        from sae_lens_jsae.evals.pipeline import load_checkpoint
        from sae_lens_jsae.graph import add_graphs_to_report, sotu_prompts

        graphs = add_graphs_to_report(report, {n: load_checkpoint(c, model).to(args.device) for n, c in pairs.items()}, model, sotu_prompts(args.n_graphs))
        print(f"wrote {len(graphs)} attribution graphs to {Path(report).parent / 'graphs'} (view: jsae serve {Path(report).parent / 'graphs'})")
    print(f"wrote {report} and {Path(report).with_suffix('.html')}")
    return 0


def graph_pairs(paths: list[Any]) -> dict[str, Any]:
    """The pairs of a sweep the report draws graphs for: the JSAE at the rule-of-thumb λ (paper
    loss; else the smallest λ > 0) as "jsae", and the λ=0 pair as "lambda0"."""
    from sae_lens_jsae.evals.sweep import is_transcoder_dir, label_pairs, load_pair

    pairs = label_pairs([load_pair(p) for p in paths if not is_transcoder_dir(p)])
    plain = [p for p in pairs if p.series_label == "paper loss"] or pairs
    zero = next((p for p in plain if p.jacobian_coefficient == 0), None)
    rule = next((p for p in plain if p.path.name.endswith("=auto")), None)
    jsae = rule or min((p for p in plain if p.jacobian_coefficient > 0), key=lambda p: p.jacobian_coefficient, default=None)
    return {name: p.path for name, p in (("jsae", jsae), ("lambda0", zero)) if p is not None}
