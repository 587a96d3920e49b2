"""The opt-in scale-free edge penalty (`edge_sparsity_coefficient`) against plain autograd."""

import copy

import pytest
import torch
from helpers import build_jsae_cfg, make_tiny_model, mlp_inputs
from sae_lens.saes.sae import TrainStepInput

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.jacobian import attribution_row_ratio


def step_input(x, lam=0.0, h=None, logging=False):
    coefficients = {"jacobian_coefficient": lam}
    if h is not None:
        coefficients["edge_sparsity_coefficient"] = h
    return TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=logging)


def _pair(kind="gated_silu", **cfg):
    model = make_tiny_model(kind)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6, normalize_decoder=False, **cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # biases away from 0, so every parameter's role shows
        sae.b_enc.add_(0.05 * torch.randn(sae.b_enc.shape, generator=gen, dtype=sae.b_enc.dtype))
        sae.b_enc_out.add_(0.05 * torch.randn(sae.b_enc_out.shape, generator=gen, dtype=sae.b_enc_out.dtype))
    return sae, mlp_inputs(model, 1, n_tokens=24)


def oracle_penalty(sae, x, h):
    """h · mean over tokens and active output latents of L1/(L2·k) of J[o, :]·s_x, J by autograd.

    Everything from the SAE weights with plain torch ops: TopK encoders, and per token the
    Jacobian of the output pre-activations w.r.t. the active input latents, with the MLP's
    slopes at the true x (the linearisation point x_t is held fixed, as in the closed form)."""
    k = sae.cfg.k
    top = (x @ sae.W_enc + sae.b_enc).topk(k, dim=-1)
    s_in, K1 = top.values.relu(), top.indices
    y = sae.mlp(x)
    top_out = (y @ sae.W_enc_out + sae.b_enc_out).topk(k, dim=-1)
    K2, out_active = top_out.indices, top_out.values > 0
    ratios = []
    for t in range(x.shape[0]):
        z0 = s_in[t].detach()

        def g(z, t=t, z0=z0):
            return (sae.mlp(x[t] + (z - z0) @ sae.W_dec[K1[t]]) @ sae.W_enc_out[:, K2[t]]) + sae.b_enc_out[K2[t]]

        J = torch.autograd.functional.jacobian(g, z0, create_graph=True)  # (k_out, k_in)
        rows = J * s_in[t][None, :]
        for o in range(k):
            if out_active[t, o] and rows[o].abs().sum() > 0:
                ratios.append(rows[o].abs().sum() / (rows[o].norm() * k))
    return h * torch.stack(ratios).mean()


def _grads(sae):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in sae.named_parameters()}


@pytest.mark.parametrize("kind", ["gated_silu", "dense_gelu"])
def test_penalty_value_and_gradient_equal_autograd(kind):
    sae, x = _pair(kind, edge_sparsity_coefficient=1.5)
    out = sae.training_forward_pass(step_input(x, lam=0.0, h=1.5))
    sae.zero_grad()
    out.losses["edge_sparsity_loss"].backward()
    fast = _grads(sae)
    sae.zero_grad()
    expected = oracle_penalty(sae, x, 1.5)
    expected.backward()
    slow = _grads(sae)
    torch.testing.assert_close(out.losses["edge_sparsity_loss"], expected, rtol=1e-10, atol=1e-12)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-8, atol=1e-12, msg=name)
    # the term reaches both encoders of the input side (through s_x) and J's two weight products
    for name in ("W_enc", "b_enc", "W_dec", "W_enc_out"):
        assert fast[name].abs().sum() > 0, name


def test_penalty_is_opt_in():
    sae, x = _pair()
    assert sae.cfg.edge_sparsity_coefficient == 0.0
    out = sae.training_forward_pass(step_input(x, lam=0.7))
    assert "edge_sparsity_loss" not in out.losses
    assert set(sae.get_coefficients()) == {"jacobian_coefficient"}
    sae.cfg.edge_sparsity_coefficient, sae.cfg.jacobian_warm_up_steps = 2.0, 7
    coefficient = sae.get_coefficients()["edge_sparsity_coefficient"]
    assert coefficient.value == 2.0 and coefficient.warm_up_steps == 7
    on = sae.training_forward_pass(step_input(x, lam=0.7, h=2.0))
    torch.testing.assert_close(on.loss, out.loss + on.losses["edge_sparsity_loss"])
    warming = sae.training_forward_pass(step_input(x, lam=0.7, h=0.0))  # warm-up step 0: the term is 0
    assert warming.losses["edge_sparsity_loss"] == 0
    with pytest.raises(ValueError, match="edge_sparsity_coefficient=-1"):
        build_jsae_cfg(edge_sparsity_coefficient=-1.0)


