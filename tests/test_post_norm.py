"""The post-MLP norm (Gemma 2/3 `ln2_post`): gradients, bf16, save/load, and no cost without one."""

import pytest
import torch
from helpers import make_tiny_model, mlp_inputs

from sae_lens_jsae import FrozenMLP, build_jacobian_sae
from sae_lens_jsae.families import _affine_ln2, family, tiny_family_model
from sae_lens_jsae.jacobian import gathered_dots


def _gemma2_pair(layer: int = 1, **cfg):
    model = tiny_family_model(family("Gemma 2"))
    sae = build_jacobian_sae(model, layer, d_sae=32, k=5, **cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.b_enc.add_(0.05 * torch.randn(sae.b_enc.shape, generator=gen, dtype=sae.dtype))
        sae.b_enc_out.add_(0.05 * torch.randn(sae.b_enc_out.shape, generator=gen, dtype=sae.dtype))
    x = mlp_inputs(model, layer, n_tokens=10)
    return model, sae, x


def _oracle_jacobians(model, layer, sae, x, jac):
    """J per token by autograd through TransformerLens' block, differentiable w.r.t. the SAEs."""
    block = model.blocks[layer]
    out = []
    for t in range(x.shape[0]):
        K1, K2 = jac.input_indices[t], jac.output_indices[t]
        W_dec_k = sae.W_dec[K1]
        z0 = sae.encode(x[t][None])[0, K1].detach()
        offset = x[t] - z0 @ W_dec_k

        def g(z, W_dec_k=W_dec_k, offset=offset, K2=K2):
            y = block.apply_mlp(_affine_ln2(block, z @ W_dec_k + offset)[None, None])[0, 0]
            return (y @ sae.W_enc_out + sae.b_enc_out)[K2]

        J = torch.autograd.functional.jacobian(g, z0, create_graph=True)
        s_y = sae.encode_output(sae.mlp(x[t][None]))[0].detach()
        out.append(J * (s_y[K2] > 0)[:, None] * (z0 > 0)[None, :])
    return torch.stack(out)


def test_post_norm_is_folded_from_ln2_post():
    model, sae, _ = _gemma2_pair()
    assert sae.mlp.post_norm
    torch.testing.assert_close(sae.mlp.w_post, model.blocks[1].ln2_post.w)
    assert float(sae.mlp.post_norm_eps) == model.cfg.eps
    assert "w_post" in sae.mlp.state_dict() and "post_norm_eps" in sae.mlp.state_dict()


@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_gradients_equal_autograd_through_the_block(path):
    """∂/∂(W_dec, W_enc_out) of the fused mean|J| and of Σ w·J (chunked pass) equal autograd of
    the jacrev-style oracle through TransformerLens' MLP and ln2_post (float64)."""
    model, sae, x = _gemma2_pair()
    jac = sae.active_jacobian(x, chunk_size=3)
    weights = torch.randn(jac.values.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if path == "fused":
        top_in = sae._encode_input_topk(x)
        pre, y = sae.mlp.pre_activations_and_output(x)
        penalty = sae._jacobian_penalty(top_in, sae._encode_output_topk(y), x, pre)
        loss = penalty.mean_abs
    else:
        loss = (jac.values * weights).sum()
    grads = torch.autograd.grad(loss, [sae.W_dec, sae.W_enc_out])
    oracle = _oracle_jacobians(model, 1, sae, x, jac)
    oracle_loss = oracle.abs().mean() if path == "fused" else (oracle * weights).sum()
    expected = torch.autograd.grad(oracle_loss, [sae.W_dec, sae.W_enc_out])
    for g, e in zip(grads, expected):
        assert e.abs().sum() > 0
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


def test_bf16_penalty_tracks_float64():
    model, sae, x = _gemma2_pair()
    top_in = sae._encode_input_topk(x)
    pre, y = sae.mlp.pre_activations_and_output(x)
    top_out = sae._encode_output_topk(y)
    exact = sae._jacobian_penalty(top_in, top_out, x, pre)
    (g_exact,) = torch.autograd.grad(exact.mean_abs, [sae.W_enc_out])
    sae.cfg.jacobian_dtype = "bfloat16"
    approx = sae._jacobian_penalty(top_in, top_out, x, pre)
    (g_approx,) = torch.autograd.grad(approx.mean_abs, [sae.W_enc_out])
    assert approx.values.dtype == torch.float32
    scale = exact.values.abs().max()
    assert (approx.values.double() - exact.values).abs().max() < 2e-2 * scale
    assert (g_approx.double() - g_exact).norm() < 3e-2 * g_exact.norm()


def test_gathered_dots_equal_dense_gather():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(9, 7, dtype=torch.float64, generator=gen)
    W = torch.randn(7, 20, dtype=torch.float64, generator=gen, requires_grad=True)
    idx = torch.randint(0, 20, (9, 4), generator=gen)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen)
    e = gathered_dots(y, W, idx)
    dense = (y @ W).gather(1, idx)
    torch.testing.assert_close(e, dense, rtol=1e-12, atol=1e-13)
    (g,) = torch.autograd.grad((e * w).sum(), [W])
    (g_dense,) = torch.autograd.grad((dense * w).sum(), [W])
    torch.testing.assert_close(g, g_dense, rtol=1e-12, atol=1e-13)


def test_save_and_load_keep_the_post_norm(tmp_path):
    from sae_lens_jsae import load_jsae

    _, sae, x = _gemma2_pair()
    sae.save_inference_model(str(tmp_path))
    sae.save_mlp(tmp_path)  # the local mlp.safetensors carries the post-norm's w_post and eps
    loaded = load_jsae(tmp_path, dtype="float64")
    assert loaded.mlp.post_norm
    torch.testing.assert_close(loaded.mlp(x), sae.mlp(x), rtol=0, atol=1e-14)
    torch.testing.assert_close(loaded.active_jacobian(x).values, sae.active_jacobian(x).values, rtol=0, atol=1e-13)


def test_training_step_on_a_post_norm_block():
    model, sae, x = _gemma2_pair(jacobian_coefficient=1.0)
    from sae_lens.saes.sae import TrainStepInput

    coefficients = {"jacobian_coefficient": 1.0}
    step = TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=True)
    out = sae.training_forward_pass(step)
    # the training step's penalty is mean|J| through ln2_post (the oracle differentiates
    # TransformerLens' own block); a step that dropped the post-norm would differ
    oracle = _oracle_jacobians(model, 1, sae, x, sae.active_jacobian(x))
    torch.testing.assert_close(out.losses["jacobian_loss"], oracle.abs().mean(), rtol=1e-10, atol=0)
    grads = torch.autograd.grad(out.losses["jacobian_loss"], [sae.W_dec, sae.W_enc_out], retain_graph=True)
    for g, e in zip(grads, torch.autograd.grad(oracle.abs().mean(), [sae.W_dec, sae.W_enc_out])):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out.loss, sum(out.losses.values()), rtol=1e-12, atol=0)  # the penalty is in the loss


def test_blocks_without_a_post_norm_pay_nothing(monkeypatch):
    """No w_post buffer, no z kept, no rank-one inputs: the pre-existing code path exactly."""
    model = make_tiny_model("gated_silu")
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    assert not mlp.post_norm and "w_post" not in mlp.state_dict()
    assert mlp.pre_activations(mlp_inputs(model, 1, 4)).unnormed is None
    assert mlp.output_weight() is mlp.W_out
    import sae_lens_jsae.sae as sae_module

    seen = []
    original = sae_module.active_jacobian_l1
    monkeypatch.setattr(sae_module, "active_jacobian_l1", lambda **kw: seen.append(kw["post_norm"]) or original(**kw))
    monkeypatch.setattr(sae_module, "gathered_dots", lambda *a: pytest.fail("gathered_dots called without a post-norm"))
    sae = build_jacobian_sae(model, 1, d_sae=32, k=4)
    x = mlp_inputs(model, 1, 8)
    top_in = sae._encode_input_topk(x)
    pre, y = sae.mlp.pre_activations_and_output(x)
    sae._jacobian_penalty(top_in, sae._encode_output_topk(y), x, pre)
    assert seen == [None]
