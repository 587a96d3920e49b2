"""scripts/reproduce_paper.py: PASS / FAIL / INCONCLUSIVE by the interval of the (paired) difference."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sae_lens_jsae.evals.intervals import FAIL, INCONCLUSIVE, PASS, Interval, verdict

SCRIPT = Path(__file__).parents[1] / "scripts" / "reproduce_paper.py"
N, T = 40, 100  # sequences, tokens per sequence


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_verdict_by_interval():
    assert verdict(Interval(-1.5, -2.0, -1.0, 10), 0.0, "below") == PASS
    assert verdict(Interval(1.5, 1.0, 2.0, 10), 0.0, "below") == FAIL
    assert verdict(Interval(0.0, -1.0, 1.0, 10), 0.0, "below") == INCONCLUSIVE
    assert verdict(Interval(-0.05, -0.08, -0.02, 10), -0.1, "above") == PASS
    assert verdict(Interval(-0.3, -0.35, -0.25, 10), -0.1, "above") == FAIL
    assert verdict(Interval(None, None, None, 10, "CE_zero − CE_clean not resolved"), 0.0) == INCONCLUSIVE


def _summary(rng, lam, randomized, count, ratio, ce_score, digest="same", linear=0.6):
    """A summary with per-sequence sums: count/ratio per token, a given CE-loss score (input and output)."""
    seq = rng.normal(0, 1, N)  # shared-looking sequence effect
    ones = np.full(N, float(T))
    counts = [list(T * (count * f + 5 * seq + rng.normal(0, 5, N))) for f in (1.2, 1.0, 0.8, 0.6)]
    ce_clean = T * (3.9 + 0.3 * seq)
    ce_zero = ce_clean + T * (0.14 + rng.normal(0, 0.01, N))
    spliced = ce_zero - ce_score * (ce_zero - ce_clean) + rng.normal(0, 0.2, N)
    splice_ps = {"n_pred": list(ones - 1), "n_pos": list(ones), "ce_clean": list(ce_clean), "tokens_digest": digest}
    for z in ("zero_input", "zero_mlp_out"):
        splice_ps.update({f"ce_{z}": list(ce_zero), f"kl_{z}": list(T * (0.2 + rng.normal(0, 0.01, N)))})
    for s in ("input", "output"):
        splice_ps.update({f"ce_{s}": list(spliced), f"kl_{s}": list(T * (0.1 + rng.normal(0, 0.01, N)))})
    sp_ps = {"n_tokens": list(ones), "n_nonzero": list(ones), "count_above": counts, "abs_sum": list(ones * 0.03 * 1024),
             "ratio_sum": list(T * (ratio + rng.normal(0, 0.02, N))), "top_m_mass_sum": [list(ones * 0.01)] * 3, "tokens_digest": digest}
    return {"jacobian_coefficient": lam, "randomized": randomized, "k": 32,
            "jacobian_sparsity": {"k": 32, "thresholds": [0.005, 0.01, 0.015, 0.02], "per_sequence": sp_ps},
            "splice": {"per_sequence": splice_ps}, "linearity": {"linear": linear, "jumprelu": 0.1, "other": 1 - linear - 0.1},
            "explained_variance": {"input": 0.8}}


def test_checks_pass_fail_and_inconclusive_and_exit_code():
    mod = _script()
    rng = np.random.default_rng(0)
    ours = {"jsae": _summary(rng, 0.9, False, count=300, ratio=0.72, ce_score=0.3, linear=0.7),
            "baseline": _summary(rng, 0.0, False, count=900, ratio=0.76, ce_score=0.6),
            "randomized": _summary(rng, 0.9, True, count=600, ratio=0.72, ce_score=0.0)}
    results = {desc.split(" (")[0]: (v, ev) for desc, v, ev in mod.checks(ours)}
    assert results["JSAE count < 0.5 × λ=0 count"][0] == PASS  # 300 vs 450, well resolved
    assert results["trained-model JSAE sparser than randomized-model JSAE on the scale-free L1/(L2·k) ratio"][0] == INCONCLUSIVE  # equal ratios
    v, evidence = results["JSAE avg CE-loss score ≥ λ=0's − 0.1"]
    assert v == FAIL and "JSAE − λ0 = -0.3" in evidence  # 0.3 vs 0.6
    assert results["JSAE linear fraction > λ=0 linear fraction"][0] == PASS
    assert mod.exit_code(mod.checks(ours)) == 1
    ours["jsae"] = _summary(rng, 0.9, False, count=300, ratio=0.60, ce_score=0.58, linear=0.7)
    assert mod.exit_code(mod.checks(ours)) == 0
    text, _ = mod.table({**ours, "baseline": {**ours["baseline"], "intervals": {}}}, "pythia-70m-deduped_L3_dsae16384_lambda1", "x")
    assert "| metric | paper (Pythia) |" in text


def test_differences_are_unpaired_on_other_tokens():
    from sae_lens_jsae.evals.intervals import difference

    rng = np.random.default_rng(1)
    a, b = _summary(rng, 0.9, False, 300, 0.7, 0.3), _summary(rng, 0.0, False, 900, 0.7, 0.6, digest="other")
    iv, paired = difference(a, b, "jacobian_sparsity.l1_l2_ratio")
    assert not paired and iv.ok
    iv2, paired2 = difference(a, _summary(rng, 0.0, False, 900, 0.7, 0.6), "jacobian_sparsity.l1_l2_ratio")
    assert paired2
    with pytest.raises(ValueError, match="want must be"):
        verdict(iv, 0.0, "sideways")


def test_issue_goal_per_lambda_and_matched_ev_randomized_check():
    mod = _script()
    rng = np.random.default_rng(5)
    base = _summary(rng, 0.0, False, count=900, ratio=0.76, ce_score=0.6)
    good = _summary(rng, 3.56, False, count=200, ratio=0.55, ce_score=0.6)
    bad = _summary(rng, 14.2, False, count=150, ratio=0.72, ce_score=0.2)
    rand = _summary(rng, 3.56, True, count=600, ratio=0.80, ce_score=0.0)
    rand["explained_variance"] = {"input": 0.79}
    results = mod.goal_checks([base, good, bad, rand])
    verdicts = {desc.split(":")[0]: v for desc, v, _ in results}
    assert verdicts["goal at λ=3.56 (paper loss)"] == PASS
    assert verdicts["goal at λ=14.2 (paper loss)"] == FAIL  # ratio 0.95× λ0's and CE score −0.4
    assert [v for d, v in verdicts.items() if d.startswith("trained JSAE")] == [PASS]  # 0.55 vs 0.80 at matched EV
