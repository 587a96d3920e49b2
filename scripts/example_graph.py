"""Regenerate docs/example_report/graphs: a sotu sentence's graph for the demo JSAE and its λ=0 pair,
the latent pages of the graph's strongest latents, and a headless-Chromium screenshot.

    python scripts/example_graph.py outputs/demo/trained/jacobian_coefficient=auto outputs/demo/trained/jacobian_coefficient=0

Latent pages are computed over `--tokens` sotu eval tokens (in a temporary folder); only the pages
of the `--pages` most influential latents per layer of each graph are kept, so the docs stay small
(the viewer says "no latent page" for the others).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from sae_lens_jsae.graph import completeness_table, load_pair_and_model, sotu_prompts, write_graphs
from sae_lens_jsae.latents import write_latent_pages
from sae_lens_jsae.serve import screenshot_graph
from sae_lens_jsae.sources import sotu_token_dataset

ROOT = Path(__file__).parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pair", help="the demo JSAE folder")
    p.add_argument("baseline", help="the demo λ=0 pair folder")
    p.add_argument("--out", default=str(ROOT / "docs" / "example_report" / "graphs"))
    p.add_argument("--screenshot", default=str(ROOT / "docs" / "example_report" / "graph.png"))
    p.add_argument("--tokens", type=int, default=102_400, help="sotu eval tokens for the latent pages")
    p.add_argument("--pages", type=int, default=12, help="latent pages kept per layer and graph")
    p.add_argument("--sentence", type=int, default=0, help="which sotu eval sentence of 10–20 words (in file order)")
    p.add_argument("--node-threshold", type=float, default=0.5, help="nodes kept (fraction of |attribution| per layer; lower than jsae graph's 0.8 for a readable picture)")
    p.add_argument("--edge-threshold", type=float, default=0.8, help="edges kept among them (fraction of their |attribution|)")
    args = p.parse_args(argv)

    (sae, sae0), model = load_pair_and_model([args.pair, args.baseline], "gguf-smollm2", None)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    prompt = sotu_prompts(args.sentence + 1, min_words=10, max_words=20)[args.sentence]
    results = write_graphs({"jsae": sae, "lambda0": sae0}, model, [prompt], out, node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    header, rows = completeness_table(results)
    (out / "completeness.json").write_text(json.dumps([dict(zip(header, r)) for r in rows], indent=1))
    print("\n".join("\t".join(map(str, r)) for r in [header, *rows]))

    ds = sotu_token_dataset(model.tokenizer, 128, split="eval")
    tokens = torch.tensor(ds["input_ids"][: -(-args.tokens // 128)])
    with tempfile.TemporaryDirectory() as tmp:
        for name, pair in (("jsae", sae), ("lambda0", sae0)):
            graph = json.loads(next(r.path for r in results if r.name == name).read_text())
            write_latent_pages(pair, model, tokens, tmp)
            keep = set()
            for layer in ("0", "1"):
                nodes = sorted((n for n in graph["nodes"] if n["layer"] == layer and n["feature"] >= 0), key=lambda n: -(n["influence"] or 0))
                keep |= {n["feature_file"] for n in nodes[: args.pages]}
            for f in keep:
                (out / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(tmp) / f, out / f)
    shot = screenshot_graph(out, next(r.path.stem for r in results if r.name == "jsae"), args.screenshot)
    print(f"wrote {out} and {shot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
