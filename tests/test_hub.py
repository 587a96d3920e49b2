"""Pretrained JSAEs: local dirs, the HF cache offline, SAELens routing, export, push, converter.

Everything is offline: HF_HUB_OFFLINE=1 and a cache directory laid out by the test in the real
`huggingface_hub` cache format (`models--org--name/{blobs,refs/main,snapshots/<rev>/...}`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from helpers import make_tiny_model, mlp_inputs
from huggingface_hub import constants as hf_constants
from sae_lens import SAE
from safetensors.torch import load_file, save_file

from sae_lens_jsae import FrozenMLP, JacobianSAE, JacobianSAEConfig, build_jacobian_sae
from sae_lens_jsae.card import headline_metrics, model_card, push_to_hub, stage_for_push
from sae_lens_jsae.cli import main as cli_main
from sae_lens_jsae.hub import (
    PickleRefusedError,
    PretrainedNotFoundError,
    export_saelens,
    load_sparsity,
    resolve_files,
)
from sae_lens_jsae.reference import convert_reference

REPO = "jsae-org/tiny-jsaes"
SAE_ID = "blocks.1.mlp"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def tiny_model():
    """The model the `trained` pair is built on (the same weights every call)."""
    return make_tiny_model("dense_gelu", dtype=torch.float32)


@pytest.fixture
def trained(reproducibility, tiny_model):
    """A float32 pair with non-trivial biases and its MLP inputs."""
    sae = build_jacobian_sae(tiny_model, 1, d_sae=48, k=6, jacobian_coefficient=0.7)
    with torch.no_grad():
        for bias in (sae.b_enc, sae.b_dec, sae.b_enc_out, sae.b_dec_out):
            bias.add_(0.05 * torch.randn_like(bias))
    return sae, mlp_inputs(tiny_model, 1, n_tokens=32)


@pytest.fixture
def checkpoint(trained, tmp_path):
    """A local pair folder as `jsae train` leaves it: SAE files plus the local `mlp.safetensors`."""
    sae, _ = trained
    sae.save_model(tmp_path / "ckpt")
    sae.save_mlp(tmp_path / "ckpt")
    save_file({"sparsity": torch.full((48,), -2.0)}, tmp_path / "ckpt" / "sparsity.safetensors")
    return tmp_path / "ckpt"


def lay_out_hf_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Write `files` (path in repo -> local file) as `huggingface_hub` stores a download."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for path_in_repo, src in files.items():
        data = src.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo_dir / "snapshots" / commit / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo_dir


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty HF cache dir, made THE cache (env + huggingface_hub's import-time constants), offline."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.setenv(var, str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def cached_repo(checkpoint, offline_cache):
    names = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")
    lay_out_hf_cache(offline_cache, REPO, {f"{SAE_ID}/{n}": checkpoint / n for n in names})
    return offline_cache


def assert_same_pair(a: JacobianSAE, b: JacobianSAE, x: torch.Tensor) -> None:
    for got, expected in zip(a.forward_pair(x), b.forward_pair(x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    ja, jb = a.active_jacobian(x), b.active_jacobian(x)
    for got, expected in zip(ja, jb):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ---- local directories ------------------------------------------------------------------------
def test_local_dir_loads_with_both_call_styles(trained, checkpoint):
    sae, x = trained
    loaded = JacobianSAE.from_pretrained(str(checkpoint))
    assert type(loaded) is JacobianSAE
    assert_same_pair(loaded, sae, x)
    # parent dir + sae_id (positional, as in SAELens), and SAELens' positional device/dtype order
    by_id = JacobianSAE.from_pretrained(checkpoint.parent, checkpoint.name, "cpu", "float64")
    assert by_id.dtype == torch.float64 and by_id.mlp.W_in.dtype == torch.float64
    kw = JacobianSAE.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)
    assert_same_pair(kw, sae, x)
    assert load_sparsity(resolve_files(checkpoint))["sparsity"].shape == (48,)


def test_local_dir_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(PretrainedNotFoundError, match=r"holds these sae_ids: ckpt"):
        JacobianSAE.from_pretrained(tmp_path)
    with pytest.raises(PretrainedNotFoundError, match="No such directory"):
        JacobianSAE.from_pretrained(tmp_path / "nope")
    export_saelens(checkpoint, tmp_path / "plain")
    with pytest.raises(ValueError, match=r"'topk' SAE, not a Jacobian SAE pair"):
        JacobianSAE.from_pretrained(tmp_path / "plain" / "input_sae")


def test_pickled_weights_are_refused_unless_allowed(trained, checkpoint, tmp_path, offline_cache, tiny_model):
    sae, x = trained
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "cfg.json").write_text((checkpoint / "cfg.json").read_text())
    torch.save(load_file(checkpoint / "sae_weights.safetensors"), pickled / "sae_weights.pt")
    with pytest.raises(PickleRefusedError, match=r"'sae_weights.pt'.*allow_pickle=True"):
        JacobianSAE.from_pretrained(pickled)
    assert_same_pair(JacobianSAE.from_pretrained(pickled, allow_pickle=True, model=tiny_model), sae, x)
    # the same from the HF cache
    lay_out_hf_cache(offline_cache, "org/pickled", {f"p/{n}": pickled / n for n in ("cfg.json", "sae_weights.pt")})
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        JacobianSAE.from_pretrained("org/pickled", "p")
    assert_same_pair(JacobianSAE.from_pretrained("org/pickled", "p", allow_pickle=True, model=tiny_model), sae, x)


# ---- the HF cache, offline --------------------------------------------------------------------
def test_hf_cache_offline_loads_with_our_loader(trained, cached_repo, tiny_model):
    sae, x = trained
    assert hf_constants.is_offline_mode()
    assert JacobianSAE.from_pretrained(REPO, SAE_ID).mlp is None  # the repo holds no LLM weights
    loaded = JacobianSAE.from_pretrained(REPO, SAE_ID, model=tiny_model)
    assert_same_pair(loaded, sae, x)
    files = resolve_files(REPO, SAE_ID, revision=COMMIT)
    assert files.cfg.parent == cached_repo / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / SAE_ID
    assert load_sparsity(files)["sparsity"].shape == (48,)
    # an explicit cache_dir works without the env var / constant
    other = cached_repo.parent / "moved_cache"
    cached_repo.rename(other)
    assert_same_pair(JacobianSAE.from_pretrained(REPO, SAE_ID, cache_dir=other, revision="main", model=tiny_model), sae, x)


def test_saelens_own_from_pretrained_routes_to_jacobian(trained, cached_repo, tiny_model):
    sae, x = trained
    loaded = SAE.from_pretrained(REPO, SAE_ID)
    assert type(loaded) is JacobianSAE
    loaded.attach_mlp_from_model(tiny_model)
    assert_same_pair(loaded, sae, x)
    _, cfg, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(REPO, SAE_ID)
    assert cfg["architecture"] == "jacobian" and log_sparsity.shape == (48,)


def test_hf_cache_without_sparsity_file(trained, checkpoint, offline_cache, tiny_model):
    sae, x = trained
    lay_out_hf_cache(offline_cache, REPO, {f"{SAE_ID}/{n}": checkpoint / n for n in ("cfg.json", "sae_weights.safetensors")})
    assert resolve_files(REPO, SAE_ID).sparsity is None
    assert_same_pair(JacobianSAE.from_pretrained(REPO, SAE_ID, model=tiny_model), sae, x)


NETWORK_EVENTS = ("socket.getaddrinfo", "socket.connect")  # audit events of a name lookup and a connection


@pytest.mark.parametrize("repo_cached", [False, True])
def test_offline_missing_files_fail_fast_with_repo_file_and_offline(checkpoint, offline_cache, repo_cached):
    if repo_cached:  # the repo is cached, but not this sae_id
        lay_out_hf_cache(offline_cache, REPO, {"other/cfg.json": checkpoint / "cfg.json"})
    connects, recording = [], [True]  # an audit hook cannot be removed: it stops recording after the call
    sys.addaudithook(lambda event, args: connects.append(args) if recording[0] and event in NETWORK_EVENTS else None)
    try:
        with pytest.raises(PretrainedNotFoundError) as info:
            JacobianSAE.from_pretrained(REPO, SAE_ID)
    finally:
        recording[0] = False
    # fails fast because it never tries the network (a request, retried, is what made it slow)
    assert connects == []
    message = str(info.value)
    assert REPO in message and f"{SAE_ID}/cfg.json" in message
    assert "offline" in message and "HF_HUB_OFFLINE=1" in message and str(offline_cache) in message


def test_real_env_offline_in_a_fresh_interpreter(checkpoint, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE from the environment, read at import as in real use."""
    cache = tmp_path / "env_cache"
    lay_out_hf_cache(cache, REPO, {f"{SAE_ID}/{n}": checkpoint / n for n in ("cfg.json", "sae_weights.safetensors")})
    script = textwrap.dedent(
        f"""
        import sys
        from sae_lens_jsae import JacobianSAE
        from sae_lens_jsae.hub import PretrainedNotFoundError
        connects = []
        sys.addaudithook(lambda event, args: connects.append(repr(args)) if event in {NETWORK_EVENTS!r} else None)
        assert type(JacobianSAE.from_pretrained({REPO!r}, {SAE_ID!r})) is JacobianSAE
        try:
            JacobianSAE.from_pretrained("someone/not-cached", "x")
        except PretrainedNotFoundError as error:
            print("ERR", len(connects), error)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    _, connects, message = out.stdout.strip().split(" ", 2)
    assert connects == "0"  # neither load opened a socket: HF_HUB_OFFLINE from the environment was honoured
    assert "someone/not-cached" in message and "x/cfg.json" in message and "offline" in message


# ---- export to plain SAELens ------------------------------------------------------------------
def test_export_loads_in_plain_saelens_without_this_package(trained, checkpoint, tmp_path):
    sae, x = trained
    assert cli_main(["export-saelens", str(checkpoint), str(tmp_path / "out")]) == 0
    save_file({"x": x, "y": sae.mlp(x)}, tmp_path / "inputs.safetensors")
    script = textwrap.dedent(
        f"""
        import json, sys
        from safetensors.torch import load_file, save_file
        from sae_lens import SAE, TopKSAE
        data, out, cfgs = load_file({str(tmp_path / "inputs.safetensors")!r}), {{}}, {{}}
        for role, act in (("input", data["x"]), ("output", data["y"])):
            sae = SAE.load_from_disk({str(tmp_path / "out")!r} + f"/{{role}}_sae")
            assert type(sae) is TopKSAE, type(sae)
            out[role + "_latents"] = sae.encode(act)
            out[role + "_recons"] = sae.decode(out[role + "_latents"])
            cfgs[role] = {{"hook": sae.cfg.metadata.hook_name, "k": sae.cfg.k}}
        assert "sae_lens_jsae" not in sys.modules
        save_file(out, {str(tmp_path / "outputs.safetensors")!r})
        print(json.dumps(cfgs))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfgs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert cfgs == {"input": {"hook": "blocks.1.ln2.hook_normalized", "k": 6}, "output": {"hook": "blocks.1.hook_mlp_out", "k": 6}}
    for role in ("input", "output"):
        assert json.loads((tmp_path / "out" / f"{role}_sae" / "cfg.json").read_text())["architecture"] == "topk"
    got = load_file(tmp_path / "outputs.safetensors")
    pair = sae.forward_pair(x)
    for key, expected in {
        "input_latents": pair.input_latents,
        "input_recons": pair.input_reconstruction,
        "output_latents": pair.output_latents,
        "output_recons": pair.output_reconstruction,
    }.items():
        torch.testing.assert_close(got[key], expected.detach(), rtol=0, atol=1e-6)


def test_exported_saes_are_accepted_by_saebench(checkpoint, tmp_path):
    general_utils = pytest.importorskip("sae_bench.sae_bench_utils.general_utils")  # the `saebench` extra
    paths = export_saelens(checkpoint, tmp_path / "out")
    for path in paths:
        sae = SAE.load_from_disk(path)
        sae_id, formatted, _ = general_utils.load_and_format_sae("custom", sae, "cpu")  # SAEBench's entry point
        assert sae_id == "custom_sae" and formatted.cfg.k == 6


# ---- model card and push ----------------------------------------------------------------------
def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_model_card_front_matter(checkpoint, tmp_path):
    cfg = json.loads((checkpoint / "cfg.json").read_text())
    cfg["metadata"]["model_name"] = "pythia-70m-deduped"
    (checkpoint / "cfg.json").write_text(json.dumps(cfg))
    (checkpoint / "runner_cfg.json").write_text(json.dumps({"training_tokens": 300_000_000}))
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"headline": {"jacobian": {"count_above_0.01": 84.0}, "ce_loss_score": 0.92}, "per_token": [1, 2]}))
    card = model_card(checkpoint, eval_json, repo_id=REPO, sae_id=SAE_ID)
    meta = front_matter(card)
    assert meta["library_name"] == "sae-lens"
    assert {"sae-lens", "jacobian-sae"} <= set(meta["tags"])
    assert meta["base_model"] == "EleutherAI/pythia-70m-deduped"
    jsae = meta["jsae"]
    assert jsae["input_hook_name"] == "blocks.1.ln2.hook_normalized" and jsae["output_hook_name"] == "blocks.1.hook_mlp_out"
    assert (jsae["d_sae"], jsae["k"], jsae["jacobian_coefficient"], jsae["training_tokens"]) == (48, 6, 0.7, 300_000_000)
    assert jsae["metrics"] == {"jacobian.count_above_0.01": 84.0, "ce_loss_score": 0.92}
    assert f'SAE.from_pretrained("{REPO}", "{SAE_ID}")' in card and "| ce_loss_score | 0.92 |" in card
    # parsed the way the Hub parses it
    assert huggingface_hub.ModelCard(card).data.library_name == "sae-lens"


