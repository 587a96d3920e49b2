"""Readable graphs (sae_lens_jsae.graph): per-node coverage pruning counted against a plain loop,
transcoder graphs against the exact attribution, several models on one prompt, the pruning flags.

The node and edge counts are asserted exactly against a direct computation on a tiny model, so a
change of the pruning rule (or of which entries a node's row holds) fails here."""

import json
from argparse import Namespace

import pytest
import torch
from helpers import make_tiny_model
from sae_lens.saes.sae import SAEMetadata

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals.edges import edge_counts, pair_attributions
from sae_lens_jsae.graph import (
    build_graph,
    mlp_inputs,
    prompt_attribution,
    prompt_graph,
    pruning,
    transcoder_prompt_attribution,
    validate_graph_file,
    write_graphs,
)
from sae_lens_jsae.transcoder import TOPK_TRANSCODER, TRANSCODER_CLASSES

PROMPT = torch.arange(1, 33)  # 32 tokens, the length of the demo's sentence


def _pair(lam: float = 0.5, seed: int = 0):
    torch.manual_seed(seed)
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=40, k=5, jacobian_coefficient=lam)
    gen = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():  # non-zero biases: the bias node is not trivially 0
        for b in (sae.b_enc, sae.b_dec, sae.b_enc_out):
            b.add_(0.1 * torch.randn(b.shape, generator=gen, dtype=b.dtype))
        sae.b_enc_out.add_(0.5)  # most TopK picks active
    return model, sae


