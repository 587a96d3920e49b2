"""Latent pages: for every latent of both SAEs, what it fires on and what it computes with.

One streaming pass over a token corpus keeps, per token, only the k active latents of each SAE
(12 bytes per entry, so 2·k·12 B per token: 77 MB for 100k tokens at k=32) and accumulates the
corpus-averaged Jacobian between the pair in three d_sae² tables:

    S_abs[i, j] = Σ_t |J_t[i, j] · s_x,t[j]|,   S_J[i, j] = Σ_t J_t[i, j],   C[i, j] = #{t: both active}

After the pass everything is sorted once and read off vectorised:
- top-activating contexts ("Top activations") and contexts at evenly spaced ranks inside each
  activation quartile (the "quantiles"), each a window of tokens with that latent's activation
  on every token of the window;
- a histogram (bins from 0 to the latent's max), min/max, activation frequency;
- "computational neighbours": the latents on the other side of the MLP with the largest
  average |attribution| per activation of this one (S_abs / number of its activations);
- for output latents, top/bottom logit tokens along the direct path: its decoder direction d_i
  (added to the residual stream by the MLP) through ln_final's weight (and centring, for a
  LayerNorm) and W_U. Approximation: ln_final's per-token scale is a positive constant (it does
  not change the ranking) and the later blocks are skipped (the direct-path logit effect, as
  SAE dashboards show). Input latents live at ln2's output, not on the residual stream: no logits.

A transcoder (`sae_lens_jsae.transcoder`: one SAE reading the MLP's input and writing its output)
gets the same pages for its one set of latents (`sae: "transcoder"`, layer 0 of the Cantor
numbering): contexts, histogram, frequency, and direct-path logits of its decoder directions
(which the MLP's replacement writes to the residual stream); no Jacobian partners.

Written as one JSON per latent in the attribution-graph family's feature format
(`index, examples_quantiles, top_logits, bottom_logits, act_min, act_max, histogram,
activation_frequency`) under `features/{scan}/{feature}.json`, `feature` being the graph nodes'
number for that latent (`pages.cantor(layer, index)`), so a graph node opens its page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_lens_jsae.pages import LAYERS, TRANSCODER_LAYERS, cantor, feature_file, scan_name, token_strings, transcoder_scan_name


@dataclass
class LatentPageConfig:
    """How much of each latent's page to keep."""

    n_top: int = 10
    """Top-activating contexts."""
    n_quantiles: int = 4
    """Activation quantiles (by rank) to sample contexts from."""
    n_per_quantile: int = 4
    """Contexts per quantile, at evenly spaced ranks."""
    left: int = 12
    """Context tokens before the example's token."""
    right: int = 4
    """Context tokens after it."""
    n_bins: int = 24
    """Histogram bins (0 to the latent's max)."""
    n_logits: int = 10
    """Top / bottom logit tokens (output latents)."""
    n_partners: int = 10
    """Computational neighbours listed."""


class _Sparse:
    """The k active (token, latent, value) entries of one SAE over the corpus."""

    def __init__(self) -> None:
        self.token: list[torch.Tensor] = []
        self.latent: list[torch.Tensor] = []
        self.value: list[torch.Tensor] = []

    def add(self, token: torch.Tensor, latent: torch.Tensor, value: torch.Tensor) -> None:
        keep = value > 0
        self.token.append(token[keep].to(torch.int64))
        self.latent.append(latent[keep].to(torch.int64))
        self.value.append(value[keep].float())

    def cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cat(self.token), torch.cat(self.latent), torch.cat(self.value)


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def _mlp_inputs(model: Any, batch: torch.Tensor, hook: str, stop: int) -> torch.Tensor:
    """The activations at `hook`, stopping the forward pass right there (skips the block's MLP)."""
    captured: list[torch.Tensor] = []

    def capture(act: torch.Tensor, hook: Any) -> None:
        captured.append(act)
        raise _Captured

    with model.hooks(fwd_hooks=[(hook, capture)]):
        try:
            model(batch, stop_at_layer=stop)
        except _Captured:
            pass
    return captured[0]


