"""A prompt's attribution: its output latents (layer 1) against its input latents (layer 0).

A pair (`prompt_attribution`): the edges a[t, i, j] = J[t, i, j]·s_x[t, j] (J = ∂s_y/∂s_x on the
active sets), the input-error node's edges ∂s_y[i]/∂x·(x − x̂) and the bias node's, all from
`evals.edges.pair_attributions` (one active Jacobian and one MLP JVP per prompt), plus what the
completeness needs: the change of each output latent's pre-activation when the token's input
latents are switched off (two MLP evaluations) and the SAEs' error norms. A transcoder
(`transcoder_prompt_attribution`): the same graph against an upstream SAE's input latents, exact
(`evals.edges.transcoder_attributions`). `model_attribution` runs the language model up to the
MLP and picks the one that fits.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from sae_lens_jsae.evals.edges import pair_attributions, transcoder_attributions
from sae_lens_jsae.pages import TRANSCODER_LAYERS, scan_name, token_strings, transcoder_scan_name
from sae_lens_jsae.util import is_pair


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
    bias: torch.Tensor
    """(T, k_out) the bias node's attribution (`evals.edges.EdgeAttributions.bias`; 0 where inactive)."""
    method: str = "pair"
    """"pair" (layer 1: the pair's output SAE) or "transcoder" (layer 1: the transcoder's latents)."""


@torch.no_grad()
def prompt_attribution(sae: Any, x: torch.Tensor, tokens: list[str]) -> PromptAttribution:
    """Attribution of a prompt's output latents to its input latents, from MLP inputs x (T, d_in)."""
    mlp = sae.require_mlp()
    x = x.to(sae.dtype)
    edges = pair_attributions(sae, x)  # the one active Jacobian and error JVP of this prompt
    in_idx, out_idx = edges.upstream_indices, edges.downstream_indices
    s_x = sae.encode(x)
    y = mlp(x)
    s_y = sae.encode_output(y)
    in_vals = s_x.gather(1, in_idx)
    out_vals = s_y.gather(1, out_idx)
    active_out = (out_vals > 0).to(x.dtype)
    # J on the active sets (0 where a pick is inactive, as `active_jacobian` masks it): a = J·s_x
    jacobian = torch.where(in_vals[:, None, :] > 0, edges.latents / in_vals.clamp_min(torch.finfo(x.dtype).tiny)[:, None, :], 0.0)

    enc_out = sae.W_enc_out.T[out_idx]  # (T, k, d): the active output encoder rows
    def out_pre(v: torch.Tensor) -> torch.Tensor:  # output latents' pre-activations of MLP outputs v
        v = v - sae.b_dec_out if sae.cfg.apply_b_dec_to_input else v
        return torch.einsum("td,tkd->tk", v, enc_out) + sae.b_enc_out[out_idx]

    latent_part = s_x @ sae.W_dec
    x_hat = latent_part + sae.b_dec
    ablation = (out_pre(y) - out_pre(mlp(x - latent_part))) * active_out
    y_hat = sae.decode_output(s_y)
    return PromptAttribution(
        tokens=list(tokens),
        input_indices=in_idx, input_values=in_vals,
        output_indices=out_idx, output_values=out_vals,
        jacobian=jacobian, attribution=edges.latents,
        input_error=edges.error * active_out, input_error_norm=(x - x_hat).norm(dim=-1),
        output_error_norm=(y - y_hat).norm(dim=-1), output_norm=y.norm(dim=-1),
        ablation_change=ablation, bias=edges.bias * active_out,
    )


@torch.no_grad()
def transcoder_prompt_attribution(upstream: Any, transcoder: Any, x: torch.Tensor, tokens: list[str]) -> PromptAttribution:
    """`PromptAttribution` of a transcoder's active latents (layer 1) to `upstream`'s active input
    latents (layer 0; a JSAE pair's input SAE or a SAELens SAE on the MLP input), exact
    (`evals.edges.transcoder_attributions`): `jacobian` holds ∂h_j/∂s_i = d_i·W_enc[:, j],
    `ablation_change` the (linear) change of h_j when the upstream latents are switched off, and
    the output error ‖y − ŷ‖ is NaN unless `upstream` carries the frozen MLP (a pair does)."""
    ea = transcoder_attributions(upstream, transcoder, x)
    W = transcoder.W_enc
    x = x.to(W.dtype)
    s_up = upstream.encode(x)
    in_vals = s_up.gather(1, ea.upstream_indices).clamp_min(0).to(W.dtype)
    out_vals = transcoder.encode(x).gather(1, ea.downstream_indices)
    active_out = (out_vals > 0).to(W.dtype)
    latents = ea.latents * active_out[:, :, None]
    latent_part = (s_up @ upstream.W_dec).to(W.dtype)
    x_hat = latent_part + upstream.b_dec.to(W.dtype)
    ablation = (latent_part @ W).gather(1, ea.downstream_indices) * active_out
    mlp = getattr(upstream, "mlp", None)
    y = mlp(x.to(upstream.dtype)).to(W.dtype) if mlp is not None else torch.full_like(x, float("nan"))
    return PromptAttribution(
        tokens=list(tokens),
        input_indices=ea.upstream_indices, input_values=in_vals,
        output_indices=ea.downstream_indices, output_values=out_vals,
        jacobian=torch.where(in_vals[:, None, :] > 0, latents / in_vals.clamp_min(1e-30)[:, None, :], 0.0),
        attribution=latents, input_error=ea.error * active_out, input_error_norm=(x - x_hat).norm(dim=-1),
        output_error_norm=(y - transcoder(x)).norm(dim=-1), output_norm=y.norm(dim=-1),
        ablation_change=ablation, bias=ea.bias * active_out, method="transcoder",
    )


class LatentPages(NamedTuple):
    """Where each layer's latent pages live (`feature_file`; `jsae latents` writes them)."""

    input_scan: str
    """The scan (folder under features/) of the layer-0 latents."""
    input_layer: int
    """Their layer in that scan's page numbering."""
    output_scan: str
    """The scan of the layer-1 latents."""
    output_layer: int
    """Their layer there (1 for a pair's output SAE, 0 for a transcoder's latents)."""


def mlp_inputs(model: Any, sae: Any, prompt: str | torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The JSAE's MLP inputs x (T, d_in) for a prompt (text or token ids) and its tokens as strings."""
    from sae_lens_jsae.sae import layer_of_input_hook

    hook = sae.cfg.metadata.hook_name
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt).reshape(1, -1)
    tokens = tokens.to(model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=layer_of_input_hook(hook) + 1)
    return cache[hook][0].to(sae.device), token_strings(model, tokens[0])


def model_attribution(sae: Any, model: Any, prompt: str | torch.Tensor, upstream: Any = None) -> tuple[PromptAttribution, LatentPages]:
    """A pair's `prompt_attribution`, or a transcoder's against `upstream` (required then), and
    where the two layers' latent pages live."""
    if is_pair(sae):
        scan = scan_name(sae)
        x, tokens = mlp_inputs(model, sae, prompt)
        return prompt_attribution(sae, x, tokens), LatentPages(scan, 0, scan, 1)
    if upstream is None:
        raise ValueError("a transcoder's graph needs an upstream SAE on the MLP input (e.g. the λ = 0 pair): pass upstream=.")
    x, tokens = mlp_inputs(model, upstream, prompt)
    pages = LatentPages(scan_name(upstream) if is_pair(upstream) else "upstream", 0, transcoder_scan_name(sae), TRANSCODER_LAYERS["transcoder"])
    return transcoder_prompt_attribution(upstream, sae, x, tokens), pages
