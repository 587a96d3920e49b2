"""CE-loss and KL scores of a JSAE spliced into its model.

Three splices, each scored against zero-ablation of the same hook:
  * `input`: x̂ = input SAE(x) at `blocks.L.ln2.hook_normalized`;
  * `output`: ŷ = output SAE(y) at `blocks.L.hook_mlp_out`;
  * `replacement`: the MLP replaced by input SAE → MLP → output SAE, i.e. `hook_mlp_out` set
    to output SAE(f(x̂)) (x read at `ln2.hook_normalized`); zero-ablation of `hook_mlp_out`.

CE-loss score = (CE_zero − CE_spliced) / (CE_zero − CE_clean); KL score = (KL_zero − KL_spliced) /
KL_zero (SAEBench's definitions), with KL(clean ‖ intervened) of next-token distributions.

Cost: `splice_scores_multi` scores many pairs in one pass over the tokens. Per batch it runs the
clean model once (caching block L's residual before the MLP is added), then, for each
intervention, only blocks L+1… and the unembedding (`start_at_layer`), from residual + new MLP
output. The two zero-ablations (ln2.hook_normalized → MLP(0); hook_mlp_out → 0) are shared by all
pairs on a layer and by the output and replacement splices. So n pairs cost 1 + 2 + 3n partial
passes instead of 7n full ones (1 + 1 + n when only `replacement` is scored). Log-softmax and KL
run in float32 (float64 for a float64 model): on SmolLM2 the float32 KL differs from float64 by
≪ its sampling error (docs/metrics.md).

Explained variances (1 − Σ‖x − x̂‖² / Σ‖x − μ‖², μ the eval-set mean, special tokens excluded as in
SAEBench's core eval) of the input SAE, the output SAE, of the MLP through the input SAE's
reconstruction (f(x̂) against y = f(x)) and of the replacement (output SAE(f(x̂)) against y) come
from the same pass.

Transcoders (`sae_lens_jsae.transcoder`) score in the same pass on the same tokens: their one
splice is `replacement` (`hook_mlp_out` set to the transcoder's ŷ(x), against the same
zero-ablation), with the replacement's explained variance, L0 per token and the latents that never
fired on the eval tokens. Everything is also kept as
per-sequence sums (`SpliceResult.per_sequence`) for intervals and paired differences
(`sae_lens_jsae.evals.intervals`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sae_lens_jsae.evals._batches import TokenSource, layer_of
from sae_lens_jsae.evals.intervals import Estimate, ratio, register_summary_block, rounded
from sae_lens_jsae.evals.onepass import run_metrics
from sae_lens_jsae.evals.sparsity import tokens_digest

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
    """Input SAE → MLP → output SAE in place of the MLP (at hook_mlp_out); a transcoder's ŷ(x)."""
    explained_variance: dict[str, float] = field(default_factory=dict)
    """1 − Σ‖x − x̂‖²/Σ‖x − μ‖² of `input` (x̂ = input SAE(x)), `output` (ŷ = output SAE(y)),
    `mlp_of_input_reconstruction` (f(x̂) against y) and `replacement` (what the replacement splice
    writes, against y); a transcoder has `replacement` only. See the module docstring."""
    dead_latents: int | None = None
    """Latents that never fired on the eval tokens: a transcoder's; a pair's input SAE's (on x) plus
    its output SAE's on the replacement path (on f(x̂)), split in `dead_latents_by_sae`."""
    dead_latents_by_sae: dict[str, int] | None = None
    """A pair's dead latents per SAE: {"input": …, "output": …} (None for a transcoder)."""
    per_sequence: dict[str, Any] | None = None
    """Per-sequence sums (lists, one entry per sequence) for intervals: n_pred, n_pos, n_ev, ce_clean,
    ce_/kl_ of zero_input, zero_mlp_out and each splice, sqerr_/var_ input and output,
    sqerr_mlp_of_recon; tokens_digest names the token sequences."""

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
        return cls(n_tokens=d["n_tokens"], **{s: SpliceScore(**d[s]) if d.get(s) else None for s in SPLICES},
                   explained_variance=d.get("explained_variance") or {}, dead_latents=d.get("dead_latents"),
                   dead_latents_by_sae=d.get("dead_latents_by_sae"), per_sequence=d.get("per_sequence"))


