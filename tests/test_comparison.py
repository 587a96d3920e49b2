"""JSAE pairs beside transcoders in `jsae eval`: same tokens, the edge measure, the comparison report."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from helpers import make_tiny_model
from sae_lens.saes.sae import SAEMetadata

from sae_lens_jsae import load_jsae
from sae_lens_jsae.evals.edges import edge_measure
from sae_lens_jsae.evals.intervention import intervention_faithfulness
from sae_lens_jsae.transcoder import TOPK_SKIP_TRANSCODER, TOPK_TRANSCODER, TRANSCODER_CLASSES


def _save_transcoder(model, path, arch, seed):
    from sae_lens_jsae.training import variant_sae_config

    torch.manual_seed(seed)
    cfg = TRANSCODER_CLASSES[arch][3](d_in=16, d_sae=32, k=4, dtype="float64",
                                      metadata=SAEMetadata(hook_name="blocks.1.ln2.hook_normalized", model_name=model.cfg.model_name))
    cfg = variant_sae_config(cfg, {})  # sets metadata.hook_name_out as the runner does
    tc = TRANSCODER_CLASSES[arch][2](cfg)
    with torch.no_grad():
        tc.W_dec.copy_(0.3 * torch.randn_like(tc.W_dec))
        if hasattr(tc, "W_skip"):
            tc.W_skip.copy_(0.1 * torch.randn_like(tc.W_skip))
    tc.save_inference_model(path)
    return tc


def _check_comparison_figure(out):
    """The comparison figure plots each summary's numbers: redrawn from the summaries on disk (the
    published Figure captured), every model is a point of its method's line, at (its
    `intervals[x_key].value`, its edges for 80%), in each panel; comparison.png is that figure.
    Fails if a model is left out or drawn on another method's line, a panel plots another key
    (EV where the CE-loss score should be), or the points are the intervals' ends, not values."""
    import struct

    from sae_lens_jsae import figures
    from sae_lens_jsae.report_comparison import CE_KEY, EDGES_KEY, EV_KEY, INTERVENTION_KEY, _plot, models

    pairs = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*_summary.json"))]
    transcoders = [(p, json.loads(p.read_text())) for p in sorted((out / "transcoders").glob("*_summary.json"))]
    assert len(pairs) == 1 and len(transcoders) == 2
    published = []

    class Doc:  # what _plot writes into the report is not under test here
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "publish", lambda fig, doc, path, alt, source: published.append((fig, path)))
        ms = models(pairs, transcoders)
        _plot(ms, out, Doc())
    (fig, path), = published
    assert path == out / "comparison.png"
    header = path.read_bytes()[:24]  # PNG signature, IHDR: width and height
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])  # the file the report embeds is this figure, at the report's 110 dpi
    assert (width, height) == pytest.approx((fig.get_figwidth() * 110, fig.get_figheight() * 110), abs=2)
    def value(d, key):
        return (d.get("intervals") or {}).get(key, {}).get("value")

    # a panel per faithfulness measure some model has a value for (the tiny model's CE-loss score is n/a)
    panels = [key for key in (CE_KEY, INTERVENTION_KEY, EV_KEY) if any(value(d, key) is not None for _, d in pairs + transcoders)]
    assert len(fig.axes) == len(panels) >= 2
    for ax, key in zip(fig.axes, panels):
        lines = {line.get_label(): set(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines() if not line.get_label().startswith("_")}
        drawn = [m for m in ms if value(m.summary, key) is not None and value(m.summary, EDGES_KEY) is not None]
        assert len(drawn) == len(ms), key  # every model has both values here
        for m in drawn:
            point = (value(m.summary, key), value(m.summary, EDGES_KEY))
            assert point in lines[m.method], (key, m.name, point, lines)
        assert sum(len(v) for k, v in lines.items() if k != "λ = 0 pair") == len(drawn), lines


def test_jsae_eval_scores_transcoders_beside_the_pairs_on_the_same_tokens(tmp_path):
    from sae_lens_jsae import build_jacobian_sae
    from sae_lens_jsae.evals.sweep import evaluate_sweeps_and_compare

    model = make_tiny_model("gated_silu")
    torch.manual_seed(1)
    build_jacobian_sae(model, 1, d_sae=32, k=4, jacobian_coefficient=0.0).save_model(tmp_path / "sweep" / "jacobian_coefficient=0")
    tcs = {name: _save_transcoder(model, tmp_path / "sweep" / name, arch, seed)
           for name, arch, seed in (("architecture=topk_transcoder", TOPK_TRANSCODER, 2), ("architecture=topk_skip_transcoder", TOPK_SKIP_TRANSCODER, 3))}
    tokens = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0))
    heldout = {"speech": ["s1", "s2", "s3", "s1", "s2", "s3", "s1", "s2"], "rows": list(range(8))}
    report = evaluate_sweeps_and_compare([tmp_path / "sweep"], model, tokens, tmp_path / "out", n_tokens=64, n_splice_tokens=128,
                                         n_linearity_tokens=4, batch_size=4, core=False, progress=False, heldout=heldout)
    text = report.read_text()
    assert text.index("Which method makes the MLP's computation sparsest") < text.index("## Frontier:")  # the comparison leads
    _check_comparison_figure(tmp_path / "out")
    pair = json.loads(next((tmp_path / "out").glob("*jacobian_coefficient_0_summary.json")).read_text())
    loaded_pair = load_jsae(tmp_path / "sweep" / "jacobian_coefficient=0", model=model)
    direct = edge_measure(model, loaded_pair, tokens, batch_size=4, max_tokens=8192, progress=False)
    assert pair["edges"]["edges_for_coverage"] == pytest.approx(direct.edges_for_coverage, rel=1e-9)
    faithful = intervention_faithfulness(model, loaded_pair, tokens, batch_size=4, progress=False)
    assert pair["intervention"]["faithfulness"] == pytest.approx(faithful.faithfulness, rel=1e-9)
    assert pair["heldout"] == heldout and "clustered by speech" in pair["interval_method"]
    assert pair["intervals"]["intervention.a=1.pruned"]["n_sequences"] == 3  # clustered by the recorded speeches
    with torch.no_grad():
        x0 = model.run_with_cache(tokens, names_filter="blocks.1.ln2.hook_normalized")[1]["blocks.1.ln2.hook_normalized"]
        acts_in = loaded_pair.encode(x0)
        acts_out = loaded_pair.encode_output(loaded_pair.mlp(loaded_pair.decode(acts_in)))
    dead = [int(((a > 0).reshape(-1, 32).sum(0) == 0).sum()) for a in (acts_in, acts_out)]
    assert pair["splice"]["dead_latents_by_sae"] == {"input": dead[0], "output": dead[1]} and pair["dead_latents"] == sum(dead)
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"])
    x, y = cache["blocks.1.ln2.hook_normalized"], cache["blocks.1.hook_mlp_out"]
    for name, tc in tcs.items():
        d = json.loads((tmp_path / "out" / "transcoders" / f"{name.replace('=', '_')}_summary.json").read_text())
        assert d["kind"] == "transcoder" and d["architecture"] == tc.cfg.architecture() and f"transcoders/{d['label']}_summary.json" in text
        # edges measured against the λ = 0 pair's input SAE (the only pair here), on the same tokens
        tc_edges = edge_measure(model, tc, tokens, upstream=loaded_pair, batch_size=4, max_tokens=8192, progress=False)
        assert d["edges"]["edges_for_coverage"] == pytest.approx(tc_edges.edges_for_coverage, rel=1e-9)
        assert list(d["edges_by_upstream"]) == ["jacobian_coefficient_0"]
        tc_faithful = intervention_faithfulness(model, tc, tokens, upstream=loaded_pair, batch_size=4, progress=False)
        assert d["intervention"]["faithfulness"] == pytest.approx(tc_faithful.faithfulness, rel=1e-9)
        assert list(d["intervention_by_upstream"]) == ["jacobian_coefficient_0"] and "intervention.a=0.1.full" in d["intervals"]
        assert d["splice"]["per_sequence"]["tokens_digest"] == pair["splice"]["per_sequence"]["tokens_digest"]
        with torch.no_grad():
            y_hat = tc(x)
            acts = tc.encode(x)
            spliced = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("blocks.1.hook_mlp_out", lambda act, hook, y_hat=y_hat: y_hat)])
        assert d["splice"]["replacement"]["ce_spliced"] == pytest.approx(float(spliced), rel=1e-6)
        y2, yh2 = y.reshape(-1, 16), y_hat.reshape(-1, 16)
        ev = 1 - (y2 - yh2).pow(2).sum() / (y2 - y2.mean(0)).pow(2).sum()
        assert d["explained_variance"]["replacement"] == pytest.approx(float(ev), rel=1e-6)
        assert d["intervals"]["l0"]["value"] == pytest.approx(float((acts > 0).sum(-1).double().mean()), rel=1e-9)
        assert d["dead_latents"] == int(((acts > 0).reshape(-1, 32).sum(0) == 0).sum())
        assert d["n_parameters"] == sum(p.numel() for p in tc.parameters())
        assert {"explained_variance.replacement", "splice.replacement.ce_loss_score", "edges.edges_for_80"} <= set(d["intervals"])
    assert "explained_variance.replacement" in pair["intervals"]  # the pair's replacement scored the same way
    # --processes 2: the transcoders' pass is a job of the worker pool, beside the pairs' (same numbers)
    evaluate_sweeps_and_compare([tmp_path / "sweep"], model, tokens, tmp_path / "split", n_tokens=64, n_splice_tokens=128, n_linearity_tokens=4,
                                batch_size=4, core=False, progress=False, heldout=heldout, processes=2,
                                model_factory=partial(make_tiny_model, "gated_silu"))
    for one in (tmp_path / "out" / "transcoders").glob("*_summary.json"):
        a, b = json.loads(one.read_text()), json.loads((tmp_path / "split" / "transcoders" / one.name).read_text())
        assert b["intervention_by_upstream"].keys() == a["intervention_by_upstream"].keys()
        for key, iv in a["intervals"].items():
            if iv["value"] is None:  # n/a, with its reason
                assert b["intervals"][key] == iv, (one.name, key)
            else:
                assert b["intervals"][key]["value"] == pytest.approx(iv["value"], rel=1e-9, abs=1e-12), (one.name, key)


