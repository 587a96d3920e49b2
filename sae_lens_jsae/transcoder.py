"""TopK transcoders and skip transcoders: the field's alternative to a JSAE for reading an MLP.

A transcoder reads the MLP's input x (`blocks.L.ln2.hook_normalized`) and reconstructs its
output y = f(x) (`blocks.L.hook_mlp_out`) through one sparse layer; a skip transcoder adds a
linear path:

    s = TopK(x W_enc + b_enc),   ŷ = s W_dec + b_dec  [+ x W_skipᵀ]

    L = ‖ŷ − y‖² (summed over d_out, mean over tokens, as SAELens' `mse_loss`)
        + aux_loss_coefficient · AuxK (SAELens' TopK auxiliary loss on the residual y − ŷ)
        [+ intervention_consistency_coefficient · C, opt-in]

C is the JSAE pair's intervention-consistency term (sae.py) for a transcoder, so the two methods
are compared trained against trained: a transcoder's graph predicts that moving the input by u
changes its output by ŷ'(u) = Σ_{j active} W_dec[j]·(W_enc[:, j]·u) + W_skip u, and C fits that to
the MLP's real change f'(x)·u (its JVP), Σ‖ŷ'(u) − f'(x)u‖² / Σ‖f'(x)u‖² (denominator detached).
A transcoder has no input SAE of its own to weaken, so the directions u are the batch's own
inputs, centred and unit-norm (token t uses the inputs of tokens t+1 … t+m, cyclically): every
direction the data moves in, the ones an upstream SAE's latents span. `evals.intervention` then
scores it in an upstream SAE's basis, as it scores pairs.

Why here: SAELens ships transcoders for inference only (`Transcoder`, `SkipTranscoder`; no TopK
variant, no training: its issue #182); EleutherAI `sparsify` trains TopK (skip) transcoders but on
its own trainer. These classes subclass SAELens' (so `SAE.load_from_disk`, `SAE.from_pretrained`
and `HookedSAETransformer.add_sae` treat them as SAELens transcoders: `metadata.hook_name_out`)
and train on this package's runner, from the same activation stream as JSAE pairs, with the
frozen MLP (`FrozenMLP`, never saved with the transcoder) supplying the target y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import TopK
from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig
from torch import nn
from typing_extensions import override

from sae_lens_jsae.mlp import FrozenMLP

TOPK_TRANSCODER = "topk_transcoder"
TOPK_SKIP_TRANSCODER = "topk_skip_transcoder"
TRANSCODER_ARCHITECTURES = (TOPK_TRANSCODER, TOPK_SKIP_TRANSCODER)


def _check_k(k: int, d_sae: int) -> None:
    if not 0 < k <= d_sae:
        raise ValueError(f"k={k} must be in [1, d_sae={d_sae}]: TopK picks k of the d_sae latents.")


# ---- inference (SAELens' Transcoder classes with TopK's encode) -------------------------------


@dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """Inference config of a TopK transcoder (SAELens `TranscoderConfig` plus `k`)."""

    k: int = 32
    apply_b_dec_to_input: bool = False  # SAELens' transcoders refuse True (b_dec is in the output space)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_k(self.k, self.d_sae)

    @override
    @classmethod
    def architecture(cls) -> str:
        return TOPK_TRANSCODER


@dataclass
class TopKSkipTranscoderConfig(SkipTranscoderConfig):
    """Inference config of a TopK skip transcoder (SAELens `SkipTranscoderConfig` plus `k`)."""

    k: int = 32
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_k(self.k, self.d_sae)

    @override
    @classmethod
    def architecture(cls) -> str:
        return TOPK_SKIP_TRANSCODER


_FOLD_REFUSED = (
    "Folding W_dec_norm into a TopK transcoder's encoder rescales each latent's pre-activation, "
    "which changes which latents TopK picks (SAELens' TopKSAE refuses it too); its decoder norms "
    "carry the output's scale by design."
)


class _TopKEncode:
    """TopK as the activation of SAELens' transcoder classes, and no unsafe norm folding."""

    cfg: Any

    def get_activation_fn(self) -> nn.Module:
        return TopK(self.cfg.k)

    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(_FOLD_REFUSED)


class TopKTranscoder(_TopKEncode, Transcoder):
    """SAELens' `Transcoder` whose activation is TopK (k latents per token)."""

    cfg: TopKTranscoderConfig  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoder:  # type: ignore[override]
        return cls(TopKTranscoderConfig.from_dict(config_dict))


