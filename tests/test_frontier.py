"""`jsae eval` over sweeps: every pair on the same tokens, labels from cfg.json, the frontier report."""

import json
import re
from argparse import ArgumentParser

import numpy as np
import pytest
import torch
from helpers import make_tiny_model
from scipy.stats import t as student_t

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals._batches import mlp_inputs_of
from sae_lens_jsae.evals.pipeline import load_checkpoint
from sae_lens_jsae.evals.sweep import evaluate_sweeps_and_compare, find_pairs, label_pairs, load_pair
from sae_lens_jsae.sae import resolve_jacobian_coefficient

KW = dict(n_tokens=64, n_splice_tokens=96, n_linearity_tokens=4, batch_size=4, core=False, progress=False)


def _save(model, path, seed, **cfg):
    torch.manual_seed(seed)  # every pair its own weights: a swapped pair or label changes the numbers
    build_jacobian_sae(model, 1, d_sae=32, k=4, **cfg).save_model(path)


AUTO = resolve_jacobian_coefficient(None, 4, 16)  # 0.5
FOLDER_OF = {  # (randomized, λ, series label) -> the checkpoint the summary must come from
    (False, 0.0, "paper loss"): "sweep/jacobian_coefficient=0",
    (False, round(AUTO, 6), "paper loss"): "sweep/jacobian_coefficient=auto",
    (False, 0.25, "paper loss"): "sweep/odd_name",
    (False, 0.5, "output_mse_coefficient=2"): "sweep2/jacobian_coefficient=0.5,output_mse_coefficient=2",
    (True, 0.0, "paper loss"): "rsweep/jacobian_coefficient=0",
    (True, 0.5, "paper loss"): "rsweep/jacobian_coefficient=0.5",
}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    model, rmodel = make_tiny_model("gated_silu"), make_tiny_model("gated_silu", seed=5)
    _save(model, root / "sweep" / "jacobian_coefficient=0", 1, jacobian_coefficient=0.0)
    _save(model, root / "sweep" / "jacobian_coefficient=auto", 2, jacobian_coefficient=None)
    _save(model, root / "sweep" / "odd_name", 3, jacobian_coefficient=0.25)  # the label must come from cfg.json
    _save(model, root / "sweep2" / "jacobian_coefficient=0.5,output_mse_coefficient=2", 4, jacobian_coefficient=0.5, output_mse_coefficient=2.0)
    _save(rmodel, root / "rsweep" / "jacobian_coefficient=0", 5, jacobian_coefficient=0.0)
    _save(rmodel, root / "rsweep" / "jacobian_coefficient=0.5", 6, jacobian_coefficient=0.5)
    tokens = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0))
    report = evaluate_sweeps_and_compare([root / "sweep", root / "sweep2"], model, tokens, root / "out",
                                         randomized_dirs=[root / "rsweep"], randomized_model=rmodel, **KW)
    return root, report


def test_labels_come_from_cfg_and_series_from_differing_fields(sweeps):
    root, _ = sweeps
    pairs = label_pairs([load_pair(p) for d in ("sweep", "sweep2") for p in find_pairs(root / d)])
    by_folder = {p.path.name: p for p in pairs}
    assert by_folder["odd_name"].jacobian_coefficient == 0.25 and by_folder["odd_name"].series_label == "paper loss"
    assert by_folder["jacobian_coefficient=auto"].jacobian_coefficient == pytest.approx(resolve_jacobian_coefficient(None, 4, 16))
    assert by_folder["jacobian_coefficient=0.5,output_mse_coefficient=2"].series_label == "output_mse_coefficient=2"
    assert find_pairs(root / "sweep" / "odd_name") == [root / "sweep" / "odd_name"]  # a checkpoint is a one-pair sweep
    with pytest.raises(ValueError, match="neither a JSAE checkpoint"):
        find_pairs(root)


def test_frontier_report_leads_with_plot_and_side_by_side_table(sweeps):
    root, report = sweeps
    text = report.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0].startswith("## Frontier") and (root / "out" / "frontier.png").stat().st_size > 5000
    table = [line for line in text.splitlines() if line.startswith("| metric |")][0]
    assert table.count(" | ") == 6  # metric + 4 trained + 2 randomized pairs
    assert "λ=0.25 (paper loss)" in table and "λ=0.5 (paper loss)" in table and "λ=0.5 (output_mse_coefficient=2)" in table and "randomized λ=0 (paper loss)" in table
    delta = [line for line in text.splitlines() if line.startswith("| Δ vs λ=0 (paired): count")][0].split(" | ")
    assert delta[1] == "—" and "[" in delta[2]  # λ=0 itself; the others have a paired interval


