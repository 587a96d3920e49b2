"""The training runner on tiny random models (float32, CPU)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_model, tiny_runner_cfg, tiny_token_dataset
from sae_lens import LanguageModelSAETrainingRunner
from safetensors.torch import load_file

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.training import (
    COMPLETE_MARKER,
    JacobianSAETrainingRunner,
    RunOptions,
    TrainingInterrupted,
    latest_checkpoint,
)

TESTS_DIR = Path(__file__).parent


def train(tmp_path, lam=0.5, kind="gated_silu", options=None, **overrides):
    cfg = tiny_runner_cfg(tmp_path, lam=lam, **overrides)
    runner = JacobianSAETrainingRunner(
        cfg, options or RunOptions(log_every_n_steps=5), override_dataset=tiny_token_dataset(), override_model=make_tiny_model(kind, dtype=torch.float32)
    )
    return runner, runner.run()


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@torch.no_grad()
def jacobian_stats(sae, kind="gated_silu"):
    model = make_tiny_model(kind, dtype=torch.float32)
    tokens = torch.tensor(tiny_token_dataset(seed=99)["input_ids"])
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.ln2.hook_normalized")
    J = sae.active_jacobian(cache["blocks.1.ln2.hook_normalized"].reshape(-1, 16)).values.abs()
    return J.mean().item(), (J > 0.01).float().sum((1, 2)).mean().item()


def test_training_lowers_both_mses_and_logs_everything(tmp_path):
    runner, sae = train(tmp_path)
    log = read_log(tmp_path / "out" / "train_log.jsonl")
    assert len(log) == 8  # 40 steps, every 5
    first, last = log[0], log[-1]
    for term in ("losses/input_mse_loss", "losses/output_mse_loss"):
        assert last[term] < 0.7 * first[term], term
    for key in ("losses/jacobian_loss", "details/jacobian_coefficient_coefficient", "metrics/l0", "metrics/output_l0",
                "metrics/explained_variance", "metrics/output_explained_variance", "metrics/jacobian_abs_mean",
                "metrics/jacobian_count_above_0.01", "sparsity/dead_features", "sparsity/output_dead_features",
                "details/tokens_per_second"):
        assert key in last, key
    # λ warmed up linearly over 5% of the 40 steps (2 steps)
    assert runner.cfg.sae.jacobian_warm_up_steps == 2 and last["details/jacobian_coefficient_coefficient"] == 0.5
    out = tmp_path / "out"
    assert {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"} <= {p.name for p in out.iterdir()}
    # inference save: unit-norm decoders
    weights = load_file(out / "sae_weights.safetensors")
    torch.testing.assert_close(weights["W_dec_out"].norm(dim=-1), torch.ones(64))
    # no LLM weights in the SAE's file; the local run output keeps the MLP beside it
    assert not [k for k in weights if k.startswith("mlp.")] and "W_gate" in load_file(out / "mlp.safetensors")


def test_jacobian_penalty_sparsifies_the_jacobian(tmp_path):
    """The paper's effect as a direction on a tiny random model (k=4: counts are out of 16).

    Measured here (seed 7, 150 steps of 64 tokens): mean|J| 0.1347 (λ=0) vs 0.0245 (λ=4),
    count |J|>0.01 15.03 vs 9.49; at λ=1: 0.0461 and 12.12. The bounds leave ~1.5x slack."""
    _, plain = train(tmp_path / "l0", lam=0.0, training_tokens=64 * 150)
    _, jsae = train(tmp_path / "l4", lam=4.0, training_tokens=64 * 150)
    mean_plain, count_plain = jacobian_stats(plain)
    mean_jsae, count_jsae = jacobian_stats(jsae)
    print(f"mean|J| {mean_plain:.4f} vs {mean_jsae:.4f}; count {count_plain:.2f} vs {count_jsae:.2f}")
    assert mean_jsae < 0.3 * mean_plain
    assert count_jsae < 0.85 * count_plain


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    _, a = train(tmp_path / "a", training_tokens=64 * 6)
    _, b = train(tmp_path / "b", training_tokens=64 * 6)
    _, c = train(tmp_path / "c", training_tokens=64 * 6, seed=8)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    assert not torch.equal(a.W_enc, c.W_enc)


KILL_SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from helpers import make_tiny_model, tiny_runner_cfg, tiny_token_dataset
from sae_lens_jsae.training import JacobianSAETrainingRunner, RunOptions
tmp = Path({tmp!r})
cfg = tiny_runner_cfg(tmp, resume_from_checkpoint={resume!r})
runner = JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=5, checkpoint_every_tokens=64 * 8),
                                   override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
if {kill}:
    save = runner.save_checkpoint
    def save_then_die(checkpoint_path):
        path = checkpoint_path
        save(path)
        if path is not None and int(path.name) > 64 * 20:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, mid-run, right after a checkpoint
    runner.save_checkpoint = save_then_die
runner.run()
"""


