"""The `jacobian` architecture against SAELens' contract for registered SAEs."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import build_jsae_cfg, make_tiny_model, mlp_inputs
from sae_lens import (
    SAE,
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    TopKSAE,
    TrainingSAE,
)
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sae_lens_jsae
from sae_lens_jsae import (
    JacobianSAE,
    JacobianSAEConfig,
    JacobianTrainingSAE,
    JacobianTrainingSAEConfig,
    build_jacobian_sae,
)


@pytest.fixture
def pair(reproducibility):
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6, jacobian_coefficient=0.7)
    with torch.no_grad():
        sae.b_enc.add_(0.05 * torch.randn_like(sae.b_enc))
        sae.b_dec_out.add_(0.05 * torch.randn_like(sae.b_dec_out))
    return model, sae, mlp_inputs(model, 1, n_tokens=32)


def step_input(x, lam=0.7, logging=False):
    return TrainStepInput(sae_in=x, coefficients={"jacobian_coefficient": lam}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=logging)


def test_registered_for_inference_and_training_and_import_is_idempotent():
    assert get_sae_class("jacobian") == (JacobianSAE, JacobianSAEConfig)
    assert get_sae_training_class("jacobian") == (JacobianTrainingSAE, JacobianTrainingSAEConfig)
    sae_lens_jsae.register_jacobian_architecture()  # registering again is a no-op, not a conflict
    sae_lens_jsae.register_jacobian_architecture()
    assert get_sae_class("jacobian")[0].__name__ == "JacobianSAE"


def test_every_config_field_has_a_default_beyond_sizes():
    from dataclasses import MISSING, fields

    for cls in (JacobianSAEConfig, JacobianTrainingSAEConfig):
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        assert required == {"d_in", "d_sae"}, cls
    cfg = JacobianTrainingSAEConfig(d_in=64, d_sae=128)
    assert cfg.k == 32 and cfg.resolved_jacobian_coefficient == pytest.approx(0.5 * 32**2 / 64)


def test_from_dict_returns_plugin_class():
    cfg = JacobianSAEConfig(d_in=16, d_sae=48, k=6)
    sae = SAE.from_dict(cfg.to_dict())
    assert type(sae) is JacobianSAE
    tsae = TrainingSAE.from_dict(build_jsae_cfg().to_dict())
    assert type(tsae) is JacobianTrainingSAE


@pytest.mark.parametrize("saver", ["save_model", "save_inference_model"])
def test_save_load_round_trip(pair, tmp_path, saver):
    model, sae, x = pair
    getattr(sae, saver)(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]  # no pickles
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "jacobian"
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is JacobianSAE
    assert loaded.mlp is None  # SAELens' generic loader: SAE weights only; the MLP comes from the model
    loaded.attach_mlp_from_model(model)
    expected, got = sae.forward_pair(x), loaded.forward_pair(x)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(loaded.active_jacobian(x).values, sae.active_jacobian(x).values, rtol=0, atol=1e-12)
    if saver == "save_model":
        tloaded = TrainingSAE.load_from_disk(tmp_path)
        assert type(tloaded) is JacobianTrainingSAE
        tloaded.attach_mlp_from_model(model)
        assert tloaded.cfg.jacobian_coefficient == 0.7
        torch.testing.assert_close(tloaded.active_jacobian(x).values, sae.active_jacobian(x).values, rtol=0, atol=1e-12)


def test_config_only_sae_constructs_saves_loads_folds_but_refuses_jacobian(tmp_path):
    sae = JacobianTrainingSAE(build_jsae_cfg())
    x = torch.randn(5, 16)
    assert sae(x).shape == (5, 16) and sae.encode(x).shape == (5, 48)
    sae.save_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    loaded.fold_W_dec_norm()
    assert loaded.mlp is None
    with pytest.raises(RuntimeError, match="no FrozenMLP attached.*build_jacobian_sae.*JacobianSAETrainingRunner"):
        loaded.active_jacobian(x)
    with pytest.raises(RuntimeError, match="JacobianSAETrainingRunner"):
        sae.training_forward_pass(step_input(x))


def test_input_and_output_saes_are_plain_topk_saes_sharing_weights(pair, tmp_path):
    _, sae, x = pair
    out = sae.forward_pair(x)
    inp, outp = sae.input_sae, sae.output_sae
    assert type(inp) is TopKSAE and type(outp) is TopKSAE
    assert inp.cfg.metadata.hook_name == "blocks.1.ln2.hook_normalized"
    assert outp.cfg.metadata.hook_name == "blocks.1.hook_mlp_out"
    torch.testing.assert_close(inp.encode(x), out.input_latents)
    torch.testing.assert_close(inp.decode(out.input_latents), out.input_reconstruction)
    torch.testing.assert_close(outp.encode(out.mlp_output), out.output_latents)
    torch.testing.assert_close(outp(out.mlp_output), out.output_reconstruction)
    assert inp.W_dec is sae.W_dec and outp.W_enc is sae.W_enc_out
    # loadable by SAELens alone, in a process that never imports sae_lens_jsae
    outp.save_model(tmp_path / "out")
    torch.save(out.mlp_output, tmp_path / "y.pt")
    code = (
        "import sys, torch; from sae_lens import SAE; "
        f"s = SAE.load_from_disk(r'{tmp_path / 'out'}'); y = torch.load(r'{tmp_path / 'y.pt'}'); "
        "assert 'sae_lens_jsae' not in sys.modules; print(type(s).__name__); "
        f"torch.save(s(y), r'{tmp_path / 'yhat.pt'}')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "TopKSAE"
    torch.testing.assert_close(torch.load(tmp_path / "yhat.pt"), out.output_reconstruction)


def test_plain_saes_are_cached_and_work_under_torch_func(pair):
    _, sae, x = pair
    inp, outp = sae.input_sae, sae.output_sae
    assert sae.input_sae is inp and sae.output_sae is outp  # built once, not per access
    assert "_plain_saes" not in "".join(sae.state_dict())  # the cache is no submodule
    batched = torch.func.vmap(lambda row: sae.input_sae.encode(row))(x)  # SAELens' init would draw random weights here
    torch.testing.assert_close(batched, inp.encode(x))
    grad = torch.func.grad(lambda v: sae.output_sae(v).pow(2).sum())(x[0])
    v = x[0].clone().requires_grad_(True)
    outp(v).pow(2).sum().backward()
    torch.testing.assert_close(grad, v.grad)


def test_plain_saes_stay_shared_after_training_steps_and_loading(pair):
    _, sae, x = pair
    inp, outp = sae.input_sae, sae.output_sae
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        sae.training_forward_pass(step_input(x)).loss.backward()
        opt.step()
    assert sae.input_sae is inp and inp.W_enc is sae.W_enc and outp.W_dec is sae.W_dec_out
    state = {k: v + 0.01 for k, v in sae.state_dict().items()}
    sae.load_state_dict(state)  # in place: the same parameter objects
    assert sae.input_sae is inp
    torch.testing.assert_close(inp.W_dec, state["W_dec"])
    sae.load_state_dict({k: v * 2 for k, v in state.items()}, assign=True)  # new parameter objects
    assert sae.input_sae is not inp and sae.input_sae.W_dec is sae.W_dec and sae.output_sae.b_enc is sae.b_enc_out
    torch.testing.assert_close(sae.input_sae.W_dec, 2 * state["W_dec"])
    sae.to(torch.float64)  # the same parameters, a new dtype: the plain SAE follows
    assert sae.input_sae.dtype == torch.float64 and sae.input_sae.W_enc is sae.W_enc
    torch.testing.assert_close(sae.input_sae.encode(x.double()), sae.encode(x.double()))


def test_attaches_to_hooked_sae_transformer(pair):
    model, sae, _ = pair
    tokens = torch.randint(0, 64, (2, 8))
    ht = HookedSAETransformer(model.cfg)
    ht.load_state_dict(model.state_dict())
    clean = ht(tokens)
    ht.add_sae(sae.input_sae)
    ht.add_sae(sae.output_sae)
    _, cache = ht.run_with_cache(tokens)
    assert "blocks.1.ln2.hook_normalized.hook_sae_acts_post" in cache
    assert "blocks.1.hook_mlp_out.hook_sae_acts_post" in cache
    assert not torch.allclose(ht(tokens), clean)
    ht.reset_saes()
    ht.add_sae(sae)  # the pair itself acts as its input SAE
    assert "blocks.1.ln2.hook_normalized.hook_sae_acts_post" in ht.run_with_cache(tokens)[1]


def test_runner_config_accepts_jacobian_sae_config():
    cfg = LanguageModelSAERunnerConfig(
        sae=build_jsae_cfg(),
        model_name="tiny",
        hook_name="blocks.1.ln2.hook_normalized",
        dataset_path="unused",
        training_tokens=1000,
    )
    assert isinstance(cfg.sae, JacobianTrainingSAEConfig)
    assert cfg.get_training_sae_cfg_dict()["architecture"] == "jacobian"


def test_loss_terms_match_hand_computation(pair):
    _, sae, x = pair
    out = sae.training_forward_pass(step_input(x, lam=0.7))
    ref = sae.forward_pair(x)
    jac = sae.active_jacobian(x)
    mse_in = ((ref.input_reconstruction - x) ** 2).mean()
    mse_out = ((ref.output_reconstruction - ref.mlp_output) ** 2).mean()
    torch.testing.assert_close(out.losses["input_mse_loss"], mse_in)
    assert "mse_loss" not in out.losses  # SAELens' key is a per-token sum: ours would read d_in times too small
    torch.testing.assert_close(out.losses["output_mse_loss"], 1.0 * mse_out)
    torch.testing.assert_close(out.losses["jacobian_loss"], 0.7 * jac.values.abs().mean())
    torch.testing.assert_close(out.loss, mse_in + mse_out + 0.7 * jac.values.abs().mean())


def test_mlp_reconstruction_term_is_opt_in_and_matches_hand_computation(pair):
    _, sae, x = pair
    default = sae.training_forward_pass(step_input(x, lam=0.7))
    assert "mlp_reconstruction_loss" not in default.losses  # the paper's loss unless asked for
    sae.cfg.mlp_reconstruction_coefficient = 2.5
    out = sae.training_forward_pass(step_input(x, lam=0.7))
    ref = sae.forward_pair(x)
    term = 2.5 * ((sae.mlp(ref.input_reconstruction) - ref.mlp_output) ** 2).mean()
    torch.testing.assert_close(out.losses["mlp_reconstruction_loss"], term)
    torch.testing.assert_close(out.loss, default.loss + term)
    # its gradient reaches the input SAE only (the MLP is frozen, y is on the true x)
    sae.zero_grad()
    out.losses["mlp_reconstruction_loss"].backward()
    assert sae.W_dec.grad.abs().sum() > 0 and sae.W_enc.grad.abs().sum() > 0
    assert sae.W_dec_out.grad is None or sae.W_dec_out.grad.abs().sum() == 0
    assert not any(b.requires_grad for b in sae.mlp.buffers())
    with pytest.raises(ValueError, match="mlp_reconstruction_coefficient=-1"):
        build_jsae_cfg(mlp_reconstruction_coefficient=-1.0)


def test_lambda_zero_is_a_plain_topk_pair(pair):
    _, sae, x = pair
    out = sae.training_forward_pass(step_input(x, lam=0.0))
    assert out.losses["jacobian_loss"] == 0
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    inp, outp = sae.input_sae, sae.output_sae
    y = sae.mlp(x)
    (F.mse_loss(inp(x), x) + F.mse_loss(outp(y), y)).backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-10, atol=1e-14)


def test_warm_up_through_get_coefficients():
    sae = JacobianTrainingSAE(build_jsae_cfg(jacobian_coefficient=2.0, jacobian_warm_up_steps=10))
    coeff = sae.get_coefficients()["jacobian_coefficient"]
    assert coeff.value == 2.0 and coeff.warm_up_steps == 10
    default = JacobianTrainingSAE(build_jsae_cfg(k=8)).get_coefficients()["jacobian_coefficient"]
    assert default.value == pytest.approx(0.5 * 8**2 / 16)


def test_logging_metrics(pair):
    _, sae, x = pair
    metrics = sae.training_forward_pass(step_input(x, lam=0.0, logging=True)).metrics
    assert set(metrics) >= {"output_explained_variance", "output_l0", "jacobian_abs_mean", "jacobian_count_above_0.01",
                            "mlp_through_reconstruction_explained_variance"}
    y, x_hat = sae.mlp(x), sae.decode(sae.encode(x))
    ev = 1 - ((y - sae.mlp(x_hat)) ** 2).sum(-1).mean() / ((y - y.mean(0)) ** 2).sum(-1).mean()
    assert metrics["mlp_through_reconstruction_explained_variance"] == pytest.approx(float(ev), rel=1e-6)
    assert 0 < metrics["output_l0"] <= 6
    J = sae.active_jacobian(x).values.abs().flatten(1)
    k = sae.cfg.k
    ratio = (J.sum(-1) / (J.norm(dim=-1) * k))[J.norm(dim=-1) > 0].mean()
    assert metrics["jacobian_l1_l2_ratio"] == pytest.approx(float(ratio), rel=1e-6)
    assert 1 / k <= metrics["jacobian_l1_l2_ratio"] <= 1


def test_fold_and_moves(pair):
    _, sae, x = pair
    before = sae.forward_pair(x)
    sae.fold_W_dec_norm()
    for a, b in zip(before, sae.forward_pair(x)):
        torch.testing.assert_close(a, b)
    sae32 = sae.to(torch.float32)
    assert sae32.mlp.W_in.dtype == torch.float32 and sae32.cfg.dtype == "float32"
    assert sae32.active_jacobian(x.float()).values.dtype == torch.float32


def test_nan_loss_names_step_and_term(pair):
    _, sae, x = pair
    x = x.clone()
    x[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="'input_mse_loss'.*step 0"):
        sae.training_forward_pass(step_input(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_in": 17}, r"d_in=17 \(the model has 16\)"),
        ({"k": 49}, r"k=49 must be in \[1, d_sae=48\]"),
        ({"gated_mlp": False}, "gated_mlp=False"),
        ({"output_hook_name": "blocks.0.hook_mlp_out"}, "expected 'blocks.1.hook_mlp_out'"),
        ({"output_hook_name": "blocks.1.hook_resid_post"}, "not an MLP output hook"),
    ],
)
def test_build_errors(kwargs, match):
    model = make_tiny_model("gated_silu")
    with pytest.raises(ValueError, match=match):
        build_jacobian_sae(model, 1, **{"d_sae": 48, "k": 6, **kwargs})


def test_config_errors():
    with pytest.raises(ValueError, match="Unsupported activation function 'swish'"):
        build_jsae_cfg(mlp_act_fn="swish")
    with pytest.raises(ValueError, match="k=0"):
        build_jsae_cfg(k=0)


def test_attach_mlp_rejects_mismatch():
    from sae_lens_jsae import FrozenMLP

    mlp = FrozenMLP.from_hooked_transformer(make_tiny_model("gated_silu"), 0)
    with pytest.raises(ValueError, match="the MLP is gated but cfg.gated_mlp says dense"):
        JacobianTrainingSAE(build_jsae_cfg(mlp_act_fn="silu")).attach_mlp(mlp)
    with pytest.raises(ValueError, match="d_model 16 != d_in 8"):
        JacobianTrainingSAE(build_jsae_cfg(d_in=8, d_mlp=0)).attach_mlp(mlp)
    sae = JacobianTrainingSAE(build_jsae_cfg(d_mlp=0))  # unknown MLP: adopts it
    sae.attach_mlp(mlp)
    assert sae.cfg.gated_mlp and sae.cfg.d_mlp == 24 and sae.cfg.mlp_act_fn == "silu"


def test_layer_hook_validation():
    from sae_lens_jsae.sae import layer_of_input_hook

    assert layer_of_input_hook("blocks.3.ln2.hook_normalized") == 3
    with pytest.raises(ValueError, match="not an MLP input hook"):
        layer_of_input_hook("blocks.3.hook_resid_pre")


@pytest.mark.parametrize("which", ["W_dec", "W_dec_out", "both"])
def test_fold_W_dec_norm_refuses_non_unit_decoders_like_saelens_topk(pair, which, tmp_path):
    """Folding non-unit decoder norms changes TopK's picks; the pair refuses (as SAELens' TopKSAE
    does), leaves every weight untouched, and so does loading with fold_W_dec_norm=True."""
    _, sae, x = pair
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in (["W_dec", "W_dec_out"] if which == "both" else [which]):
            W = getattr(sae, name)
            W.mul_(torch.rand(W.shape[0], 1, generator=gen, dtype=W.dtype) * 1.5 + 0.25)
    # the hazard is real: a plain fold changes the picked latents of the rescaled SAE
    naive = copy.deepcopy(sae)
    with torch.no_grad():
        for W, W_enc, b_enc in ((naive.W_dec, naive.W_enc, naive.b_enc), (naive.W_dec_out, naive.W_enc_out, naive.b_enc_out)):
            norms = W.norm(dim=-1)
            W.div_(norms[:, None]), W_enc.mul_(norms[None, :]), b_enc.mul_(norms)
    before, after = sae.forward_pair(x), naive.forward_pair(x)
    changed = "input_latents" if which == "W_dec" else "output_latents"
    assert not torch.equal(getattr(before, changed) > 0, getattr(after, changed) > 0)

    state = {k: v.clone() for k, v in sae.state_dict().items()}
    with pytest.raises(NotImplementedError, match=r"not safe.*" + ("W_dec\\)" if which != "W_dec_out" else "W_dec_out")):
        sae.fold_W_dec_norm()
    for k, v in sae.state_dict().items():
        assert torch.equal(v, state[k]), k
    sae.save_model(tmp_path)
    with pytest.raises(NotImplementedError, match="not safe"):
        SAE.load_from_disk(tmp_path, fold_W_dec_norm=True)
    with pytest.raises(NotImplementedError):  # the exported halves are SAELens TopKSAEs: refused there too
        (sae.input_sae if which != "W_dec_out" else sae.output_sae).fold_W_dec_norm()


# ---- no LLM weights in the SAE's files; the MLP re-attached and checked ------------------------
SAE_KEYS = {"W_enc", "b_enc", "W_dec", "b_dec", "W_enc_out", "b_enc_out", "W_dec_out", "b_dec_out"}


@pytest.mark.parametrize("saver", ["save_model", "save_inference_model"])
def test_saved_weights_hold_only_sae_weights_and_cfg_identifies_the_mlp(pair, tmp_path, saver):
    from safetensors.torch import load_file

    from sae_lens_jsae.mlp import FrozenMLP, mlp_checksum

    model, sae, _ = pair
    assert set(sae.state_dict()) == SAE_KEYS  # what tools walking the state dict see
    getattr(sae, saver)(tmp_path)
    assert set(load_file(tmp_path / "sae_weights.safetensors")) == SAE_KEYS
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["mlp_sha256"] == mlp_checksum(FrozenMLP.from_hooked_transformer(model, 1))
    assert (cfg["metadata"]["model_name"], cfg["metadata"]["hook_name"]) == ("tiny-gated_silu", "blocks.1.ln2.hook_normalized")
    assert (cfg["d_mlp"], cfg["mlp_act_fn"], cfg["gated_mlp"]) == (24, "silu", True)


def test_mlp_checksum_sees_every_buffer_but_not_the_dtype():
    from sae_lens_jsae.mlp import CHECKSUM_ORDER, FrozenMLP, mlp_checksum

    model = make_tiny_model("gated_silu", dtype=torch.float32)
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    base = mlp_checksum(mlp)
    for dtype in (torch.float64, torch.bfloat16):  # the same weights loaded in another dtype
        assert mlp_checksum(copy.deepcopy(mlp).to(dtype)) == base, dtype
    assert mlp_checksum(FrozenMLP.from_hooked_transformer(model, 0)) != base  # another layer
    assert mlp_checksum(FrozenMLP.from_hooked_transformer(make_tiny_model("gated_silu", dtype=torch.float32, seed=3), 1)) != base
    buffers = dict(mlp.named_buffers())
    assert set(buffers) <= set(CHECKSUM_ORDER)
    for name in buffers:  # one changed entry of any buffer changes the checksum
        changed = copy.deepcopy(mlp)
        with torch.no_grad():
            getattr(changed, name).view(-1)[0] += 0.25
        assert mlp_checksum(changed) != base, name


def _old_format_save(sae, path):
    """What this package wrote before the MLP left the SAE's weights: `mlp.*` inside, no checksum."""
    from safetensors.torch import save_file

    sae.save_model(path)
    state = {**sae.state_dict(), **{f"mlp.{n}": t for n, t in sae.mlp.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, path / "sae_weights.safetensors")
    cfg = json.loads((path / "cfg.json").read_text())
    del cfg["mlp_sha256"]
    (path / "cfg.json").write_text(json.dumps(cfg))
    return cfg


def test_old_files_with_the_mlp_inside_still_load(pair, tmp_path):
    from sae_lens_jsae.hub import load_jsae
    from sae_lens_jsae.sae import MLPMismatchError

    model, sae, x = pair
    cfg = _old_format_save(sae, tmp_path / "old")
    for loaded in (SAE.load_from_disk(tmp_path / "old"), load_jsae(tmp_path / "old"), TrainingSAE.load_from_disk(tmp_path / "old")):
        assert loaded.mlp is not None and loaded.cfg.mlp_sha256 == sae.cfg.mlp_sha256
        for a, b in zip(loaded.forward_pair(x), sae.forward_pair(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert set(loaded.state_dict()) == SAE_KEYS
    # a checksum in the cfg is checked against the MLP found inside the weights too
    (tmp_path / "old" / "cfg.json").write_text(json.dumps({**cfg, "mlp_sha256": "0" * 64}))
    with pytest.raises(MLPMismatchError, match="0000000000000000"):
        SAE.load_from_disk(tmp_path / "old")


def test_resume_refuses_a_checkpoint_trained_on_another_mlp(pair, tmp_path):
    from sae_lens_jsae.sae import MLPMismatchError

    model, sae, x = pair
    sae.save_model(tmp_path / "ckpt")
    same = build_jacobian_sae(model, 1, d_sae=48, k=6, jacobian_coefficient=0.7)
    same.load_weights_from_checkpoint(tmp_path / "ckpt")  # what SAELens' runner does on resume
    torch.testing.assert_close(same.forward_pair(x).output_reconstruction, sae.forward_pair(x).output_reconstruction, rtol=0, atol=0)
    other = build_jacobian_sae(make_tiny_model("gated_silu", seed=3), 1, d_sae=48, k=6, jacobian_coefficient=0.7)
    with pytest.raises(MLPMismatchError, match=str(tmp_path / "ckpt")):
        other.load_weights_from_checkpoint(tmp_path / "ckpt")