def is_transcoder_folder(source: str | Path) -> bool:
    """Whether a saved SAE folder (its cfg.json) holds one of our TopK (skip) transcoders."""
    from sae_lens_jsae.transcoder import TRANSCODER_ARCHITECTURES

    cfg_path = Path(source) / "cfg.json"
    if not cfg_path.is_file():
        return False
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("architecture") in TRANSCODER_ARCHITECTURES


def load_transcoder_and_model(source: str | Path, model_source: str, model_name: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """A saved transcoder (SAELens' `SAE.load_from_disk`) and its model; the layer is checked first."""
    from sae_lens import SAE

    from sae_lens_jsae.sae import layer_of_input_hook
    from sae_lens_jsae.sources import check_layer, load_hooked_model

    metadata = json.loads((Path(source) / "cfg.json").read_text()).get("metadata") or {}
    name = model_name or metadata.get("model_name")
    if name is None:
        raise ValueError(f"{source}/cfg.json names no model (metadata.model_name): pass --model-name.")
    check_layer(model_source, name, layer_of_input_hook(metadata.get("hook_name")))
    model = load_hooked_model(model_source, name, device=device)
    return SAE.load_from_disk(str(source), device=device), model


@torch.no_grad()
def collect_transcoder(sae: Any, model: Any, tokens: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """`collect` for a transcoder: the sparse activations of its latents over `tokens` (n_seq, ctx)."""
    from sae_lens_jsae.sae import layer_of_input_hook

    hook = sae.cfg.metadata.hook_name
    stop = layer_of_input_hook(hook) + 1
    sparse = _Sparse()
    n_seq, ctx = tokens.shape
    for s in tqdm(range(0, n_seq, batch_size), desc="latent pages", unit="batch"):
        x = _mlp_inputs(model, tokens[s: s + batch_size].to(model.cfg.device), hook, stop).reshape(-1, sae.cfg.d_in).to(sae.device, sae.dtype)
        top = sae.encode(x).topk(sae.cfg.k, dim=-1)  # TopK: at most k latents are active
        tok = torch.arange(s * ctx, s * ctx + x.shape[0], device=x.device)[:, None]
        sparse.add(tok.expand_as(top.indices), top.indices, top.values)
    return {"sparse": {"transcoder": sparse.cat()}, "n_tokens": n_seq * ctx, "ctx": ctx}


@torch.no_grad()
def collect(sae: Any, model: Any, tokens: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """The streaming pass: sparse activations of both SAEs and the Jacobian tables, over `tokens` (n_seq, ctx)."""
    from sae_lens_jsae.sae import layer_of_input_hook

    hook = sae.cfg.metadata.hook_name
    stop = layer_of_input_hook(hook) + 1
    d = sae.cfg.d_sae
    mlp = sae.require_mlp()
    sparse = {"input": _Sparse(), "output": _Sparse()}
    S_abs = torch.zeros(d * d, device=sae.device, dtype=sae.dtype)
    S_J = torch.zeros(d * d, device=sae.device, dtype=sae.dtype)
    C = torch.zeros(d * d, device=sae.device, dtype=sae.dtype)
    n_seq, ctx = tokens.shape
    W_enc_in_rows, W_enc_out_rows = sae.W_enc.T, sae.W_enc_out.T
    for s in tqdm(range(0, n_seq, batch_size), desc="latent pages", unit="batch"):
        x = _mlp_inputs(model, tokens[s: s + batch_size].to(model.cfg.device), hook, stop).reshape(-1, sae.cfg.d_in).to(sae.device, sae.dtype)
        aj = sae.active_jacobian(x)
        # values at the TopK picks: k columns of each encoder instead of a second dense encode
        x_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
        y = mlp(x)
        y_in = y - sae.b_dec_out if sae.cfg.apply_b_dec_to_input else y
        in_vals = (torch.einsum("td,tkd->tk", x_in, W_enc_in_rows[aj.input_indices]) + sae.b_enc[aj.input_indices]).relu()
        out_vals = (torch.einsum("td,tkd->tk", y_in, W_enc_out_rows[aj.output_indices]) + sae.b_enc_out[aj.output_indices]).relu()
        tok = torch.arange(s * ctx, s * ctx + x.shape[0], device=x.device)[:, None]
        sparse["input"].add(tok.expand_as(aj.input_indices), aj.input_indices, in_vals)
        sparse["output"].add(tok.expand_as(aj.output_indices), aj.output_indices, out_vals)
        pair = (aj.output_indices[:, :, None] * d + aj.input_indices[:, None, :]).flatten()
        both = ((out_vals > 0)[:, :, None] & (in_vals > 0)[:, None, :]).flatten()
        pair, J = pair[both], aj.values.flatten()[both]
        S_J.index_add_(0, pair, J)
        S_abs.index_add_(0, pair, (aj.values * in_vals[:, None, :]).flatten()[both].abs())
        C.index_add_(0, pair, torch.ones_like(J))
    return {"sparse": {k: v.cat() for k, v in sparse.items()}, "S_abs": S_abs.view(d, d), "S_J": S_J.view(d, d), "C": C.view(d, d),
            "n_tokens": n_seq * ctx, "ctx": ctx}


def _group(latent: torch.Tensor, value: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order entries by latent, then by value descending; return (order, group start, group count)."""
    order = value.argsort(descending=True, stable=True)
    order = order[latent[order].argsort(stable=True)]
    count = torch.bincount(latent, minlength=d)
    start = count.cumsum(0) - count
    return order, start, count


def _example_ranks(count: torch.Tensor, cfg: LatentPageConfig) -> torch.Tensor:
    """(d, n_top + Q·n) ranks (within each latent's descending order) of the examples to show; -1: none."""
    top = torch.arange(cfg.n_top)[None, :].expand(len(count), -1)
    q = torch.arange(cfg.n_quantiles)[:, None]
    e = torch.arange(cfg.n_per_quantile)[None, :]
    frac = ((q + (e + 0.5) / cfg.n_per_quantile) / cfg.n_quantiles).flatten()  # (Q·n,) in (0, 1)
    quant = (frac[None, :] * count[:, None].double()).floor().long()
    ranks = torch.cat([top, quant], dim=1)
    return ranks.masked_fill(ranks >= count[:, None], -1)


def _rounded(v: list[float]) -> list[float]:
    return [float(f"{x:.4g}") for x in v]


def _example(lists: dict[str, Any], i: int, e: int, strings: dict[int, str], left: int) -> dict[str, Any]:
    """Example `e` of latent `i`: its context window (inside its sequence) and the latent's activation on each token."""
    keep = [w for w, ok in enumerate(lists["in_seq"][i][e]) if ok]
    window = lists["win_tokens"][i][e]
    return {
        "tokens": [strings.get(window[w], str(window[w])) for w in keep],
        "tokens_acts_list": _rounded([lists["acts"][i][e][w] for w in keep]),
        "train_token_ind": keep.index(left), "token_index": lists["ex_tok"][i][e],
        "activation": float(f"{lists['ex_val'][i][e]:.4g}"), "is_repeated_datapoint": False,
    }


def output_logits(sae: Any, model: Any, n: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top / bottom direct-path logits of each output latent (a transcoder's latents: its
    decoder rows): (values, ids) for top and bottom, (d_sae, n) each."""
    from sae_lens_jsae.transcoder import is_transcoder

    W_dec = sae.W_dec if is_transcoder(sae) else sae.W_dec_out
    W_U = model.W_U.to(sae.device, torch.float32)
    ln = model.ln_final
    w = getattr(ln, "w", None)
    centre = type(ln).__name__.startswith("LayerNorm")
    tops, top_ids, bots, bot_ids = [], [], [], []
    for s in range(0, sae.cfg.d_sae, chunk):
        dirs = W_dec[s: s + chunk].float()
        if centre:
            dirs = dirs - dirs.mean(-1, keepdim=True)
        if w is not None:
            dirs = dirs * w.to(dirs)
        logits = dirs @ W_U
        t, b = logits.topk(n, dim=-1), logits.topk(n, dim=-1, largest=False)
        tops.append(t.values), top_ids.append(t.indices), bots.append(b.values), bot_ids.append(b.indices)
    return torch.cat(tops), torch.cat(top_ids), torch.cat(bots), torch.cat(bot_ids)


@torch.no_grad()
def write_latent_pages(
    sae: Any, model: Any, tokens: torch.Tensor, out_dir: str | Path, *, scan: str | None = None,
    batch_size: int = 16, cfg: LatentPageConfig | None = None,
) -> Path:
    """`jsae latents`: collect over `tokens` (n_seq, ctx) and write every latent's page; returns the scan folder."""
    from sae_lens_jsae.transcoder import is_transcoder

    cfg = cfg or LatentPageConfig()
    transcoder = is_transcoder(sae)
    scan = scan or (transcoder_scan_name(sae) if transcoder else scan_name(sae))
    data = (collect_transcoder if transcoder else collect)(sae, model, tokens, batch_size)
    written = TRANSCODER_LAYERS if transcoder else LAYERS
    has_logits = ("transcoder", "output")
    d, n_tokens, ctx = sae.cfg.d_sae, data["n_tokens"], data["ctx"]
    flat_tokens = tokens.reshape(-1)
    logits = output_logits(sae, model, cfg.n_logits) if cfg.n_logits else None
    shown = torch.cat([flat_tokens.cpu(), *((logits[1].flatten().cpu(), logits[3].flatten().cpu()) if logits else ())]).unique()
    strings = dict(zip(shown.tolist(), token_strings(model, shown)))

    folder = Path(out_dir) / "features" / scan
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"scan": scan, "d_sae": d, "k": sae.cfg.k, "n_tokens": n_tokens, "context_size": ctx, "layers": {}}
    if transcoder:
        summary["architecture"] = sae.cfg.architecture()
    offsets = torch.arange(-cfg.left, cfg.right + 1)
    for which, layer in written.items():
        tok, lat, val = data["sparse"][which]
        order, start, count = _group(lat, val, d)
        sorted_tok, sorted_val = tok[order], val[order]
        # lookup table (token, latent) -> activation for the context windows
        keys = tok * d + lat
        key_order = keys.argsort()
        keys_sorted, vals_by_key = keys[key_order], val[key_order]

        ranks = _example_ranks(count, cfg)  # (d, E)
        pos = (start[:, None] + ranks.clamp_min(0)).clamp_max(max(len(order) - 1, 0))
        ex_tok = sorted_tok[pos] if len(order) else torch.zeros_like(pos)
        ex_val = sorted_val[pos] if len(order) else torch.zeros(pos.shape)
        seq_start = ex_tok // ctx * ctx
        window = ex_tok[:, :, None] + offsets  # (d, E, W)
        in_seq = (window >= seq_start[:, :, None]) & (window < seq_start[:, :, None] + ctx)
        window_c = window.clamp(0, len(flat_tokens) - 1)
        look = window_c * d + torch.arange(d)[:, None, None]
        at = torch.searchsorted(keys_sorted, look.flatten()).clamp_max(max(len(keys_sorted) - 1, 0)).view_as(look)
        acts = torch.where(keys_sorted[at] == look, vals_by_key[at], 0.0) if len(keys_sorted) else torch.zeros(look.shape)
        win_tokens = flat_tokens[window_c]

        act_max = torch.zeros(d).scatter_reduce(0, lat, val, "amax", include_self=False) if len(val) else torch.zeros(d)
        act_min = torch.zeros(d).scatter_reduce(0, lat, val, "amin", include_self=False) if len(val) else torch.zeros(d)
        bins = (val / act_max[lat].clamp_min(1e-12) * cfg.n_bins).long().clamp(0, cfg.n_bins - 1)
        hist = torch.bincount(lat * cfg.n_bins + bins, minlength=d * cfg.n_bins).view(d, cfg.n_bins)

        # computational neighbours: the other SAE's latents with the largest mean |attribution| per activation of this one
        other = "input" if which == "output" else "output"
        if transcoder:  # one SAE: no Jacobian between two sets of latents
            p_score = p_idx = p_J = p_C = torch.zeros(d, 0)
        else:
            S = data["S_abs"] if which == "output" else data["S_abs"].T
            SJ, SC = (data["S_J"], data["C"]) if which == "output" else (data["S_J"].T, data["C"].T)
            score = S / count.clamp_min(1)[:, None].to(S)
            p_score, p_idx = score.topk(min(cfg.n_partners, d), dim=1)
            p_J = (SJ.gather(1, p_idx) / SC.gather(1, p_idx).clamp_min(1))
            p_C = SC.gather(1, p_idx)

        lists = {name: t.tolist() for name, t in {
            "ranks": ranks, "ex_tok": ex_tok, "ex_val": ex_val, "acts": acts, "in_seq": in_seq, "win_tokens": win_tokens,
            "hist": hist, "count": count, "act_max": act_max, "act_min": act_min, "p_score": p_score, "p_idx": p_idx,
            "p_J": p_J, "p_C": p_C}.items()}
        if which in has_logits and logits is not None:
            lists.update({n: t.tolist() for n, t in zip(("tv", "ti", "bv", "bi"), logits)})
        names = ["Top activations"] + [f"Quantile {q + 1}/{cfg.n_quantiles} (ranks {q * 100 // cfg.n_quantiles}–{(q + 1) * 100 // cfg.n_quantiles}%)"
                                       for q in range(cfg.n_quantiles)]
        bounds = [0, cfg.n_top] + [cfg.n_top + (q + 1) * cfg.n_per_quantile for q in range(cfg.n_quantiles)]
        for i in tqdm(range(d), desc=f"writing {which} latent pages", unit="latent", leave=False):
            quantiles = [{"quantile_name": names[g], "examples": [_example(lists, i, e, strings, cfg.left) for e in range(bounds[g], bounds[g + 1])
                                                                  if lists["ranks"][i][e] >= 0]}
                         for g in range(len(names))]
            n_act = lists["count"][i]
            page = {
                "index": cantor(layer, i), "sae": which, "latent": i, "layer": str(layer), "scan": scan,
                "examples_quantiles": [q for q in quantiles if q["examples"]],
                "top_logits": [], "bottom_logits": [],
                "act_min": lists["act_min"][i], "act_max": lists["act_max"][i],
                "histogram": {"bin_edges": _rounded([lists["act_max"][i] * b / cfg.n_bins for b in range(cfg.n_bins + 1)]), "counts": lists["hist"][i]},
                "activation_frequency": n_act / max(n_tokens, 1), "n_activations": n_act, "n_tokens": n_tokens,
                "partners": [
                    {"sae": other, "latent": j, "feature": cantor(LAYERS[other], j), "feature_file": feature_file(scan, LAYERS[other], j),
                     "mean_abs_attribution": float(f"{sc:.4g}"), "mean_jacobian": float(f"{pj:.4g}"), "co_active": int(pc)}
                    for j, sc, pj, pc in zip(lists["p_idx"][i], lists["p_score"][i], lists["p_J"][i], lists["p_C"][i]) if pc > 0
                ],
            }
            if which in has_logits and logits is not None:
                page["top_logits"] = [strings[t] for t in lists["ti"][i]]
                page["bottom_logits"] = [strings[t] for t in lists["bi"][i]]
                page["top_logit_values"] = _rounded(lists["tv"][i])
                page["bottom_logit_values"] = _rounded(lists["bv"][i])
            (folder / f"{cantor(layer, i)}.json").write_text(json.dumps(page, ensure_ascii=False))
        summary["layers"][str(layer)] = {"sae": which, "dead": int((count == 0).sum()), "mean_frequency": float(count.sum()) / max(n_tokens, 1) / d}
    summary["logit_note"] = ("direct path: decoder direction · ln_final weight (centred for LayerNorm) · W_U; "
                             "ln_final's per-token scale and the later blocks are ignored")
    (folder / "index.json").write_text(json.dumps(summary, indent=1))
    return folder