def run_script(tmp, resume=None, kill=False):
    code = KILL_SCRIPT.format(tests=str(TESTS_DIR), tmp=str(tmp), resume=resume, kill=kill)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_resume_after_sigkill_gives_the_same_weights(tmp_path):
    full = run_script(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run_script(tmp_path / "killed", kill=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "killed" / "out" / "sae_weights.safetensors").exists()
    checkpoint = latest_checkpoint(tmp_path / "killed" / "checkpoints")
    assert checkpoint is not None and (checkpoint / COMPLETE_MARKER).exists() and int(checkpoint.name) > 64 * 20
    resumed = run_script(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "full" / "out" / "sae_weights.safetensors")
    b = load_file(tmp_path / "resumed" / "out" / "sae_weights.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def signalling_runner(tmp, signals_at_step=(), signum=signal.SIGINT, **overrides):
    """A runner whose training step `n` sends itself `signum` once per entry of `signals_at_step` equal to n."""
    cfg = tiny_runner_cfg(tmp, **overrides)
    runner = JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=5, checkpoint_every_tokens=64 * 8),
                                       override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    forward = runner.sae.training_forward_pass

    def forward_then_signal(step_input):
        out = forward(step_input)
        for _ in range(list(signals_at_step).count(step_input.n_training_steps)):
            signal.raise_signal(signum)  # mid-step, as a Ctrl-C or a scheduler's SIGTERM would
        return out

    runner.sae.training_forward_pass = forward_then_signal
    return runner


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_with_a_full_checkpoint_that_resumes_exactly(tmp_path, signum):
    before = signal.getsignal(signum)
    signalling_runner(tmp_path / "full").run()
    interrupted = signalling_runner(tmp_path / "stopped", signals_at_step=[12], signum=signum)
    with pytest.raises(TrainingInterrupted) as stop:
        interrupted.run()
    assert signal.getsignal(signum) is before  # handlers restored
    checkpoint = stop.value.checkpoint
    assert stop.value.n_training_samples == 13 * 64 and checkpoint is not None and checkpoint.name == str(13 * 64)
    assert latest_checkpoint(tmp_path / "stopped" / "checkpoints") == checkpoint
    assert {"sae_weights.safetensors", "trainer_state.pt", COMPLETE_MARKER} <= {p.name for p in checkpoint.iterdir()}
    assert not (tmp_path / "stopped" / "out" / "sae_weights.safetensors").exists()
    signalling_runner(tmp_path / "resumed", resume_from_checkpoint=str(checkpoint)).run()
    a = load_file(tmp_path / "full" / "out" / "sae_weights.safetensors")
    b = load_file(tmp_path / "resumed" / "out" / "sae_weights.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_second_signal_aborts_at_once_without_saving(tmp_path):
    runner = signalling_runner(tmp_path, signals_at_step=[12, 12])
    with pytest.raises(KeyboardInterrupt, match="second SIGINT: aborted without saving") as stop:
        runner.run()
    assert not isinstance(stop.value, TrainingInterrupted)
    assert latest_checkpoint(tmp_path / "checkpoints").name == str(64 * 9)  # only the scheduled one (every 8 steps of 64)



def test_resume_from_a_shared_checkpoint_root_continues_this_runs_checkpoint(tmp_path):
    """`--resume ROOT` where ROOT (one `runner.checkpoint_path`, as in the demo config) holds
    several runs' `<run id>/<n_tokens>/` folders: a single run continues its own latest checkpoint,
    not a more advanced one of a sweep (no activation_scaler.json at its top: was a raw
    FileNotFoundError) or of another k; a sweep continues the sweep's; nothing fitting is one
    error listing each run and why."""
    from sae_lens_jsae.training import resume_point, train_variants

    root = tmp_path / "checkpoints"
    every = RunOptions(log_every_n_steps=5, checkpoint_every_tokens=64 * 4)

    def runner(name, tokens, **overrides):
        cfg = tiny_runner_cfg(tmp_path / name, checkpoint_path=str(root), training_tokens=tokens, **overrides)
        return JacobianSAETrainingRunner(cfg, every, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))

    runner("single", 64 * 10).run()  # checkpoints after 256 and 512 tokens
    own = latest_checkpoint(root)
    variants = [{"jacobian_coefficient": 0.0}, {"jacobian_coefficient": 1.0}]

    def sweep(name, **overrides):
        cfg = tiny_runner_cfg(tmp_path / name, checkpoint_path=str(root), training_tokens=64 * 18, **overrides)
        return train_variants(cfg, variants, every, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))

    sweep("sweep")
    runner("k2", 64 * 18, sae={"k": 2}).run()
    assert _samples(latest_checkpoint(root)) > _samples(own)  # the most advanced of any run: not this one's

    resumed = runner("resumed", 64 * 10, resume_from_checkpoint=str(root))
    assert resume_point(root, {"": resumed.sae}) == own
    resumed.run()
    a = load_file(tmp_path / "single" / "out" / "sae_weights.safetensors")
    b = load_file(tmp_path / "resumed" / "out" / "sae_weights.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name

    sweep("sweep_resumed", resume_from_checkpoint=str(root))  # from the sweep's checkpoint, to the same weights
    for member in ("jacobian_coefficient=0.0", "jacobian_coefficient=1.0"):
        a = load_file(tmp_path / "sweep" / "out" / member / "sae_weights.safetensors")
        b = load_file(tmp_path / "sweep_resumed" / "out" / member / "sae_weights.safetensors")
        for name in a:
            assert torch.equal(a[name], b[name]), (member, name)
    like_sweep = {"jacobian_coefficient=0.0": resumed.sae, "jacobian_coefficient=1.0": resumed.sae}  # λ 0.5: another sweep
    with pytest.raises(ValueError, match="jacobian_coefficient=0.0: jacobian_coefficient=0.0 \\(this run: 0.5\\)"):
        resume_point(root, like_sweep)
    sweep_checkpoint = next(c.parent for c in root.glob(f"*/*/{COMPLETE_MARKER}") if (c.parent / "jacobian_coefficient=0.0").is_dir())
    with pytest.raises(ValueError, match="another run's checkpoint \\(a sweep's checkpoint \\(members jacobian_coefficient=0.0, jacobian_coefficient=1.0\\), this run is a single SAE\\)"):
        resume_point(sweep_checkpoint, {"": resumed.sae})
    other = runner("k8", 64 * 10, sae={"k": 8})
    with pytest.raises(ValueError, match="none of its .* is of this run") as none:
        resume_point(root, {"": other.sae})
    for why in ("k=4 (this run: 8)", "k=2 (this run: 8)", "a sweep's checkpoint (members jacobian_coefficient=0.0"):
        assert why in str(none.value), why
    with pytest.raises(FileNotFoundError, match="holds none"):
        resume_point(tmp_path / "single" / "out", {"": other.sae})


def _samples(checkpoint):
    return int(checkpoint.name)


def test_nan_stops_naming_step_and_term_after_saving_last_good(tmp_path):
    cfg = tiny_runner_cfg(tmp_path)
    runner = JacobianSAETrainingRunner(cfg, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    forward = runner.sae.training_forward_pass

    def poisoned(step_input):
        if step_input.n_training_steps == 3:
            step_input.sae_in[0, 0] = float("nan")
        return forward(step_input)

    runner.sae.training_forward_pass = poisoned
    with pytest.raises(FloatingPointError, match=r"'input_mse_loss' is nan at training step 3"):
        runner.run()
    saved = list(Path(cfg.checkpoint_path).glob("last_good_*"))
    assert [p.name for p in saved] == [f"last_good_{3 * 64}"]
    assert (saved[0] / "sae_weights.safetensors").exists()


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"hook_name": "blocks.1.hook_resid_mid"}, ValueError, "not an MLP input hook"),
        ({"sae": {"d_in": 12}}, ValueError, "d_in=12 but tiny has d_model=16"),
        ({"sae": {"output_hook_name": "blocks.0.hook_mlp_out"}}, ValueError, "expected 'blocks.1.hook_mlp_out'"),
    ],
)
def test_config_errors_before_any_step(tmp_path, overrides, error, match):
    cfg = tiny_runner_cfg(tmp_path, **overrides)
    with pytest.raises(error, match=match):
        JacobianSAETrainingRunner(cfg, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    assert not Path(cfg.checkpoint_path).exists()


def test_k_larger_than_d_sae_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"k=65 must be in \[1, d_sae=64\]"):
        tiny_runner_cfg(tmp_path, sae={"k": 65})


