"""The closed-form active Jacobian against torch.func.jacrev (float64)."""

import pytest
import torch
from helpers import MLP_KINDS, make_tiny_model, mlp_inputs

from sae_lens_jsae import build_jacobian_sae


def jacrev_oracle(sae, x_t: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor) -> torch.Tensor:
    """∂ s_y[K2] / ∂ s_x[K1] at one token by autodiff, the active sets held fixed.

    z ↦ e_out(f(d_in(z))) restricted to K1 → K2. d_in is taken with an offset so that it
    returns the true x at the token's latent values (the closed form evaluates φ' at the true
    x, as the reference does); the offset does not change the derivative of the affine decoder.
    """
    W_dec_k = sae.W_dec[in_idx]  # (k, d)
    z0 = sae.encode(x_t[None])[0, in_idx]
    offset = x_t - z0 @ W_dec_k

    def g(z):
        y = sae.mlp(z @ W_dec_k + offset)
        return (y @ sae.W_enc_out + sae.b_enc_out)[out_idx]  # TopK held fixed; ReLU' handled by mask

    J = torch.func.jacrev(g)(z0)
    s_y = sae.encode_output(sae.mlp(x_t[None]))[0]
    return J * (s_y[out_idx] > 0)[:, None] * (z0 > 0)[None, :]


def _pair(kind: str, seed: int = 0, **cfg):
    model = make_tiny_model(kind, seed=seed)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6, **cfg)
    with torch.no_grad():  # give the biases something to do
        sae.b_enc.add_(0.05 * torch.randn_like(sae.b_enc))
        sae.b_enc_out.add_(0.05 * torch.randn_like(sae.b_enc_out))
    return model, sae


@pytest.mark.parametrize("kind", list(MLP_KINDS))
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_active_jacobian_equals_jacrev(kind, chunk_size):
    model, sae = _pair(kind)
    x = mlp_inputs(model, 1, n_tokens=20)
    jac = sae.active_jacobian(x, chunk_size=chunk_size)
    assert jac.values.shape == (20, 6, 6)
    assert jac.values.abs().sum() > 0
    for t in range(x.shape[0]):
        expected = jacrev_oracle(sae, x[t], jac.input_indices[t], jac.output_indices[t])
        torch.testing.assert_close(jac.values[t], expected, rtol=1e-10, atol=1e-12)


def test_inactive_latents_are_masked():
    model, sae = _pair("dense_gelu")
    with torch.no_grad():  # only a few input latents can be positive: TopK then picks zeros
        sae.b_enc.fill_(-50.0)
        sae.b_enc[:3] = 50.0
    x = mlp_inputs(model, 1, n_tokens=10)
    jac = sae.active_jacobian(x)
    s_x = sae.encode(x)
    in_values = torch.gather(s_x, 1, jac.input_indices)
    assert (in_values == 0).any()
    assert (jac.values.abs().sum(1)[in_values == 0] == 0).all()
    assert (jac.values.abs().sum(1)[in_values > 0] > 0).all()


@pytest.mark.parametrize("kind", ["dense_gelu", "gated_silu"])
def test_chunking_changes_neither_values_nor_gradients(kind):
    model, sae = _pair(kind)
    x = mlp_inputs(model, 1, n_tokens=25)
    weights = torch.randn(25, 6, 6, dtype=torch.float64)
    results = []
    for chunk in (None, 1, 7):
        sae.zero_grad()
        values = sae.active_jacobian(x, chunk_size=chunk).values
        (values * weights).sum().backward()
        results.append((values.detach(), sae.W_dec.grad.clone(), sae.W_enc_out.grad.clone()))
    for values, g_dec, g_enc_out in results[1:]:
        torch.testing.assert_close(values, results[0][0], rtol=0, atol=1e-13)
        torch.testing.assert_close(g_dec, results[0][1], rtol=0, atol=1e-12)
        torch.testing.assert_close(g_enc_out, results[0][2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense_gelu", "gated_silu"])
def test_gradient_equals_autograd_of_plain_gather(kind):
    """The custom backward equals autograd through a naive gather-then-einsum."""
    model, sae = _pair(kind)
    x = mlp_inputs(model, 1, n_tokens=12)
    jac = sae.active_jacobian(x, chunk_size=5)
    loss = jac.values.abs().mean()
    grads = torch.autograd.grad(loss, [sae.W_dec, sae.W_enc_out])

    mlp = sae.mlp
    pre = mlp.pre_activations(x)
    Bt = (mlp.W_out @ sae.W_enc_out).T[jac.output_indices]  # (T, k, m)
    mixed = sum((sae.W_dec @ W)[jac.input_indices] * c[:, None, :] for W, c in zip(mlp.input_weights(), mlp.local_slopes(pre)))
    naive = torch.einsum("tim,tjm->tij", Bt, mixed)
    s_x = torch.gather(sae.encode(x), 1, jac.input_indices)
    naive = naive * (s_x > 0)[:, None, :] * (jac.values.abs().sum(2, keepdim=True) > 0)
    naive_grads = torch.autograd.grad(naive.abs().mean(), [sae.W_dec, sae.W_enc_out])
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n, rtol=1e-10, atol=1e-13)


def test_jacobian_grad_reaches_both_saes_never_the_mlp():
    model, sae = _pair("gated_silu")
    x = mlp_inputs(model, 1, n_tokens=10)
    sae.active_jacobian(x).values.abs().mean().backward()
    assert sae.W_dec.grad.abs().sum() > 0  # input SAE decoder
    assert sae.W_enc_out.grad.abs().sum() > 0  # output SAE encoder
    assert all(not b.requires_grad and b.grad is None for b in sae.mlp.buffers())


def test_no_grad_cache_of_weight_products_follows_weight_changes():
    model, sae = _pair("dense_gelu")
    x = mlp_inputs(model, 1, n_tokens=8)
    with torch.no_grad():
        first = sae.active_jacobian(x).values
        assert torch.equal(sae.active_jacobian(x).values, first)  # cached products, same answer
        sae.W_dec.mul_(2.0)  # in-place edit bumps the version: the cache must not be reused
        doubled = sae.active_jacobian(x).values
    torch.testing.assert_close(doubled, 2 * first)
    torch.testing.assert_close(sae.active_jacobian(x).values, doubled)  # with grad: fresh products