def test_penalty_is_invariant_to_the_scale_of_J():
    sae, x = _pair(edge_sparsity_coefficient=1.0)
    before = sae.training_forward_pass(step_input(x, lam=1.0, h=1.0)).losses
    with torch.no_grad():  # J → 10·0.3·J; TopK picks and s_x are unchanged
        sae.W_enc_out.mul_(10.0)
        sae.b_enc_out.mul_(10.0)
        sae.W_dec.mul_(0.3)
    after = sae.training_forward_pass(step_input(x, lam=1.0, h=1.0)).losses
    assert after["jacobian_loss"].item() == pytest.approx(3.0 * before["jacobian_loss"].item(), rel=1e-9)  # J did change
    torch.testing.assert_close(after["edge_sparsity_loss"], before["edge_sparsity_loss"], rtol=1e-10, atol=0)
    # and scaling each attribution row by its own positive factor changes nothing either
    jac = sae.active_jacobian(x)
    s_in = sae.encode(x).gather(1, jac.input_indices)
    s_out = sae.encode_output(sae.mlp(x)).gather(1, jac.output_indices)
    factors = torch.rand(jac.values.shape[:2], dtype=x.dtype, generator=torch.Generator().manual_seed(0)) * 100 + 0.01
    torch.testing.assert_close(attribution_row_ratio(jac.values * factors[..., None], s_in, s_out),
                               attribution_row_ratio(jac.values, s_in, s_out), rtol=1e-12, atol=0)


def test_row_ratio_bounds():
    k = 4
    one_hot = torch.zeros(1, 2, k, dtype=torch.float64)
    one_hot[0, :, 1] = 3.0
    s = torch.ones(1, k, dtype=torch.float64)
    assert float(attribution_row_ratio(one_hot, s, torch.ones(1, 2))) == pytest.approx(1 / k)
    flat = torch.full((1, 2, k), -2.0, dtype=torch.float64)
    assert float(attribution_row_ratio(flat, s, torch.ones(1, 2))) == pytest.approx(1 / k**0.5)
    # an inactive output latent's row and an all-zero row are left out of the mean
    mixed = torch.stack([one_hot[0, 0], flat[0, 0]])[None]
    assert float(attribution_row_ratio(mixed, s, torch.tensor([[1.0, 0.0]]))) == pytest.approx(1 / k)
    zero_row = torch.stack([one_hot[0, 0], torch.zeros(k, dtype=torch.float64)])[None]
    assert float(attribution_row_ratio(zero_row, s, torch.ones(1, 2))) == pytest.approx(1 / k)


def test_logged_metric_is_the_per_node_ratio():
    sae, x = _pair()
    metrics = sae.training_forward_pass(step_input(x, lam=0.0, logging=True)).metrics
    jac = sae.active_jacobian(x)
    rows = jac.values * sae.encode(x).gather(1, jac.input_indices)[:, None, :]
    active = sae.encode_output(sae.mlp(x)).gather(1, jac.output_indices) > 0
    keep = active & (rows.abs().sum(-1) > 0)
    expected = (rows.abs().sum(-1) / (rows.norm(dim=-1) * sae.cfg.k))[keep].mean()
    assert metrics["edge_l1_l2_ratio"] == pytest.approx(expected.item(), rel=1e-9)


def test_training_steps_with_the_penalty_lower_it():
    torch.manual_seed(0)
    base, x = _pair()

    def train(h: float, steps: int = 15) -> float:
        sae = copy.deepcopy(base)
        sae.cfg.edge_sparsity_coefficient = h
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
        for _ in range(steps):
            opt.zero_grad()
            sae.training_forward_pass(step_input(x, lam=0.0, h=h)).loss.backward()
            opt.step()
        with torch.no_grad():
            return sae.training_forward_pass(step_input(x, lam=0.0, logging=True)).metrics["edge_l1_l2_ratio"]

    start = train(0.0, steps=0)
    without, with_penalty = train(0.0), train(5.0)
    print(f"edge_l1_l2_ratio: start {start:.4f}, 15 steps without {without:.4f}, with h = 5 {with_penalty:.4f}")
    assert with_penalty < start - 0.01
    assert with_penalty < without - 0.01
