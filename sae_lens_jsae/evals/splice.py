"""CE-loss and KL scores of a JSAE spliced into its model.

Three splices, each scored against zero-ablation of the same hook:
  * `input`: x̂ = input SAE(x) at `blocks.L.ln2.hook_normalized`;
  * `output`: ŷ = output SAE(y) at `blocks.L.hook_mlp_out`;
  * `replacement`: the MLP replaced by input SAE → MLP → output SAE, i.e. `hook_mlp_out` set
    to output SAE(f(x̂)) (x read at `ln2.hook_normalized`); zero-ablation of `hook_mlp_out`.

CE-loss score = (CE_zero − CE_spliced) / (CE_zero − CE_clean); KL score = (KL_zero − KL_spliced) /
KL_zero (SAEBench's definitions), with KL(clean ‖ intervened) of next-token distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sae_lens_jsae.evals._batches import TokenSource, iter_token_batches

SPLICES: tuple[str, ...] = ("input", "output", "replacement")


@dataclass
class SpliceScore:
    """One splice's losses, averaged over all predicted tokens."""

    hook_name: str
    """The hook replaced (and zero-ablated for the baseline)."""
    ce_clean: float
    """CE loss of the unmodified model."""
    ce_spliced: float
    """CE loss with the SAE reconstruction spliced in."""
    ce_zero_ablation: float
    """CE loss with the hook zero-ablated."""
    ce_loss_score: float
    """(ce_zero_ablation − ce_spliced) / (ce_zero_ablation − ce_clean); 1 = lossless."""
    kl_spliced: float
    """Mean KL(clean ‖ spliced) over positions."""
    kl_zero_ablation: float
    """Mean KL(clean ‖ zero-ablated)."""
    kl_score: float
    """(kl_zero_ablation − kl_spliced) / kl_zero_ablation; 1 = lossless."""


@dataclass
class SpliceResult:
    """Splice scores of a JSAE."""

    n_tokens: int
    """Tokens run through the model (CE is over n_tokens − n_seqs predictions)."""
    input: SpliceScore | None
    """Input SAE at ln2.hook_normalized."""
    output: SpliceScore | None
    """Output SAE at hook_mlp_out."""
    replacement: SpliceScore | None
    """Input SAE → MLP → output SAE in place of the MLP (at hook_mlp_out)."""

    @property
    def average_ce_loss_score(self) -> float:
        """Mean CE-loss score of the input and output splices (the paper's 'average CE-loss score')."""
        return 0.5 * (self.input.ce_loss_score + self.output.ce_loss_score)  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.input is not None and self.output is not None:
            d["average_ce_loss_score"] = self.average_ce_loss_score
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpliceResult:
        return cls(n_tokens=d["n_tokens"], **{s: SpliceScore(**d[s]) if d.get(s) else None for s in SPLICES})


def _kl_sum(clean_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = F.log_softmax(logits.to(torch.float64), dim=-1)
    return float((clean_logp.exp() * (clean_logp - logp)).sum())


@torch.no_grad()
def splice_scores(
    model,
    sae,
    tokens: TokenSource,
    *,
    splices: Sequence[str] = SPLICES,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
) -> SpliceResult:
    """CE-loss and KL scores of the JSAE's `splices` (see the module docstring) on `tokens`."""
    unknown = set(splices) - set(SPLICES)
    if unknown:
        raise ValueError(f"Unknown splices {sorted(unknown)}; choose from {SPLICES}.")
    in_hook = sae.cfg.metadata.hook_name
    out_hook = sae.output_hook
    mlp = sae.require_mlp()

    def cast(f):
        def hook(act, hook):  # noqa: ARG001
            return f(act.to(sae.dtype)).to(act.dtype)

        return hook

    saved: dict[str, torch.Tensor] = {}

    def save_x(act, hook):  # noqa: ARG001
        saved["x"] = act
        return act

    interventions: dict[str, tuple[str, list, list]] = {
        "input": (in_hook, [(in_hook, cast(lambda x: sae.decode(sae.encode(x))))], [(in_hook, lambda a, hook: torch.zeros_like(a))]),
        "output": (out_hook, [(out_hook, cast(lambda y: sae.decode_output(sae.encode_output(y))))], [(out_hook, lambda a, hook: torch.zeros_like(a))]),
        "replacement": (
            out_hook,
            [
                (in_hook, save_x),
                (out_hook, lambda a, hook: sae.decode_output(sae.encode_output(mlp(sae.decode(sae.encode(saved["x"].to(sae.dtype))))))
                 .to(a.dtype)),
            ],
            [(out_hook, lambda a, hook: torch.zeros_like(a))],
        ),
    }
    sums = {s: {"ce_spliced": 0.0, "ce_zero_ablation": 0.0, "kl_spliced": 0.0, "kl_zero_ablation": 0.0} for s in splices}
    ce_clean = 0.0
    n_pred = n_pos = n_tok = 0
    for batch in iter_token_batches(tokens, batch_size, max_tokens, desc="Splice CE/KL" if progress else None):
        batch = batch.to(model.cfg.device)
        logits = model(batch, return_type="logits")
        clean_logp = F.log_softmax(logits.to(torch.float64), dim=-1)
        ce_clean += float(model.loss_fn(logits, batch, per_token=True).to(torch.float64).sum())
        for s in splices:
            _, spliced_hooks, zero_hooks = interventions[s]
            for key, hooks in (("spliced", spliced_hooks), ("zero_ablation", zero_hooks)):
                out = model.run_with_hooks(batch, return_type="logits", fwd_hooks=hooks)
                sums[s][f"ce_{key}"] += float(model.loss_fn(out, batch, per_token=True).to(torch.float64).sum())
                sums[s][f"kl_{key}"] += _kl_sum(clean_logp, out)
        n_pred += batch.shape[0] * (batch.shape[1] - 1)
        n_pos += batch.numel()
        n_tok += batch.numel()
    if n_tok == 0:
        raise ValueError("No tokens to evaluate.")
    clean = ce_clean / n_pred
    scores: dict[str, SpliceScore | None] = {s: None for s in SPLICES}
    for s in splices:
        ce_s, ce_z = sums[s]["ce_spliced"] / n_pred, sums[s]["ce_zero_ablation"] / n_pred
        kl_s, kl_z = sums[s]["kl_spliced"] / n_pos, sums[s]["kl_zero_ablation"] / n_pos
        scores[s] = SpliceScore(
            hook_name=interventions[s][0],
            ce_clean=clean,
            ce_spliced=ce_s,
            ce_zero_ablation=ce_z,
            ce_loss_score=(ce_z - ce_s) / (ce_z - clean),
            kl_spliced=kl_s,
            kl_zero_ablation=kl_z,
            kl_score=(kl_z - kl_s) / kl_z if kl_z > 0 else float("nan"),
        )
    return SpliceResult(n_tokens=n_tok, **scores)  # type: ignore[arg-type]
