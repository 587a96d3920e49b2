"""The fast paths (sparse TopK encoder, workspace Jacobian, no-sync bookkeeping) against the
reference dense computations, in float64 on tiny sizes: same values, same gradients."""

import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_model, mlp_inputs
from sae_lens.saes.sae import TrainStepInput

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.jacobian import (
    CACHE_CHUNK_ELEMENTS,
    active_jacobian_l1,
    active_jacobian_values,
    chunk_tokens,
    mask_inactive,
    topk_encode,
)


def _dense_topk(x, W, b, k):
    top, idx = (x @ W + b).topk(k, dim=-1, sorted=False)
    return top.relu(), idx


@pytest.mark.parametrize("x_grad", [False, True])
def test_topk_encode_values_and_gradients_equal_dense(x_grad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, dtype=torch.float64, generator=gen, requires_grad=x_grad)
    W = torch.randn(8, 40, dtype=torch.float64, generator=gen, requires_grad=True)
    b = (torch.randn(40, dtype=torch.float64, generator=gen) - 4.0).requires_grad_()  # many clipped picks
    weights = torch.randn(30, 5, dtype=torch.float64, generator=gen)
    values, idx, pre = topk_encode(x, W, b, 5)
    ref_values, ref_idx = _dense_topk(x, W, b, 5)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(values, ref_values, rtol=1e-14, atol=1e-14)  # addmm vs mm + add: last bits
    assert (values == 0).any() and (values > 0).any()
    torch.testing.assert_close(pre, x @ W + b, rtol=1e-14, atol=1e-14)
    inputs = [W, b] + ([x] if x_grad else [])
    grads = torch.autograd.grad((values * weights).sum(), inputs)
    ref = torch.autograd.grad((ref_values * weights).sum(), inputs)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def _naive_jacobian(As, B, cs, K1, K2):
    mixed = sum(A[K1] * c[:, None, :] for A, c in zip(As, cs))
    return torch.einsum("tim,tjm->tij", B.T[K2], mixed)


