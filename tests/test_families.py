"""Every model family in the table: verified against TransformerLens or refused with its reason."""

import re
from pathlib import Path

import pytest

from sae_lens_jsae.families import FAMILIES, check_family, family, family_table, tiny_config

EXPECTED = {
    "GPT-2": "verified",
    "Pythia / GPT-NeoX": "verified",
    "Llama 3": "verified",
    "Mistral": "verified",
    "SmolLM2": "verified",
    "Qwen2": "verified",
    "Gemma 1": "verified",
    "Gemma 2": "verified",
    "Gemma 3": "verified",
    "OLMo 2": "refused: .*no norm before the MLP.*hook_resid_mid",
    "Mixtral (MoE)": "refused: mixture-of-experts",
    "SoLU": "refused: .*LayerNorm inside the MLP",
    "Attention-only": "refused: .*attention-only",
}


def test_every_family_has_an_expectation():
    assert [f.name for f in FAMILIES] == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_family(name):
    check = check_family(family(name))
    if EXPECTED[name] == "verified":
        assert check.status == "verified", check.detail
        assert check.mlp_error < 1e-12
        assert check.jacobian_error < 1e-10  # float64, relative to the largest |J| entry
    else:
        assert check.status == "refused"
        assert re.search(EXPECTED[name].removeprefix("refused: "), check.detail), check.detail


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("GPT-2", {"act_fn": "gelu_new", "normalization_type": "LN", "gated_mlp": False}),
        ("Pythia / GPT-NeoX", {"parallel_attn_mlp": True, "normalization_type": "LN", "act_fn": "gelu"}),
        ("Llama 3", {"gated_mlp": True, "act_fn": "silu", "normalization_type": "RMS"}),
        ("Qwen2", {"gated_mlp": True, "act_fn": "silu", "normalization_type": "RMS"}),
        ("Gemma 1", {"gated_mlp": True, "act_fn": "gelu", "use_normalization_before_and_after": False}),
        ("Gemma 2", {"gated_mlp": True, "act_fn": "gelu_pytorch_tanh", "use_normalization_before_and_after": True, "eps": 1e-6}),
        ("Gemma 3", {"gated_mlp": True, "use_normalization_before_and_after": True, "use_qk_norm": True}),
        ("OLMo 2", {"original_architecture": "Olmo2ForCausalLM", "gated_mlp": True}),
        ("Mixtral (MoE)", {"num_experts": 4}),
    ],
)
def test_tiny_configs_keep_the_family_flags(name, flags):
    cfg = tiny_config(family(name))
    assert (cfg.n_layers, cfg.d_model) == (2, 16)
    for key, value in flags.items():
        assert getattr(cfg, key) == value, key


def test_docs_table_is_what_the_checks_give():
    """docs/model_families.md is `python scripts/model_families.py`'s output (statuses and reasons)."""
    table = (Path(__file__).parents[1] / "docs" / "model_families.md").read_text()
    checks = [check_family(f) for f in FAMILIES]
    fresh = family_table(checks)
    strip = lambda text: [row.rsplit("|", 3)[0] for row in text.splitlines() if row.startswith("| ") and "`" in row]  # noqa: E731
    assert strip(fresh) == strip(table)  # the error columns vary in the last digit with BLAS; the rest must match
    # the README's one-line summary names every verified family (before "checked against") and no refused one
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    supported = readme.split("## Supported models", 1)[1].split("checked against", 1)[0]
    for check in checks:
        first_word = check.family.name.split()[0]
        assert (first_word in supported) == (check.status == "verified"), check.family.name