class TopKSkipTranscoder(_TopKEncode, SkipTranscoder):
    """SAELens' `SkipTranscoder` (ŷ = decode(encode(x)) + x W_skipᵀ) with TopK's encode."""

    cfg: TopKSkipTranscoderConfig  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKSkipTranscoder:  # type: ignore[override]
        return cls(TopKSkipTranscoderConfig.from_dict(config_dict))


# ---- training ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TopKTranscoderTrainingConfig(TopKTrainingSAEConfig):
    """Training config of a TopK transcoder at one MLP (SAELens architecture `"topk_transcoder"`).

    Choices, after sparsify's transcoder (`sparsify/sparse_coder.py`, `transcode=True`) where it
    differs from SAELens' TopK training SAE, because a transcoder's output is not its input:
    - `W_dec` starts at zero and is not kept at unit norm (its rows carry the output's scale, which
      is the MLP's, not the input's); so `rescale_acts_by_decoder_norm` is off and
      `decoder_init_norm` is unused. `W_enc` starts as torch's `nn.Linear` default
      (U(±1/√d_in)), `b_enc`, `b_dec` at zero until the first batch sets them (below); no
      `b_dec` is subtracted from the input
      (`apply_b_dec_to_input=False`: SAELens' `Transcoder` refuses it, and sparsify's PR #49
      removed it for transcoders).
    - Biases from the first batch (`init_biases_from_first_batch`, on by default): as sparsify's
      trainer, b_dec = mean(y) and b_enc = −mean(x)·W_enc on the first training batch.
    - AuxK for dead latents: kept, as in SAELens' TopK training SAE (whose default weight 1.0 we
      keep, on SAELens' loss scale: summed squared error): k_aux = d_out/2 of the dead latents
      reconstruct the residual y − ŷ. sparsify has the same loss (`auxk_alpha`, k_aux = d_out/2,
      scaled by the target's variance) but off by default: `TrainConfig.auxk_alpha = 0.0` in
      sparsify 1.3, so its trainer passes no dead mask and trains on FVU alone. We keep AuxK
      because it is SAELens' TopK training default, the anchor a SAELens user expects (a latent
      counts as dead after SAELens' `dead_feature_window`, 1000 steps, so it acts only in longer
      runs). `aux_loss_coefficient: 0` gives sparsify's objective.
    """

    k: int = 32
    d_out: int | None = None
    """Output width: the MLP's output, i.e. the model's d_model; None: d_in (the same width)."""
    apply_b_dec_to_input: bool = False
    rescale_acts_by_decoder_norm: bool = False
    decoder_init_norm: float | None = None
    aux_loss_coefficient: float = 1.0
    intervention_consistency_coefficient: float = 0.0
    """Weight of the opt-in intervention-consistency term C (module docstring). 0 (default): off."""
    intervention_consistency_latents: int = 4
    """Directions per token the consistency term checks."""
    intervention_consistency_token_fraction: float = 0.25
    """Share of each batch's tokens (its first ones) the consistency term uses."""
    init_biases_from_first_batch: bool = True
    """On the first training batch (before its step), set b_dec = mean(y) and
    b_enc = −mean(x)·W_enc, so ŷ starts at the MLP's mean output and every latent's pre-activation
    starts centred on the data: sparsify's trainer does this for its transcoders (`Trainer.fit`,
    global step 0). Why it is on: `scripts/sparsify_crosscheck.py` measured, on the offline
    default (100 steps), held-out FVU 0.914× that of zero-initialised biases (0.453 vs 0.496), and
    latents never active on the held-out tokens 735 → 11 of 2304; with it, sparsify trained with
    Adam on the same batches is at 1.009× ours
    (benchmarks/results/sparsify-crosscheck-cpu-20261203-042608.json). The means are over the
    global batch, which every torchrun rank holds, so all ranks set identical biases; a resumed
    run does not set them again. False: both biases start at zero (SAELens' TopK SAE)."""

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        super().__post_init__()
        _check_k(self.k, self.d_sae)
        if self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input must be False for a transcoder: b_dec lives in the output space.")
        if self.rescale_acts_by_decoder_norm:
            raise ValueError("rescale_acts_by_decoder_norm must be False for a transcoder: its decoder starts at zero and carries the output's scale.")
        if self.normalize_activations != "none":
            raise ValueError("normalize_activations must be 'none' for a transcoder (input and output live in different spaces).")
        if self.aux_loss_coefficient < 0:
            raise ValueError(f"aux_loss_coefficient={self.aux_loss_coefficient} must be >= 0.")
        if self.intervention_consistency_coefficient < 0:
            raise ValueError(f"intervention_consistency_coefficient={self.intervention_consistency_coefficient} must be >= 0.")
        if self.intervention_consistency_latents < 1:
            raise ValueError(f"intervention_consistency_latents={self.intervention_consistency_latents} must be >= 1.")
        if not 0 < self.intervention_consistency_token_fraction <= 1:
            raise ValueError(f"intervention_consistency_token_fraction={self.intervention_consistency_token_fraction} must be in (0, 1].")

    @override
    @classmethod
    def architecture(cls) -> str:
        return TOPK_TRANSCODER