@pytest.mark.parametrize("n_terms", [1, 2])
@pytest.mark.parametrize("chunk", [None, 1, 4, 100])
def test_workspace_jacobian_equals_naive_gather(n_terms, chunk):
    gen = torch.Generator().manual_seed(n_terms)
    S, m, T, k_in, k_out = 20, 12, 9, 4, 3
    As = [torch.randn(S, m, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(n_terms)]
    B = torch.randn(m, S, dtype=torch.float64, generator=gen, requires_grad=True)
    cs = [torch.randn(T, m, dtype=torch.float64, generator=gen) for _ in range(n_terms)]
    K1 = torch.stack([torch.randperm(S, generator=gen)[:k_in] for _ in range(T)])
    K2 = torch.stack([torch.randperm(S, generator=gen)[:k_out] for _ in range(T)])
    weights = torch.randn(T, k_out, k_in, dtype=torch.float64, generator=gen)
    J = active_jacobian_values(As, B, cs, K1, K2, chunk_size=chunk)
    ref = _naive_jacobian(As, B, cs, K1, K2)
    torch.testing.assert_close(J, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((J * weights).sum(), [*As, B])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [*As, B])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def _random_jacobian_problem(n_terms, dtype=torch.float64, seed=0, S=20, m=12, T=9, k_in=4, k_out=3):
    gen = torch.Generator().manual_seed(seed)
    As = [torch.randn(S, m, dtype=dtype, generator=gen).requires_grad_() for _ in range(n_terms)]
    B = torch.randn(m, S, dtype=dtype, generator=gen).requires_grad_()
    cs = [torch.randn(T, m, dtype=dtype, generator=gen) for _ in range(n_terms)]
    K1 = torch.stack([torch.randperm(S, generator=gen)[:k_in] for _ in range(T)])
    K2 = torch.stack([torch.randperm(S, generator=gen)[:k_out] for _ in range(T)])
    v_in = torch.randn(T, k_in, dtype=dtype, generator=gen).relu()  # about half clipped to 0
    v_out = torch.randn(T, k_out, dtype=dtype, generator=gen).relu()
    return As, B, cs, K1, K2, v_in, v_out


@pytest.mark.parametrize("n_terms", [1, 2])
@pytest.mark.parametrize("chunk", [None, 1, 4, 100])
def test_fused_l1_penalty_equals_naive_masked_mean_abs(n_terms, chunk):
    As, B, cs, K1, K2, v_in, v_out = _random_jacobian_problem(n_terms, seed=10 + n_terms)
    penalty = active_jacobian_l1(As, B, cs, K1, K2, v_in, v_out, chunk_size=chunk)
    ref_J = mask_inactive(_naive_jacobian(As, B, cs, K1, K2), v_in, v_out)
    assert (ref_J == 0).any() and (ref_J != 0).any()
    torch.testing.assert_close(penalty.values, ref_J.detach(), rtol=1e-12, atol=1e-12)
    assert not penalty.values.requires_grad
    ref = ref_J.abs().mean()
    torch.testing.assert_close(penalty.mean_abs, ref, rtol=1e-12, atol=1e-14)
    upstream = 2.5  # the backward scales the gradients formed in forward by the incoming scalar
    grads = torch.autograd.grad(upstream * penalty.mean_abs, [*As, B])
    ref_grads = torch.autograd.grad(upstream * ref, [*As, B])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


def test_fused_l1_penalty_without_grad_forms_no_gradients():
    As, B, cs, K1, K2, v_in, v_out = _random_jacobian_problem(2)
    with torch.no_grad():
        penalty = active_jacobian_l1(As, B, cs, K1, K2, v_in, v_out)
    assert not penalty.mean_abs.requires_grad
    ref = mask_inactive(_naive_jacobian(As, B, cs, K1, K2), v_in, v_out).abs().mean()
    torch.testing.assert_close(penalty.mean_abs, ref.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n_terms", [1, 2])
def test_fused_l1_penalty_in_bfloat16_tracks_float32(n_terms):
    """bf16 products (`jacobian_dtype="bfloat16"`): values and gradients within bf16 rounding of
    the float32 ones; gradients come back summed in float32, cast to the inputs' dtype."""
    As, B, cs, K1, K2, v_in, v_out = _random_jacobian_problem(n_terms, dtype=torch.float32, seed=3, S=64, m=96, T=50, k_in=8, k_out=8)
    low = [t.detach().bfloat16().requires_grad_() for t in As], B.detach().bfloat16().requires_grad_()
    penalty = active_jacobian_l1(low[0], low[1], cs, K1, K2, v_in, v_out, chunk_size=7)
    ref = active_jacobian_l1(As, B, cs, K1, K2, v_in, v_out)
    assert penalty.values.dtype == torch.float32
    torch.testing.assert_close(penalty.values, ref.values, rtol=0.05, atol=0.05 * float(ref.values.abs().mean()))
    torch.testing.assert_close(penalty.mean_abs.float(), ref.mean_abs, rtol=0.01, atol=0)
    grads = torch.autograd.grad(penalty.mean_abs, [*low[0], low[1]])
    ref_grads = torch.autograd.grad(ref.mean_abs, [*As, B])
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        # sign(J) may flip where |J| is within rounding of 0: compare in norm, not elementwise
        assert float((g.float() - r).norm() / r.norm()) < 0.05


def test_chunk_tokens_respects_budget_and_cache_cap():
    assert chunk_tokens(None, 32, 1536, 4) is None
    assert chunk_tokens(1, 32, 1536, 4) == 1
    assert chunk_tokens(256 * 2**20, 32, 1536, 4) == CACHE_CHUNK_ELEMENTS // (32 * 1536)
    assert chunk_tokens(10 * 3 * 32 * 1536 * 4, 32, 1536, 4) == 10


def _reference_step_loss(sae, x, lam):
    """The training loss computed the slow, obvious way: dense TopK, dense decode, naive J."""
    mlp = sae.mlp
    s_in, i_in = _dense_topk(x, sae.W_enc, sae.b_enc, sae.cfg.k)
    x_hat = torch.zeros(x.shape[0], sae.cfg.d_sae, dtype=x.dtype).scatter(1, i_in, s_in) @ sae.W_dec + sae.b_dec
    with torch.no_grad():
        pre = mlp.pre_activations(x)
        y = mlp.output_from_pre_activations(pre)
    s_out, i_out = _dense_topk(y, sae.W_enc_out, sae.b_enc_out, sae.cfg.k)
    y_hat = torch.zeros(x.shape[0], sae.cfg.d_sae, dtype=x.dtype).scatter(1, i_out, s_out) @ sae.W_dec_out + sae.b_dec_out
    As = [sae.W_dec @ W for W in mlp.input_weights()]
    J = _naive_jacobian(As, mlp.W_out @ sae.W_enc_out, mlp.local_slopes(pre), i_in, i_out)
    J = mask_inactive(J, s_in, s_out)
    return F.mse_loss(x_hat, x) + F.mse_loss(y_hat, y) + lam * J.abs().mean()


@pytest.mark.parametrize("kind", ["dense_gelu", "gated_silu"])
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_training_step_gradients_equal_reference(kind, lam):
    model = make_tiny_model(kind)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6)
    sae.cfg.jacobian_chunk_bytes = 3000  # several chunks
    with torch.no_grad():
        sae.b_enc.add_(0.3 * torch.randn_like(sae.b_enc) - 0.1)
        sae.b_enc_out.add_(0.3 * torch.randn_like(sae.b_enc_out) - 0.1)
    sae.cfg.normalize_decoder = False  # compare on the same weights
    x = mlp_inputs(model, 1, n_tokens=24)
    params = [p for p in sae.parameters() if p.requires_grad]
    out = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x, coefficients={"jacobian_coefficient": lam}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
        )
    )
    ref = _reference_step_loss(sae, x, lam)
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-14)
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    for p, g, r in zip(params, grads, ref_grads):
        g = torch.zeros_like(p) if g is None else g
        r = torch.zeros_like(p) if r is None else r
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
    # dense latents returned to SAELens' trainer match the sparse ones
    s_in, i_in = _dense_topk(x, sae.W_enc, sae.b_enc, sae.cfg.k)
    torch.testing.assert_close(out.feature_acts, torch.zeros_like(out.feature_acts).scatter(1, i_in, s_in))