def test_saelens_runner_refuses_a_jacobian_config_without_mlp(tmp_path):
    cfg = tiny_runner_cfg(tmp_path)
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    with pytest.raises(RuntimeError, match="JacobianSAETrainingRunner"):
        runner.run()
    assert not (tmp_path / "out" / "sae_weights.safetensors").exists()


def test_saelens_runner_trains_a_pair_built_on_its_model(tmp_path):
    model = make_tiny_model("gated_silu", dtype=torch.float32)
    cfg = tiny_runner_cfg(tmp_path, training_tokens=64 * 10)
    sae = build_jacobian_sae(model, 1, d_sae=64, k=4, jacobian_coefficient=0.5)
    before = sae.W_dec_out.detach().clone()
    trained = LanguageModelSAETrainingRunner(cfg, override_dataset=tiny_token_dataset(), override_model=model, override_sae=sae).run()
    assert trained is sae and not torch.equal(before, sae.W_dec_out)
    torch.testing.assert_close(sae.mlp.W_out, model.blocks[1].mlp.W_out)


def test_randomized_control_reinitialises_the_model(tmp_path):
    model = make_tiny_model("gated_silu", dtype=torch.float32)
    W_before = model.blocks[1].mlp.W_out.detach().clone()
    cfg = tiny_runner_cfg(tmp_path, training_tokens=64 * 2)
    runner = JacobianSAETrainingRunner(cfg, RunOptions(randomize_model=True), override_dataset=tiny_token_dataset(), override_model=model)
    assert not torch.equal(runner.sae.mlp.W_out, W_before)
    torch.testing.assert_close(runner.sae.mlp.W_out, model.blocks[1].mlp.W_out)
    assert torch.equal(model.blocks[1].ln2.w, torch.ones(16))