def test_model_card_without_eval_and_default_lambda(trained, tmp_path):
    sae, _ = trained
    sae.cfg.jacobian_coefficient = None  # the rule of thumb 0.5·k²/d_in
    sae.save_inference_model(tmp_path / "inf")
    meta = front_matter(model_card(tmp_path / "inf"))
    assert "metrics" not in meta["jsae"] and "base_model" not in meta
    assert meta["jsae"]["jacobian_coefficient"] == pytest.approx(0.5 * 36 / 16)
    assert meta["jsae"]["training_tokens"] is None
    assert headline_metrics({"a": {"b": 1, "c": True, "d": "x"}, "e": 2.5}) == {"a.b": 1.0, "e": 2.5}


def test_headline_metrics_of_an_evals_summary(checkpoint):
    summary = {
        "format": "sae_lens_jsae.eval/1",
        "d_sae": 48,
        "jacobian_sparsity": {"thresholds": [0.005, 0.01], "mean_count_above": [120.0, 84.0], "l1_l2_ratio": 3.5, "top_m": [1, 2]},
        "linearity": {"linear": 0.883, "jumprelu": 0.095, "other": 0.022},
        "splice": {"input": {"ce_loss_score": 0.95, "hook_name": "h"}, "average_ce_loss_score": 0.92},
        "core": {"input": {"explained_variance": 0.8, "l0": 32.0, "file": "core/x.json"}},
    }
    assert headline_metrics(summary) == {
        "jacobian_count_above_0.005": 120.0,
        "jacobian_count_above_0.01": 84.0,
        "jacobian_l1_l2_ratio": 3.5,
        "linear_fraction": 0.883,
        "jumprelu_fraction": 0.095,
        "average_ce_loss_score": 0.92,
        "input_ce_loss_score": 0.95,
        "input_explained_variance": 0.8,
        "input_l0": 32.0,
    }
    (checkpoint / "jsae_summary.json").write_text(json.dumps(summary))  # found beside the checkpoint
    assert front_matter(model_card(checkpoint))["jsae"]["metrics"]["jacobian_count_above_0.01"] == 84.0