def test_output_fired_mask_equals_boolean_indexing():
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6)
    with torch.no_grad():
        sae.b_enc_out.fill_(-1.0)  # some picks clipped to zero
    x = mlp_inputs(model, 1, n_tokens=16)
    sae.training_forward_pass(
        TrainStepInput(
            sae_in=x, coefficients={"jacobian_coefficient": 0.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
        )
    )
    top = sae._encode_output_topk(sae.mlp(x))
    expected = torch.zeros(48, dtype=torch.bool)
    expected[top.indices[top.values > 0]] = True
    assert torch.equal(sae.last_output_fired, expected)
    assert 0 < int(expected.sum()) < 48


def _step_grads(sae, x, lam, autocast=False):
    params = [p for p in sae.parameters() if p.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = sae.training_forward_pass(
            TrainStepInput(sae_in=x, coefficients={"jacobian_coefficient": lam}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=True)
        )
    grads = torch.autograd.grad(out.loss, params)
    return out, dict(zip([n for n, p in sae.named_parameters() if p.requires_grad], grads))


@pytest.mark.parametrize("mode", ["jacobian_dtype", "autocast"])
def test_training_step_in_bfloat16_tracks_float32(mode):
    """`jacobian_dtype="bfloat16"` (bf16 penalty, fp32 pair) and CPU bf16 autocast (everything
    that autocasts) both run, give finite losses near the float32 ones and aligned gradients."""
    model = make_tiny_model("gated_silu").to(torch.float32)
    sae = build_jacobian_sae(model, 1, d_sae=64, k=8)
    sae.cfg.normalize_decoder = False
    x = mlp_inputs(model, 1, n_tokens=64).float()
    ref, ref_grads = _step_grads(sae, x, 0.7)
    if mode == "jacobian_dtype":
        sae.cfg.jacobian_dtype = "bfloat16"
    out, grads = _step_grads(sae, x, 0.7, autocast=mode == "autocast")
    for name, value in ref.losses.items():
        assert torch.isfinite(out.losses[name])
        torch.testing.assert_close(out.losses[name].float(), value, rtol=0.05, atol=1e-3)
    for name, r in ref_grads.items():
        g = grads[name].float()
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        cos = F.cosine_similarity(g.flatten(), r.flatten(), dim=0)
        assert cos > (0.999 if mode == "jacobian_dtype" else 0.99), (name, float(cos))


def test_jacobian_dtype_is_validated():
    from sae_lens_jsae import JacobianTrainingSAEConfig

    with pytest.raises(ValueError, match="jacobian_dtype"):
        JacobianTrainingSAEConfig(d_in=8, d_sae=16, k=2, jacobian_dtype="int8")


def test_auto_penalty_dtype_follows_the_hardware(monkeypatch):
    """`jacobian_dtype: auto` picks bf16 only where the device multiplies it natively; an explicit
    bf16 on a CPU without it warns (it would run ~76x slower than float32 on an AVX2 VM)."""
    import warnings

    from sae_lens_jsae import JacobianTrainingSAEConfig
    from sae_lens_jsae import sae as sae_module

    JacobianTrainingSAEConfig(d_in=8, d_sae=16, k=2, jacobian_dtype="auto")  # accepted
    monkeypatch.setattr(sae_module, "native_bf16", lambda device: True)
    assert sae_module.penalty_dtype("auto", "cpu") is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sae_module.penalty_dtype("bfloat16", "cpu") is torch.bfloat16
    monkeypatch.setattr(sae_module, "native_bf16", lambda device: False)
    assert sae_module.penalty_dtype("auto", "cpu") is None
    assert sae_module.penalty_dtype(None, "cpu") is None and sae_module.penalty_dtype("float32", "cpu") is torch.float32
    with pytest.warns(UserWarning, match="without native bfloat16"):
        assert sae_module.penalty_dtype("bfloat16", "cpu") is torch.bfloat16


def test_fused_l1_penalty_refuses_a_second_backward():
    As, B, cs, K1, K2, v_in, v_out = _random_jacobian_problem(1)
    penalty = active_jacobian_l1(As, B, cs, K1, K2, v_in, v_out)
    penalty.mean_abs.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        penalty.mean_abs.backward()
