"""The edge measure (evals/edges.py): attributions against autograd, exactness for transcoders,
the count on hand-built rows, sparse below dense, and no dependence on the scale of J."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny_model, mlp_inputs
from sae_lens.saes.sae import SAEMetadata
from scipy.stats import t as student_t

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals.edges import (
    EdgeAttributions,
    edge_counts,
    edge_measure,
    edge_measure_of_inputs,
    pair_attributions,
    transcoder_attributions,
)
from sae_lens_jsae.transcoder import TOPK_SKIP_TRANSCODER, TOPK_TRANSCODER, TRANSCODER_CLASSES


def _pair(kind: str = "gated_silu", seed: int = 0):
    model = make_tiny_model(kind, seed=seed)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6)
    gen = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():  # non-zero biases, so the bias node is not trivially 0
        for b in (sae.b_enc, sae.b_dec, sae.b_enc_out):
            b.add_(0.1 * torch.randn(b.shape, generator=gen, dtype=b.dtype))
    return model, sae


class HandTranscoder:
    """A duck-typed TopK transcoder: only W_enc, b_enc and encode (what the measure may use)."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int):
        self.W_enc, self.b_enc, self.k = W_enc, b_enc, k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = x @ self.W_enc + self.b_enc
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


class HandSAE:
    """A duck-typed TopK SAE with the identity as encoder and decoder: latent i is coordinate i."""

    def __init__(self, d: int, k: int):
        self.W_dec = torch.eye(d, dtype=torch.float64)
        self.b_dec = torch.zeros(d, dtype=torch.float64)
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        top = x.topk(self.k, dim=-1)
        return torch.zeros_like(x).scatter(-1, top.indices, top.values.relu())


