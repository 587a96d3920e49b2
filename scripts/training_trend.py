#!/usr/bin/env python
"""How a λ sweep's Jacobian sparsity moves with training tokens, from its training logs.

For every pair of a sweep directory (what `jsae train --sweep` writes), reads `train_log.jsonl`
and plots against training tokens: the count |J| > 0.01 and the scale-free L1/(L2·k) ratio
(when logged), each divided by the λ = 0 pair's at the same step, and the explained variance of
the MLP's output through the input SAE's reconstruction (a CE-cost proxy, docs/ce_cost.md).
The values are on the training batches (one batch per logged step), not held-out tokens.

Extrapolation: over the second half of training, each ratio is fitted as a + b·log10(tokens)
(least squares); where b < 0 it reports the tokens at which the fit reaches `--target`. A straight
line in log-tokens is an assumption, not a law: read it as "how far away", not a prediction.

python scripts/training_trend.py SWEEP_DIR [--out DIR] [--target 0.35]
writes DIR/training_trend.png and DIR/training_trend.json (DIR defaults to SWEEP_DIR).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

COUNT = "metrics/jacobian_count_above_0.01"
RATIO = "metrics/jacobian_l1_l2_ratio"
MLP_EV = "metrics/mlp_through_reconstruction_explained_variance"
TOKENS = "details/n_training_samples"


def read_pairs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> {"lam", "extra" (other overrides), "log" (records)} for every pair with a log."""
    pairs = {}
    for log in sorted(sweep_dir.glob("*/train_log.jsonl")):
        cfg = json.loads((log.parent / "cfg.json").read_text())
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not records:
            continue
        pairs[log.parent.name] = {
            "lam": records[-1]["details/jacobian_coefficient_coefficient"],
            "extra": cfg.get("mlp_reconstruction_coefficient", 0.0) or 0.0,
            "log": records,
        }
    return pairs


def fit_log_tokens(tokens: list[float], values: list[float], target: float) -> dict[str, Any]:
    """a + b·log10(tokens) by least squares; the tokens where it reaches `target` (if b < 0)."""
    xs = [math.log10(t) for t in tokens]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(values) / len(values)
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 3 or sxx == 0:
        return {"points": n}
    b = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / sxx
    a = my - b * mx
    reach = 10 ** ((target - a) / b) if b < 0 else None
    return {"points": n, "per_decade": b, "at_end": a + b * xs[-1], "tokens_to_target": reach}


def trend(sweep_dir: Path, target: float) -> dict[str, Any]:
    pairs = read_pairs(sweep_dir)
    base = next((p for p in pairs.values() if p["lam"] == 0 and not p["extra"]), None)
    if base is None:
        raise SystemExit(f"{sweep_dir}: no λ = 0 pair (without other overrides) to divide by")
    by_tokens = {r[TOKENS]: r for r in base["log"]}
    out: dict[str, Any] = {"sweep_dir": str(sweep_dir), "target": target, "pairs": {}}
    for name, pair in sorted(pairs.items(), key=lambda kv: (kv[1]["extra"], kv[1]["lam"])):
        rows = [(r[TOKENS], r, by_tokens[r[TOKENS]]) for r in pair["log"] if r[TOKENS] in by_tokens]
        series: dict[str, list[float]] = {"tokens": [t for t, _, _ in rows], "mlp_ev": [r.get(MLP_EV, math.nan) for _, r, _ in rows]}
        series["count_ratio"] = [r[COUNT] / b[COUNT] for _, r, b in rows]
        if all(RATIO in r and RATIO in b for _, r, b in rows):
            series["l1_l2_ratio_ratio"] = [r[RATIO] / b[RATIO] for _, r, b in rows]
        half = [i for i, t in enumerate(series["tokens"]) if t >= series["tokens"][-1] / 2]
        fits = {}
        if pair["lam"] > 0:
            for key in ("count_ratio", "l1_l2_ratio_ratio"):
                if key in series:
                    goal = fit_goal(out, key)
                    fits[key] = fit_log_tokens([series["tokens"][i] for i in half], [series[key][i] for i in half], goal)
        out["pairs"][name] = {"lam": pair["lam"], "mlp_reconstruction_coefficient": pair["extra"], "fits": fits, "series": series}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_ratio = any("l1_l2_ratio_ratio" in p["series"] for p in result["pairs"].values())
    panels = ["count_ratio", *(["l1_l2_ratio_ratio"] if has_ratio else []), "mlp_ev"]
    titles = {"count_ratio": "count |J|>0.01 ÷ λ=0's", "l1_l2_ratio_ratio": "L1/(L2·k) ÷ λ=0's (scale-free)",
              "mlp_ev": "explained variance of f(x̂) vs f(x)"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(result["pairs"])}  # one colour per pair in every panel
    for ax, key in zip(axes[0], panels):
        for name, pair in result["pairs"].items():
            if key in pair["series"] and (pair["lam"] > 0 or key == "mlp_ev"):
                label = f"λ={pair['lam']:.3g}" + (f", c={pair['mlp_reconstruction_coefficient']:g}" if pair["mlp_reconstruction_coefficient"] else "")
                ax.plot(pair["series"]["tokens"], pair["series"][key], marker=".", label=label, color=colors[name])
        if key == "count_ratio":
            ax.axhline(result["target"], color="grey", ls="--", lw=0.8)
        if key == "l1_l2_ratio_ratio":
            ax.axhline(0.85, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens (log)")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Training trend (training batches)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fit_goal(result: dict[str, Any], key: str) -> float:
    """The value a fitted series is extrapolated to: `--target` for the count, 0.85 for the scale-free ratio (issue 14's goal)."""
    return result["target"] if key == "count_ratio" else 0.85


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: SWEEP_DIR)")
    parser.add_argument("--target", type=float, default=0.35, help="count ratio to extrapolate to (issue 14's goal: 0.35)")
    args = parser.parse_args()
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    result = trend(args.sweep_dir, args.target)
    (out / "training_trend.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "training_trend.png")
    for name, pair in result["pairs"].items():
        for key, fit in pair["fits"].items():
            reach = fit.get("tokens_to_target")
            where = ", not falling" if not reach else (f", reaches {fit_goal(result, key)} at ≈ {reach:.3g} tokens" if reach < 1e12 else ", not within 10¹² tokens")
            print(f"{name}: {key} at end {fit.get('at_end', float('nan')):.3f}, {fit.get('per_decade', float('nan')):+.3f} per 10× tokens{where}")
    print(f"wrote {out / 'training_trend.png'} and {out / 'training_trend.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
