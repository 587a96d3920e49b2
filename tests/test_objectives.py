"""The opt-in objectives for faithful graphs (intervention consistency, end-to-end replacement) and
the skip transcoder's skip path, each against plain autograd on tiny models."""

import math

import pytest
import torch
from helpers import build_jsae_cfg, make_tiny_model, mlp_inputs
from sae_lens.saes.sae import TrainStepInput

from sae_lens_jsae import FrozenMLP, build_jacobian_sae
from sae_lens_jsae.families import family, tiny_family_model
from sae_lens_jsae.transcoder import (
    TopKSkipTranscoderTrainingConfig,
    TopKTrainingSkipTranscoder,
    TopKTrainingTranscoder,
    TopKTranscoderTrainingConfig,
)


def step_input(x, lam=0.0, logging=False):
    return TrainStepInput(sae_in=x, coefficients={"jacobian_coefficient": lam}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=logging)


def _pair(kind="gated_silu", **cfg):
    model = make_tiny_model(kind)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6, normalize_decoder=False, **cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.b_enc.add_(0.05 * torch.randn(sae.b_enc.shape, generator=gen, dtype=sae.dtype))
        sae.b_enc_out.add_(0.05 * torch.randn(sae.b_enc_out.shape, generator=gen, dtype=sae.dtype))
    return sae, mlp_inputs(model, 1, n_tokens=24)


def _grads(module):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}


def _jvp(mlp, x, u):
    """f'(x)·u by forward-mode autograd (the oracle of `directional_derivative`)."""
    return torch.func.jvp(mlp, (x,), (u,))[1]


@pytest.mark.parametrize("kind", ["dense_gelu", "gated_silu", "gemma2_post_norm"])
def test_directional_derivative_is_the_jvp(kind):
    if kind == "gemma2_post_norm":
        model = tiny_family_model(family("Gemma 2"))
    else:
        model = make_tiny_model(kind)
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    x = mlp_inputs(model, 1, n_tokens=7).to(mlp.W_in.dtype)
    u = torch.randn(7, 3, x.shape[-1], dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    fast = mlp.directional_derivative(mlp.pre_activations(x), u)
    slow = torch.stack([_jvp(mlp, x, u[:, j]) for j in range(3)], 1)
    assert mlp.post_norm == (kind == "gemma2_post_norm")
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-11)


def oracle_consistency(sae, x):
    """C from plain ops: TopK by dense products, f'(x)·dᵢ by torch.func.jvp, J[o, i] from the
    dense output encoder, the prediction from the dense output decoder."""
    cfg = sae.cfg
    n = max(1, math.ceil(cfg.intervention_consistency_token_fraction * x.shape[0]))
    m = min(cfg.intervention_consistency_latents, cfg.k)
    top = (x @ sae.W_enc + sae.b_enc).topk(cfg.k, dim=-1)
    s_all, K1 = top.values.relu(), top.indices
    y = sae.mlp(x)
    h_out = y @ sae.W_enc_out + sae.b_enc_out
    top_out = h_out.topk(cfg.k, dim=-1)
    num = den = 0.0
    for t in range(n):
        s, slot = s_all[t].topk(m)
        mask = torch.zeros(cfg.d_sae, dtype=x.dtype)
        mask[top_out.indices[t][top_out.values[t] > 0]] = 1
        for s_i, i in zip(s, K1[t][slot]):
            v = _jvp(sae.mlp, x[t : t + 1], sae.W_dec[i][None])[0]
            J_col = (v @ sae.W_enc_out) * mask
            predicted = J_col @ sae.W_dec_out
            w = s_i.detach() ** 2
            num = num + w * (predicted - v).pow(2).sum()
            den = den + w * v.detach().pow(2).sum()
    return num / den


@pytest.mark.parametrize("kind", ["gated_silu", "dense_gelu"])
def test_consistency_value_and_gradient_equal_autograd(kind):
    sae, x = _pair(kind, intervention_consistency_coefficient=2.0, intervention_consistency_latents=3, intervention_consistency_token_fraction=0.5)
    out = sae.training_forward_pass(step_input(x))
    sae.zero_grad()
    out.losses["intervention_consistency_loss"].backward()
    fast = _grads(sae)
    sae.zero_grad()
    expected = 2.0 * oracle_consistency(sae, x)
    expected.backward()
    slow = _grads(sae)
    torch.testing.assert_close(out.losses["intervention_consistency_loss"], expected, rtol=1e-10, atol=1e-12)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-8, atol=1e-12, msg=name)
    for name in ("W_dec", "W_enc_out", "W_dec_out"):  # dᵢ, J's output encoder, the prediction's decoder
        assert fast[name].abs().sum() > 0, name