def _real_transcoder(arch: str, d_in: int = 16, d_sae: int = 40, k: int = 5):
    inference_cls, cfg_cls, _, _ = TRANSCODER_CLASSES[arch]
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, d_out=d_in, k=k, dtype="float64", device="cpu",
                  metadata=SAEMetadata(hook_name="blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out"))
    tc = inference_cls(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return tc


# ---- attributions ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gated_silu", "dense_gelu"])
def test_pair_attributions_equal_autograd(kind):
    """a_oi = (∂h_o/∂x · d_i) s_i, error = ∂h_o/∂x · e, bias = h_o(b_dec), and the reported
    linearisation error is h_o(x) − h_o(b_dec) − ∂h_o/∂x · (x − b_dec), all by autograd."""
    model, sae = _pair(kind)
    x = mlp_inputs(model, 1, n_tokens=12)
    att = pair_attributions(sae, x)
    s = sae.encode(x)
    e = x - s @ sae.W_dec - sae.b_dec

    def h(v):
        return sae.mlp(v) @ sae.W_enc_out + sae.b_enc_out

    h_bias = h(sae.b_dec[None])[0]
    for t in range(x.shape[0]):
        K1, K2 = att.upstream_indices[t], att.downstream_indices[t]
        G = torch.autograd.functional.jacobian(lambda v, K2=K2: h(v[None])[0, K2], x[t])  # (k_out, d)
        torch.testing.assert_close(att.latents[t], (G @ sae.W_dec[K1].T) * s[t, K1][None, :], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(att.error[t], G @ e[t], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(att.bias[t], h_bias[K2], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(att.pre[t], h(x[t][None])[0, K2], rtol=1e-12, atol=1e-12)
        remainder = h(x[t][None])[0, K2] - h_bias[K2] - G @ (x[t] - sae.b_dec)
        torch.testing.assert_close(att.linearisation_error[t], remainder, rtol=1e-9, atol=1e-12)
    assert att.active.any() and att.error.abs().sum() > 0
    # the remainder is second order: relative to h − h(b_dec) it shrinks like the distance to b_dec
    relative = []
    for eps in (1e-3, 1e-4):
        near = pair_attributions(sae, sae.b_dec + eps * (x - sae.b_dec))
        relative.append(float(near.linearisation_error.abs().sum() / (near.pre - near.bias).abs().sum()))
    assert relative[0] < 0.05 and 0.05 < relative[1] / relative[0] < 0.15


def test_pair_integrated_gradients_equal_autograd_and_converge():
    """path_steps = m: J and the error JVP averaged over the m midpoints b_dec + α(x − b_dec)
    (autograd), and the remainder h(x) − h(b_dec) − Σ attributions falls like 1/m²."""
    model, sae = _pair("gated_silu")
    x = mlp_inputs(model, 1, n_tokens=6)
    att = pair_attributions(sae, x, path_steps=4)
    s = sae.encode(x)
    e = x - s @ sae.W_dec - sae.b_dec

    def h(v):
        return sae.mlp(v) @ sae.W_enc_out + sae.b_enc_out

    for t in range(x.shape[0]):
        K1, K2 = att.upstream_indices[t], att.downstream_indices[t]
        G = sum(torch.autograd.functional.jacobian(lambda v, K2=K2: h(v[None])[0, K2], sae.b_dec + a * (x[t] - sae.b_dec))
                for a in (0.125, 0.375, 0.625, 0.875)) / 4
        torch.testing.assert_close(att.latents[t], (G @ sae.W_dec[K1].T) * s[t, K1][None, :], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(att.error[t], G @ e[t], rtol=1e-9, atol=1e-12)
    remainder = {m: float(pair_attributions(sae, x, path_steps=m).linearisation_error.abs().sum()) for m in (0, 4, 16)}
    assert remainder[4] < remainder[0] / 10 and remainder[16] < remainder[4] / 8
    with pytest.raises(ValueError, match="path_steps=-1"):
        pair_attributions(sae, x, path_steps=-1)


@pytest.mark.parametrize("make", ["hand", TOPK_TRANSCODER, TOPK_SKIP_TRANSCODER])
def test_transcoder_attributions_are_exact(make):
    model, sae = _pair("gated_silu")
    x = mlp_inputs(model, 1, n_tokens=12)
    if make == "hand":
        gen = torch.Generator().manual_seed(2)
        tc = HandTranscoder(torch.randn(16, 40, generator=gen, dtype=torch.float64), 0.1 * torch.randn(40, generator=gen, dtype=torch.float64), 5)
    else:
        tc = _real_transcoder(make)
    att = transcoder_attributions(sae, tc, x)
    torch.testing.assert_close(att.latents.sum(-1) + att.error + att.bias, att.pre, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        acts, s = tc.encode(x), sae.encode(x)
        e = x - s @ sae.W_dec - sae.b_dec
    for t in range(x.shape[0]):
        J = att.downstream_indices[t]
        assert set(J[att.active[t]].tolist()) == set(acts[t].nonzero().flatten().tolist())
        for a, j in enumerate(J.tolist()):
            for b, i in enumerate(att.upstream_indices[t].tolist()):
                expected = s[t, i] * (sae.W_dec[i] @ tc.W_enc[:, j]).detach()
                assert float(att.latents[t, a, b]) == pytest.approx(float(expected), rel=1e-10, abs=1e-13)
            with torch.no_grad():
                assert float(att.error[t, a]) == pytest.approx(float(e[t] @ tc.W_enc[:, j]), rel=1e-10, abs=1e-13)
                assert float(att.bias[t, a]) == pytest.approx(float(sae.b_dec @ tc.W_enc[:, j] + tc.b_enc[j]), rel=1e-10, abs=1e-13)
    result = edge_measure_of_inputs(tc, [x.reshape(3, 4, -1)], upstream=sae)
    assert result.method == "transcoder" and result.linearisation_error < 1e-12


def test_a_transcoder_whose_encode_is_not_its_weights_is_refused():
    model, sae = _pair()
    tc = HandTranscoder(torch.randn(16, 40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64), 5)
    tc.encode = lambda x: HandTranscoder.encode(tc, x - 1.0)  # e.g. a b_dec subtracted from the input
    with pytest.raises(ValueError, match="differs from x @ W_enc"):
        transcoder_attributions(sae, tc, mlp_inputs(model, 1, n_tokens=8))


# ---- the count ------------------------------------------------------------------------------


def _rows(latents, error, bias, active=None) -> EdgeAttributions:
    latents = torch.tensor(latents, dtype=torch.float64)
    T, n, k = latents.shape
    error, bias = torch.tensor(error, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    active = torch.ones(T, n, dtype=torch.bool) if active is None else torch.tensor(active)
    pre = latents.sum(-1) + error + bias
    idx = torch.arange(k).expand(T, k)
    upstream = (latents.abs().sum(1) > 0).to(torch.float64)  # s_i = 1 where a latent feeds any node
    return EdgeAttributions(latents, error, bias, pre, active, upstream, idx, torch.arange(n).expand(T, n))


def test_edges_to_coverage_on_hand_built_rows():
    att = _rows(
        [[[4, -3, 2, 1], [1, 1, 0, 0]],  # token 0: a graded row; an error-dominated row
         [[9, 9, 9, 9], [0, 0, 0, 0]]],  # token 1: an inactive node; a node with nothing on it
        [[0, 6], [0, 0]], [[0, -2], [0, 0]], active=[[True, True], [False, True]])
    c = edge_counts(att, (0.8, 0.9))
    # row 1: 4, 3, 2, 1 of 10 → 80% needs 3 (9 ≥ 8), 90% needs 3; row 2: 6, 2, 1, 1 of 10 → 2 and 3
    torch.testing.assert_close(c.edges[0], torch.tensor([2.5, 3.0], dtype=torch.float64))
    torch.testing.assert_close(c.latent_edges[0], torch.tensor([1.5, 2.0], dtype=torch.float64))  # row 2 keeps error + bias
    assert float(c.error_share[0]) == pytest.approx(0.3) and float(c.bias_share[0]) == pytest.approx(0.1)
    assert c.n_nodes.tolist() == [2, 0]  # token 1 has no counted node: left out of the per-token mean


def test_a_sparse_map_orders_below_a_dense_one():
    dense = _rows([[[1.0] * 8]], [[0.0]], [[0.0]])
    sparse = _rows([[[8.0, 1.0, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1]]], [[0.0]], [[0.0]])
    assert edge_counts(dense).edges[0].tolist() == [7.0, 8.0]  # 8 equal edges: ⌈0.8·8⌉, ⌈0.9·8⌉
    assert edge_counts(sparse).edges[0].tolist() == [1.0, 2.0]
    # end to end: a transcoder reading one upstream latent per latent against a dense one
    up = HandSAE(16, k=6)
    x = torch.randn(4, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one_to_one = HandTranscoder(torch.eye(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64), 6)
    mixing = HandTranscoder(torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                            torch.zeros(16, dtype=torch.float64), 6)
    sparse_result = edge_measure_of_inputs(one_to_one, [x], upstream=up)
    dense_result = edge_measure_of_inputs(mixing, [x], upstream=up)
    assert sparse_result.edges_for_coverage[0] == 1.0 and sparse_result.error_share == 0.0
    lo_dense = dense_result.intervals["edges.edges_for_80"]["lo"]
    assert dense_result.edges_for_coverage[0] > 3 and sparse_result.intervals["edges.edges_for_80"]["hi"] < lo_dense


def test_the_count_does_not_depend_on_the_scale_of_a_row():
    gen = torch.Generator().manual_seed(0)
    lat = torch.randn(20, 6, 8, generator=gen, dtype=torch.float64) ** 3  # heavy-tailed rows
    err, bias = torch.randn(20, 6, generator=gen, dtype=torch.float64), torch.randn(20, 6, generator=gen, dtype=torch.float64)
    att = _rows(lat.tolist(), err.tolist(), bias.tolist())
    scale = 10 ** (4 * torch.rand(20, 6, generator=gen, dtype=torch.float64) - 2)  # 0.01 … 100 per node
    scaled = att._replace(latents=att.latents * scale[..., None], error=att.error * scale, bias=att.bias * scale, pre=att.pre * scale)
    a, b = edge_counts(att), edge_counts(scaled)
    for name in ("edges", "latent_edges", "error_share", "bias_share", "n_nodes"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0, msg=name)
    assert not torch.equal(a.edges[:, 0], torch.full_like(a.edges[:, 0], a.edges[0, 0]))  # not a constant


def test_rescaling_J_does_not_move_the_measure():
    """Output encoder × 10 (J, error and bias × 10; the same latents fire) or a transcoder's
    encoder × 10: identical edges, shares and linearisation error."""
    model, sae = _pair("gated_silu")
    x = mlp_inputs(model, 1, n_tokens=24).reshape(3, 8, -1)
    before = edge_measure_of_inputs(sae, [x])
    J_before = sae.active_jacobian(x.reshape(24, -1)).values
    with torch.no_grad():
        sae.W_enc_out.mul_(10.0)
        sae.b_enc_out.mul_(10.0)
    after = edge_measure_of_inputs(sae, [x])
    torch.testing.assert_close(sae.active_jacobian(x.reshape(24, -1)).values, 10 * J_before)
    for key, value in before.intervals.items():
        assert after.intervals[key]["value"] == pytest.approx(value["value"], rel=1e-9, abs=1e-12), key
    tc = _real_transcoder(TOPK_TRANSCODER)
    base = edge_measure_of_inputs(tc, [x], upstream=sae)
    with torch.no_grad():
        tc.W_enc.mul_(10.0)
        tc.b_enc.mul_(10.0)
    assert edge_measure_of_inputs(tc, [x], upstream=sae).edges_for_coverage == pytest.approx(base.edges_for_coverage, rel=1e-12)


# ---- the eval-set function ------------------------------------------------------------------


def test_edge_measure_on_tokens_means_per_token_with_intervals_by_sequence():
    model, sae = _pair("gated_silu")
    tokens = torch.randint(0, 64, (6, 8), generator=torch.Generator().manual_seed(0))
    result = edge_measure(model, sae, tokens, batch_size=4, progress=False)
    x = mlp_inputs_of_tokens(model, tokens)
    counts = edge_counts(pair_attributions(sae, x))
    has = counts.n_nodes > 0
    # (per-sequence sums are stored to 9 significant digits)
    assert result.edges_for_coverage[0] == pytest.approx(float(counts.edges[has, 0].mean()), rel=1e-7)
    assert result.error_share == pytest.approx(float(counts.error_share[has].mean()), rel=1e-7)
    # the interval against a direct computation: per-sequence sums (6 sequences of 8 tokens, row-major),
    # delta-method SE of Σa/Σb over sequences, times Student's t at 5 dof (a per-token SE, 1.96 or
    # another clustering would not match)
    a = counts.edges[:, 0].where(has, torch.zeros(())).double().reshape(6, 8).sum(1).numpy()
    b = has.double().reshape(6, 8).sum(1).numpy()
    r = a.sum() / b.sum()
    half = student_t.ppf(0.975, 5) * np.sqrt(6 / 5 * np.sum(((a - r * b) / b.sum()) ** 2))
    interval = result.intervals["edges.edges_for_80"]
    assert interval["n_sequences"] == 6 and interval["value"] == pytest.approx(r, rel=1e-7)
    assert half > 0
    assert interval["hi"] - interval["value"] == pytest.approx(half, rel=1e-6)
    assert interval["value"] - interval["lo"] == pytest.approx(half, rel=1e-6)
    assert result.n_tokens == 48 and sum(result.per_sequence["n_tokens"]) == int(has.sum())
    assert result.intervals["edges.completeness"]["value"] == pytest.approx(1 - result.error_share)
    assert result.per_sequence["tokens_digest"] is not None
    # a transcoder on the same tokens, with this pair's input SAE upstream: same tokens digest (paired)
    tc = _real_transcoder(TOPK_SKIP_TRANSCODER)
    tc_result = edge_measure(model, tc, tokens, upstream=sae, batch_size=4, progress=False)
    assert tc_result.per_sequence["tokens_digest"] == result.per_sequence["tokens_digest"]


def mlp_inputs_of_tokens(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.ln2.hook_normalized")
    return cache["blocks.1.ln2.hook_normalized"].reshape(-1, model.cfg.d_model)


def test_bad_combinations_are_refused_before_any_work():
    model, sae = _pair()
    _, other = _pair(seed=1)
    x = [mlp_inputs(model, 1, n_tokens=8).reshape(1, 8, -1)]
    with pytest.raises(ValueError, match="its own input SAE"):
        edge_measure_of_inputs(sae, x, upstream=other)
    tc = _real_transcoder(TOPK_TRANSCODER)
    with pytest.raises(ValueError, match="needs an upstream SAE"):
        edge_measure_of_inputs(tc, x)
    with pytest.raises(ValueError, match="same MLP input"):
        edge_measure_of_inputs(_real_transcoder(TOPK_TRANSCODER, d_in=12), x, upstream=sae)
    with pytest.raises(ValueError, match=r"\(n_seqs, ctx, d_in\)"):
        edge_measure_of_inputs(sae, [x[0][0]])
    with pytest.raises(ValueError, match="coverages"):
        edge_counts(pair_attributions(sae, x[0][0]), (0.8, 1.5))
