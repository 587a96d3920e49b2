"""Token batching and MLP-input activations shared by the metrics."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from tqdm.auto import tqdm

TokenSource = torch.Tensor | Iterable[torch.Tensor]
"""A (n_seqs, ctx) token tensor, or an iterable of such batches."""


def iter_token_batches(
    tokens: TokenSource, batch_size: int = 32, max_tokens: int | None = None, desc: str | None = None
) -> Iterator[torch.Tensor]:
    """Yield (b, ctx) token batches from `tokens`, stopping after `max_tokens` tokens (whole rows).

    A tqdm bar (over tokens) is shown when `desc` is given.
    """
    if isinstance(tokens, torch.Tensor):
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (n_seqs, ctx); got shape {tuple(tokens.shape)}")
        source: Iterable[torch.Tensor] = (tokens[i : i + batch_size] for i in range(0, tokens.shape[0], batch_size))
        total = tokens.numel() if max_tokens is None else min(max_tokens, tokens.numel())
    else:
        source, total = tokens, max_tokens
    seen = 0
    bar = tqdm(total=total, desc=desc, unit="tok", disable=desc is None, leave=False)
    try:
        for batch in source:
            batch = torch.as_tensor(batch)
            if batch.ndim == 1:
                batch = batch[None]
            if max_tokens is not None:
                rows_left = -(-(max_tokens - seen) // batch.shape[1])
                if rows_left <= 0:
                    break
                batch = batch[:rows_left]
            seen += batch.numel()
            bar.update(batch.numel())
            yield batch
            if max_tokens is not None and seen >= max_tokens:
                break
    finally:
        bar.close()


def layer_of(sae) -> int:
    """The block index of a JSAE (from its input hook `blocks.L.ln2.hook_normalized`)."""
    from sae_lens_jsae.sae import layer_of_input_hook

    return layer_of_input_hook(sae.cfg.metadata.hook_name)


@torch.no_grad()
def mlp_inputs_of(model, sae, batch: torch.Tensor) -> torch.Tensor:
    """`ln2.hook_normalized` at the JSAE's block for a token batch, flattened to (tokens, d_in)."""
    hook = sae.cfg.metadata.hook_name
    _, cache = model.run_with_cache(
        batch.to(model.cfg.device), names_filter=[hook], stop_at_layer=layer_of(sae) + 1
    )
    return cache[hook].reshape(-1, cache[hook].shape[-1]).to(device=sae.device, dtype=sae.dtype)
