"""Which model families a JSAE wraps, each checked on a tiny model built from its real config.

For each family, TransformerLens' own config conversion (`get_pretrained_model_config`) is run
offline on the named checkpoint — name-keyed branches (Llama 3.2, Gemma) need nothing; the
others get a `transformers` config object with that checkpoint's values instead of the Hub's
`config.json` — and the result is scaled down to 2 layers, d_model 16, keeping every
architectural flag (norm kind, activation, gating, parallel attention + MLP, norms after the
MLP, post-norm blocks, experts). The tiny float64 model gets random norm weights far from 1 and
random biases. A family is *verified* when, at both layers,

- `FrozenMLP(ln2.hook_normalized) == hook_mlp_out` (TransformerLens' forward), and
- the closed-form J (chunked, unchunked and the fused training penalty) equals
  `torch.func.jacrev` of s_x[K1] ↦ s_y[K2] through TransformerLens' own block (ln2's affine, then
  `block.apply_mlp`, which applies the MLP and any norm after it), to rtol 1e-10;

and *refused* when `build_jacobian_sae` raises, with its reason. `python scripts/model_families.py`
writes the table (docs/model_families.md); tests/test_families.py asserts each row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from sae_lens_jsae.log_noise import no_implicit_root_handler


@dataclass(frozen=True)
class Family:
    """One model family and the checkpoint whose TransformerLens config stands for it."""

    name: str
    """Family name as the table shows it."""
    checkpoint: str
    """Hub name of the checkpoint whose converted config is scaled down."""
    hf_config: Callable[[], Any] | None = None
    """Builds the checkpoint's `transformers` config offline; None: TransformerLens derives the
    config from the name alone (Llama 3.2, Gemma), or `tl_overrides` describe it completely."""
    tl_overrides: dict[str, Any] | None = None
    """A TransformerLens config given directly (families whose conversion needs a download of a
    non-`transformers` file: NeelNanda's SoLU and attention-only models)."""
    local_dir: bool = False
    """Pass the config as a local model directory (checkpoints outside TransformerLens' name list)."""
    note: str = ""
    """What the row should tell a reader (MLP kind)."""


def _transformers(name: str, **values: Any) -> Callable[[], Any]:
    def build() -> Any:
        import transformers

        return getattr(transformers, name)(**values)

    return build


FAMILIES: list[Family] = [
    Family("GPT-2", "gpt2", _transformers("GPT2Config", architectures=["GPT2LMHeadModel"], n_ctx=1024), note="LN, dense gelu_new"),
    Family(
        "Pythia / GPT-NeoX",
        "EleutherAI/pythia-70m-deduped",
        _transformers(
            "GPTNeoXConfig", architectures=["GPTNeoXForCausalLM"], hidden_size=512, num_attention_heads=8, num_hidden_layers=6,
            intermediate_size=2048, rotary_pct=0.25, vocab_size=50304, max_position_embeddings=2048, hidden_act="gelu",
            use_parallel_residual=True, layer_norm_eps=1e-5,
        ),
        note="LN, dense gelu, attention and MLP in parallel (ln2 reads resid_pre)",
    ),
    Family("Llama 3", "meta-llama/Llama-3.2-1B", note="RMS, SiLU-gated"),
    Family(
        "Mistral",
        "mistralai/Mistral-7B-v0.1",
        _transformers("MistralConfig", architectures=["MistralForCausalLM"]),
        note="RMS, SiLU-gated, sliding window",
    ),
    Family(
        "SmolLM2",
        "HuggingFaceTB/SmolLM2-135M",
        _transformers(
            "LlamaConfig", architectures=["LlamaForCausalLM"], hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, vocab_size=49152, max_position_embeddings=8192,
            rope_theta=100000.0, tie_word_embeddings=True,
        ),
        local_dir=True,
        note="RMS, SiLU-gated (Llama architecture)",
    ),
    Family(
        "Qwen2",
        "Qwen/Qwen2-0.5B",
        _transformers(
            "Qwen2Config", architectures=["Qwen2ForCausalLM"], hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=151936, max_position_embeddings=32768,
            rope_theta=1000000.0, tie_word_embeddings=True,
        ),
        note="RMS, SiLU-gated",
    ),
    Family("Gemma 1", "google/gemma-2b", note="RMS, GELU-gated"),
    Family("Gemma 2", "google/gemma-2-2b", note="RMS, GELU(tanh)-gated, norms before and after the MLP"),
    Family("Gemma 3", "google/gemma-3-1b-pt", note="RMS, GELU(tanh)-gated, norms before and after the MLP, QK norm"),
    Family(
        "OLMo 2",
        "allenai/OLMo-2-0425-1B",
        _transformers("Olmo2Config", architectures=["Olmo2ForCausalLM"], hidden_size=2048, intermediate_size=8192, num_hidden_layers=16),
        note="RMS, SiLU-gated, norm only after the MLP",
    ),
    Family(
        "Mixtral (MoE)",
        "mistralai/Mixtral-8x7B-v0.1",
        _transformers("MixtralConfig", architectures=["MixtralForCausalLM"]),
        note="mixture of experts",
    ),
    Family(
        "SoLU",
        "NeelNanda/SoLU_1L512W_C4_Code",
        tl_overrides={"act_fn": "solu_ln", "normalization_type": "LN", "d_vocab": 48262, "positional_embedding_type": "standard"},
        note="LN inside the MLP",
    ),
    Family(
        "Attention-only",
        "NeelNanda/Attn_Only_1L512W_C4_Code",
        tl_overrides={"attn_only": True, "normalization_type": "LN", "d_vocab": 48262, "act_fn": "gelu"},
        note="no MLP",
    ),
]
"""The families the table covers, in table order."""

TINY = {"n_layers": 2, "d_model": 16, "d_head": 4, "n_heads": 4, "d_vocab": 64, "n_ctx": 32}


def _pretrained_config_offline(checkpoint: str, hf: Any) -> Any:
    """TransformerLens' `get_pretrained_model_config(checkpoint)` with `hf` as the checkpoint's
    config.json, offline: the file is written in the Hub cache layout under a temporary
    `cache_dir`, which TransformerLens hands to `AutoConfig.from_pretrained` (`local_files_only`)."""
    import tempfile
    from pathlib import Path

    from transformer_lens import loading_from_pretrained as loading

    revision = "0" * 40  # any commit id: refs/main points the lookup at this snapshot
    with tempfile.TemporaryDirectory(prefix="jsae-family-") as cache:
        repo = Path(cache) / f"models--{checkpoint.replace('/', '--')}"
        hf.save_pretrained(repo / "snapshots" / revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        return loading.get_pretrained_model_config(checkpoint, dtype=torch.float64, cache_dir=cache, local_files_only=True)


def full_config(family: Family) -> dict[str, Any]:
    """The checkpoint's TransformerLens config (as a dict), converted offline."""
    from transformer_lens import loading_from_pretrained as loading

    if family.tl_overrides is not None:
        return {"d_model": 512, "d_head": 64, "n_heads": 8, "d_mlp": 2048, "n_layers": 1, "n_ctx": 1024, **family.tl_overrides}
    hf = family.hf_config() if family.hf_config is not None else None
    with no_implicit_root_handler():  # TransformerLens' module-level logging.info would basicConfig the root
        if family.local_dir:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="jsae-family-") as tmp:
                hf.save_pretrained(tmp)
                cfg = loading.get_pretrained_model_config(tmp, hf_cfg=hf.to_dict(), dtype=torch.float64)
        elif hf is None:  # a name-keyed branch (Llama 3.2, Gemma): TransformerLens fetches nothing
            cfg = loading.get_pretrained_model_config(family.checkpoint, dtype=torch.float64)
        else:
            cfg = _pretrained_config_offline(family.checkpoint, hf)
    return cfg.to_dict()


def tiny_config(family: Family, dtype: torch.dtype = torch.float64) -> Any:
    """`full_config` scaled down to a 2-layer d_model-16 model, every architectural flag kept."""
    from transformer_lens import HookedTransformerConfig

    full = full_config(family)
    keep = {f.name for f in HookedTransformerConfig.__dataclass_fields__.values() if f.init}
    cfg = {k: v for k, v in full.items() if k in keep}
    # derived or size fields are recomputed from the tiny sizes
    derived = ("d_vocab_out", "n_params", "device", "n_devices", "tokenizer_name", "model_name", "initializer_range")
    for key in (*derived, "checkpoint_index", "checkpoint_value", "checkpoint_label_type"):
        cfg.pop(key, None)
    ratio = (full.get("d_mlp") or 4 * full["d_model"]) / full["d_model"]
    cfg.update(TINY)
    name = f"tiny-{family.checkpoint.split('/')[-1]}"
    cfg.update(d_mlp=max(8, round(TINY["d_model"] * ratio)), dtype=dtype, init_weights=True, seed=0, model_name=name)
    if cfg.get("n_key_value_heads"):
        cfg["n_key_value_heads"] = 2
    if full.get("rotary_dim"):
        cfg["rotary_dim"] = max(2, 2 * round(TINY["d_head"] * full["rotary_dim"] / full["d_head"] / 2))
    if cfg.get("attn_types"):
        cfg["attn_types"] = list(full["attn_types"][: TINY["n_layers"]])
    if cfg.get("window_size"):
        cfg["window_size"] = 4
    if cfg.get("num_experts"):
        cfg["num_experts"], cfg["experts_per_token"] = 4, 2
    return HookedTransformerConfig(**cfg)


def tiny_family_model(family: Family, dtype: torch.dtype = torch.float64, seed: int = 0) -> Any:
    """A random tiny HookedTransformer of the family; every norm weight 1 + 0.5·N(0,1), norm and
    MLP biases random (so folding ln2 and the norm after the MLP are really exercised)."""
    from transformer_lens import HookedTransformer

    model = HookedTransformer(tiny_config(family, dtype))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(part.startswith("ln") or part.endswith("_norm") for part in name.split(".")[:-1])
            if is_norm and leaf == "w":
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen, dtype=dtype))
            elif (is_norm and leaf == "b") or (".mlp." in name and leaf in ("b_in", "b_out")):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=dtype))
    return model.eval()


