"""`jsae eval CHECKPOINT [--baseline λ0_CHECKPOINT] [--saes release/id …]`: metrics, JSONs and report."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="JSAE checkpoint directory (cfg.json + sae_weights.safetensors)")
    p.add_argument("--baseline", help="λ=0 pair checkpoint to compare against")
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
    p.add_argument("--n-splice-tokens", type=int, default=4096, help="tokens for the CE/KL splices")
    p.add_argument("--n-core-reconstruction-tokens", type=int, default=4096, help="tokens for SAEBench core CE/KL")
    p.add_argument("--n-core-sparsity-tokens", type=int, default=32_768, help="tokens for SAEBench core variance/L0/dead latents")
    p.add_argument("--n-linearity-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--no-core", action="store_true", help="skip SAEBench's core eval of the two SAEs")
    p.add_argument("--n-graphs", type=int, default=3, help="attribution graphs of this many sotu sentences in the report (0: none)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sae_lens_jsae.evals.pipeline import evaluate_and_compare
    from sae_lens_jsae.graph import pair_layer_and_model
    from sae_lens_jsae.sources import check_layer, load_hooked_model, sotu_token_dataset

    layer, saved_name = pair_layer_and_model(args.checkpoint)
    model_name = args.model_name or saved_name
    check_layer(args.model_source, model_name, layer)  # before the weights load
    model = load_hooked_model(args.model_source, model_name, device=args.device, randomize=args.randomized, seed=args.seed)
    ds = sotu_token_dataset(model.tokenizer, args.context_size, split="eval")
    n_seqs = -(-max(args.n_tokens, args.n_splice_tokens, args.n_core_sparsity_tokens) // args.context_size)
    tokens = torch.tensor(ds["input_ids"][: min(n_seqs, len(ds))])
    if tokens.numel() < args.n_tokens:
        print(f"note: the eval split has {tokens.numel()} tokens (< --n-tokens {args.n_tokens}); using all of them")
    report = evaluate_and_compare(
        args.checkpoint, model, tokens, args.output_dir, baseline=args.baseline, saes=args.saes, also=args.also, randomized=args.randomized,
        n_tokens=args.n_tokens, n_splice_tokens=args.n_splice_tokens, n_core_reconstruction_tokens=args.n_core_reconstruction_tokens,
        n_core_sparsity_tokens=args.n_core_sparsity_tokens, n_linearity_tokens=args.n_linearity_tokens, batch_size=args.batch_size, core=not args.no_core,
    )
    if args.n_graphs > 0:
        from sae_lens_jsae.evals.pipeline import load_checkpoint
        from sae_lens_jsae.graph import add_graphs_to_report, sotu_prompts

        pairs = {"jsae": args.checkpoint, **({"lambda0": args.baseline} if args.baseline else {})}
        graphs = add_graphs_to_report(report, {n: load_checkpoint(c).to(args.device) for n, c in pairs.items()}, model, sotu_prompts(args.n_graphs))
        print(f"wrote {len(graphs)} attribution graphs to {Path(report).parent / 'graphs'} (view: jsae serve {Path(report).parent / 'graphs'})")
    print(f"wrote {report} and {Path(report).with_suffix('.html')}")
    return 0
