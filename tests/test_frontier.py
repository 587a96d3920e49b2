"""`jsae eval` over sweeps: every pair on the same tokens, labels from cfg.json, the frontier report."""

import json
from argparse import ArgumentParser

import pytest
import torch
from helpers import make_tiny_model

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals.sweep import evaluate_sweeps_and_compare, find_pairs, label_pairs, load_pair
from sae_lens_jsae.sae import resolve_jacobian_coefficient

KW = dict(n_tokens=64, n_splice_tokens=96, n_linearity_tokens=4, batch_size=4, core=False, progress=False)


def _save(model, path, **cfg):
    torch.manual_seed(0)
    build_jacobian_sae(model, 1, d_sae=32, k=4, **cfg).save_model(path)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    model, rmodel = make_tiny_model("gated_silu"), make_tiny_model("gated_silu", seed=5)
    _save(model, root / "sweep" / "jacobian_coefficient=0", jacobian_coefficient=0.0)
    _save(model, root / "sweep" / "jacobian_coefficient=auto", jacobian_coefficient=None)
    _save(model, root / "sweep" / "odd_name", jacobian_coefficient=0.5)  # the label must come from cfg.json
    _save(model, root / "sweep2" / "jacobian_coefficient=0.5,output_mse_coefficient=2", jacobian_coefficient=0.5, output_mse_coefficient=2.0)
    _save(rmodel, root / "rsweep" / "jacobian_coefficient=0", jacobian_coefficient=0.0)
    _save(rmodel, root / "rsweep" / "jacobian_coefficient=0.5", jacobian_coefficient=0.5)
    tokens = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0))
    report = evaluate_sweeps_and_compare([root / "sweep", root / "sweep2"], model, tokens, root / "out",
                                         randomized_dirs=[root / "rsweep"], randomized_model=rmodel, **KW)
    return root, report


def test_labels_come_from_cfg_and_series_from_differing_fields(sweeps):
    root, _ = sweeps
    pairs = label_pairs([load_pair(p) for d in ("sweep", "sweep2") for p in find_pairs(root / d)])
    by_folder = {p.path.name: p for p in pairs}
    assert by_folder["odd_name"].jacobian_coefficient == 0.5 and by_folder["odd_name"].series_label == "paper loss"
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
    assert "λ=0.5 (paper loss)" in table and "λ=0.5 (output_mse_coefficient=2)" in table and "randomized λ=0 (paper loss)" in table
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
        iv = d["intervals"]["jacobian_sparsity.mean_count_above[1]"]
        assert iv["lo"] <= iv["value"] <= iv["hi"] and iv["value"] == pytest.approx(d["jacobian_sparsity"]["mean_count_above"][1])
        assert "explained_variance.input" in d["intervals"] and d["interval_method"].startswith("delta-method")


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
    with pytest.raises(ValueError, match="frozen MLP does not match"):  # randomized pairs on the trained model
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
    assert "| Δ vs λ=0 (paired): count" in md.read_text()


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
    assert sorted(len(s["splice_pass"]["pairs"]) for s in split.values()) == [1, 2, 2]  # each worker's own pass
    for name, s in split.items():
        one = json.loads((root / "out" / name).read_text())
        assert s["splice"]["per_sequence"]["tokens_digest"] == one["splice"]["per_sequence"]["tokens_digest"]
        assert s["intervals"].keys() == one["intervals"].keys()
        for key, iv in one["intervals"].items():
            if iv.get("value") is None:  # n/a, with its reason
                assert s["intervals"][key] == iv, (name, key)
            else:
                assert s["intervals"][key]["value"] == pytest.approx(iv["value"], rel=1e-9, abs=1e-12), (name, key)