def test_scoring_the_replacement_splice_alone_gives_the_same_replacement_scores(tmp_path):
    """`jsae eval --splices replacement` (what a frontier reads): the pairs' replacement scores equal
    those of the full evaluation on the same tokens; the input and output splices are not scored."""
    from sae_lens_jsae import build_jacobian_sae
    from sae_lens_jsae.evals.sweep import evaluate_sweeps_and_compare

    model = make_tiny_model("gated_silu")
    torch.manual_seed(1)
    for lam in (0.0, 1.0):
        build_jacobian_sae(model, 1, d_sae=32, k=4, jacobian_coefficient=lam).save_model(tmp_path / "sweep" / f"jacobian_coefficient={lam:g}")
    tokens = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name, splices in (("all", None), ("replacement", ["replacement"])):
        evaluate_sweeps_and_compare([tmp_path / "sweep"], model, tokens, tmp_path / name, n_tokens=64, n_splice_tokens=128,
                                    n_linearity_tokens=4, batch_size=4, core=False, progress=False, splices=splices)
        runs[name] = {p.name: json.loads(p.read_text()) for p in (tmp_path / name).glob("*_summary.json")}
    assert len(runs["all"]) == 2 and runs["all"].keys() == runs["replacement"].keys()
    for file, full in runs["all"].items():
        alone = runs["replacement"][file]
        assert alone["splice"]["input"] is None and alone["splice"]["output"] is None and full["splice"]["input"] is not None
        assert alone["splice"]["replacement"] == full["splice"]["replacement"]
        assert not any(k.startswith(("splice.input", "splice.output")) for k in alone["intervals"])
        for key in ("splice.replacement.ce_loss_score", "explained_variance.replacement", "intervention.a=0.1.full"):
            assert alone["intervals"][key] == full["intervals"][key]