def test_sweep_trains_each_lambda_from_one_stream(tmp_path, monkeypatch):
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_jsae.mlp import FrozenMLP
    from sae_lens_jsae.training import train_sweep

    calls, mlp_passes = [], []
    original = ActivationsStore.get_filtered_llm_batch
    monkeypatch.setattr(ActivationsStore, "get_filtered_llm_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    original_pre = FrozenMLP.pre_activations
    monkeypatch.setattr(FrozenMLP, "pre_activations", lambda self, x: mlp_passes.append(1) or original_pre(self, x))
    cfg = tiny_runner_cfg(tmp_path, training_tokens=64 * 20)
    saes = train_sweep(cfg, "jacobian_coefficient", [0.0, 2.0], RunOptions(log_every_n_steps=5),
                       override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    assert list(saes) == ["jacobian_coefficient=0.0", "jacobian_coefficient=2.0"]
    # one LLM batch = store_batch_size_prompts (4) x 16 tokens; 20 steps of 64 tokens need ~20 + buffer
    single_run_batches = len(calls)
    assert single_run_batches <= 20 + 4 + 2
    # the pairs share the frozen MLP's pass on each batch: 20 steps, not 2 x 20 (+ logging steps)
    assert 20 <= len(mlp_passes) <= 20 + 4 * 2
    for name in saes:
        saved = json.loads((tmp_path / "out" / name / "cfg.json").read_text())
        assert saved["metadata"]["training_architecture_details"]["jacobian_coefficient"] == float(name.split("=")[1])
        assert len(read_log(tmp_path / "out" / name / "train_log.jsonl")) == 4
    assert not torch.equal(saes["jacobian_coefficient=0.0"].W_dec, saes["jacobian_coefficient=2.0"].W_dec)
    with pytest.raises(ValueError, match="Cannot sweep 'learning_rate'"):
        train_sweep(cfg, "learning_rate", [1], override_model=make_tiny_model("gated_silu", dtype=torch.float32), override_dataset=tiny_token_dataset())


def test_sweep_grid_and_variants_from_one_stream(tmp_path):
    from sae_lens_jsae.training import sweep_grid, train_variants

    grid = sweep_grid(["jacobian_coefficient=0,1", "jacobian_coefficient=1,2;mlp_reconstruction_coefficient=0.5"])
    assert grid == [{"jacobian_coefficient": 0}, {"jacobian_coefficient": 1},
                    {"jacobian_coefficient": 1, "mlp_reconstruction_coefficient": 0.5},
                    {"jacobian_coefficient": 2, "mlp_reconstruction_coefficient": 0.5}]
    assert sweep_grid(["sae.k=4,4"]) == [{"k": 4}]
    for bad in ("jacobian_coefficient", "jacobian_coefficient=", "=1,2", "jacobian_coefficient=1;k"):
        with pytest.raises(ValueError, match="--sweep expects KEY=V1,V2"):
            sweep_grid([bad])
    cfg = tiny_runner_cfg(tmp_path, training_tokens=64 * 4)
    saes = train_variants(cfg, [{"jacobian_coefficient": 1.0}, {"jacobian_coefficient": 1.0, "mlp_reconstruction_coefficient": 1.0}],
                          RunOptions(log_every_n_steps=2), override_dataset=tiny_token_dataset(),
                          override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    names = ["jacobian_coefficient=1.0", "jacobian_coefficient=1.0,mlp_reconstruction_coefficient=1.0"]
    assert list(saes) == names
    saved = json.loads((tmp_path / "out" / names[1] / "cfg.json").read_text())
    assert saved["metadata"]["training_architecture_details"]["mlp_reconstruction_coefficient"] == 1.0
    assert "losses/mlp_reconstruction_loss" in read_log(tmp_path / "out" / names[1] / "train_log.jsonl")[-1]
    assert not torch.equal(saes[names[0]].W_dec, saes[names[1]].W_dec)


def test_wandb_offline_logging(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from sae_lens import LoggingConfig

    cfg = tiny_runner_cfg(tmp_path, training_tokens=64 * 10, logger=LoggingConfig(log_to_wandb=True, wandb_project="jsae-test", wandb_log_frequency=5, eval_every_n_wandb_logs=1000))
    runner = JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=5), override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    runner.run()
    assert list(tmp_path.glob("wandb/offline-run-*"))
    assert len(read_log(tmp_path / "out" / "train_log.jsonl")) == 2
