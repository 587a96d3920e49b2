"""`jsae graph MODEL "prompt" [...] --out DIR [--baseline λ0_PAIR] [--compare [NAME=]FOLDER ...]`:
attribution graphs of prompts, one per model, side by side in `jsae serve`.

Several models on one prompt answer the question a reader brings to a graph — is the JSAE's
computation sparser than the λ = 0 pair's, or a transcoder's? — so every model given is drawn on
the same prompts: JSAE pairs against their own input SAE, transcoders against an upstream pair's
input SAE (`--upstream`, default the `--baseline` λ = 0 pair, as circuit-tracer's upstream
features). Each output latent keeps the edges reaching `--node-coverage` of its |attribution|
(0.8); `--node-threshold`/`--edge-threshold` switch to circuit-tracer's global thresholds.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pair", help="a JSAE folder (cfg.json + sae_weights.safetensors) or a transcoder folder (then give --upstream or --baseline)")
    p.add_argument("prompts", nargs="*", help="prompt text(s); none: a few sotu eval sentences")
    p.add_argument("--out", required=True, help="folder for {slug}.json and graph-metadata.json (what `jsae serve` shows)")
    p.add_argument("--baseline", help="a λ=0 pair: also graph it on the same prompts (named lambda0); the default --upstream")
    p.add_argument("--compare", action="append", default=[], metavar="[NAME=]FOLDER",
                   help="one more model (a pair or a transcoder) on the same prompts; repeatable")
    p.add_argument("--upstream", help="the pair whose input SAE gives a transcoder's upstream latents (default: --baseline, else the first pair)")
    p.add_argument("--node-coverage", type=float, default=None,
                   help="per output latent, keep the fewest incoming edges reaching this fraction of its |attribution| (default 0.8)")
    p.add_argument("--node-threshold", type=float, default=None,
                   help="circuit-tracer pruning instead: keep the nodes carrying this fraction of |attribution| per layer (its default 0.8)")
    p.add_argument("--edge-threshold", type=float, default=None, help="circuit-tracer pruning: then the edges carrying this fraction of theirs (its default 0.98)")
    p.add_argument("--n-sotu", type=int, default=3, help="sotu sentences when no prompt is given")
    p.add_argument("--screenshot", metavar="PNG", help="also save a headless-Chromium screenshot of the first graph (needs the browser extra and a Chromium)")
    p.add_argument("--model-source", default="gguf-smollm2", help="sae_lens_jsae.sources model source ('gguf-smollm2' or 'hub')")
    p.add_argument("--model-name", default=None, help="model name (default: the pair's cfg metadata model_name)")
    p.add_argument("--device", default="cpu")


def model_sources(args: argparse.Namespace) -> dict[str, str]:
    """{name: folder} of every model to draw: `pair` ("jsae", or the folder's name for a
    transcoder), `--baseline` ("lambda0"), then each `--compare` (its NAME or folder name)."""
    from sae_lens_jsae.graph import slugify
    from sae_lens_jsae.latents import is_transcoder_folder

    sources = {"jsae" if not is_transcoder_folder(args.pair) else slugify(Path(args.pair).name): args.pair}
    if args.baseline:
        sources["lambda0"] = args.baseline
    for spec in args.compare:
        name, _, folder = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        name = slugify(name or Path(folder).name)
        if name in sources:
            raise ValueError(f"two models are named {name!r}: name them, --compare NAME=FOLDER.")
        sources[name] = folder
    return sources


def upstream_source(args: argparse.Namespace, sources: dict[str, str]) -> str | None:
    """The upstream pair for transcoders (None when no transcoder is drawn)."""
    from sae_lens_jsae.latents import is_transcoder_folder

    if not any(is_transcoder_folder(f) for f in sources.values()):
        return args.upstream
    pairs = [f for f in sources.values() if not is_transcoder_folder(f)]
    choice = args.upstream or args.baseline or (pairs[0] if pairs else None)
    if choice is None:
        raise ValueError("a transcoder is drawn against an upstream pair's input SAE: pass --upstream PAIR (e.g. the λ = 0 pair).")
    return choice


def run(args: argparse.Namespace) -> int:
    from sae_lens_jsae.graph import completeness_table, load_models, pruning, sotu_prompts, write_graphs

    rule = pruning(args.node_coverage, args.node_threshold, args.edge_threshold)  # checked before any work
    if args.screenshot:
        from sae_lens_jsae.serve import require_browser

        require_browser()
    sources = model_sources(args)
    models, upstream, model = load_models(sources, upstream_source(args, sources), args.model_source, args.model_name, args.device)
    prompts = args.prompts or sotu_prompts(args.n_sotu)
    results = write_graphs(models, model, prompts, args.out, upstream=upstream, node_coverage=rule.node_coverage,
                           node_threshold=rule.node_threshold, edge_threshold=rule.edge_threshold)
    header, rows = completeness_table(results)
    print(f"pruning: {rule.describe()}")
    print("\t".join(header))
    for row in rows:
        print("\t".join(str(c) for c in row))
    print(f"wrote {len(results)} graph(s) and graph-metadata.json to {args.out}; view: jsae serve {args.out}")
    if args.screenshot:
        from sae_lens_jsae.serve import screenshot_graph

        print(f"screenshot: {screenshot_graph(args.out, results[0].path.stem, args.screenshot)}")
    return 0
