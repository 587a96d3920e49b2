"""Per-prompt attribution graphs (sae_lens_jsae.graph): numbers against jvp oracles, file schema."""

import json

import pytest
import torch
from helpers import make_tiny_model

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.graph import (
    REQUIRED_NODE_FIELDS,
    add_graphs_to_report,
    build_graph,
    mlp_inputs,
    prompt_attribution,
    validate_graph_file,
    write_prompt_graph,
)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=40, k=5)
    with torch.no_grad():
        sae.b_enc.add_(0.5)
        sae.b_enc_out.add_(0.5)  # so every TopK pick is active
    return model, sae


def _out_pre(sae, y, idx):
    return (y @ sae.W_enc_out + sae.b_enc_out).gather(-1, idx)


def test_attribution_matches_jvp_oracles(pair):
    model, sae = pair
    x, tokens = mlp_inputs(model, sae, torch.arange(1, 13))
    att = prompt_attribution(sae, x, tokens)
    mlp = sae.require_mlp()
    latent_part = sae.encode(x) @ sae.W_dec
    # Σ_j J[i,j] s_x[j] == d/dε pre_out_i(f(x + ε Σ_j s_x[j] d_j)): the latents' direction, by autograd
    _, d_lat = torch.func.jvp(lambda v: _out_pre(sae, mlp(v), att.output_indices), (x,), (latent_part,))
    assert torch.allclose(att.attribution.sum(2), d_lat * (att.output_values > 0), atol=1e-10)
    # input-error edge == the same derivative along x − x̂
    _, d_err = torch.func.jvp(lambda v: _out_pre(sae, mlp(v), att.output_indices), (x,), (x - sae.decode(sae.encode(x)),))
    assert torch.allclose(att.input_error, d_err, atol=1e-10)
    # ablation change: the plain difference of two forward passes
    ablated = _out_pre(sae, mlp(x), att.output_indices) - _out_pre(sae, mlp(x - latent_part), att.output_indices)
    assert torch.allclose(att.ablation_change, ablated, atol=1e-10)
    assert att.tokens == tokens and len(tokens) == 12


def test_one_jacobian_and_one_jvp_per_prompt(pair, monkeypatch):
    """The graph's numbers come from `evals.edges.pair_attributions` alone: J and the error JVP once."""
    model, sae = pair
    x, tokens = mlp_inputs(model, sae, torch.arange(1, 13))
    expected = sae.active_jacobian(x)
    calls = {"jacobian": 0, "jvp": 0}
    jacobian, jvp = sae._jacobian, torch.func.jvp

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(sae, "_jacobian", count("jacobian", jacobian))
    monkeypatch.setattr(torch.func, "jvp", count("jvp", jvp))
    att = prompt_attribution(sae, x, tokens)
    assert calls == {"jacobian": 1, "jvp": 1}
    assert torch.equal(att.input_indices, expected.input_indices) and torch.equal(att.output_indices, expected.output_indices)
    torch.testing.assert_close(att.jacobian, expected.values, rtol=1e-12, atol=1e-14)  # J recovered from J·s_x


def test_linear_mlp_is_complete(pair):
    """With every ReLU unit on (a linear MLP), the linearisation is exact."""
    model = make_tiny_model("dense_relu")
    sae = build_jacobian_sae(model, 0, d_sae=40, k=5)
    with torch.no_grad():
        sae.mlp.b_in.fill_(100.0)
        sae.b_enc_out.add_(100.0)
    x, tokens = mlp_inputs(model, sae, torch.arange(1, 9))
    g = build_graph(prompt_attribution(sae, x, tokens), "scan")
    assert g.completeness.linearisation_error < 1e-9
    assert g.completeness.n_output_latents == 8 * 5


def test_pruning_thresholds(pair):
    model, sae = pair
    x, tokens = mlp_inputs(model, sae, torch.arange(1, 13))
    att = prompt_attribution(sae, x, tokens)
    full = build_graph(att, "s", 1.0, 1.0)
    assert full.completeness.kept_fraction == pytest.approx(1.0)
    assert len([n for n in full.nodes if n["layer"] == "1" and n["feature"] >= 0]) == 12 * 5
    pruned = build_graph(att, "s", 0.5, 0.8)
    assert len(pruned.links) < len(full.links)
    total = float(att.attribution.abs().sum() + att.input_error.abs().sum())
    kept = sum(abs(link["weight"]) for link in pruned.links)
    assert kept / total == pytest.approx(pruned.completeness.kept_fraction, rel=1e-3)  # weights written to 4 digits
    assert 0.3 < pruned.completeness.kept_fraction < 1.0
    with pytest.raises(ValueError, match="node_threshold=0"):
        build_graph(att, "s", 0.0)


def test_written_files_have_the_required_fields(pair, tmp_path):
    model, sae = pair
    path, comp = write_prompt_graph(sae, model, torch.arange(1, 11), tmp_path, slug="g1", node_threshold=0.9)
    write_prompt_graph(sae, model, torch.arange(3, 9), tmp_path, slug="g2")
    data = json.loads(path.read_text())
    assert validate_graph_file(data) == []
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    for node in data["nodes"]:
        assert all(f in node for f in REQUIRED_NODE_FIELDS)
        assert node["layer"] in ("0", "1") and 0 <= node["ctx_idx"] < 10
        assert ("error" in node["feature_type"]) == (node["feature"] == -1)
    assert {n["layer"] for n in data["nodes"] if n["feature"] >= 0} == {"0", "1"}
    ids = {n["node_id"] for n in data["nodes"]}
    assert len(ids) == len(data["nodes"]) and all(link["source"] in ids and link["target"] in ids for link in data["links"])
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["g1", "g2"]
    assert data["metadata"]["info"]["completeness"]["feature_share"] == pytest.approx(comp.feature_share)
    bad = {**data, "nodes": [{k: v for k, v in data["nodes"][0].items() if k != "jsNodeId"}]}
    assert any("jsNodeId" in p for p in validate_graph_file(bad))


def test_report_gains_a_graph_section(pair, tmp_path):
    model, sae = pair
    (tmp_path / "report.md").write_text("# Report\n")
    (tmp_path / "report.html").write_text("<html><body><h1>Report</h1></body></html>")
    results = add_graphs_to_report(tmp_path / "report.md", {"jsae": sae, "lambda0": sae}, model, [torch.arange(1, 9), torch.arange(2, 7)])
    assert [r.name for r in results] == ["jsae", "lambda0", "jsae", "lambda0"]
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert md.startswith("# Report\n") and "## Attribution graphs" in md and page.endswith("</body></html>")
    for r in results:
        assert r.path.parent == tmp_path / "graphs" and f"(graphs/{r.path.name})" in md and f"href='graphs/{r.path.name}'" in page
    index = json.loads((tmp_path / "graphs" / "graph-metadata.json").read_text())
    assert len(index["graphs"]) == 4


def test_committed_example_graphs_are_valid():
    from pathlib import Path

    folder = Path(__file__).parents[1] / "docs" / "example_report" / "graphs"
    index = json.loads((folder / "graph-metadata.json").read_text())
    assert index["graphs"]
    for meta in index["graphs"]:
        data = json.loads((folder / f"{meta['slug']}.json").read_text())
        assert validate_graph_file(data) == [] and data["metadata"] == meta
        pages = [n["feature_file"] for n in data["nodes"] if n["feature"] >= 0 and (folder / n["feature_file"]).exists()]
        assert pages  # the strongest latents' pages are shipped with it
        page = json.loads((folder / pages[0]).read_text())
        for key in ("index", "examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max", "histogram", "activation_frequency"):
            assert key in page