def test_summaries_carry_intervals_and_the_same_tokens(sweeps):
    root, _ = sweeps
    summaries = [json.loads(p.read_text()) for p in sorted((root / "out").glob("*_summary.json"))]
    rand = [json.loads(p.read_text()) for p in sorted((root / "out" / "randomized").glob("*_summary.json"))]
    assert len(summaries) == 4 and len(rand) == 2 and all(d["randomized"] for d in rand)
    digests = {d["splice"]["per_sequence"]["tokens_digest"] for d in summaries + rand}
    assert len(digests) == 1  # trained and randomized pairs saw the same splice tokens
    for d in summaries:
        assert "explained_variance.input" in d["intervals"] and d["interval_method"].startswith("delta-method")


def _direct_counts(root, summary):
    """Per-sequence count |J| > thresholds[1] and Σ|J| of the checkpoint a summary's labels name, computed here."""
    model = make_tiny_model("gated_silu", seed=5) if summary["randomized"] else make_tiny_model("gated_silu")
    key = (bool(summary["randomized"]), round(float(summary["jacobian_coefficient"]), 6), summary["series_label"])
    sae = load_checkpoint(root / FOLDER_OF[key], model)
    n_seq = len(summary["jacobian_sparsity"]["per_sequence"]["n_tokens"])
    tokens = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0))[:n_seq]
    with torch.no_grad():
        J = sae.active_jacobian(mlp_inputs_of(model, sae, tokens)).values
    thr = summary["jacobian_sparsity"]["thresholds"][1]
    per_seq = lambda v: v.reshape(n_seq, 16).sum(1).double().numpy()  # noqa: E731
    return per_seq((J.abs() > thr).sum((1, 2))), per_seq(J.abs().sum((1, 2)))


def _cells(line):
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # markdown: \| is a literal bar


def _parse(cell):
    v, lo, hi = (float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
    return v, lo, hi


def test_values_intervals_and_paired_deltas_match_direct_computation(sweeps):
    """Each summary's count and interval, and each paired Δ vs λ = 0 in the report, against the count
    computed here from the checkpoint its labels name: a swapped pair or label, a wrong reference pair,
    or an unpaired / wrongly scaled interval fails."""
    root, report = sweeps
    summaries = [json.loads(p.read_text()) for p in sorted((root / "out").rglob("*_summary.json"))]
    assert len(summaries) == 6
    direct = {d["pair_name"]: (d, *_direct_counts(root, d)) for d in summaries}
    assert len({tuple(a) for _, _, a in direct.values()}) == 6  # the pairs (and their names) differ
    for d, counts, abs_sum in direct.values():
        n = counts.size  # 16 tokens per sequence, k² = 16 entries each
        assert d["intervals"]["jacobian_sparsity.mean_abs"]["value"] == pytest.approx(abs_sum.sum() / (16 * 16 * n), rel=1e-6)
        iv = d["intervals"]["jacobian_sparsity.mean_count_above[1]"]
        assert iv["value"] == pytest.approx(counts.sum() / (16 * n), rel=1e-9) == d["jacobian_sparsity"]["mean_count_above"][1]
        half = student_t.ppf(0.975, n - 1) * (counts / 16).std(ddof=1) / np.sqrt(n)
        assert iv["n_sequences"] == n and iv["hi"] - iv["value"] == pytest.approx(half, rel=1e-9)
    text = report.read_text()
    header, row = (_cells(next(line for line in text.splitlines() if line.startswith(start))) for start in ("| metric |", "| Δ vs λ=0 (paired): count"))
    n_deltas = 0
    for name, cell in zip(header[1:], row[1:]):
        d, counts, _ = direct[name]
        if d["jacobian_coefficient"] == 0:
            assert cell == "—"
            continue
        ref = next(c for e, c, _ in direct.values() if e["jacobian_coefficient"] == 0 and e["randomized"] == d["randomized"])
        diff = (counts - ref) / 16
        n = diff.size
        half = student_t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n)
        assert diff.mean() != 0
        for got, want in zip(_parse(cell), (diff.mean(), diff.mean() - half, diff.mean() + half)):
            assert got == pytest.approx(want, rel=6e-3, abs=1e-12), (name, cell)
        n_deltas += 1
    assert n_deltas == 4


def test_cli_accepts_sweeps_and_randomized_sweeps():
    from sae_lens_jsae.cli import eval as cli_eval

    p = ArgumentParser()
    cli_eval.add_arguments(p)
    a = p.parse_args(["s1", "s2", "--randomized-sweep", "r1", "--output-dir", "o"])
    assert a.checkpoint == ["s1", "s2"] and a.randomized_sweep == ["r1"] and a.n_splice_tokens == 32_768
    assert a.processes == 1 and p.parse_args(["s1", "--processes", "2"]).processes == 2