@dataclass(kw_only=True)
class TopKSkipTranscoderTrainingConfig(TopKTranscoderTrainingConfig):
    """Training config of a TopK skip transcoder (architecture `"topk_skip_transcoder"`):
    as `TopKTranscoderTrainingConfig`, plus `W_skip [d_out, d_in]` initialised at zero (as in
    sparsify and SAELens' `SkipTranscoder`)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return TOPK_SKIP_TRANSCODER


class TopKTrainingTranscoder(TopKTrainingSAE):
    """Training TopK transcoder: SAELens' `TopKTrainingSAE` with a decoder into the MLP's output
    space and the frozen MLP's output as its target (attach it with `attach_mlp`)."""

    cfg: TopKTranscoderTrainingConfig  # type: ignore[assignment]

    def __init__(self, cfg: TopKTranscoderTrainingConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def initialize_weights(self) -> None:
        d_in, d_sae, d_out = self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
        kw = {"dtype": self.dtype, "device": self.device}
        bound = d_in**-0.5  # nn.Linear's default init, as sparsify's encoder
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **kw).uniform_(-bound, bound))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, **kw))  # type: ignore[arg-type]
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))  # type: ignore[arg-type]

    @torch.no_grad()
    def initialize_biases_from_batch(self, x: torch.Tensor) -> None:
        """sparsify's first-batch bias initialisation: b_dec = mean(y), b_enc = −mean(x)·W_enc,
        the means over the tokens of `x` (MLP inputs) and y = f(x), the frozen MLP's outputs."""
        x = x.to(device=self.device, dtype=self.dtype)
        _, y = self.require_mlp().pre_activations_and_output(x)  # the sweep's one MLP pass of this batch
        self.b_dec.copy_(y.to(self.dtype).mean(0))
        self.b_enc.copy_(-(x.mean(0) @ self.W_enc))

    def initialize_from_first_batch(self, x: torch.Tensor) -> None:
        """Called by the runner's trainer on the run's first batch, before its step (never on a
        resumed run): sets the biases from it when `cfg.init_biases_from_first_batch`."""
        if self.cfg.init_biases_from_first_batch:
            self.initialize_biases_from_batch(x)

    @property
    def mlp(self) -> FrozenMLP | None:
        """The frozen MLP whose output is the target; kept out of the module (never saved)."""
        return self.__dict__.get("_target_mlp")

    def attach_mlp(self, mlp: FrozenMLP) -> None:
        """Set the MLP whose output this transcoder learns (not a submodule: not in its weights)."""
        if mlp.d_model != self.cfg.d_in or mlp.d_model != self.cfg.d_out:
            raise ValueError(f"The MLP (d_model {mlp.d_model}) does not fit this transcoder (d_in {self.cfg.d_in}, d_out {self.cfg.d_out}).")
        self.__dict__["_target_mlp"] = mlp.to(device=self.device, dtype=self.dtype)

    def require_mlp(self) -> FrozenMLP:
        if self.mlp is None:
            raise RuntimeError("This transcoder has no target MLP: call attach_mlp(FrozenMLP.from_hooked_transformer(model, layer)).")
        return self.mlp

    @override
    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        return Transcoder.process_sae_in(self, sae_in)  # type: ignore[arg-type]  # no b_dec: it lives in the output space

    def skip(self, x: torch.Tensor) -> torch.Tensor | float:
        """The linear skip path's output (0 for a plain transcoder)."""
        return 0.0

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ŷ for MLP inputs x (the transcoder replaces the MLP)."""
        return self.decode(self.encode(x)) + self.skip(x)

    @override
    def get_coefficients(self) -> dict[str, TrainCoefficientConfig | float]:
        return {}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x = step_input.sae_in.to(self.dtype)
        pre, y = self.require_mlp().pre_activations_and_output(x)  # shared with a sweep's pairs: one MLP pass a batch
        feature_acts, hidden_pre = self.encode_with_hidden_pre(x)
        y_hat = self.decode(feature_acts) + self.skip(x)
        mse = (y_hat - y).pow(2).sum(-1).mean()
        aux = self.calculate_topk_aux_loss(sae_in=y, sae_out=y_hat, hidden_pre=hidden_pre, dead_neuron_mask=step_input.dead_neuron_mask)
        losses = {"mse_loss": mse, "auxiliary_reconstruction_loss": aux}
        loss = mse + aux
        if self.cfg.intervention_consistency_coefficient > 0:
            losses["intervention_consistency_loss"] = self.cfg.intervention_consistency_coefficient * self.intervention_consistency(x, feature_acts, pre)
            loss = loss + losses["intervention_consistency_loss"]
        metrics: dict[str, Any] = {}
        if step_input.is_logging_step:
            with torch.no_grad():
                metrics["fvu"] = (mse / (y - y.mean(0)).pow(2).sum(-1).mean()).item()
        return TrainStepOutput(
            # SAELens scores `sae_out` against `sae_in` (explained variance, L2 in its logs): for a
            # transcoder that must be the target y, not the input x.
            sae_in=y,
            sae_out=y_hat,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=loss,
            losses=losses,
            metrics=metrics,
        )

    def intervention_consistency(self, x: torch.Tensor, feature_acts: torch.Tensor, pre: Any) -> torch.Tensor:
        """The consistency term C of the module docstring (unweighted) on MLP inputs x (tokens, d_in),
        their latents and the frozen MLP's `pre_activations(x)`."""
        n = max(1, math.ceil(self.cfg.intervention_consistency_token_fraction * x.shape[0]))
        m = min(self.cfg.intervention_consistency_latents, max(1, x.shape[0] - 1))
        centred = x - x.mean(0)
        units = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        directions = torch.stack([units.roll(-(j + 1), 0)[:n] for j in range(m)], 1).detach()  # (n, m, d)
        pre = pre._replace(**{f: getattr(pre, f)[:n] for f in pre._fields if getattr(pre, f) is not None})
        real = self.require_mlp().directional_derivative(pre, directions)
        active = (feature_acts[:n] > 0).to(x.dtype)  # (n, d_sae)
        predicted = ((directions @ self.W_enc) * active[:, None, :]) @ self.W_dec + self.skip(directions)
        energy = real.detach().pow(2).sum()
        return (predicted - real).pow(2).sum() / energy.clamp_min(torch.finfo(energy.dtype).tiny)

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(_FOLD_REFUSED)


class TopKTrainingSkipTranscoder(TopKTrainingTranscoder):
    """Training TopK skip transcoder: `TopKTrainingTranscoder` plus `W_skip [d_out, d_in]` at zero."""

    cfg: TopKSkipTranscoderTrainingConfig  # type: ignore[assignment]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.W_skip = nn.Parameter(torch.zeros(self.cfg.d_out, self.cfg.d_in, dtype=self.dtype, device=self.device))  # type: ignore[arg-type]

    @override
    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_skip.T


TRANSCODER_CLASSES: dict[str, tuple[type, type, type, type]] = {
    TOPK_TRANSCODER: (TopKTranscoder, TopKTranscoderConfig, TopKTrainingTranscoder, TopKTranscoderTrainingConfig),
    TOPK_SKIP_TRANSCODER: (TopKSkipTranscoder, TopKSkipTranscoderConfig, TopKTrainingSkipTranscoder, TopKSkipTranscoderTrainingConfig),
}
"""architecture -> (inference class, inference config, training class, training config)."""


def is_transcoder(sae: Any) -> bool:
    """Whether `sae` (inference or training) is one of our TopK (skip) transcoders."""
    return isinstance(sae, (TopKTranscoder, TopKSkipTranscoder, TopKTrainingTranscoder))

