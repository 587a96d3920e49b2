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

Pruning follows circuit-tracer's two thresholds: keep the fewest nodes of each layer that carry
`node_threshold` of that layer's total |attribution|, then the fewest edges among them that
carry `edge_threshold` of theirs.

Cost: one forward of the model up to the JSAE's block, one `active_jacobian` (k²·d_mlp per
token), two MLP evaluations and one JVP: well under a second for 64 tokens of SmolLM2 on CPU.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"  # what circuit-tracer / Neuronpedia call a feature node
ERROR_TYPE = "mlp reconstruction error"
LAYERS = {"input": 0, "output": 1}


def cantor(layer: int, index: int) -> int:
    """The `feature` number of a latent (circuit-tracer's Cantor pairing of layer and index)."""
    return (layer + index) * (layer + index + 1) // 2 + index


def feature_file(scan: str, layer: int, index: int) -> str:
    """Where a latent's page lives, relative to the data folder (the frontend's /features/ path)."""
    return f"features/{scan}/{cantor(layer, index)}.json"


def scan_name(sae: Any) -> str:
    """A name for the pair (the graph's `scan`): model, layer, width and λ."""
    from sae_lens_jsae.sae import layer_of_input_hook, saved_jacobian_coefficient

    model = (sae.cfg.metadata.model_name or "model").split("/")[-1]
    lam = saved_jacobian_coefficient(sae.cfg.to_dict())
    name = f"{model}-l{layer_of_input_hook(sae.cfg.metadata.hook_name)}-jsae{sae.cfg.d_sae}-lam{lam:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lower()


class PromptAttribution(NamedTuple):
    """Everything a graph is cut from, for one prompt (T tokens, k latents per SAE)."""

    tokens: list[str]
    """The prompt's tokens as strings (ctx_idx = position in this list)."""
    input_indices: torch.Tensor
    """(T, k) active input latents (TopK picks)."""
    input_values: torch.Tensor
    """(T, k) s_x at those latents (0 where ReLU clipped a pick)."""
    output_indices: torch.Tensor
    """(T, k) active output latents."""
    output_values: torch.Tensor
    """(T, k) s_y at those latents."""
    jacobian: torch.Tensor
    """(T, k_out, k_in) J on the active sets (masked)."""
    attribution: torch.Tensor
    """(T, k_out, k_in) J · s_x: the edge weights."""
    input_error: torch.Tensor
    """(T, k_out) edge weight from the input-error node: ∂s_y[i]/∂x · (x − x̂)."""
    input_error_norm: torch.Tensor
    """(T,) ‖x − x̂‖."""
    output_error_norm: torch.Tensor
    """(T,) ‖y − ŷ‖."""
    output_norm: torch.Tensor
    """(T,) ‖y‖ (to read the output error relative to it)."""
    ablation_change: torch.Tensor
    """(T, k_out) pre-activation of each output latent at x minus at x − Σ_j s_x[j] d_j."""


@torch.no_grad()
def prompt_attribution(sae: Any, x: torch.Tensor, tokens: list[str]) -> PromptAttribution:
    """Attribution of a prompt's output latents to its input latents, from MLP inputs x (T, d_in)."""
    mlp = sae.require_mlp()
    x = x.to(sae.dtype)
    aj = sae.active_jacobian(x)
    s_x = sae.encode(x)
    y = mlp(x)
    s_y = sae.encode_output(y)
    in_vals = s_x.gather(1, aj.input_indices)
    out_vals = s_y.gather(1, aj.output_indices)
    active_out = (out_vals > 0).to(x.dtype)

    enc_out = sae.W_enc_out.T[aj.output_indices]  # (T, k, d): the active output encoder rows
    def out_pre(v: torch.Tensor) -> torch.Tensor:  # output latents' pre-activations of MLP outputs v
        v = v - sae.b_dec_out if sae.cfg.apply_b_dec_to_input else v
        return torch.einsum("td,tkd->tk", v, enc_out) + sae.b_enc_out[aj.output_indices]

    latent_part = s_x @ sae.W_dec
    x_hat = latent_part + sae.b_dec
    _, dy_err = torch.func.jvp(mlp, (x,), (x - x_hat,))
    input_error = torch.einsum("td,tkd->tk", dy_err, enc_out) * active_out
    ablation = (out_pre(y) - out_pre(mlp(x - latent_part))) * active_out
    y_hat = sae.decode_output(s_y)
    return PromptAttribution(
        tokens=list(tokens),
        input_indices=aj.input_indices, input_values=in_vals,
        output_indices=aj.output_indices, output_values=out_vals,
        jacobian=aj.values, attribution=aj.values * in_vals[:, None, :],
        input_error=input_error, input_error_norm=(x - x_hat).norm(dim=-1),
        output_error_norm=(y - y_hat).norm(dim=-1), output_norm=y.norm(dim=-1),
        ablation_change=ablation,
    )


