"""`jsae graph PAIR "prompt" [...] --out DIR [--baseline λ0_PAIR]`: attribution graphs of prompts."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pair", help="JSAE folder (cfg.json + sae_weights.safetensors)")
    p.add_argument("prompts", nargs="*", help="prompt text(s); none: a few sotu eval sentences")
    p.add_argument("--out", required=True, help="folder for {slug}.json and graph-metadata.json (what `jsae serve` shows)")
    p.add_argument("--baseline", help="a λ=0 pair: also graph it on the same prompts and compare completeness")
    p.add_argument("--node-threshold", type=float, default=0.8, help="keep the nodes carrying this fraction of |attribution| (per layer)")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="then the edges carrying this fraction of theirs")
    p.add_argument("--n-sotu", type=int, default=3, help="sotu sentences when no prompt is given")
    p.add_argument("--screenshot", metavar="PNG", help="also save a headless-Chromium screenshot of the first graph (needs the browser extra and a Chromium)")
    p.add_argument("--model-source", default="gguf-smollm2", help="sae_lens_jsae.sources model source ('gguf-smollm2' or 'hub')")
    p.add_argument("--model-name", default=None, help="model name (default: the pair's cfg metadata model_name)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from sae_lens_jsae.graph import completeness_table, load_pair_and_model, sotu_prompts, write_graphs

    for name in ("node_threshold", "edge_threshold"):
        if not 0 < getattr(args, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must lie in (0, 1].")
    if args.screenshot:
        from sae_lens_jsae.serve import require_browser

        require_browser()
    sources = [args.pair] + ([args.baseline] if args.baseline else [])
    saes, model = load_pair_and_model(sources, args.model_source, args.model_name, args.device)
    pairs = dict(zip(["jsae", "lambda0"] if args.baseline else ["jsae"], saes))
    prompts = args.prompts or sotu_prompts(args.n_sotu)
    results = write_graphs(pairs, model, prompts, args.out, node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    header, rows = completeness_table(results)
    print("\t".join(header))
    for row in rows:
        print("\t".join(str(c) for c in row))
    print(f"wrote {len(results)} graph(s) and graph-metadata.json to {args.out}; view: jsae serve {args.out}")
    if args.screenshot:
        from sae_lens_jsae.serve import screenshot_graph

        print(f"screenshot: {screenshot_graph(args.out, results[0].path.stem, args.screenshot)}")
    return 0