def test_cli_refuses_processes_for_a_single_checkpoint(sweeps):
    from sae_lens_jsae.cli import eval as cli_eval

    root, _ = sweeps
    p = ArgumentParser()
    cli_eval.add_arguments(p)
    with pytest.raises(ValueError, match="--processes is for sweeps"):
        cli_eval.run(p.parse_args([str(root / "sweep" / "jacobian_coefficient=0"), "--processes", "2"]))
    with pytest.raises(ValueError, match="≥ 1"):
        cli_eval.run(p.parse_args([str(root / "sweep"), "--processes", "0"]))


def test_a_pair_from_another_model_is_refused_before_any_work(sweeps, tmp_path):
    root, _ = sweeps
    model = make_tiny_model("gated_silu")
    tokens = torch.randint(1, model.cfg.d_vocab, (4, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="is not the one this Jacobian SAE was trained with"):  # randomized pairs on the trained model
        evaluate_sweeps_and_compare([], model, tokens, tmp_path / "o", randomized_dirs=[root / "rsweep"], randomized_model=model, **KW)
    assert not (tmp_path / "o").exists()


def test_single_pair_mode_shares_the_splice_pass_and_reports_paired_deltas(sweeps, tmp_path):
    from sae_lens_jsae.evals import evaluate_and_compare

    root, _ = sweeps
    model = make_tiny_model("gated_silu")
    tokens = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0))
    kw = {k: v for k, v in KW.items() if k != "core"}
    md = evaluate_and_compare(root / "sweep" / "odd_name", model, tokens, tmp_path, baseline=root / "sweep" / "jacobian_coefficient=0", core=False, **kw)
    j, b = (json.loads((tmp_path / f"{n}_summary.json").read_text()) for n in ("jsae", "lambda0"))
    assert j["splice"]["per_sequence"]["tokens_digest"] == b["splice"]["per_sequence"]["tokens_digest"]
    delta = [_cells(line) for line in md.read_text().splitlines() if line.startswith("| Δ vs λ=0 (paired): count")][0]
    in_sweep = [_cells(line) for line in (root / "out" / "report.md").read_text().splitlines() if line.startswith("| Δ vs λ=0 (paired): count")][0]
    assert delta[1:] == ["—", in_sweep[2]] and _parse(delta[2])[0] != 0  # the same paired Δ as the sweep's λ=0.25 column


def test_pairs_with_the_same_folder_name_in_two_sweeps_get_distinct_labels(sweeps, tmp_path):
    import shutil

    root, _ = sweeps
    for sweep in ("a", "b"):
        (tmp_path / sweep / "jacobian_coefficient=0").mkdir(parents=True)
        shutil.copy(root / "sweep" / "jacobian_coefficient=0" / "cfg.json", tmp_path / sweep / "jacobian_coefficient=0" / "cfg.json")
    pairs = label_pairs([load_pair(p) for d in ("a", "b") for p in find_pairs(tmp_path / d)])
    assert [p.file_label for p in pairs] == ["a__jacobian_coefficient_0", "b__jacobian_coefficient_0"]


def test_pairs_split_over_worker_processes_give_the_same_summaries(sweeps, tmp_path):
    """`processes=2`: the sweep's 3 pairs in two spawned workers (their own model from the factory)."""
    from functools import partial

    root, _ = sweeps
    tokens = torch.randint(1, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    model = make_tiny_model("gated_silu")
    with pytest.raises(ValueError, match="model_factory"):
        evaluate_sweeps_and_compare([root / "sweep"], model, tokens, tmp_path / "none", processes=2, **KW)
    assert not (tmp_path / "none").exists()
    report = evaluate_sweeps_and_compare([root / "sweep"], model, tokens, tmp_path / "split", processes=2,
                                         model_factory=partial(make_tiny_model, "gated_silu"), **KW)
    assert report.exists()
    split = {p.name: json.loads(p.read_text()) for p in (tmp_path / "split").glob("*_summary.json")}
    assert len(split) == 3
    assert sorted(len(s["held_out_pass"]["pairs"]) for s in split.values()) == [1, 2, 2]  # each worker's own pass
    for name, s in split.items():
        one = json.loads((root / "out" / name).read_text())
        assert s["splice"]["per_sequence"]["tokens_digest"] == one["splice"]["per_sequence"]["tokens_digest"]
        assert s["intervals"].keys() == one["intervals"].keys()
        for key, iv in one["intervals"].items():
            if iv.get("value") is None:  # n/a, with its reason
                assert s["intervals"][key] == iv, (name, key)
            else:
                assert s["intervals"][key]["value"] == pytest.approx(iv["value"], rel=1e-9, abs=1e-12), (name, key)