class Completeness(NamedTuple):
    """How well a graph's edges account for its output latents (all active ones, every token)."""

    edge_share_of_activation: float
    """Σ edge_sum / Σ s_y: the part of the output activations the latent edges explain."""
    linearisation_error: float
    """Σ |edge_sum − ablation_change| / Σ |ablation_change| (0: the MLP is linear along the latents)."""
    median_relative_error: float
    """median over output latents of |edge_sum − ablation_change| / |ablation_change|."""
    feature_share: float
    """Σ|latent edges| / (Σ|latent edges| + Σ|input-error edges|) (circuit-tracer's completeness score)."""
    kept_fraction: float
    """Σ|attribution| of the pruned graph's edges / Σ|attribution| of all edges (error edges included)."""
    n_output_latents: int
    """Active output latents over all tokens."""


def _smallest_cover(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the fewest entries of `scores` (≥ 0) whose sum reaches `fraction` of the total."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    total = scores.sum()
    if scores.numel() == 0 or total <= 0:
        return keep
    order = scores.argsort(descending=True)
    cum = scores[order].cumsum(0)
    n = int((cum < fraction * total).sum()) + 1
    keep[order[: min(n, scores.numel())]] = True
    return keep


@dataclass
class Graph:
    """A pruned graph as lists of node and link dicts (the file format), plus its completeness."""

    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]
    completeness: Completeness