def _check_splices(splices: Sequence[str]) -> None:
    unknown = set(splices) - set(SPLICES)
    if unknown:
        raise ValueError(f"Unknown splices {sorted(unknown)}; choose from {SPLICES}.")


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
    return splice_scores_multi(model, {"jsae": sae}, tokens, splices=splices, batch_size=batch_size,
                               max_tokens=max_tokens, progress=progress)["jsae"]


def _special_token_ids(model) -> list[int]:
    tok = getattr(model, "tokenizer", None)
    return [] if tok is None else sorted({t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if t is not None})


class _Losses:
    """Per-sequence CE and KL of intervened logits against the clean run of one batch."""

    def __init__(self, model, batch: torch.Tensor, logits: torch.Tensor) -> None:
        self.dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        self.batch = batch
        self.clean_logp = F.log_softmax(logits.to(self.dtype), dim=-1)
        self.clean_p = self.clean_logp.exp()
        self.clean_ce = self.ce(self.clean_logp)

    def ce(self, logp: torch.Tensor) -> torch.Tensor:
        return -logp[:, :-1].gather(-1, self.batch[:, 1:, None]).squeeze(-1).to(torch.float64).sum(1)

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = F.log_softmax(logits.to(self.dtype), dim=-1)
        kl = (self.clean_p * (self.clean_logp - logp)).sum(-1).to(torch.float64).sum(1)
        return self.ce(logp), kl


