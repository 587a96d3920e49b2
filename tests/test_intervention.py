"""Intervention faithfulness (evals/intervention.py) against brute force on tiny models."""

import numpy as np
import pytest
import torch
from helpers import make_tiny_model, mlp_inputs

from sae_lens_jsae import FrozenMLP, build_jacobian_sae
from sae_lens_jsae.evals.edges import pair_attributions, row_cover, transcoder_attributions
from sae_lens_jsae.evals.intervention import (
    InterventionAccumulator,
    intervention_estimates,
    intervention_faithfulness,
    intervention_of_inputs,
    intervention_sums,
)
from sae_lens_jsae.transcoder import TopKSkipTranscoder, TopKSkipTranscoderConfig


def _pair(seed=0, kind="gated_silu", d_sae=48, k=6):
    model = make_tiny_model(kind)
    sae = build_jacobian_sae(model, 1, d_sae=d_sae, k=k)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_enc_out):
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model, sae


def _skip_transcoder(d_in=16, d_sae=40, k=5, seed=2):
    tc = TopKSkipTranscoder(TopKSkipTranscoderConfig(d_in=d_in, d_out=d_in, d_sae=d_sae, k=k, dtype="float64"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (tc.W_enc, tc.W_dec, tc.W_skip):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return tc


@torch.no_grad()
def brute_force(mlp, up_sae, x, edges_of, decoder, active, skip=None, strengths=(0.1, 1.0), top_m=3, prune=None):
    """Loop over tokens and latents: weaken sᵢdᵢ, rerun the MLP, predict from the graph's edges."""
    num = {a: 0.0 for a in strengths}
    den = {a: 0.0 for a in strengths}
    s = up_sae.encode(x).detach()
    for t in range(x.shape[0]):
        act = (s[t] > 0).nonzero().flatten().tolist()
        size = {i: float(s[t, i] * up_sae.W_dec[i].detach().norm()) for i in act}
        for i in sorted(act, key=lambda i: -size[i])[:top_m]:
            contribution = s[t, i] * up_sae.W_dec[i]
            for a in strengths:
                real = mlp(x[t] - a * contribution) - mlp(x[t])
                predicted = torch.zeros_like(real)
                for j, weight in edges_of(t, i, prune).items():
                    if active(t, j):
                        predicted -= a * weight * decoder[j]
                if skip is not None:
                    predicted -= a * contribution @ skip.T
                num[a] += float((real - predicted).pow(2).sum())
                den[a] += float(real.pow(2).sum())
    return {a: 1 - num[a] / den[a] for a in strengths}


def _result(sums, strengths=(0.1, 1.0)):
    acc = InterventionAccumulator("pair", strengths, 3)
    acc.update(sums, sums.n_tested.shape[0])
    return acc.result()


@pytest.mark.parametrize("prune", [None, 0.8])
def test_pair_equals_brute_force(prune):
    model, sae = _pair()
    x = mlp_inputs(model, 1, n_tokens=10)
    att = pair_attributions(sae, x)
    keep = row_cover(torch.cat([att.latents, att.error[..., None], att.bias[..., None]], -1).abs(), prune or 0.8)
    up_slot = {(t, int(i)): n for t in range(10) for n, i in enumerate(att.upstream_indices[t])}

    def edges_of(t, i, prune_):
        col = up_slot[(t, i)]
        return {int(att.downstream_indices[t, j]): float(att.latents[t, j, col]) for j in range(att.latents.shape[1])
                if prune_ is None or keep[t, j, col]}

    def active(t, j):
        return bool(sae.encode_output(sae.mlp(x[t : t + 1]))[0, j] > 0)

    expected = brute_force(sae.mlp, sae, x, edges_of, sae.W_dec_out, active, top_m=3, prune=prune)
    got = _result(intervention_sums(sae, x, top_m=3))
    graph = "full" if prune is None else "pruned"
    for a in (0.1, 1.0):
        assert got.faithfulness[f"a={a:g}.{graph}"] == pytest.approx(expected[a], rel=1e-7, abs=1e-9)
    assert got.tested_per_token == 3


def test_skip_transcoder_equals_brute_force():
    model, pair = _pair()
    tc = _skip_transcoder()
    x = mlp_inputs(model, 1, n_tokens=10)
    att = transcoder_attributions(pair, tc, x)
    up_slot = {(t, int(i)): n for t in range(10) for n, i in enumerate(att.upstream_indices[t])}

    def edges_of(t, i, _):
        col = up_slot[(t, i)]
        return {int(att.downstream_indices[t, j]): float(att.latents[t, j, col]) for j in range(att.latents.shape[1])}

    acts = tc.encode(x)
    expected = brute_force(pair.mlp, pair, x, edges_of, tc.W_dec, lambda t, j: bool(acts[t, j] > 0), skip=tc.W_skip, top_m=3)
    got = _result(intervention_sums(tc, x, pair, top_m=3))
    for a in (0.1, 1.0):
        assert got.faithfulness[f"a={a:g}.full"] == pytest.approx(expected[a], rel=1e-7, abs=1e-9)


def _linear_setup():
    """A ReLU MLP whose hidden units are all on (a large bias): f is affine on the tested inputs."""
    model = make_tiny_model("dense_relu")
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    with torch.no_grad():
        mlp.b_in.fill_(50.0)
    x = mlp_inputs(model, 1, n_tokens=12)
    return model, mlp, x


def test_an_exactly_linear_graph_scores_one_and_permuted_edges_score_lower():
    model, mlp, x = _linear_setup()
    sae = build_jacobian_sae(model, 1, d_sae=16, k=16)
    sae.mlp = mlp
    with torch.no_grad():  # output SAE: the identity basis, every latent active: J maps exactly
        sae.W_enc_out.copy_(torch.eye(16, dtype=sae.dtype))
        sae.W_dec_out.copy_(torch.eye(16, dtype=sae.dtype))
        sae.b_enc_out.fill_(1000.0)
        sae.b_enc.fill_(10.0)  # every input latent active too
    exact = _result(intervention_sums(sae, x, top_m=4))
    for a in (0.1, 1.0):
        assert exact.faithfulness[f"a={a:g}.full"] == pytest.approx(1.0, abs=1e-9)
    att = pair_attributions(sae, x)
    perm = torch.randperm(att.latents.shape[-1], generator=torch.Generator().manual_seed(0))
    permuted = att._replace(latents=att.latents[..., perm])
    worse = _result(intervention_sums(sae, x, top_m=4, attributions=permuted))
    for a in (0.1, 1.0):
        assert worse.faithfulness[f"a={a:g}.full"] < 0.9


def test_a_skip_transcoder_that_is_the_linear_map_scores_one():
    model, mlp, x = _linear_setup()
    _, pair = _pair()
    tc = _skip_transcoder()
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.W_skip.copy_((mlp.W_in @ mlp.W_out).T)  # f(x + u) − f(x) = u W_in W_out on the linear piece
    sums = intervention_sums(tc, x, pair, top_m=4, mlp=mlp)
    result = _result(sums)
    assert result.faithfulness["a=1.full"] == pytest.approx(1.0, abs=1e-9)
    assert result.faithfulness["a=1.pruned"] == pytest.approx(1.0, abs=1e-9)  # the skip path is kept whole


def test_end_to_end_on_a_model_with_intervals_and_sequences():
    model, sae = _pair()
    tokens = torch.randint(0, model.cfg.d_vocab, (6, 8), generator=torch.Generator().manual_seed(1))
    result = intervention_faithfulness(model, sae, tokens, batch_size=4, progress=False)
    assert result.n_tokens == 48 and len(result.per_sequence["n_tested"]) == 6
    iv = result.intervals["intervention.a=0.1.full"]
    assert iv["lo"] <= result.faithfulness["a=0.1.full"] <= iv["hi"]
    # the estimate from the stored sums is the reported number
    est = intervention_estimates(result.per_sequence)
    assert est["intervention.a=1.pruned"].value == pytest.approx(result.faithfulness["a=1.pruned"])
    # the same tokens batched differently: the same sums
    again = intervention_of_inputs(sae, [sae_inputs.reshape(2, 8, -1) for sae_inputs in _inputs(model, sae, tokens)])
    assert np.allclose(again.per_sequence["sse_a=1_full"], result.per_sequence["sse_a=1_full"], rtol=1e-9)


def _inputs(model, sae, tokens):
    from sae_lens_jsae.evals._batches import mlp_inputs_of

    return [mlp_inputs_of(model, sae, tokens[i : i + 2]) for i in range(0, tokens.shape[0], 2)]


def test_bad_arguments_fail_before_work():
    model, sae = _pair()
    x = mlp_inputs(model, 1, n_tokens=4)
    with pytest.raises(ValueError, match="strengths"):
        intervention_sums(sae, x, strengths=(0.0,))
    with pytest.raises(ValueError, match="top_m"):
        intervention_sums(sae, x, top_m=0)
    with pytest.raises(ValueError, match="upstream"):
        intervention_sums(_skip_transcoder(), x)
