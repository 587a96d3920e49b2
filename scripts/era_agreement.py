"""Do a run's held-out scores depend on the era of the speeches? From the summaries `jsae eval`
wrote (no model runs): every model's scores on its held-out rows of the eval split's first
speeches (1790s-1860s) and on those of its last ones (1980s-2000s), each with a 95% interval
clustered by speech, and their difference (`evals.heldout.era_agreement`); then every model
against a reference model (the skip transcoder k = 32 by default) in each era
(`era_agreement_of_difference`): does the comparison hold in both?

    python scripts/era_agreement.py outputs/faithfulness-1m/eval --out docs/results/faithfulness-1m/era_agreement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sae_lens_jsae.evals  # noqa: F401  (registers every metric's summary block)
from sae_lens_jsae.evals.heldout import ERA_METRICS, era_agreement, era_agreement_of_difference

SHORT = {"splice.replacement.ce_loss_score": "CE-loss score", "explained_variance.replacement": "MLP-output EV",
         "intervention.a=0.1.full": "intervention a=0.1", "edges.edges_for_80": "edges for 80%"}


def _cell(r: dict) -> str:
    f, l, d = r["first"], r["last"], r["difference"]
    if d["value"] is None:
        return "n/a"
    mark = "" if r["agree"] else (" **differ**" if r.get("agree_familywise", True) else " **differ†**")
    return f"{f['value']:.3g} / {l['value']:.3g} (Δ {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]){mark}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("eval_dir", help="a `jsae eval` output folder (its *_summary.json files, transcoders/ included)")
    p.add_argument("--speeches", type=int, default=5, help="speeches per era (the split's first and last)")
    p.add_argument("--reference", default="skip_transcoder_k_32_summary", help="the model every other is compared with (file name part)")
    p.add_argument("--out", required=True, help="JSON to write; a .md table goes beside it")
    args = p.parse_args(argv)

    paths = sorted(Path(args.eval_dir).rglob("*_summary.json"))
    summaries = {q.name.removesuffix("_summary.json"): json.loads(q.read_text()) for q in paths}
    summaries = {k: s for k, s in summaries.items() if (s.get("heldout") or {}).get("speech")}
    if not summaries:
        raise SystemExit(f"{args.eval_dir}: no summaries with recorded held-out speeches")
    ref_name = next((k for k in summaries if f"{k}_summary".endswith(args.reference)), None)
    family = 1 - 0.05 / len(summaries)  # every model judged at once: ≤ 5% chance of any false disagreement
    own = {name: era_agreement(s, args.speeches) for name, s in summaries.items()}
    versus = {name: era_agreement_of_difference(s, summaries[ref_name], args.speeches)
              for name, s in summaries.items() if ref_name and name != ref_name}
    for name, s in summaries.items():  # the same judged as one family of models (Bonferroni)
        for key, r in era_agreement(s, args.speeches, level=family)["metrics"].items():
            own[name]["metrics"][key]["agree_familywise"] = r["agree"]
        if name in versus:
            for key, r in era_agreement_of_difference(s, summaries[ref_name], args.speeches, level=family)["metrics"].items():
                versus[name]["metrics"][key]["agree_familywise"] = r["agree"]
    first = next(iter(own.values()))
    result = {"first_speeches": first["first_speeches"], "last_speeches": first["last_speeches"], "reference": ref_name,
              "interval_method": "95% t intervals clustered by speech; the eras' difference: independent samples, Welch degrees of freedom",
              "familywise_level": family,
              "models": {n: r["metrics"] for n, r in own.items()},
              "versus_reference": {n: r["metrics"] for n, r in versus.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    keys = [k for k in ERA_METRICS if any(k in m for m in result["models"].values())]
    lines = [f"# Era check: the eval split's first {args.speeches} speeches against its last {args.speeches}", "",
             f"First: {', '.join(result['first_speeches'])}. Last: {', '.join(result['last_speeches'])}.",
             "Each cell: first / last (the eras' difference, 95% interval clustered by speech); **differ**: the interval excludes 0;",
             f"**differ†**: also at {family:.4f} (every model judged at once, Bonferroni: ≤ 5% chance of any false disagreement).",
             f"Command: `python scripts/era_agreement.py {args.eval_dir} --out {args.out}`.", "",
             "## Each model", "", "| model | " + " | ".join(SHORT[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(_cell(m[k]) if k in m else "–" for k in keys) + " |" for n, m in result["models"].items()]
    if versus:
        lines += ["", f"## Each model minus {ref_name}, in each era", "", "| model | " + " | ".join(SHORT[k] for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(_cell(m[k]) if k in m else "–" for k in keys) + " |" for n, m in result["versus_reference"].items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    n_own = sum(r["agree"] for m in result["models"].values() for r in m.values())
    n_family = sum(r["agree_familywise"] for m in result["models"].values() for r in m.values())
    n_all = sum(len(m) for m in result["models"].values())
    print(f"wrote {out} and {out.with_suffix('.md')}: {n_own} of {n_all} model scores agree between the eras at 95% "
          f"({n_family} judged as a family of {len(summaries)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
