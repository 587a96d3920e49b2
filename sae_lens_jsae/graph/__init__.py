"""Per-prompt JSAE attribution graphs, written in the attribution-graph file format.

At each token t of a prompt the pair has k active input latents (s_x, layer "0") and k active
output latents (s_y, layer "1"). The edge from input latent j to output latent i carries the
attribution

    a[t, i, j] = J[t, i, j] · s_x[t, j]        (J = ∂s_y/∂s_x from `sae.active_jacobian`)

i.e. the first-order share of s_y[i] that flows through latent j. Two error nodes per token
stand for what the SAEs miss: the input SAE's error e_x = x − x̂ (its edge into output latent i
is ∂s_y[i]/∂x · e_x, a Jacobian-vector product through the frozen MLP) and the output SAE's
error y − ŷ (a sink: its activation is ‖y − ŷ‖).

Completeness (how well the edges into an output latent account for it), per output node:
- `edge_sum` Σ_j a[i, j], against `activation` s_y[i];
- `ablation_change`: the actual change of output latent i's pre-activation when all of the
  token's input latents are switched off (x → x − Σ_j s_x[j] d_j, through the frozen MLP). Its
  linearisation is exactly `edge_sum`, so |edge_sum − ablation_change| measures how linear the
  MLP is along the latents (JSAEs are trained to make this small; compare with λ=0).
- the circuit-tracer style "completeness": the latent edges' share of all |incoming
  attribution| (latents + the input-error node).

Pruning, by default, is per downstream node (`node_coverage`, 0.8): every active output latent
keeps the fewest incoming entries — input latents, the input-error node and a bias node (the
pre-activation at x = b_dec, `evals.edges`) — that reach 80% of its |attribution|, the rule the
method-neutral edge measure counts (`evals.edges.row_cover`), so a graph's edges per output
latent are that measure on this prompt. Why: circuit-tracer's global thresholds (the fewest
nodes of each layer carrying `node_threshold` of that layer's |attribution|, then the fewest
edges among them carrying `edge_threshold` of theirs; still `node_threshold=`/`edge_threshold=`)
keep whatever the strongest tokens need, and left a 32-token sentence of the demo with 1 535
nodes and 13 088 edges — no picture of how sparse each latent's computation is.

Transcoders (`transcoder_prompt_attribution`): the same bipartite graph with an upstream SAE's
input latents (e.g. the λ = 0 pair's input SAE) as layer 0 and the transcoder's latents as
layer 1; the edges are exact (`evals.edges.transcoder_attributions`), so several models can be
drawn side by side on one prompt (`write_graphs`, the viewer's side-by-side view).

Cost: one forward of the model up to the JSAE's block, one active Jacobian (k²·d_mlp per
token), two MLP evaluations and one JVP: well under a second for 64 tokens of SmolLM2 on CPU.

Modules: `attribution` (the numbers above, from `evals.edges`), `pruning` (the rules and
completeness), `format` (nodes and links, the file and its checks), `write` (graphs for prompts,
side by side), `loaders` (the commands' model loading and corpus sentences), `report_section`
(the eval report's graphs). Every public name is importable from `sae_lens_jsae.graph`.
"""

from sae_lens_jsae.graph.attribution import (
    LatentPages,
    PromptAttribution,
    mlp_inputs,
    model_attribution,
    prompt_attribution,
    transcoder_prompt_attribution,
)
from sae_lens_jsae.graph.format import (
    BIAS_TYPE,
    ERROR_TYPE,
    FEATURE_TYPE,
    LAYER_NAMES,
    REQUIRED_NODE_FIELDS,
    SCHEMA_VERSION,
    Graph,
    GraphCounts,
    build_graph,
    graph_json,
    slugify,
    validate_graph_file,
    write_graph_file,
)
from sae_lens_jsae.graph.loaders import load_models, load_pair_and_model, pair_layer_and_model, sotu_prompts
from sae_lens_jsae.graph.pruning import DEFAULT_NODE_COVERAGE, Completeness, Kept, Pruning, completeness, keep, pruning
from sae_lens_jsae.graph.report_section import add_graphs_to_report
from sae_lens_jsae.graph.write import GraphResult, completeness_table, prompt_graph, write_graphs, write_prompt_graph
from sae_lens_jsae.pages import LAYERS, cantor, feature_file, scan_name, token_strings
from sae_lens_jsae.util import is_pair

__all__ = [
    "BIAS_TYPE",
    "DEFAULT_NODE_COVERAGE",
    "ERROR_TYPE",
    "FEATURE_TYPE",
    "LAYERS",
    "LAYER_NAMES",
    "REQUIRED_NODE_FIELDS",
    "SCHEMA_VERSION",
    "Completeness",
    "Graph",
    "GraphCounts",
    "GraphResult",
    "Kept",
    "LatentPages",
    "PromptAttribution",
    "Pruning",
    "add_graphs_to_report",
    "build_graph",
    "cantor",
    "completeness",
    "completeness_table",
    "feature_file",
    "graph_json",
    "is_pair",
    "keep",
    "load_models",
    "load_pair_and_model",
    "mlp_inputs",
    "model_attribution",
    "pair_layer_and_model",
    "prompt_attribution",
    "prompt_graph",
    "pruning",
    "scan_name",
    "slugify",
    "sotu_prompts",
    "token_strings",
    "transcoder_prompt_attribution",
    "validate_graph_file",
    "write_graph_file",
    "write_graphs",
    "write_prompt_graph",
]