def test_push_stages_inference_files_and_card(checkpoint, tmp_path, monkeypatch):
    (checkpoint / "trainer_state.pt").write_bytes(b"not uploaded")
    (checkpoint / "eval_results.json").write_text(json.dumps({"metrics": {"l0": 6}}))
    staged = stage_for_push(checkpoint, tmp_path / "stage", REPO)
    assert staged.sae_id == SAE_ID
    assert sorted(staged.files) == sorted(["README.md", *(f"{SAE_ID}/{n}" for n in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"))])
    on_disk = sorted(str(p.relative_to(staged.folder)) for p in staged.folder.rglob("*") if p.is_file())
    assert on_disk == sorted(staged.files)
    assert front_matter((staged.folder / "README.md").read_text())["jsae"]["metrics"] == {"l0": 6.0}
    assert JacobianSAE.from_pretrained(staged.folder, SAE_ID).cfg.k == 6  # the staged repo loads

    # The upload itself is thin: a recording stand-in for HfApi (no network), checking the calls.
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls.append(("upload_folder", repo_id, files))
            return "https://huggingface.co/fake/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert push_to_hub(checkpoint, REPO, "lam0.7", private=True) == "https://huggingface.co/fake/commit/1"
    assert calls[0] == ("create_repo", REPO, True, True)
    assert calls[1][2] == ["README.md", "lam0.7/cfg.json", "lam0.7/sae_weights.safetensors", "lam0.7/sparsity.safetensors"]
    # the CLI's dry run stages without any network
    assert cli_main(["push", str(checkpoint), REPO, "--sae-id", "x", "--dry-run", str(tmp_path / "dry")]) == 0
    assert (tmp_path / "dry" / "x" / "sae_weights.safetensors").is_file()


# ---- the authors' reference artifacts ---------------------------------------------------------
def write_reference(directory: Path, model, layer: int = 1, d_sae: int = 40, k: int = 5, underscore: bool = True, **cfg_overrides) -> dict:
    """A reference-format folder: SAELens-4 style cfg, `_`-prefixed pair keys, unfolded `mlp.*`."""
    gen = torch.Generator().manual_seed(3)
    d = model.cfg.d_model
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    tensors = {"W_enc": rnd(d, d_sae), "b_enc": 0.1 * rnd(d_sae), "W_dec": rnd(d_sae, d), "b_dec": 0.1 * rnd(d)}
    tensors |= {f"{n}_out": rnd(*t.shape) * (0.1 if n.startswith("b") else 1) for n, t in list(tensors.items())}
    mlp = model.blocks[layer].mlp
    state = {("_" if underscore else "") + n: t for n, t in tensors.items()}
    state |= {f"mlp.{n}": getattr(mlp, n).detach().float().clone() for n in ("W_in", "b_in", "W_out", "b_out")}
    cfg = {
        "architecture": "standard",
        "is_pair": True,
        "d_in": d,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "pythia-70m-deduped",
        "hook_name": f"blocks.{layer}.ln2.hook_normalized",
        "hook_layer": layer,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": k},
        "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False,
        "context_size": 2048,
        "prepend_bos": True,
        "dataset_path": "monology/pile-uncopyrighted",
        "normalize_activations": "none",
        "use_jacobian_loss": True,
        "jacobian_coefficient": 1.0,
        "mlp_out_mse_coefficient": 1.0,
        **cfg_overrides,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file(state, directory / "sae_weights.safetensors")
    save_file({"sparsity": torch.zeros(d_sae)}, directory / "sparsity.safetensors")
    return {**tensors, **{n: state[f"mlp.{n}"] for n in ("W_in", "b_in", "W_out", "b_out")}}


def pair_from_tensors(t: dict, k: int, layer: int = 1) -> JacobianSAE:
    """The pair built directly (not through the converter) from the same tensors."""
    d, d_sae = t["W_enc"].shape
    cfg = JacobianSAEConfig(d_in=d, d_sae=d_sae, k=k, d_mlp=t["W_in"].shape[1], mlp_act_fn="gelu")
    cfg.metadata.hook_name = f"blocks.{layer}.ln2.hook_normalized"
    sae = JacobianSAE(cfg)
    mlp = FrozenMLP(d, t["W_in"].shape[1], "gelu", False)
    with torch.no_grad():
        for name in ("W_in", "b_in", "W_out", "b_out"):
            getattr(mlp, name).copy_(t[name])
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(t[name])
            getattr(sae, name + "_out").copy_(t[name + "_out"])
    sae.attach_mlp(mlp)
    return sae


@pytest.mark.parametrize("underscore", [True, False])
def test_convert_reference_matches_a_pair_built_from_the_same_tensors(tmp_path, underscore):
    model = make_tiny_model("dense_gelu", dtype=torch.float32)
    tensors = write_reference(tmp_path / "ref", model, underscore=underscore)
    assert cli_main(["convert-reference", str(tmp_path / "ref"), str(tmp_path / "ours")]) == 0
    converted = JacobianSAE.from_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["cfg.json", "mlp.safetensors", "sae_weights.safetensors", "sparsity.safetensors"]
    cfg = converted.cfg
    assert (cfg.d_in, cfg.d_sae, cfg.k, cfg.mlp_act_fn, cfg.d_mlp) == (16, 40, 5, "gelu", 24)
    assert cfg.metadata.hook_name == "blocks.1.ln2.hook_normalized" and cfg.metadata.model_name == "pythia-70m-deduped"
    assert cfg.resolved_output_hook_name(cfg.metadata.hook_name) == "blocks.1.hook_mlp_out"
    assert cfg.metadata.training_architecture_details["jacobian_coefficient"] == 1.0
    x = mlp_inputs(model, 1, n_tokens=32)
    assert_same_pair(converted, pair_from_tensors(tensors, k=5), x)
    assert front_matter(model_card(tmp_path / "ours"))["jsae"]["jacobian_coefficient"] == 1.0


def test_convert_reference_can_fold_ln2_of_an_unprocessed_model(tmp_path):
    model = make_tiny_model("dense_gelu", dtype=torch.float32)
    write_reference(tmp_path / "ref", model)
    ln2 = model.blocks[1].ln2
    sae = convert_reference(tmp_path / "ref", ln2_weight=ln2.w.detach(), ln2_bias=ln2.b.detach())
    expected = FrozenMLP.from_hooked_transformer(model, 1)
    from_model = convert_reference(tmp_path / "ref", model=model)
    for name in ("W_in", "b_in", "W_out", "b_out"):
        torch.testing.assert_close(getattr(sae.mlp, name), getattr(expected, name))
        torch.testing.assert_close(getattr(from_model.mlp, name), getattr(expected, name))
    # folded, the copy maps hook_normalized to hook_mlp_out of the (unprocessed) model
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(sae.mlp(cache["blocks.1.ln2.hook_normalized"]), cache["blocks.1.hook_mlp_out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "drop", "message"),
    [
        ({"activation_fn_str": "relu"}, None, r"activation_fn_str is 'relu', not 'topk'"),
        ({"architecture": "jumprelu"}, None, r"architecture is 'jumprelu'"),
        ({}, "_W_enc_out", r"a single SAE, not a pair"),
        ({}, "mlp.W_in", r"no frozen MLP copy"),
        ({"hook_name": "blocks.1.hook_resid_pre"}, None, r"not an MLP input hook"),
        ({"normalize_activations": "expected_average_only_in"}, None, r"normalize_activations"),
    ],
)
def test_convert_reference_refuses_what_is_not_a_topk_pair(tmp_path, overrides, drop, message):
    write_reference(tmp_path / "ref", make_tiny_model("dense_gelu", dtype=torch.float32), **overrides)
    if drop:
        state = load_file(tmp_path / "ref" / "sae_weights.safetensors")
        del state[drop]
        save_file(state, tmp_path / "ref" / "sae_weights.safetensors")
    with pytest.raises(ValueError, match=message) as info:
        convert_reference(tmp_path / "ref")
    assert "Only TopK Jacobian SAE pairs" in str(info.value)


def test_convert_reference_refuses_pickles_unless_allowed(tmp_path):
    model = make_tiny_model("dense_gelu", dtype=torch.float32)
    tensors = write_reference(tmp_path / "ref", model)
    path = tmp_path / "ref" / "sae_weights.safetensors"
    torch.save(load_file(path), tmp_path / "ref" / "sae_weights.pt")
    path.unlink()
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        convert_reference(tmp_path / "ref")
    sae = convert_reference(tmp_path / "ref", allow_pickle=True)
    assert_same_pair(sae, pair_from_tensors(tensors, k=5), mlp_inputs(model, 1, n_tokens=16))


def test_cli_lists_the_hub_commands():
    out = subprocess.run([sys.executable, "-m", "sae_lens_jsae", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for name in ("push", "export-saelens", "convert-reference"):
        assert name in out.stdout


# ---- the frozen MLP: not published, re-attached and checked --------------------------------------
def test_mlp_comes_from_the_local_file_or_the_model_and_a_mismatch_is_refused(trained, checkpoint, tmp_path, tiny_model):
    import copy

    from sae_lens_jsae.mlp import mlp_checksum
    from sae_lens_jsae.sae import MLPMismatchError

    sae, x = trained
    expected = json.loads((checkpoint / "cfg.json").read_text())["mlp_sha256"]
    local = JacobianSAE.from_pretrained(checkpoint)  # no model: the local mlp.safetensors
    assert local.mlp.source == str(checkpoint / "mlp.safetensors")
    assert_same_pair(local, sae, x)
    (checkpoint / "mlp.safetensors").unlink()
    assert JacobianSAE.from_pretrained(checkpoint).mlp is None
    assert_same_pair(JacobianSAE.from_pretrained(checkpoint, model=tiny_model), sae, x)
    upcast = JacobianSAE.from_pretrained(checkpoint, model=copy.deepcopy(tiny_model).to(torch.float64), dtype="float64")
    assert upcast.mlp.W_in.dtype == torch.float64  # the same weights in another dtype are accepted

    other = make_tiny_model("dense_gelu", dtype=torch.float32, seed=3)  # e.g. a randomized control's model
    actual = mlp_checksum(FrozenMLP.from_hooked_transformer(other, 1))
    with pytest.raises(MLPMismatchError) as info:
        JacobianSAE.from_pretrained(checkpoint, model=other)
    message = str(info.value)
    assert expected[:16] in message and actual[:16] in message and "tiny-dense_gelu" in message and "\n" not in message
    with pytest.raises(MLPMismatchError, match="block 0"):  # another block of the right model
        JacobianSAE.from_pretrained(checkpoint).attach_mlp(FrozenMLP.from_hooked_transformer(tiny_model, 0))
    # a local copy whose weights were altered is refused, naming the file
    sae.save_mlp(checkpoint)
    state = load_file(checkpoint / "mlp.safetensors")
    state["W_out"][0, 0] += 1.0
    save_file(state, checkpoint / "mlp.safetensors", metadata={"act_fn": "gelu"})
    with pytest.raises(MLPMismatchError, match=str(checkpoint / "mlp.safetensors")):
        JacobianSAE.from_pretrained(checkpoint, model=tiny_model)


def test_push_and_export_carry_no_llm_weights_even_from_old_files(trained, checkpoint, tmp_path, tiny_model):
    sae, x = trained
    # a folder written before the MLP left the SAE's weights: mlp.* inside, no checksum in cfg.json
    (checkpoint / "mlp.safetensors").unlink()
    state = {**sae.state_dict(), **{f"mlp.{n}": t for n, t in sae.mlp.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, checkpoint / "sae_weights.safetensors")
    cfg = json.loads((checkpoint / "cfg.json").read_text())
    del cfg["mlp_sha256"]
    (checkpoint / "cfg.json").write_text(json.dumps(cfg))
    assert_same_pair(JacobianSAE.from_pretrained(checkpoint), sae, x)  # still loads, MLP and all

    staged = stage_for_push(checkpoint, tmp_path / "stage", REPO)
    folder = staged.folder / staged.sae_id
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    assert not [k for k in load_file(folder / "sae_weights.safetensors") if k.startswith("mlp.")]
    assert json.loads((folder / "cfg.json").read_text())["mlp_sha256"] == sae.cfg.mlp_sha256
    assert_same_pair(JacobianSAE.from_pretrained(folder, model=tiny_model), sae, x)
    paths = export_saelens(checkpoint, tmp_path / "export")
    for path in paths:
        assert not [k for k in load_file(path / "sae_weights.safetensors") if k.startswith("mlp.")]