class FamilyCheck(NamedTuple):
    """The outcome of checking one family (`check_family`)."""

    family: Family
    """The family checked."""
    status: str
    """"verified" or "refused"."""
    detail: str
    """Refused: the reason `build_jacobian_sae` gave. Verified: what was compared."""
    mlp_error: float | None
    """max |FrozenMLP(hook_normalized) − hook_mlp_out| over both layers (verified only)."""
    jacobian_error: float | None
    """max |J − jacrev| / max|jacrev| over tokens and both layers (verified only)."""
    post_norm: bool
    """Whether the block has a norm after the MLP (the rank-one term)."""


def _affine_ln2(block: Any, x: torch.Tensor) -> torch.Tensor:
    """ln2's weight (and bias) applied to a `hook_normalized` value, as TransformerLens' norm does."""
    ln2 = block.ln2
    if hasattr(ln2, "w"):
        x = x * ln2.w
    if hasattr(ln2, "b"):
        x = x + ln2.b
    return x


def jacrev_jacobian(model: Any, layer: int, sae: Any, x_t: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor) -> torch.Tensor:
    """∂ s_y[K2] / ∂ s_x[K1] at one token by `torch.func.jacrev` through TransformerLens' block.

    s ↦ e_out(block.apply_mlp(ln2_affine(d_in(s)))), with d_in offset so that it returns the
    true x at the token's latent values (the closed form evaluates at the true x); TopK's picks
    held fixed, ReLU-clipped picks masked.
    """
    block = model.blocks[layer]
    W_dec_k = sae.W_dec[in_idx]
    z0 = sae.encode(x_t[None])[0, in_idx]
    offset = x_t - z0 @ W_dec_k

    def g(z: torch.Tensor) -> torch.Tensor:
        y = block.apply_mlp(_affine_ln2(block, z @ W_dec_k + offset)[None, None])[0, 0]
        return (y @ sae.W_enc_out + sae.b_enc_out)[out_idx]

    J = torch.func.jacrev(g)(z0)
    y0 = block.apply_mlp(_affine_ln2(block, x_t)[None, None])[0, 0]
    s_y = sae.encode_output(y0[None])[0]
    return J * (s_y[out_idx] > 0)[:, None] * (z0 > 0)[None, :]