def _transcoder(d: int = 16, d_sae: int = 24, k: int = 4):
    _, cfg_cls = TRANSCODER_CLASSES[TOPK_TRANSCODER][:2]
    cfg = cfg_cls(d_in=d, d_sae=d_sae, d_out=d, k=k, dtype="float64", device="cpu",
                  metadata=SAEMetadata(hook_name="blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out"))
    tc = TRANSCODER_CLASSES[TOPK_TRANSCODER][0](cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return tc


def _cover_count(row: list[float], coverage: float) -> int:
    """Entries, largest first, until their sum reaches `coverage` of the row's total (a plain loop)."""
    total, acc, n = sum(row), 0.0, 0
    for v in sorted(row, reverse=True):
        if acc >= coverage * total or v == 0:
            break
        acc, n = acc + v, n + 1
    return n


def _direct_graph_size(att, coverage: float) -> tuple[int, int, list[list[int]]]:
    """(nodes, edges, per token the kept edges of each active layer-1 latent) by plain loops."""
    T, k_out, k_in = att.attribution.shape
    nodes = edges = 0
    per_token = []
    for t in range(T):
        counts, inputs, error, bias, n_out = [], set(), False, False, 0
        for i in range(k_out):
            if att.output_values[t, i] <= 0:
                continue
            n_out += 1
            row = [abs(float(v)) for v in att.attribution[t, i]] + [abs(float(att.input_error[t, i])), abs(float(att.bias[t, i]))]
            n = _cover_count(row, coverage)
            kept = sorted(range(k_in + 2), key=lambda j: -row[j])[:n]
            inputs |= {j for j in kept if j < k_in}
            error |= k_in in kept
            bias |= k_in + 1 in kept
            counts.append(n)
        output_error = n_out > 0 and not torch.isnan(att.output_error_norm[t])
        nodes += n_out + len(inputs) + error + bias + output_error
        edges += sum(counts)
        per_token.append(counts)
    return nodes, edges, per_token


def _out_pre(sae, y, idx):
    return (y @ sae.W_enc_out + sae.b_enc_out).gather(-1, idx)


@pytest.mark.parametrize("coverage", [0.8, 0.5])
def test_each_output_latent_keeps_the_edges_covering_its_attribution(coverage):
    model, sae = _pair()
    x, tokens = mlp_inputs(model, sae, PROMPT)
    att = prompt_attribution(sae, x, tokens)
    # the bias entry is the pre-activation at x = b_dec, computed directly
    bias = _out_pre(sae, sae.require_mlp()(sae.b_dec.expand_as(x)), att.output_indices) * (att.output_values > 0)
    assert torch.allclose(att.bias, bias, atol=1e-12)
    graph = build_graph(att, "scan", node_coverage=coverage)
    nodes, edges, per_token = _direct_graph_size(att, coverage)
    assert (len(graph.nodes), len(graph.links)) == (nodes, edges) == graph.counts[:2]
    into: dict[str, int] = {}
    for link in graph.links:
        into[link["target"]] = into.get(link["target"], 0) + 1
    for t, counts in enumerate(per_token):  # every active layer-1 latent is drawn, with exactly its count
        drawn = [n["node_id"] for n in graph.nodes if n["ctx_idx"] == t and n["layer"] == "1" and n["feature"] >= 0]
        assert sorted(into.get(i, 0) for i in drawn) == sorted(counts)
    # the graph is the edge measure's count: per-token means agree with evals.edges
    measure = edge_counts(pair_attributions(sae, x), [coverage])
    direct = torch.tensor([sum(c) / max(len(c), 1) for c in per_token], dtype=torch.float64)
    assert torch.allclose(measure.edges[:, 0], direct)
    kinds = {n["feature_type"] for n in graph.nodes if n["feature"] < 0}
    assert "bias" in kinds and validate_graph_file({"metadata": {"slug": "s", "scan": "s", "prompt_tokens": tokens, "prompt": ""},
                                                    "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "", "clickedId": "", "sg_pos": ""},
                                                    "nodes": graph.nodes, "links": graph.links}) == []


def test_coverage_keeps_every_latent_with_fewer_edges_each_and_counts_are_printed():
    """The before/after numbers (a 32-token prompt on the tiny pair), and that both rules stay reachable.
    circuit-tracer's thresholds drop whole weak latents; coverage keeps every active one, each with
    fewer edges — so its graph can hold more edges in all (it does here)."""
    model, sae = _pair()
    x, tokens = mlp_inputs(model, sae, PROMPT)
    att = prompt_attribution(sae, x, tokens)
    full = build_graph(att, "s", 1.0, 1.0).counts
    tracer = build_graph(att, "s", 0.8, 0.98).counts
    coverage = build_graph(att, "s").counts
    print(f"tiny pair, 32 tokens: unpruned {full.nodes}/{full.edges}, circuit-tracer 0.8/0.98 {tracer.nodes}/{tracer.edges}, "
          f"coverage 0.8 {coverage.nodes}/{coverage.edges} (nodes/edges)")
    assert build_graph(att, "s").rule == pruning() == (0.8, None, None)
    assert coverage.edges == _direct_graph_size(att, 0.8)[1] and tracer.edges < full.edges
    assert coverage.output_latents == full.output_latents == int((att.output_values > 0).sum()) > tracer.output_latents
    assert coverage.edges_per_output_latent < full.edges_per_output_latent


def test_pruning_rules_and_their_errors():
    assert pruning() == (0.8, None, None)
    assert pruning(node_coverage=0.9) == (0.9, None, None)
    assert pruning(node_threshold=0.5) == (None, 0.5, 0.98)
    assert pruning(edge_threshold=0.9) == (None, 0.8, 0.9)
    with pytest.raises(ValueError, match="two pruning rules"):
        pruning(node_coverage=0.8, edge_threshold=0.9)
    with pytest.raises(ValueError, match="node_coverage=1.5"):
        pruning(node_coverage=1.5)


def test_transcoder_graph_has_the_exact_attribution():
    model, upstream = _pair(lam=0.0)
    tc = _transcoder()
    x, tokens = mlp_inputs(model, upstream, PROMPT[:12])
    att = transcoder_prompt_attribution(upstream, tc, x, tokens)
    s_up = upstream.encode(x)
    acts = tc.encode(x)
    # dense, by definition: a_ji = s_i · d_i·W_enc[:, j] on active transcoder latents
    dense = torch.einsum("ti,id,dj->tji", s_up, upstream.W_dec, tc.W_enc)
    for t in range(len(tokens)):
        for slot, j in enumerate(att.output_indices[t].tolist()):
            want = dense[t, j, att.input_indices[t]] if acts[t, j] > 0 else torch.zeros(att.input_indices.shape[1], dtype=x.dtype)
            assert torch.allclose(att.attribution[t, slot], want, atol=1e-12)
    pre = (x @ tc.W_enc + tc.b_enc).gather(1, att.output_indices) * (att.output_values > 0)
    assert torch.allclose(att.attribution.sum(2) + att.input_error + att.bias, pre, atol=1e-10)  # exact: no linearisation
    y = upstream.require_mlp()(x)
    assert torch.allclose(att.output_error_norm, (y - tc(x)).norm(dim=-1))
    graph = build_graph(att, "tc")
    assert graph.completeness.linearisation_error < 1e-9
    assert (len(graph.nodes), len(graph.links)) == _direct_graph_size(att, 0.8)[:2]
    assert {n["sae"] for n in graph.nodes if n["layer"] == "1"} == {"transcoder"}


def test_several_models_on_one_prompt(tmp_path):
    model, sae = _pair(lam=0.5)
    _, sae0 = _pair(lam=0.0, seed=1)
    tc = _transcoder()
    results = write_graphs({"jsae": sae, "lambda0": sae0, "topk-tc": tc}, model, [PROMPT[:10]], tmp_path, upstream=sae0)
    assert [r.name for r in results] == ["jsae", "lambda0", "topk-tc"]
    files = [json.loads(r.path.read_text()) for r in results]
    assert len({json.dumps(f["metadata"]["prompt_tokens"]) + f["metadata"]["prompt"] for f in files}) == 1  # what the viewer groups by
    assert [f["metadata"]["info"]["model"] for f in files] == ["jsae", "lambda0", "topk-tc"]
    assert [f["metadata"]["info"]["method"] for f in files] == ["pair", "pair", "transcoder"]
    for f, r in zip(files, results):
        assert validate_graph_file(f) == [] and f["metadata"]["info"]["counts"] == r.counts._asdict()
        assert (len(f["nodes"]), len(f["links"])) == (r.counts.nodes, r.counts.edges)
    tc_pages = {n["feature_file"].split("/")[1] for n in files[2]["nodes"] if n["feature"] >= 0}
    assert tc_pages == {files[1]["metadata"]["scan"], files[2]["metadata"]["scan"]}  # upstream pages are the λ=0 pair's
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == [r.path.stem for r in results]
    with pytest.raises(ValueError, match="upstream"):
        prompt_graph(tc, model, PROMPT[:4], tmp_path)


def test_cli_names_models_and_picks_the_upstream(tmp_path):
    from sae_lens_jsae.cli.graph import model_sources, upstream_source

    pair, base, tc = tmp_path / "a", tmp_path / "jacobian_coefficient=0", tmp_path / "tc"
    for folder, arch in ((pair, "jacobian"), (base, "jacobian"), (tc, TOPK_TRANSCODER)):
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({"architecture": arch}))
    args = Namespace(pair=str(pair), baseline=None, compare=[str(base), f"skip={tc}"], upstream=None)
    sources = model_sources(args)
    assert sources == {"jsae": str(pair), "jacobian-coefficient-0": str(base), "skip": str(tc)}
    assert upstream_source(args, sources) == str(pair)  # no --baseline: the first pair
    args = Namespace(pair=str(pair), baseline=str(base), compare=[f"lam0={base}"], upstream=None)
    sources = model_sources(args)
    assert sources == {"jsae": str(pair), "lambda0": str(base), "lam0": str(base)}
    args = Namespace(pair=str(tc), baseline=str(base), compare=[], upstream=None)
    assert upstream_source(args, model_sources(args)) == str(base)
    args = Namespace(pair=str(tc), baseline=None, compare=[], upstream=None)
    with pytest.raises(ValueError, match="--upstream"):
        upstream_source(args, model_sources(args))
