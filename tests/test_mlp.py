import pytest
import torch
from helpers import MLP_KINDS, make_tiny_model

from sae_lens_jsae import FrozenMLP


@pytest.mark.parametrize("kind", list(MLP_KINDS))
@pytest.mark.parametrize("layer", [0, 1])
def test_frozen_mlp_maps_hook_normalized_to_hook_mlp_out(kind, layer):
    model = make_tiny_model(kind)  # loaded without weight processing; norms have w != 1, b != 0
    tokens = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens)
    x = cache[f"blocks.{layer}.ln2.hook_normalized"]
    # the hook fires before ln2's weight: the ln2 output differs from the hook value
    assert not torch.allclose(cache[f"blocks.{layer}.ln2.hook_normalized"], model.blocks[layer].ln2(cache[f"blocks.{layer}.hook_resid_mid"]))
    mlp = FrozenMLP.from_hooked_transformer(model, layer)
    torch.testing.assert_close(mlp(x), cache[f"blocks.{layer}.hook_mlp_out"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("act_fn", ["gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu"])
def test_dense_activations_and_derivatives(act_fn):
    model = make_tiny_model("dense_gelu", act_fn=act_fn)
    mlp = FrozenMLP.from_hooked_transformer(model, 0)
    h = torch.linspace(-4, 4, 101, dtype=torch.float64).reshape(-1, 1).repeat(1, 24) + 0.013  # avoid relu's kink
    torch.testing.assert_close(mlp.act_fn(h), model.blocks[0].mlp.act_fn(h), rtol=0, atol=1e-14)
    grad = torch.func.vmap(torch.func.grad(lambda t: mlp.act_fn(t).sum()))(h)
    torch.testing.assert_close(mlp.act_fn_derivative(h), grad, rtol=0, atol=1e-12)


def test_weights_are_buffers_saved_in_state_dict():
    mlp = FrozenMLP.from_hooked_transformer(make_tiny_model("gated_silu"), 1)
    assert list(mlp.parameters()) == []
    assert set(mlp.state_dict()) == {"W_in", "b_in", "W_out", "b_out", "W_gate", "b_gate", "b_lin"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"attn_only": True}, "attention-only"),
        ({"act_fn": "solu_ln"}, "LayerNorm inside the MLP"),
        ({"num_experts": 4, "experts_per_token": 2}, "mixture-of-experts"),
        ({"normalization_type": None}, "no ln2"),
        ({"act_fn": "relu2"}, "Unsupported activation"),
    ],
)
def test_unsupported_mlps_raise_naming_model_and_reason(overrides, reason):
    model = make_tiny_model("dense_gelu", **overrides)
    with pytest.raises(ValueError, match=reason) as err:
        FrozenMLP.from_hooked_transformer(model, 0)
    if reason != "Unsupported activation":
        assert "tiny-dense_gelu" in str(err.value)


def test_layer_out_of_range():
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\]"):
        FrozenMLP.from_hooked_transformer(make_tiny_model(), 2)