def test_consistency_is_zero_for_a_perfect_graph_and_opt_in():
    """An output SAE whose active set spans d_model reproduces every MLP change: C = 0."""
    model = make_tiny_model("dense_gelu")
    sae = build_jacobian_sae(model, 1, d_sae=16, k=16, normalize_decoder=False, intervention_consistency_coefficient=1.0)
    with torch.no_grad():  # output SAE = identity basis with a large bias: all 16 latents active, ŷ-map exact
        sae.W_enc_out.copy_(torch.eye(16, dtype=sae.dtype))
        sae.W_dec_out.copy_(torch.eye(16, dtype=sae.dtype))
        sae.b_enc_out.fill_(100.0)
    x = mlp_inputs(model, 1, n_tokens=12)
    out = sae.training_forward_pass(step_input(x))
    assert float(out.losses["intervention_consistency_loss"].detach()) < 1e-20
    plain, _ = _pair()
    assert "intervention_consistency_loss" not in plain.training_forward_pass(step_input(x[:, :16])).losses
    with pytest.raises(ValueError, match="intervention_consistency_coefficient=-1"):
        build_jsae_cfg(intervention_consistency_coefficient=-1.0)
    with pytest.raises(ValueError, match="token_fraction"):
        build_jsae_cfg(intervention_consistency_token_fraction=0.0)


def test_replacement_term_equals_the_spliced_replacement():
    sae, x = _pair("gated_silu", replacement_coefficient=3.0)
    out = sae.training_forward_pass(step_input(x))
    sae.zero_grad()
    out.losses["replacement_loss"].backward()
    fast = _grads(sae)
    sae.zero_grad()
    # SAELens-side dense path: input SAE encode/decode, the MLP, the output SAE's dense encode/decode
    replaced = sae.decode_output(sae.encode_output(sae.mlp(sae.decode(sae.encode(x)))))
    expected = 3.0 * (replaced - sae.mlp(x)).pow(2).mean()
    expected.backward()
    slow = _grads(sae)
    torch.testing.assert_close(out.losses["replacement_loss"], expected, rtol=1e-10, atol=1e-12)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-8, atol=1e-12, msg=name)
    torch.testing.assert_close(out.loss, sum(out.losses.values()))


def _transcoder(skip: bool, **cfg):
    model = make_tiny_model("gated_silu")
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    config_cls, cls = (TopKSkipTranscoderTrainingConfig, TopKTrainingSkipTranscoder) if skip else (TopKTranscoderTrainingConfig, TopKTrainingTranscoder)
    tc = cls(config_cls(d_in=16, d_sae=40, k=5, dtype="float64", **cfg))
    tc.attach_mlp(mlp)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        tc.W_dec.copy_(0.3 * torch.randn(tc.W_dec.shape, generator=gen, dtype=tc.dtype))
        if skip:
            tc.W_skip.copy_(0.1 * torch.randn(tc.W_skip.shape, generator=gen, dtype=tc.dtype))
    return tc, mlp_inputs(model, 1, n_tokens=20)


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_consistency_value_and_gradient_equal_autograd(skip):
    tc, x = _transcoder(skip, intervention_consistency_coefficient=0.5, intervention_consistency_latents=2, intervention_consistency_token_fraction=0.3)
    out = tc.training_forward_pass(step_input(x))
    tc.zero_grad()
    out.losses["intervention_consistency_loss"].backward()
    fast = _grads(tc)
    tc.zero_grad()
    n = math.ceil(0.3 * x.shape[0])
    centred = x - x.mean(0)
    units = centred / centred.norm(dim=-1, keepdim=True)
    acts = tc.encode(x)
    num = den = 0.0
    for t in range(n):
        for j in (1, 2):
            u = units[(t + j) % x.shape[0]]
            real = _jvp(tc.mlp, x[t : t + 1], u[None])[0]
            h = u @ tc.W_enc * (acts[t] > 0)  # the transcoder's graph: linear through its active latents
            predicted = h @ tc.W_dec + (u @ tc.W_skip.T if skip else 0.0)
            num = num + (predicted - real).pow(2).sum()
            den = den + real.detach().pow(2).sum()
    expected = 0.5 * num / den
    expected.backward()
    slow = _grads(tc)
    torch.testing.assert_close(out.losses["intervention_consistency_loss"], expected, rtol=1e-10, atol=1e-12)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-8, atol=1e-12, msg=name)
    torch.testing.assert_close(out.loss, sum(out.losses.values()))


def test_skip_transcoder_trains_through_its_skip_path():
    """Dropping the skip path from `training_forward_pass` makes this fail: the training output
    must be the inference forward (decode(encode(x)) + x W_skipᵀ), and W_skip must get a gradient."""
    tc, x = _transcoder(skip=True)
    out = tc.training_forward_pass(step_input(x))
    torch.testing.assert_close(out.sae_out, tc.decode(tc.encode(x)) + x @ tc.W_skip.T)
    assert float((x @ tc.W_skip.T).detach().abs().max()) > 1e-3  # the skip path is not negligible here
    tc.zero_grad()
    out.loss.backward()
    assert tc.W_skip.grad is not None and float(tc.W_skip.grad.abs().sum()) > 0
    # and a few steps from W_skip = 0 (its init) move it and lower the loss below the plain transcoder's path alone
    tc2, _ = _transcoder(skip=True)
    with torch.no_grad():
        tc2.W_skip.zero_()
    opt = torch.optim.Adam(tc2.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        tc2.training_forward_pass(step_input(x)).loss.backward()
        opt.step()
    assert float(tc2.W_skip.abs().max()) > 1e-3