def check_family(family: Family, n_tokens: int = 12) -> FamilyCheck:
    """Verify one family (see the module doc) or record why it is refused."""
    from sae_lens_jsae.build import build_jacobian_sae

    model = tiny_family_model(family)
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    post = bool(getattr(model.cfg, "use_normalization_before_and_after", False))
    post = post or model.cfg.original_architecture in POST_NORM_ARCHITECTURES
    tokens = torch.randint(0, model.cfg.d_vocab, (2, n_tokens // 2), generator=torch.Generator().manual_seed(2))
    mlp_err = jac_err = 0.0
    for layer in range(model.cfg.n_layers):
        try:
            sae = build_jacobian_sae(model, layer, d_sae=32, k=5)
        except ValueError as err:
            return FamilyCheck(family, "refused", str(err).split(": ", 1)[-1].rstrip("."), None, None, post)
        gen = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            sae.b_enc.add_(0.05 * torch.randn(sae.b_enc.shape, generator=gen, dtype=sae.dtype))
            sae.b_enc_out.add_(0.05 * torch.randn(sae.b_enc_out.shape, generator=gen, dtype=sae.dtype))
        hook_in, hook_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        _, cache = model.run_with_cache(tokens, names_filter=[hook_in, hook_out])
        x = cache[hook_in].reshape(-1, model.cfg.d_model)
        mlp_err = max(mlp_err, float((sae.mlp(x) - cache[hook_out].reshape(-1, model.cfg.d_model)).abs().max()))
        with torch.no_grad():
            top_in = sae._encode_input_topk(x)
            pre, y = sae.mlp.pre_activations_and_output(x)
            top_out = sae._encode_output_topk(y)
            fused = sae._jacobian_penalty(top_in, top_out, x, pre).values
        for chunk in (None, 3):
            jac = sae.active_jacobian(x, chunk_size=chunk)
            for t in range(x.shape[0]):
                expected = jacrev_jacobian(model, layer, sae, x[t], jac.input_indices[t], jac.output_indices[t])
                expected = expected.detach()
                scale = float(expected.abs().max())
                if scale == 0:
                    raise AssertionError(f"{family.name}: the oracle Jacobian is all zero at token {t}; the check is void")
                jac_err = max(jac_err, float((jac.values[t].detach() - expected).abs().max()) / scale)
                jac_err = max(jac_err, float((fused[t] - expected).abs().max()) / scale)
    detail = "FrozenMLP == hook_mlp_out; J == jacrev (chunked, unchunked, fused penalty)"
    return FamilyCheck(family, "verified", detail, mlp_err, jac_err, post)


def family_table(checks: list[FamilyCheck]) -> str:
    """The family × status table as markdown."""
    lines = [
        "| family | checkpoint config | MLP | post-MLP norm | status | max \\|f − hook_mlp_out\\| | max rel. error of J vs jacrev |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        status = "verified" if c.status == "verified" else f"refused: {c.detail}"
        mlp = "" if c.mlp_error is None else f"{c.mlp_error:.1e}"
        jac = "" if c.jacobian_error is None else f"{c.jacobian_error:.1e}"
        post = "yes" if c.post_norm else "no"
        lines.append(f"| {c.family.name} | `{c.family.checkpoint}` | {c.family.note} | {post} | {status} | {mlp} | {jac} |")
    return "\n".join(lines) + "\n"


def family(name: str) -> Family:
    """The `Family` called `name` (a KeyError listing the names otherwise)."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(f"No family {name!r}; known: {', '.join(f.name for f in FAMILIES)}.")
