"""Latent pages (sae_lens_jsae.latents) against a dense brute-force oracle on a tiny model."""

import json

import pytest
import torch
from helpers import make_tiny_model

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.graph import cantor
from sae_lens_jsae.latents import LatentPageConfig, write_latent_pages


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    torch.manual_seed(0)
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=24, k=4)
    tokens = torch.randint(1, model.cfg.d_vocab, (6, 10), generator=torch.Generator().manual_seed(3))
    out = tmp_path_factory.mktemp("pages")
    folder = write_latent_pages(sae, model, tokens, out, scan="s", batch_size=4, cfg=LatentPageConfig(n_top=3, n_quantiles=2, n_per_quantile=2, left=3, right=2))
    # dense oracle: every token's latents and the per-token active Jacobian
    _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name)
    x = cache[sae.cfg.metadata.hook_name].reshape(-1, 16)
    with torch.no_grad():
        s_x, s_y = sae.encode(x), sae.encode_output(sae.require_mlp()(x))
        aj = sae.active_jacobian(x)
    return folder, tokens, s_x.detach(), s_y.detach(), aj


def _page(folder, layer, i):
    return json.loads((folder / f"{cantor(layer, i)}.json").read_text())


@pytest.mark.parametrize("layer", [0, 1])
def test_activations_frequency_histogram(pages, layer):
    folder, tokens, s_x, s_y, _ = pages
    acts = s_x if layer == 0 else s_y
    for i in range(24):
        page = _page(folder, layer, i)
        col = acts[:, i]
        n = int((col > 0).sum())
        assert page["index"] == cantor(layer, i) and page["latent"] == i
        assert page["activation_frequency"] == pytest.approx(n / tokens.numel())
        assert sum(page["histogram"]["counts"]) == n
        if n == 0:
            assert page["examples_quantiles"] == []
            continue
        assert page["act_max"] == pytest.approx(float(col.max()), rel=1e-5)
        assert page["act_min"] == pytest.approx(float(col[col > 0].min()), rel=1e-5)
        top = page["examples_quantiles"][0]
        assert top["quantile_name"] == "Top activations"
        assert top["examples"][0]["activation"] == pytest.approx(float(col.max()), rel=1e-3)
        for ex in (e for q in page["examples_quantiles"] for e in q["examples"]):
            t = ex["token_index"]
            first = t - ex["train_token_ind"]
            assert first // 10 == t // 10  # the window stays in its sequence
            want = col[first: first + len(ex["tokens"])].tolist()
            assert ex["tokens_acts_list"] == pytest.approx(want, rel=1e-3, abs=1e-6)
            assert ex["tokens"][ex["train_token_ind"]] == f"⟨{int(tokens.flatten()[t])}⟩"


def test_partners_are_corpus_averaged_attribution(pages):
    folder, tokens, s_x, s_y, aj = pages
    d = 24
    S = torch.zeros(d, d)
    for t in range(tokens.numel()):
        for a, i in enumerate(aj.output_indices[t].tolist()):
            for b, j in enumerate(aj.input_indices[t].tolist()):
                if s_y[t, i] > 0 and s_x[t, j] > 0:
                    S[i, j] += abs(float(aj.values[t, a, b]) * float(s_x[t, j]))
    n_out = (s_y > 0).sum(0).clamp_min(1)
    for i in range(d):
        partners = _page(folder, 1, i)["partners"]
        want = (S[i] / n_out[i]).topk(1)
        if want.values[0] > 0:
            assert partners[0]["latent"] == int(want.indices[0])
            assert partners[0]["mean_abs_attribution"] == pytest.approx(float(want.values[0]), rel=1e-3)
    assert json.loads((folder / "index.json").read_text())["n_tokens"] == 60


def test_output_logits_direct_path(pages):
    folder = pages[0]
    page = _page(folder, 1, 5)
    assert len(page["top_logits"]) == 10 and page["top_logit_values"][0] >= page["top_logit_values"][-1] > page["bottom_logit_values"][-1]
    assert _page(folder, 0, 5)["top_logits"] == []