class _BlockRun:
    """One batch's re-runs of the model from block L's MLP output on (see the module docstring)."""

    def __init__(self, model, L: int, cache, parallel: bool, losses: _Losses) -> None:
        self.model, self.L, self.losses = model, L, losses
        if parallel:  # resid_post = resid_pre + attn_out + mlp_out; ln2 reads resid_pre
            self.base = cache[f"blocks.{L}.hook_resid_pre"] + cache[f"blocks.{L}.hook_attn_out"]
            self.ln2_in = cache[f"blocks.{L}.hook_resid_pre"]
        else:  # resid_post = resid_mid + mlp_out; ln2 reads resid_mid
            self.base = self.ln2_in = cache[f"blocks.{L}.hook_resid_mid"]
        self.x, self.y = cache[f"blocks.{L}.ln2.hook_normalized"], cache[f"blocks.{L}.hook_mlp_out"]

    def rest(self, mlp_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence (CE, KL) of the model with block L's MLP output replaced by `mlp_out`."""
        return self.losses(self.model(self.base + mlp_out, start_at_layer=self.L + 1, return_type="logits"))

    def mlp_of(self, new_x: torch.Tensor) -> torch.Tensor:
        """Block L's MLP output with ln2.hook_normalized replaced by `new_x`, exactly as a hook would."""
        block = self.model.blocks[self.L]

        def patch(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            return new_x.to(act.dtype)

        with self.model.hooks(fwd_hooks=[(f"blocks.{self.L}.ln2.hook_normalized", patch)]):
            return block.apply_mlp(block.ln2(self.ln2_in))


class SpliceMetric:
    """`Metric` (evals.onepass): `splice_scores` of several JSAEs and transcoders ({name: model})
    on the first `max_tokens` held-out tokens, sharing each batch's clean run (the pass's) and the
    zero-ablations (see the module docstring). `result()` is {name: SpliceResult}."""

    needs_logits = True

    def __init__(self, model: Any, saes: Mapping[str, Any], splices: Sequence[str] = SPLICES, max_tokens: int | None = None) -> None:
        from sae_lens_jsae.transcoder import is_transcoder

        _check_splices(splices)
        if not saes:
            raise ValueError("splice_scores_multi needs at least one JSAE.")
        if getattr(model.cfg, "positional_embedding_type", None) == "shortformer":
            raise ValueError("splice_scores_multi runs blocks L+1… from the residual; shortformer models are not supported.")
        self.saes, self.splices, self.max_tokens = dict(saes), tuple(splices), max_tokens
        self.layers = {name: layer_of(sae) for name, sae in saes.items()}
        self.parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
        self.special = _special_token_ids(model)
        self.cols: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in saes}
        self.fired = {name: torch.zeros(sae.cfg.d_sae, dtype=torch.bool) for name, sae in saes.items() if is_transcoder(sae)}
        self.fired_pair = {name: torch.zeros(2, sae.cfg.d_sae, dtype=torch.bool) for name, sae in saes.items() if name not in self.fired}
        self.moments: dict[int, dict[str, list[torch.Tensor]]] = {L: {} for L in set(self.layers.values())}  # per-seq Σx, Σ‖x‖², Σy, Σ‖y‖²
        self.digest = hashlib.sha256()
        self.n_tok = 0

    def hooks(self) -> set[str]:
        names: set[str] = set()
        for L in set(self.layers.values()):
            names |= {f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out"}
            names |= {f"blocks.{L}.hook_resid_pre", f"blocks.{L}.hook_attn_out"} if self.parallel else {f"blocks.{L}.hook_resid_mid"}
        return names

    @staticmethod
    def _add(store: dict[str, list[torch.Tensor]], key: str, v: torch.Tensor) -> None:
        store.setdefault(key, []).append(v.detach().to("cpu", torch.float64))

    def update(self, held: Any) -> None:
        add, batch, model = self._add, held.tokens, held.model
        tokens_digest(self.digest, batch)
        self.n_tok += batch.numel()
        losses = _Losses(model, batch, held.logits)
        keep = ~torch.isin(batch, torch.tensor(self.special, device=batch.device)) if self.special else torch.ones_like(batch, dtype=torch.bool)
        keep_f = keep.to(torch.float64)
        common = {"n_pred": torch.full((batch.shape[0],), float(batch.shape[1] - 1)), "n_pos": torch.full((batch.shape[0],), float(batch.shape[1])),
                  "n_ev": keep_f.sum(1), "ce_clean": losses.clean_ce}
        runs = {L: _BlockRun(model, L, held.cache, self.parallel, losses) for L in set(self.layers.values())}
        shared: dict[int, dict[str, torch.Tensor]] = {}
        for L, run in runs.items():
            ce_zo, kl_zo = run.rest(torch.zeros_like(run.y))
            shared[L] = {"ce_zero_mlp_out": ce_zo, "kl_zero_mlp_out": kl_zo}
            if "input" in self.splices:  # only the input splice is scored against MLP(0)
                ce_zi, kl_zi = run.rest(run.mlp_of(torch.zeros_like(run.x)))
                shared[L] |= {"ce_zero_input": ce_zi, "kl_zero_input": kl_zi}
            x64, y64 = run.x.to(torch.float64), run.y.to(torch.float64)
            add(self.moments[L], "sum_x", (x64 * keep_f[..., None]).sum(1))
            add(self.moments[L], "sq_x", (x64.pow(2).sum(-1) * keep_f).sum(1))
            add(self.moments[L], "sum_y", (y64 * keep_f[..., None]).sum(1))
            add(self.moments[L], "sq_y", (y64.pow(2).sum(-1) * keep_f).sum(1))
        for name, sae in self.saes.items():
            run = runs[self.layers[name]]
            x, y = run.x, run.y
            c = self.cols[name]
            for key, v in {**common, **shared[self.layers[name]]}.items():
                add(c, key, v)
            sqerr = functools.partial(_sum_sq_error, weights=keep_f)
            if name in self.fired:  # a transcoder: ŷ(x) replaces the MLP
                acts = sae.encode(x.to(sae.dtype))
                active = acts > 0
                self.fired[name] |= active[keep].any(0).cpu()
                add(c, "l0_sum", (active.sum(-1).to(torch.float64) * keep_f).sum(1))
                replacement = sae.decode(acts) + (x.to(sae.dtype) @ sae.W_skip.T if hasattr(sae, "W_skip") else 0)
                add(c, "sqerr_replacement", sqerr(y, replacement))
                outputs = {"replacement": replacement.to(y.dtype)} if "replacement" in self.splices else {}
            else:
                acts_in = sae.encode(x.to(sae.dtype))
                x_hat = sae.decode(acts_in)
                y_hat = sae.decode_output(sae.encode_output(y.to(sae.dtype)))
                f_x_hat = sae.require_mlp()(x_hat)
                acts_out = sae.encode_output(f_x_hat)
                replacement = sae.decode_output(acts_out)
                self.fired_pair[name][0] |= (acts_in > 0)[keep].any(0).cpu()
                self.fired_pair[name][1] |= (acts_out > 0)[keep].any(0).cpu()
                add(c, "sqerr_input", sqerr(x, x_hat))
                add(c, "sqerr_output", sqerr(y, y_hat))
                add(c, "sqerr_mlp_of_recon", sqerr(y, f_x_hat))
                add(c, "sqerr_replacement", sqerr(y, replacement))
                outputs = {s: run.mlp_of(x_hat) if s == "input" else (y_hat if s == "output" else replacement).to(y.dtype) for s in self.splices}
            for s, mlp_out in outputs.items():
                ce, kl = run.rest(mlp_out)
                add(c, f"ce_{s}", ce)
                add(c, f"kl_{s}", kl)

    def result(self) -> dict[str, SpliceResult]:
        if self.n_tok == 0:
            raise ValueError("No tokens to evaluate.")
        var: dict[int, dict[str, torch.Tensor]] = {}
        for L, m in self.moments.items():
            var[L] = {}
            for v in ("x", "y"):
                S, Q = torch.cat(m[f"sum_{v}"]), torch.cat(m[f"sq_{v}"])
                n_ev = torch.cat(self.cols[next(n for n in self.saes if self.layers[n] == L)]["n_ev"])
                mu = S.sum(0) / n_ev.sum().clamp_min(1)
                var[L]["var_input" if v == "x" else "var_output"] = Q - 2 * S @ mu + n_ev * mu.dot(mu)
        results = {}
        for name, sae in self.saes.items():
            own = [s for s in self.splices if s == "replacement"] if name in self.fired else self.splices
            out_hook = sae.cfg.metadata.hook_name_out if name in self.fired else sae.output_hook
            results[name] = _result(self.n_tok, own, {k: torch.cat(v) for k, v in self.cols[name].items()} | var[self.layers[name]],
                                    self.digest.hexdigest(), sae.cfg.metadata.hook_name, out_hook)
            if name in self.fired:
                results[name].dead_latents = int((~self.fired[name]).sum())
            else:
                dead_in, dead_out = (int(n) for n in (~self.fired_pair[name]).sum(1))
                results[name].dead_latents, results[name].dead_latents_by_sae = dead_in + dead_out, {"input": dead_in, "output": dead_out}
        return results


def splice_scores_multi(
    model,
    saes: Mapping[str, Any],
    tokens: TokenSource,
    *,
    splices: Sequence[str] = SPLICES,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, SpliceResult]:
    """`splice_scores` of several JSAEs and transcoders ({name: model}) in one pass over `tokens`,
    sharing the clean and zero-ablated runs (`SpliceMetric`). Returns {name: SpliceResult}."""
    metric = SpliceMetric(model, saes, splices, max_tokens)
    return run_metrics(model, tokens, {"splice": metric}, batch_size=batch_size, desc="Splice CE/KL" if progress else None)["splice"]


def _sum_sq_error(target: torch.Tensor, approx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per sequence: Σ over kept positions of ‖target − approx‖² (float64)."""
    return ((target.to(torch.float64) - approx.to(torch.float64)).pow(2).sum(-1) * weights).sum(1)


def _result(n_tok: int, splices: Sequence[str], col: dict[str, torch.Tensor], digest: str, in_hook: str, out_hook: str) -> SpliceResult:
    t = {k: float(v.sum()) for k, v in col.items()}
    n_pred, n_pos = t["n_pred"], t["n_pos"]
    clean = t["ce_clean"] / n_pred
    scores: dict[str, SpliceScore | None] = {s: None for s in SPLICES}
    for s in splices:
        z = SPLICE_ZERO[s]
        ce_s, ce_z = t[f"ce_{s}"] / n_pred, t[f"ce_{z}"] / n_pred
        kl_s, kl_z = t[f"kl_{s}"] / n_pos, t[f"kl_{z}"] / n_pos
        scores[s] = SpliceScore(
            hook_name=in_hook if s == "input" else out_hook,
            ce_clean=clean,
            ce_spliced=ce_s,
            ce_zero_ablation=ce_z,
            ce_loss_score=(ce_z - ce_s) / (ce_z - clean) if ce_z != clean else float("nan"),
            kl_spliced=kl_s,
            kl_zero_ablation=kl_z,
            kl_score=(kl_z - kl_s) / kl_z if kl_z > 0 else float("nan"),
        )
    ev = {name: 1 - t[err] / t[v] if t[v] > 0 else float("nan") for name, err, v in (
        ("input", "sqerr_input", "var_input"), ("output", "sqerr_output", "var_output"),
        ("mlp_of_input_reconstruction", "sqerr_mlp_of_recon", "var_output"), ("replacement", "sqerr_replacement", "var_output"))
        if err in t}
    per_seq: dict[str, Any] = {k: rounded(v.numpy()) for k, v in col.items()}
    per_seq["tokens_digest"] = digest
    return SpliceResult(n_tokens=n_tok, **scores, explained_variance=ev, per_sequence=per_seq)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- intervals
SPLICE_ZERO = {"input": "zero_input", "output": "zero_mlp_out", "replacement": "zero_mlp_out"}
"""The zero-ablation each splice is scored against (per-sequence column suffix)."""


def splice_estimates(ps: Mapping[str, Any]) -> dict[str, Estimate]:
    """Estimates of the splice metrics from a `SpliceResult.per_sequence` block (keys as in the summary)."""
    col = {k: np.asarray(v, dtype=np.float64) for k, v in ps.items() if isinstance(v, list)}
    out: dict[str, Estimate] = {"splice.ce_clean": ratio(col["ce_clean"], col["n_pred"])}
    for s, z in SPLICE_ZERO.items():
        if f"ce_{s}" not in col:
            continue
        ce_z, kl_z, ce_s, kl_s = col[f"ce_{z}"], col[f"kl_{z}"], col[f"ce_{s}"], col[f"kl_{s}"]
        out[f"splice.{s}.ce_spliced"] = ratio(ce_s, col["n_pred"])
        out[f"splice.{s}.ce_zero_ablation"] = ratio(ce_z, col["n_pred"])
        out[f"splice.{s}.kl_spliced"] = ratio(kl_s, col["n_pos"])
        out[f"splice.{s}.kl_zero_ablation"] = ratio(kl_z, col["n_pos"])
        out[f"splice.{s}.ce_loss_score"] = ratio(ce_z - ce_s, ce_z - col["ce_clean"], check_denominator="CE_zero − CE_clean", per=col["n_pred"])
        out[f"splice.{s}.kl_score"] = ratio(kl_z - kl_s, kl_z, check_denominator="KL(clean ‖ zero-ablated)", per=col["n_pos"])
    if "splice.input.ce_loss_score" in out and "splice.output.ce_loss_score" in out:
        out["splice.average_ce_loss_score"] = (out["splice.input.ce_loss_score"] + out["splice.output.ce_loss_score"]).scale(0.5)
    for name, err, var in (("input", "sqerr_input", "var_input"), ("output", "sqerr_output", "var_output"),
                           ("mlp_of_input_reconstruction", "sqerr_mlp_of_recon", "var_output"),
                           ("replacement", "sqerr_replacement", "var_output")):
        if err in col and var in col:
            out[f"explained_variance.{name}"] = ratio(col[err], col[var]).scale(-1.0, 1.0)
    if "l0_sum" in col:  # a transcoder's active latents per (non-special) token
        out["l0"] = ratio(col["l0_sum"], col["n_ev"])
    return out


register_summary_block("splice", lambda block: splice_estimates(block["per_sequence"]))