def test_the_pool_balances_the_pairs_against_the_transcoders_pass():
    """5 pairs + 3 transcoders on 2 workers: chunks of 2 and 3 pairs and the transcoders' pass
    (9, 12, 5 model runs a batch: at most 14 on a worker), not one chunk of 5 (18)."""
    from sae_lens_jsae.evals.sweep import _cost

    assert (_cost(2, 0), _cost(3, 0), _cost(0, 3), _cost(5, 0)) == (9, 12, 5, 18)
    assert _cost(2, 0, ("replacement",)) == 4  # clean, zero-ablated output, one splice each


def _synthetic(edges_per_node: float, ce_score: float, *, kind: str = "pair", lam: float = 1.0, n: int = 40, seed: int = 0, faithfulness: float = 0.2) -> dict:
    """A summary with per-sequence sums only (what `goal` reads): edges ≈ `edges_per_node` per
    token, replacement CE-loss score ≈ `ce_score`, noise shared across models (same tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(123).normal(0, 0.02, n)  # the tokens' own noise, common to every model
    tokens = np.full(n, 100.0)
    edges = {"n_tokens": tokens.tolist(), "n_nodes": (32 * tokens).tolist(), "n_upstream": (32 * tokens).tolist(),
             "error_share_sum": (0.1 * tokens).tolist(), "bias_share_sum": (0.05 * tokens).tolist(),
             "abs_linearisation_error": [0.0] * n, "abs_pre": tokens.tolist(), "coverages": [0.8, 0.9],
             "edges_sum": [(tokens * edges_per_node * (1 + noise + rng.normal(0, 0.002, n))).tolist(), (tokens * 2 * edges_per_node).tolist()],
             "latent_edges_sum": [(tokens * edges_per_node).tolist()] * 2, "tokens_digest": "same"}
    n_pred = np.full(n, 127.0)
    ce_clean, ce_zero = 3.0 * n_pred, 5.0 * n_pred
    ce_rep = ce_zero - (ce_score + noise + rng.normal(0, 0.002, n)) * (ce_zero - ce_clean)
    splice = {"n_pred": n_pred.tolist(), "n_pos": (n_pred + 1).tolist(), "n_ev": (n_pred + 1).tolist(), "ce_clean": ce_clean.tolist(),
              "ce_zero_mlp_out": ce_zero.tolist(), "kl_zero_mlp_out": (2 * n_pred).tolist(), "ce_replacement": ce_rep.tolist(),
              "kl_replacement": n_pred.tolist(), "tokens_digest": "same"}
    energy = np.full(n, 10.0)
    sse = (1 - faithfulness - noise - rng.normal(0, 0.002, n)) * energy
    intervention = {"n_tested": (8 * tokens).tolist(), "strengths": [0.1], "energy_a=0.1": energy.tolist(),
                    "sse_a=0.1_full": sse.tolist(), "sse_a=0.1_pruned": sse.tolist(), "tokens_digest": "same"}
    d = {"format": "sae_lens_jsae.eval/1", "label": f"m{seed}", "k": 32, "d_sae": 2304, "edges": {"per_sequence": edges},
         "splice": {"per_sequence": splice}, "intervention": {"per_sequence": intervention}}
    if kind == "transcoder":
        d.update(kind="transcoder", architecture="topk_transcoder")
    else:
        d["jacobian_coefficient"] = lam
    return d


@pytest.mark.parametrize(("jsae_edges", "jsae_ce", "jsae_faithfulness", "expected"), [
    (5.0, 0.60, 0.30, "PASS"),          # 0.42× the transcoder's edges, CE 0.02 above it, faithfulness 0.1 above
    (5.0, 0.50, 0.30, "FAIL"),          # edges fine, CE 0.08 below: more than 0.05 lost
    (9.0, 0.60, 0.30, "FAIL"),          # 0.75× the edges
    (5.0, 0.60, 0.10, "FAIL"),          # sparse and CE fine, but its graph predicts interventions worse
    (6.0, 0.58, 0.30, "INCONCLUSIVE"),  # exactly 0.5× the edges: the interval straddles the bound
])
def test_goal_verdict_by_interval(jsae_edges, jsae_ce, jsae_faithfulness, expected):
    from pathlib import Path

    from sae_lens_jsae.report_comparison import goal, models

    pairs = [(Path("zero.json"), _synthetic(13.0, 0.45, lam=0.0, seed=1)),
             (Path("jsae.json"), _synthetic(jsae_edges, jsae_ce, seed=2, faithfulness=jsae_faithfulness))]
    tcs = [(Path("tc.json"), _synthetic(12.0, 0.58, kind="transcoder", seed=3)), (Path("tc2.json"), _synthetic(4.0, 0.30, kind="transcoder", seed=4))]
    g = goal(models(pairs, tcs))
    assert g.transcoder == "TopK transcoder k=32" and len(g.rows) == 1  # the most faithful transcoder, the λ = 0 pair left out
    assert g.verdict == expected, g.rows


def test_frontier_read_between_the_models_that_bracket_it():
    from pathlib import Path

    from sae_lens_jsae.report_comparison import CE_KEY, EDGES_KEY, frontier_at, models

    def point(edges, ce, lam):
        iv = {EDGES_KEY: {"value": edges, "lo": edges - 1, "hi": edges + 1, "n_sequences": 25},
              CE_KEY: {"value": ce, "lo": ce - 0.1, "hi": ce + 0.1, "n_sequences": 25}}
        return {"k": 32, "d_sae": 64, "jacobian_coefficient": lam, "series": {"edge_sparsity_coefficient": 2.0}, "intervals": iv}

    ms = models([(Path(f"{i}.json"), point(e, c, lam)) for i, (e, c, lam) in enumerate([(4.0, 0.2, 1.0), (8.0, 0.6, 2.0), (12.0, 0.8, 3.0)])], [])
    p = frontier_at(ms, "JSAE + edge penalty", CE_KEY, 0.5)  # 3/4 of the way from 0.2 to 0.6
    assert p.edges.value == pytest.approx(7.0) and p.edges.lo == pytest.approx(6.0) and p.edges.hi == pytest.approx(8.0)
    assert frontier_at(ms, "JSAE + edge penalty", CE_KEY, 0.7).edges.value == pytest.approx(10.0)
    assert not frontier_at(ms, "JSAE + edge penalty", CE_KEY, 0.9).edges.ok  # beyond its most faithful model