def build_graph(att: PromptAttribution, scan: str, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
    """Prune a `PromptAttribution` to the nodes and edges carrying most of the attribution."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 < v <= 1:
            raise ValueError(f"{name}={v} must lie in (0, 1]: the fraction of |attribution| to keep (circuit-tracer uses 0.8 and 0.98).")
    T, k_out, k_in = att.attribution.shape
    A = att.attribution.abs().double()
    E = att.input_error.abs().double()
    in_active = att.input_values > 0
    out_active = att.output_values > 0

    # node scores: |attribution| carried, per (token, latent slot)
    in_score = A.sum(1).masked_fill(~in_active, 0)
    out_score = (A.sum(2) + E).masked_fill(~out_active, 0)
    keep_in = _smallest_cover(in_score.flatten(), node_threshold).view(T, k_in)
    keep_out = _smallest_cover(out_score.flatten(), node_threshold).view(T, k_out)
    # edges among kept nodes (error edges compete with latent edges)
    cand = keep_out[:, :, None] & keep_in[:, None, :]
    cand_err = keep_out
    scores = torch.cat([(A * cand).flatten(), (E * cand_err).flatten()])
    kept = _smallest_cover(scores, edge_threshold)
    keep_edge = kept[: A.numel()].view(T, k_out, k_in)
    keep_err = kept[A.numel():].view(T, k_out)
    keep_in &= keep_edge.any(1)
    total = float(A.sum() + E.sum())

    edge_sum = att.attribution.sum(2)
    act = att.output_values
    dev = (edge_sum - att.ablation_change).abs()
    rel = (dev / att.ablation_change.abs().clamp_min(1e-12))[out_active]
    completeness = Completeness(
        edge_share_of_activation=float(edge_sum[out_active].sum() / act[out_active].sum().clamp_min(1e-12)),
        linearisation_error=float(dev[out_active].sum() / att.ablation_change[out_active].abs().sum().clamp_min(1e-12)),
        median_relative_error=float(rel.median()) if rel.numel() else float("nan"),
        feature_share=float(A.sum() / max(total, 1e-12)),
        kept_fraction=float(((A * keep_edge).sum() + (E * keep_err).sum()) / max(total, 1e-12)),
        n_output_latents=int(out_active.sum()),
    )

    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []

    def latent_node(layer: int, t: int, idx: int, activation: float, influence: float, **extra: Any) -> str:
        node_id = f"{layer}_{idx}_{t}"
        nodes.append({
            "node_id": node_id, "feature": cantor(layer, idx), "layer": str(layer), "ctx_idx": t,
            "feature_type": FEATURE_TYPE, "jsNodeId": f"{layer}_{idx}-0", "clerp": "",
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "influence": influence, "activation": activation,
            "sae": "input" if layer == 0 else "output", "latent": idx, "feature_file": feature_file(scan, layer, idx), **extra,
        })
        return node_id

    def error_node(layer: int, t: int, norm: float, clerp: str) -> str:
        node_id = f"{layer}_-1_{t}"
        nodes.append({
            "node_id": node_id, "feature": -1, "layer": str(layer), "ctx_idx": t, "feature_type": ERROR_TYPE,
            "jsNodeId": f"{layer}_-1-{t}", "clerp": clerp, "token_prob": 0.0, "is_target_logit": False,
            "run_idx": 0, "reverse_ctx_idx": 0, "influence": None, "activation": norm,
            "sae": "input" if layer == 0 else "output", "latent": -1,
        })
        return node_id

    def to(v: torch.Tensor) -> Any:
        return _round4(v.double().tolist())

    ii, oi = att.input_indices.tolist(), att.output_indices.tolist()
    iv, ov = to(att.input_values), to(att.output_values)
    ins, outs, J, W = to(in_score / max(total, 1e-12)), to(out_score / max(total, 1e-12)), to(att.jacobian), to(att.attribution)
    es, ab, ie = to(edge_sum), to(att.ablation_change), to(att.input_error)
    for t in range(T):
        in_ids = {j: latent_node(0, t, ii[t][j], iv[t][j], ins[t][j]) for j in range(k_in) if keep_in[t, j]}
        out_ids = {
            i: latent_node(1, t, oi[t][i], ov[t][i], outs[t][i], edge_sum=es[t][i], ablation_change=ab[t][i], error_attribution=ie[t][i])
            for i in range(k_out) if keep_out[t, i]
        }
        if keep_err[t].any():
            err_in = error_node(0, t, float(f"{float(att.input_error_norm[t]):.4g}"), f"input SAE error ‖x−x̂‖={float(att.input_error_norm[t]):.3g}")
            for i in keep_err[t].nonzero().flatten().tolist():
                links.append({"source": err_in, "target": out_ids[i], "weight": ie[t][i]})
        if out_ids:
            ratio = float(att.output_error_norm[t] / att.output_norm[t].clamp_min(1e-12))
            error_node(1, t, float(f"{float(att.output_error_norm[t]):.4g}"), f"output SAE error ‖y−ŷ‖={float(att.output_error_norm[t]):.3g} ({ratio:.0%} of ‖y‖)")
        for i, j in keep_edge[t].nonzero().tolist():
            links.append({"source": in_ids[j], "target": out_ids[i], "weight": W[t][i][j], "jacobian": J[t][i][j]})
    return Graph(nodes, links, completeness)


def _round4(x: Any) -> Any:
    """Nested lists of floats to 4 significant digits (the files shrink about threefold)."""
    return [_round4(y) for y in x] if isinstance(x, list) else float(f"{x:.4g}")


def graph_json(graph: Graph, att: PromptAttribution, *, slug: str, scan: str, prompt: str,
               node_threshold: float, edge_threshold: float, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The graph file: top-level `metadata`, `qParams`, `nodes`, `links` (circuit-tracer / Neuronpedia)."""
    return {
        "metadata": {
            "slug": slug, "scan": scan, "prompt_tokens": att.tokens, "prompt": prompt,
            "transcoder_list": [], "node_threshold": node_threshold, "schema_version": SCHEMA_VERSION,
            "info": {"edge_threshold": edge_threshold, "completeness": graph.completeness._asdict(),
                     "layers": {"0": "input SAE latents (MLP input)", "1": "output SAE latents (MLP output)"}, **(info or {})},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": graph.nodes,
        "links": graph.links,
    }


def write_graph_file(data: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `{slug}.json` into `out_dir` and add its metadata to `graph-metadata.json` there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = data["metadata"]["slug"]
    path = out / f"{slug}.json"
    path.write_text(json.dumps(data))
    index_path = out / "graph-metadata.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"graphs": []}
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != slug] + [data["metadata"]]
    index_path.write_text(json.dumps(index, indent=1))
    return path


def mlp_inputs(model: Any, sae: Any, prompt: str | torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The JSAE's MLP inputs x (T, d_in) for a prompt (text or token ids) and its tokens as strings."""
    from sae_lens_jsae.sae import layer_of_input_hook

    hook = sae.cfg.metadata.hook_name
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt).reshape(1, -1)
    tokens = tokens.to(model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=layer_of_input_hook(hook) + 1)
    return cache[hook][0].to(sae.device), token_strings(model, tokens[0])


def token_strings(model: Any, tokens: torch.Tensor) -> list[str]:
    """Token ids as strings (`⟨id⟩` for a model without a tokenizer, e.g. a test's tiny model)."""
    if getattr(model, "tokenizer", None) is None:
        return [f"⟨{int(t)}⟩" for t in tokens]
    return [str(s) for s in model.to_str_tokens(tokens)]


def slugify(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


def write_prompt_graph(
    sae: Any, model: Any, prompt: str | torch.Tensor, out_dir: str | Path, *, slug: str | None = None, scan: str | None = None,
    node_threshold: float = 0.8, edge_threshold: float = 0.98, info: dict[str, Any] | None = None,
) -> tuple[Path, Completeness]:
    """`jsae graph`: compute, prune and write one prompt's graph (and update graph-metadata.json)."""
    scan = scan or scan_name(sae)
    x, tokens = mlp_inputs(model, sae, prompt)
    text = prompt if isinstance(prompt, str) else "".join(tokens)
    att = prompt_attribution(sae, x, tokens)
    graph = build_graph(att, scan, node_threshold, edge_threshold)
    slug = slug or f"{scan}-{slugify(text)}"
    data = graph_json(graph, att, slug=slug, scan=scan, prompt=text, node_threshold=node_threshold, edge_threshold=edge_threshold, info=info)
    return write_graph_file(data, out_dir), graph.completeness


REQUIRED_NODE_FIELDS = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp")


def validate_graph_file(data: dict[str, Any]) -> list[str]:
    """Problems that stop circuit-tracer's frontend / Neuronpedia from reading a graph ([] if none)."""
    problems = [f"missing top-level {key!r}" for key in ("metadata", "qParams", "nodes", "links") if key not in data]
    if problems:
        return problems
    for key in ("slug", "scan", "prompt_tokens", "prompt"):
        if key not in data["metadata"]:
            problems.append(f"metadata lacks {key!r}")
    for key in ("pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"):
        if key not in data["qParams"]:
            problems.append(f"qParams lacks {key!r}")
    ids = set()
    n_ctx = len(data["metadata"].get("prompt_tokens", []))
    for n in data["nodes"]:
        missing = [f for f in REQUIRED_NODE_FIELDS if f not in n]
        if missing:
            problems.append(f"node {n.get('node_id')} lacks {missing}")
            continue
        if not isinstance(n["layer"], (str, int)) or not isinstance(n["feature"], int) or not 0 <= n["ctx_idx"] < n_ctx:
            problems.append(f"node {n['node_id']}: bad layer/feature/ctx_idx types or range")
        ids.add(n["node_id"])
    if not any(str(n["layer"]) not in ("E",) and n["feature_type"] != "logit" and str(n["layer"]).isdigit() and int(n["layer"]) >= 1 for n in data["nodes"]):
        problems.append("no non-logit node on a layer >= 1 (Neuronpedia's renderer needs one)")
    for link in data["links"]:
        if link.get("source") not in ids or link.get("target") not in ids or not isinstance(link.get("weight"), float):
            problems.append(f"bad link {link}")
            break
    return problems


# ---- whole-command helpers (the CLI and the eval report call these) ------------------------------
def pair_layer_and_model(source: str | Path) -> tuple[int, str | None]:
    """(block index, model name) from a local pair's cfg.json, without loading weights."""
    from sae_lens_jsae.hub import read_pair_cfg
    from sae_lens_jsae.sae import layer_of_input_hook

    cfg_path = Path(source) / "cfg.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{source} is not a JSAE folder (no cfg.json): pass the folder `jsae train` wrote (cfg.json + sae_weights.safetensors).")
    cfg = read_pair_cfg(cfg_path)
    return layer_of_input_hook((cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")), (cfg.get("metadata") or {}).get("model_name")


def load_pair_and_model(sources: list[str], model_source: str, model_name: str | None, device: str = "cpu") -> tuple[list[Any], Any]:
    """Load JSAE pairs (local folders) and their model; the pairs' files and the layer are
    checked first, then each pair's MLP comes from its `mlp.safetensors` or the model."""
    from sae_lens_jsae.hub import check_pair_files, load_jsae
    from sae_lens_jsae.sources import check_layer, load_hooked_model

    for source in sources:
        check_pair_files(source)
    layer, saved_name = pair_layer_and_model(sources[0])
    name = model_name or saved_name
    if name is None:
        raise ValueError(f"{sources[0]}/cfg.json names no model (metadata.model_name): pass --model-name.")
    check_layer(model_source, name, layer)
    model = load_hooked_model(model_source, name, device=device)
    return [load_jsae(s, device=device, model=model) for s in sources], model


def sotu_prompts(n: int = 3, min_words: int = 12, max_words: int = 35) -> list[str]:
    """`n` sentences of the sotu eval split (the first ones of 12–35 words, in file order)."""
    from sae_lens_jsae.sources import sotu_split_files

    out: list[str] = []
    for f in sotu_split_files("eval"):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(f.read_text(encoding="utf-8").split())):
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence)
                if len(out) == n:
                    return out
    return out


class GraphResult(NamedTuple):
    """One written graph."""

    name: str
    """Which pair ("jsae", "lambda0", ...)."""
    prompt: str
    path: Path
    completeness: Completeness


def write_graphs(saes: dict[str, Any], model: Any, prompts: list[Any], out_dir: str | Path, **kwargs: Any) -> list[GraphResult]:
    """A graph per (pair, prompt) into `out_dir` (slugs `{name}-{i}-{prompt}`)."""
    results = []
    for i, prompt in enumerate(prompts):
        text = prompt if isinstance(prompt, str) else f"tokens {torch.as_tensor(prompt).flatten().tolist()}"
        for name, sae in saes.items():
            path, comp = write_prompt_graph(sae, model, prompt, out_dir, slug=f"{name}-{i}-{slugify(text, 30)}", **kwargs)
            results.append(GraphResult(name, text, path, comp))
    return results


def completeness_table(results: list[GraphResult]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) comparing the pairs' completeness on the same prompts."""
    header = ["pair", "prompt", "edges/activation", "linearisation error", "median rel. error", "latent share", "kept", "graph"]
    rows = [[r.name, r.prompt[:50], round(r.completeness.edge_share_of_activation, 3), round(r.completeness.linearisation_error, 3),
             round(r.completeness.median_relative_error, 3), round(r.completeness.feature_share, 3), round(r.completeness.kept_fraction, 3), r.path.name]
            for r in results]
    return header, rows


def add_graphs_to_report(report_md: str | Path, saes: dict[str, Any], model: Any, prompts: list[Any] | None = None) -> list[GraphResult]:
    """Write graphs of a few sotu sentences into `<report dir>/graphs` and append a section that
    links them (and their completeness) to report.md and report.html."""
    import html

    report_md = Path(report_md)
    results = write_graphs(saes, model, prompts if prompts is not None else sotu_prompts(), report_md.parent / "graphs")
    header, rows = completeness_table(results)
    intro = ("Attribution graphs (input latents → output latents, edge = J·s_x) of sotu eval sentences, in the "
             "attribution-graph JSON format; view them with `jsae serve graphs` (run `jsae latents` into the same "
             "folder for latent pages). Completeness per graph: how much of the output activations the edges explain "
             "and how far the linearisation is from the actual effect of switching the input latents off.")
    md = ["", "## Attribution graphs", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row[:-1]) + f" | [{row[-1]}](graphs/{row[-1]}) |" for row in rows]
    with report_md.open("a") as f:
        f.write("\n".join(md) + "\n")
    page = report_md.with_suffix(".html")
    if page.exists():
        table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row[:-1])
            + f"<td><a href='graphs/{html.escape(row[-1])}'>{html.escape(row[-1])}</a></td></tr>" for row in rows) + "</table>"
        text = page.read_text()
        section = f"<h2>Attribution graphs</h2><p>{html.escape(intro)}</p>{table}"
        page.write_text(text.replace("</body>", section + "</body>") if "</body>" in text else text + section)
    return results
