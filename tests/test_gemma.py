"""gemma-2-2b: the run config validates offline with Gemma Scope's MLP-SAE hooks, and the whole
flow (train a pair, SAEBench core next to a Gemma-Scope-shaped SAE, Jacobian evals) runs offline
on a tiny Gemma-2-shaped model."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_runner_cfg, tiny_token_dataset

from sae_lens_jsae.config import load_run_config
from sae_lens_jsae.families import family, tiny_family_model
from sae_lens_jsae.mlp import _check_supported
from sae_lens_jsae.training import JacobianSAETrainingRunner, RunOptions, check_run_config

ROOT = Path(__file__).parents[1]


def _gemma_scope_mlp_cfg(folder: str) -> dict:
    """SAELens' own config for a Gemma Scope MLP SAE (offline: its loader derives it from names)."""
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    return get_gemma_2_config_from_hf(repo_id="google/gemma-scope-2b-pt-mlp", folder_name=folder, device="cpu")


def test_gemma_2_2b_config_validates_offline_with_gemma_scope_hooks():
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    cfg, options = load_run_config(ROOT / "configs" / "gemma-2-2b-l12.yaml")
    layer = check_run_config(cfg)
    tl_cfg = get_pretrained_model_config("google/gemma-2-2b")  # name-based in TransformerLens: no download
    assert tl_cfg.use_normalization_before_and_after  # the post-MLP norm the plugin now supports
    _check_supported(tl_cfg, "gemma-2-2b", layer)  # raises if the block were refused
    assert (layer, cfg.sae.d_in, options.model_source) == (12, tl_cfg.d_model, "hub")
    scope = _gemma_scope_mlp_cfg("layer_12/width_65k/average_l0_96")
    assert cfg.sae.resolved_output_hook_name(cfg.hook_name) == scope["hook_name"] == "blocks.12.hook_mlp_out"
    assert (cfg.sae.d_sae, cfg.sae.d_in) == (scope["d_sae"], scope["d_in"])


@pytest.mark.parametrize("name", ["saebench-gemma-2-2b-l12.yaml", "saebench-pythia-70m-deduped-l3.yaml"])
def test_saebench_configs_name_saes_saelens_knows(name):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    spec = yaml.safe_load((ROOT / "configs" / name).read_text())
    assert spec["evals"][0] == "core"
    for sae in spec["saes"]:
        release, _, sae_id = sae.partition("/")
        assert sae_id in directory[release].saes_map, sae
        if release.startswith("gemma-scope"):
            assert _gemma_scope_mlp_cfg(directory[release].saes_map[sae_id])["hook_name"] == "blocks.12.hook_mlp_out"


def test_gemma_2_flow_end_to_end_offline(tmp_path):
    """Train a JSAE on a tiny Gemma 2 (sandwich norms), then SAEBench's core eval of both halves
    and of a Gemma-Scope-shaped JumpReLU SAE on the same hook, plus the Jacobian eval: the
    functions that take a model object (SAEBench's own runners load models by name)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from sae_lens_jsae.evals import saebench as sb
    from sae_lens_jsae.evals.pipeline import load_checkpoint

    model = tiny_family_model(family("Gemma 2"), dtype=torch.float32)
    assert model.cfg.use_normalization_before_and_after
    cfg = tiny_runner_cfg(tmp_path, lam=0.5, training_tokens=64 * 12)
    runner = JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=4), override_dataset=tiny_token_dataset(), override_model=model)
    trained = runner.run()
    assert trained.mlp.post_norm
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(r["losses/jacobian_loss"] > 0 and r["metrics/jacobian_abs_mean"] > 0 for r in log)
    jsae = load_checkpoint(tmp_path / "out")  # what `jsae saebench` loads
    assert jsae.mlp.post_norm

    tokens = torch.tensor(tiny_token_dataset(seed=5)["input_ids"])
    scope_cfg = _gemma_scope_mlp_cfg("layer_1/width_16k/average_l0_100")
    metadata = SAEMetadata(model_name=scope_cfg["model_name"], hook_name=scope_cfg["hook_name"])
    scope = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=64, dtype="float32", metadata=metadata))
    with torch.no_grad():
        scope.W_enc.copy_(torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * 0.3)
        scope.W_dec.copy_(scope.W_enc.T)
    assert scope.cfg.metadata.hook_name == jsae.output_hook == "blocks.1.hook_mlp_out"

    out = tmp_path / "saebench"
    saes = [("jsae", "input_sae", jsae.input_sae), ("jsae", "output_sae", jsae.output_sae), ("gemma-scope-like", "layer_1", scope)]
    budget = {"batch_size_prompts": 4, "n_reconstruction_tokens": 128, "n_sparsity_variance_tokens": 256}
    paths = [sb.run_core_eval(model, sae, tokens, out / "core", release, sae_id, **budget) for release, sae_id, sae in saes]
    summaries = [sb.core_summary(p) for p in paths]
    for path, summary in zip(paths, summaries):
        result = sb.read_core_result(path)  # SAEBench's own pydantic class validates the file
        assert result.eval_result_metrics.reconstruction_quality.explained_variance == pytest.approx(summary["explained_variance"])
    assert summaries[0]["l0"] <= 4 and summaries[1]["l0"] <= 4  # TopK k=4 halves
    config = sb.JacobianSparsityEvalConfig(n_tokens=128, batch_size_prompts=4)
    res = sb.run_eval(config, [("jsae", jsae)], "cpu", str(out / "jacobian_sparsity"), model=model, tokens=tokens)
    (entry,) = res.values()
    # mean |J| over the k² active entries of the first n_tokens tokens, from the pair directly
    # (a post-norm block's J, or tokens miscounted by the adapter, would differ)
    n = entry["eval_result_metrics"]["token_stats"]["n_tokens"]
    assert n == 128
    with torch.no_grad():
        x = model.run_with_cache(tokens[: n // tokens.shape[1]], names_filter=jsae.cfg.metadata.hook_name)[1][jsae.cfg.metadata.hook_name]
        direct = jsae.active_jacobian(x.reshape(-1, x.shape[-1])).values.abs().mean().item()
    assert entry["eval_result_metrics"]["jacobian_sparsity"]["mean_abs_jacobian"] == pytest.approx(direct, rel=1e-5)
