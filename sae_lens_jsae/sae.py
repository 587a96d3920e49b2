"""The `jacobian` SAELens architecture: a pair of TopK SAEs around one frozen MLP.

`JacobianSAE` / `JacobianTrainingSAE` subclass SAELens' `TopKSAE` / `TopKTrainingSAE`: their own
`W_enc, b_enc, W_dec, b_dec` (and `encode`/`decode`/`forward`) are the *input* SAE, at
`blocks.L.ln2.hook_normalized`, so the pair works anywhere a SAELens SAE does. The *output* SAE
(`W_enc_out, b_enc_out, W_dec_out, b_dec_out`) reads `blocks.L.hook_mlp_out`; the `FrozenMLP`
(`mlp.*` buffers) maps the input space to the output space. Loss (per-element means):

    L = MSE(x̂, x) + output_mse_coefficient · MSE(ŷ, y) + λ_t · mean|J|,   y = f(x)
        [+ mlp_reconstruction_coefficient · MSE(f(x̂), y), opt-in, not in the paper]
        [+ edge_sparsity_coefficient · mean_o ‖J[o, :] ⊙ s_x‖₁ / (‖·‖₂ · k), opt-in, scale-free]
        [+ intervention_consistency_coefficient · C, opt-in]
        [+ replacement_coefficient · MSE(ŷ(f(x̂)), y), opt-in].

Intervention consistency C (why: a graph's edge J[o, i] claims "weaken input latent i and output
latent o's pre-activation moves by J[o, i]·Δsᵢ"; the edge penalty alone can make J sparse by
decoupling it from what the MLP does, docs/metrics.md "Intervention faithfulness"). For the top
`intervention_consistency_latents` active input latents i of each of the first
`intervention_consistency_token_fraction` of a batch's tokens, the MLP's real output change per
unit of sᵢ is the JVP vᵢ = f'(x)·dᵢ (dᵢ = W_dec[i]; `FrozenMLP.directional_derivative`), and the
pair's graph predicts v̂ᵢ = Σ_{o active} W_dec_out[o]·J[o, i], J[o, i] = W_enc_out[:, o]·vᵢ:

    C = Σ sᵢ² ‖v̂ᵢ − vᵢ‖² / Σ sᵢ² ‖vᵢ‖²     (sᵢ and the denominator detached)

i.e. 1 − the intervention faithfulness of `evals.intervention` in the limit a → 0, on the
training batch. Cost: tokens·f·m·(R+1)·d·d_mlp for the JVPs plus 2·tokens·f·m·k·d for the
prediction (no (tokens, d_sae) product). The replacement term sends x̂ through the frozen MLP and
the output SAE (the replacement the CE-loss score splices in) and fits it to y.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from sae_lens import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import (
    SAEMetadata,
    TrainCoefficientConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn
from typing_extensions import override

from sae_lens_jsae.cfg_types import check_field_types, saelens_cfg_source
from sae_lens_jsae.jacobian import (
    ActiveJacobian,
    JacobianPenalty,
    PostNormTerm,
    active_jacobian_l1,
    active_jacobian_values,
    attribution_row_ratio,
    chunk_tokens,
    gathered_dots,
    mask_inactive,
)
from sae_lens_jsae.mlp import MLP_WEIGHTS_FILENAME, FrozenMLP, check_activation, mlp_checksum, save_mlp
from sae_lens_jsae.pretrained import load_pair

ARCHITECTURE = "jacobian"
INPUT_HOOK_PATTERN = re.compile(r"^blocks\.(\d+)\.ln2\.hook_normalized$")
OUTPUT_HOOK_PATTERN = re.compile(r"^blocks\.(\d+)\.hook_mlp_out$")
OUTPUT_PARAMS = ("W_enc_out", "b_enc_out", "W_dec_out", "b_dec_out")


def input_hook_name(layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_normalized"


def output_hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def layer_of_input_hook(hook_name: str) -> int:
    """The block index of an MLP-input hook; a ValueError for any other hook."""
    match = INPUT_HOOK_PATTERN.match(hook_name or "")
    if match is None:
        raise ValueError(
            f"hook_name={hook_name!r} is not an MLP input hook: a Jacobian SAE reads "
            "'blocks.L.ln2.hook_normalized' (its output SAE reads 'blocks.L.hook_mlp_out')."
        )
    return int(match.group(1))


def resolve_jacobian_coefficient(jacobian_coefficient: float | None, k: int, d_in: int) -> float:
    """λ; None means the paper's rule of thumb 0.5·k²/d_model (d_model = d_in)."""
    return 0.5 * k**2 / d_in if jacobian_coefficient is None else float(jacobian_coefficient)


def saved_jacobian_coefficient(cfg: Mapping[str, Any]) -> float:
    """The λ a saved JSAE (its cfg.json dict, training or inference) was trained with."""
    details = (cfg.get("metadata") or {}).get("training_architecture_details") or {}
    lam = cfg["jacobian_coefficient"] if "jacobian_coefficient" in cfg else details.get("jacobian_coefficient")
    return resolve_jacobian_coefficient(lam, cfg["k"], cfg["d_in"])


def resolve_output_hook(input_hook: str | None, explicit: str | None = None) -> str | None:
    """`blocks.L.hook_mlp_out` for an input hook `blocks.L.ln2.hook_normalized`; an explicit
    output hook must be exactly that (a ValueError otherwise)."""
    if input_hook is None:
        return explicit
    expected = output_hook_name(layer_of_input_hook(input_hook))
    if explicit is not None and explicit != expected:
        raise ValueError(
            f"output_hook_name={explicit!r} is not the MLP output of the input hook {input_hook!r}'s block; expected {expected!r}."
        )
    return expected


JACOBIAN_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_DTYPE = "auto"
"""`jacobian_dtype: auto`: bf16 products where the device multiplies bf16 natively, else the SAE's dtype."""


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 matrices natively: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX (oneDNN's check). Elsewhere (e.g. AVX2-only CPUs) torch emulates bf16
    matmuls, ~76x slower than float32 at the penalty's sizes on a 2-core AVX2 VM (measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # a private op, the only public-facing probe torch has for the CPU's bf16 support
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def penalty_dtype(jacobian_dtype: str | None, device: torch.device | str) -> torch.dtype | None:
    """The dtype of the penalty's products for a config's `jacobian_dtype` on `device` (None: the
    SAE's own). "auto" resolves to bf16 only where `native_bf16`; an explicit bf16/fp16 on a device
    without native support warns, since every step then runs many times slower than float32."""
    if jacobian_dtype is None:
        return None
    if jacobian_dtype == AUTO_DTYPE:
        return torch.bfloat16 if native_bf16(device) else None
    dtype = JACOBIAN_DTYPES[jacobian_dtype]
    if dtype in (torch.bfloat16, torch.float16) and torch.device(device).type == "cpu" and not native_bf16(device):
        warnings.warn(
            f"jacobian_dtype={jacobian_dtype} on a CPU without native {jacobian_dtype} matmuls (AVX2 only): the penalty's "
            "products are emulated, many times slower than float32. Set jacobian_dtype: auto (or null).",
            stacklevel=3,
        )
    return dtype


@dataclass(kw_only=True)
class _PairFields:
    """Fields shared by the inference and training configs (keyword-only, all defaulted)."""

    d_mlp: int = 0
    """Hidden size of the frozen MLP; 0 until an MLP is attached (then read from it)."""
    mlp_act_fn: str = "gelu"
    """TransformerLens `act_fn` of the MLP (φ, or σ of the gate when `gated_mlp`)."""
    gated_mlp: bool = False
    """Whether the MLP is gated (Llama/SmolLM2/Gemma style)."""
    mlp_sha256: str | None = None
    """`mlp_checksum` of the frozen MLP, set when one is first attached. The MLP is not in the
    saved weights: loading re-attaches it (from `mlp.safetensors` or the model named in the
    metadata, block of `hook_name`) and refuses one with another checksum."""
    output_hook_name: str | None = None
    """Hook of the output SAE; None means `blocks.L.hook_mlp_out` for the input hook's block L."""
    jacobian_chunk_bytes: int | None = 256 * 2**20
    """Max bytes of the per-token gathered slices at once when computing J (None: no chunking)."""
    jacobian_dtype: str | None = None
    """dtype of the training penalty's products (weight products, per-token products). None: the
    SAE's dtype (bf16 under autocast). "bfloat16": bf16 products with float32 gradient sums, J to
    about 3 significant digits and several times faster matmuls on GPUs and on CPUs with
    AVX512-BF16/AMX (docs/performance.md), but emulated and ~76x slower on AVX2-only CPUs. "auto":
    bf16 where the device has it natively (`native_bf16`), else the SAE's dtype. Evaluations
    always use the SAE's dtype."""

    def _validate_pair(self) -> None:
        # Field types first: SAELens' own loaders build this config straight from a cfg.json
        # (SAE.load_from_disk -> from_dict -> __init__), and `"k": "32"` should stop with the one
        # line `jsae` gives (file, field, expected type), not a TypeError from the checks below.
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        check_field_types(values, (type(self),), lambda: saelens_cfg_source() or type(self).__name__)
        k, d_sae = self.k, self.d_sae
        if not 0 < k <= d_sae:
            raise ValueError(f"k={k} must be in [1, d_sae={d_sae}]: TopK picks k of the d_sae latents.")
        if self.d_mlp < 0:
            raise ValueError(f"d_mlp={self.d_mlp} must be >= 0 (0: read from the attached MLP).")
        check_activation(self.mlp_act_fn, self.gated_mlp)
        if self.output_hook_name is not None and not OUTPUT_HOOK_PATTERN.match(self.output_hook_name):
            raise ValueError(
                f"output_hook_name={self.output_hook_name!r} is not an MLP output hook "
                "('blocks.L.hook_mlp_out')."
            )
        if getattr(self, "rescale_acts_by_decoder_norm", False):
            raise ValueError(
                "rescale_acts_by_decoder_norm=True is not supported: Jacobian SAEs keep unit-norm "
                "decoder rows instead (renormalised every step)."
            )
        if getattr(self, "use_sparse_activations", False):
            raise ValueError("use_sparse_activations=True is not supported by Jacobian SAEs (they decode sparsely already).")
        if self.jacobian_dtype is not None and self.jacobian_dtype not in {*JACOBIAN_DTYPES, AUTO_DTYPE}:
            raise ValueError(f"jacobian_dtype={self.jacobian_dtype!r} must be None, {AUTO_DTYPE!r} or one of {sorted(JACOBIAN_DTYPES)}.")
        if getattr(self, "normalize_activations", "none") != "none":
            raise ValueError("normalize_activations must be 'none' for a Jacobian SAE (J is scale-dependent).")

    def resolved_output_hook_name(self, input_hook: str | None) -> str | None:
        """The output hook: the explicit one, else the MLP output of the input hook's block."""
        return resolve_output_hook(input_hook, self.output_hook_name)


@dataclass
class JacobianSAEConfig(TopKSAEConfig, _PairFields):
    """Inference config of a Jacobian SAE pair (SAELens architecture `"jacobian"`)."""

    k: int = 32
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_pair()

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass(kw_only=True)
class JacobianTrainingSAEConfig(TopKTrainingSAEConfig, _PairFields):
    """Training config of a Jacobian SAE pair (SAELens architecture `"jacobian"`)."""

    k: int = 32
    jacobian_coefficient: float | None = None
    """λ of the mean|J| penalty; None means the paper's rule 0.5·k²/d_in. 0: a plain TopK pair."""
    jacobian_warm_up_steps: int | None = None
    """Steps over which λ ramps linearly from 0; None: 5% of training (set by the runner), else 0."""
    output_mse_coefficient: float = 1.0
    """Weight of the output SAE's MSE in the loss."""
    mlp_reconstruction_coefficient: float = 0.0
    """Weight c of an opt-in term c·MSE(f(x̂), y): the frozen MLP's output through the input
    SAE's reconstruction against its output on the true x. 0 (default): the paper's loss. It
    charges the input SAE for error in the directions the MLP reads (docs/ce_cost.md)."""
    edge_sparsity_coefficient: float = 0.0
    """Weight h of an opt-in scale-free penalty: h · mean over tokens and active output latents o
    of ‖r_o‖₁ / (‖r_o‖₂ · k), r_o = J[o, :] ⊙ s_x (o's attribution row over the input latents,
    `jacobian.attribution_row_ratio`). Shrinking J cannot lower it, only concentrating each row
    on fewer input latents (the edge measure, docs/metrics.md). Ramped in over
    `jacobian_warm_up_steps` like λ. 0 (default): the paper's loss."""
    intervention_consistency_coefficient: float = 0.0
    """Weight w of the opt-in intervention-consistency term C (module docstring): the pair's
    predicted output change for weakening an active input latent, fitted to the frozen MLP's real
    change (its JVP). 0 (default): the paper's loss."""
    intervention_consistency_latents: int = 4
    """Input latents per token the consistency term checks (the largest active ones)."""
    intervention_consistency_token_fraction: float = 0.25
    """Share of each batch's tokens (its first ones; the activation store shuffles) the term uses."""
    replacement_coefficient: float = 0.0
    """Weight r of an opt-in end-to-end term r·MSE(ŷ(f(x̂)), y): the output SAE's reconstruction
    of the MLP's output on the input SAE's reconstruction, against the true output. 0: off."""
    normalize_decoder: bool = True
    """Renormalise decoder rows to unit norm before every step (the reference does, after each)."""
    apply_b_dec_to_input: bool = False
    aux_loss_coefficient: float = 0.0
    rescale_acts_by_decoder_norm: bool = False
    decoder_init_norm: float | None = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_pair()
        if self.jacobian_coefficient is not None and self.jacobian_coefficient < 0:
            raise ValueError(f"jacobian_coefficient={self.jacobian_coefficient} must be >= 0 (or None for 0.5·k²/d_in).")
        if self.aux_loss_coefficient != 0:
            raise ValueError("aux_loss_coefficient must be 0: the Jacobian SAE loss has no AuxK term.")
        if self.mlp_reconstruction_coefficient < 0:
            raise ValueError(f"mlp_reconstruction_coefficient={self.mlp_reconstruction_coefficient} must be >= 0 (0: the paper's loss).")
        if self.edge_sparsity_coefficient < 0:
            raise ValueError(f"edge_sparsity_coefficient={self.edge_sparsity_coefficient} must be >= 0 (0: the paper's loss).")
        for name in ("intervention_consistency_coefficient", "replacement_coefficient"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0: the paper's loss).")
        if self.intervention_consistency_latents < 1:
            raise ValueError(f"intervention_consistency_latents={self.intervention_consistency_latents} must be >= 1.")
        if not 0 < self.intervention_consistency_token_fraction <= 1:
            raise ValueError(f"intervention_consistency_token_fraction={self.intervention_consistency_token_fraction} must be in (0, 1].")

    @property
    def resolved_jacobian_coefficient(self) -> float:
        """λ, with None resolved to the paper's rule of thumb 0.5·k²/d_model."""
        return resolve_jacobian_coefficient(self.jacobian_coefficient, self.k, self.d_in)

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class JacobianSAEOutput(NamedTuple):
    """Everything one pass of the pair computes on a batch of MLP inputs."""

    input_latents: torch.Tensor
    """s_x, (tokens, d_sae): the input SAE's TopK latents."""
    input_reconstruction: torch.Tensor
    """x̂, (tokens, d_in)."""
    mlp_output: torch.Tensor
    """y = f(x) on the TRUE input x, (tokens, d_in)."""
    output_latents: torch.Tensor
    """s_y, (tokens, d_sae): the output SAE's TopK latents of y."""
    output_reconstruction: torch.Tensor
    """ŷ, (tokens, d_in)."""


class _TopK(NamedTuple):
    dense: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    hidden_pre: torch.Tensor


class MLPMismatchError(ValueError):
    """The MLP offered to a saved pair is not the one it was trained with (checksums differ)."""


def _drop_mlp_from_state(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "mlp.")]:
        del state_dict[key]


class _JacobianPairMixin:
    """What the inference and the training class share: output SAE, frozen MLP, Jacobian."""

    cfg: Any
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    W_enc_out: nn.Parameter
    b_enc_out: nn.Parameter
    W_dec_out: nn.Parameter
    b_dec_out: nn.Parameter
    mlp: FrozenMLP | None
    dtype: torch.dtype
    device: torch.device

    # ---- construction -------------------------------------------------------------------
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        # The frozen MLP is the LLM's, not the SAE's: it stays out of the state dict (and so of
        # `sae_weights.safetensors`); cfg.mlp_sha256 identifies it.
        self.register_state_dict_post_hook(_drop_mlp_from_state)  # type: ignore[attr-defined]

    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]  # the input SAE (SAELens)
        W_dec_out = torch.empty(self.cfg.d_sae, self.cfg.d_in, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(W_dec_out)
        init_norm = getattr(self.cfg, "decoder_init_norm", None)
        if init_norm is not None:
            W_dec_out = W_dec_out / W_dec_out.norm(dim=-1, keepdim=True) * init_norm
        self.W_dec_out = nn.Parameter(W_dec_out)
        self.W_enc_out = nn.Parameter(W_dec_out.T.clone().contiguous())
        self.b_enc_out = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.b_dec_out = nn.Parameter(torch.zeros(self.cfg.d_in, dtype=self.dtype, device=self.device))
        self.mlp = None

    def attach_mlp(self, mlp: FrozenMLP) -> None:
        """Attach the frozen MLP (cast to the SAE's dtype and device). A config with d_mlp=0
        adopts the MLP's shape and kind; one with `mlp_sha256` (a saved pair) only that MLP."""
        self._check_mlp(mlp)
        self.mlp = mlp.to(device=self.device, dtype=self.dtype)

    def attach_mlp_from_model(self, model: nn.Module) -> None:
        """Attach the MLP of the input hook's block of a TransformerLens `model`, checked
        against the saved checksum (an `MLPMismatchError` for another model or layer)."""
        self.attach_mlp(FrozenMLP.from_hooked_transformer(model, layer_of_input_hook(self.cfg.metadata.hook_name)))

    def save_mlp(self, folder: str | Any) -> Any:
        """Write the attached MLP to `folder/mlp.safetensors`: a local copy, so loading needs no model."""
        from pathlib import Path

        return save_mlp(self.require_mlp(), Path(folder) / MLP_WEIGHTS_FILENAME)

    def _check_mlp(self, mlp: FrozenMLP) -> None:
        problems = []
        if mlp.d_model != self.cfg.d_in:
            problems.append(f"d_model {mlp.d_model} != d_in {self.cfg.d_in}")
        if self.cfg.d_mlp not in (0, mlp.d_mlp):
            problems.append(f"d_mlp {mlp.d_mlp} != cfg.d_mlp {self.cfg.d_mlp}")
        if self.cfg.d_mlp and mlp.gated != self.cfg.gated_mlp:
            kinds = {True: "gated", False: "dense"}
            problems.append(f"the MLP is {kinds[mlp.gated]} but cfg.gated_mlp says {kinds[self.cfg.gated_mlp]}")
        if self.cfg.d_mlp and mlp.act_fn_name != self.cfg.mlp_act_fn:
            problems.append(f"act_fn {mlp.act_fn_name!r} != cfg.mlp_act_fn {self.cfg.mlp_act_fn!r}")
        if problems:
            raise ValueError("The MLP does not fit this Jacobian SAE: " + "; ".join(problems) + ".")
        checksum, expected = mlp_checksum(mlp), self.cfg.mlp_sha256
        if expected is not None and checksum != expected:
            meta = self.cfg.metadata
            raise MLPMismatchError(
                f"The MLP of {mlp.source} is not the one this Jacobian SAE was trained with ({meta.model_name}, "
                f"{meta.hook_name}): its sha256 is {checksum[:16]}…, the pair's cfg.json records {expected[:16]}…. "
                "Load the model it was trained on (a randomized-model pair: the same seed)."
            )
        self.cfg.d_mlp, self.cfg.gated_mlp, self.cfg.mlp_act_fn = mlp.d_mlp, mlp.gated, mlp.act_fn_name
        self.cfg.mlp_sha256 = checksum

    def require_mlp(self) -> FrozenMLP:
        if self.mlp is None:
            raise RuntimeError(
                "This Jacobian SAE has no FrozenMLP attached, so it has no Jacobian or output target. "
                "A loaded pair: sae.attach_mlp_from_model(model) or sae_lens_jsae.load_jsae(path, model=model) "
                "(saved pairs carry no LLM weights). Build one with sae_lens_jsae.build_jacobian_sae(model, layer, d_sae, k), or call "
                "sae.attach_mlp(FrozenMLP.from_hooked_transformer(model, layer)); to train from a "
                "SAELens runner config use sae_lens_jsae.JacobianSAETrainingRunner (SAELens' own "
                "LanguageModelSAETrainingRunner has no way to hand the model's MLP to the SAE)."
            )
        return self.mlp

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """As nn.Module's for the SAE weights; the attached MLP (if any) stays. `mlp.*` tensors
        (files saved before the MLP left the SAE's weights) become the MLP, checksum-checked."""
        state = dict(state_dict)
        mlp_state = {key[len("mlp."):]: state.pop(key) for key in list(state) if key.startswith("mlp.")}
        if mlp_state:
            mlp = FrozenMLP.from_state_dict(mlp_state, self.cfg.mlp_act_fn, source="the mlp.* tensors in the saved weights")
            self._check_mlp(mlp)
            self.mlp = mlp  # as loaded (this may run on the meta device; SAELens then moves the SAE)
        if self.mlp is not None:  # not in the SAE's state: hand nn.Module the attached buffers
            state.update({f"mlp.{name}": t for name, t in self.mlp.state_dict().items()})
        return super().load_state_dict(state, strict=strict, assign=assign)  # type: ignore[misc]

    # ---- the two SAEs -------------------------------------------------------------------
    def _topk(self, hidden_pre: torch.Tensor) -> _TopK:
        values, indices = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False)
        values = values.relu()
        dense = torch.zeros_like(hidden_pre).scatter(-1, indices, values)
        return _TopK(dense, values, indices, hidden_pre)

    def _encode_input_topk(self, x: torch.Tensor) -> _TopK:
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        if self.hook_sae_acts_pre._forward_hooks:  # type: ignore[attr-defined]  # a hook may edit them: dense path
            hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)  # type: ignore[attr-defined]
            top = self._topk(hidden_pre)
        else:
            if not self.cfg.apply_b_dec_to_input and not x.requires_grad:
                sae_in = sae_in.detach()  # only `b_dec * False` links it to the graph: a zero gradient
            top = self._sparse_topk(sae_in, self.W_enc, self.b_enc)
        return top._replace(dense=self.hook_sae_acts_post(top.dense))  # type: ignore[attr-defined]

    def _encode_output_topk(self, y: torch.Tensor, dense: bool = True) -> _TopK:
        y = y.to(self.dtype)
        if self.cfg.apply_b_dec_to_input:
            y = y - self.b_dec_out
        return self._sparse_topk(y, self.W_enc_out, self.b_enc_out, dense)

    def _sparse_topk(self, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, dense: bool = True) -> _TopK:
        """`_topk(x @ W_enc + b_enc)` with a backward through the k active columns only.

        `dense=False` skips the (tokens, d_sae) latents (`.dense` is then None)."""
        from sae_lens_jsae.jacobian import topk_encode

        lead = x.shape[:-1]
        values, indices, hidden_pre = topk_encode(x.reshape(-1, x.shape[-1]), W_enc, b_enc, self.cfg.k)
        values, indices, hidden_pre = (t.reshape(*lead, t.shape[-1]) for t in (values, indices, hidden_pre))
        latents = torch.zeros_like(hidden_pre).scatter(-1, indices, values) if dense else None
        return _TopK(latents, values, indices, hidden_pre)  # type: ignore[arg-type]

    def encode_output(self, y: torch.Tensor) -> torch.Tensor:
        """Output SAE latents s_y of MLP outputs y."""
        return self._encode_output_topk(y).dense

    def decode_output(self, latents: torch.Tensor) -> torch.Tensor:
        """Output SAE reconstruction ŷ from latents s_y."""
        return latents @ self.W_dec_out + self.b_dec_out

    def forward_pair(self, x: torch.Tensor) -> JacobianSAEOutput:
        """Run input SAE, frozen MLP (on the true x) and output SAE on MLP inputs x."""
        mlp = self.require_mlp()
        s_x = self.encode(x)  # type: ignore[attr-defined]
        y = mlp(x.to(self.dtype))
        s_y = self.encode_output(y)
        return JacobianSAEOutput(s_x, self.decode(s_x), y, s_y, self.decode_output(s_y))  # type: ignore[attr-defined]

    def _plain_topk_sae(self, which: str) -> TopKSAE:
        """A SAELens TopKSAE sharing this pair's parameters (so edits and training show in both).

        Cached on the pair and rebuilt only when what it mirrors changed: a parameter object
        replaced (`load_state_dict(assign=True)`, a torch.func transform's stand-ins), the device
        or dtype, or the config. Built without initialising weights (no random op: it works
        inside `torch.func.vmap`), and not cached while a parameter is a transform's stand-in."""
        names = ("W_enc", "b_enc", "W_dec", "b_dec")  # the output SAE's are these + "_out"
        params = tuple(getattr(self, name + ("" if which == "input" else "_out")) for name in names)
        metadata = SAEMetadata(**self.cfg.metadata.to_dict())
        if which == "output":
            metadata.hook_name = self.output_hook
        cfg = TopKSAEConfig(
            d_in=self.cfg.d_in,
            d_sae=self.cfg.d_sae,
            k=self.cfg.k,
            dtype=self.cfg.dtype,
            device=str(self.device),
            apply_b_dec_to_input=self.cfg.apply_b_dec_to_input,
            metadata=metadata,
        )
        key = (cfg.to_dict(), self.device, self.dtype)
        cache = self.__dict__.setdefault("_plain_saes", {})  # a plain dict: not a submodule, not in the state dict
        cached = cache.get(which)
        if cached is not None and cached[0] == key and all(getattr(cached[1], n) is p for n, p in zip(names, params)):
            return cached[1]
        sae = TopKSAE.__new__(TopKSAE)
        # SAELens' __init__ would draw random weights (refused inside vmap, and thrown away here):
        # an instance attribute shadows `initialize_weights` for the call, then the parameters are ours
        object.__setattr__(sae, "initialize_weights", lambda: None)
        TopKSAE.__init__(sae, cfg)
        del sae.__dict__["initialize_weights"]
        for name, p in zip(names, params):
            setattr(sae, name, p)
        sae.device, sae.dtype = self.device, self.dtype
        if all(isinstance(p, nn.Parameter) for p in params):
            cache[which] = (key, sae)
        return sae

    @property
    def output_hook(self) -> str | None:
        """The output SAE's hook (`blocks.L.hook_mlp_out`), from the config or the input hook."""
        return self.cfg.resolved_output_hook_name(self.cfg.metadata.hook_name)

    @property
    def input_sae(self) -> TopKSAE:
        """The input SAE (at `ln2.hook_normalized`) as a plain SAELens `TopKSAE`, weights shared."""
        return self._plain_topk_sae("input")

    @property
    def output_sae(self) -> TopKSAE:
        """The output SAE (at `hook_mlp_out`) as a plain SAELens `TopKSAE`, weights shared."""
        return self._plain_topk_sae("output")

    # ---- the Jacobian -------------------------------------------------------------------
    def _jacobian_inputs(self, top_in: _TopK, top_out: _TopK, x: torch.Tensor, pre: Any, dtype: torch.dtype | None) -> dict[str, Any]:
        """Keyword arguments of `active_jacobian_values` / `active_jacobian_l1` for this batch."""
        mlp = self.require_mlp()
        if pre is None:
            pre = mlp.pre_activations(x.to(self.dtype))
        decoder_times_mlp_in, mlp_out_times_encoder = self._weight_products(mlp, dtype)
        element_size = decoder_times_mlp_in[0].element_size()
        output_indices = _token_rows(top_out.indices)
        post_norm = None
        if mlp.post_norm:  # the rank-one term of the norm after the MLP
            y, q = mlp.post_norm_factors(pre, dtype)
            post_norm = PostNormTerm(gathered_dots(_token_rows(y), self.W_enc_out, output_indices), _token_rows(q))
        return {
            "decoder_times_mlp_in": decoder_times_mlp_in,
            "mlp_out_times_encoder": mlp_out_times_encoder,
            "slopes": [_token_rows(c) for c in mlp.local_slopes(pre)],
            "input_indices": _token_rows(top_in.indices),
            "output_indices": output_indices,
            "chunk_size": chunk_tokens(self.cfg.jacobian_chunk_bytes, self.cfg.k, mlp.d_mlp, element_size),
            "post_norm": post_norm,
        }

    def _jacobian(
        self, top_in: _TopK, top_out: _TopK, x: torch.Tensor, pre: Any = None, chunk_size: int | None = None
    ) -> ActiveJacobian:
        """J on the active sets, differentiable for any downstream use (in the SAE's dtype)."""
        kwargs = self._jacobian_inputs(top_in, top_out, x, pre, None)
        if chunk_size is not None:
            kwargs["chunk_size"] = chunk_size
        values = mask_inactive(active_jacobian_values(**kwargs), _token_rows(top_in.values), _token_rows(top_out.values))
        return ActiveJacobian(values, kwargs["output_indices"], kwargs["input_indices"])

    def _jacobian_penalty(self, top_in: _TopK, top_out: _TopK, x: torch.Tensor, pre: Any = None) -> JacobianPenalty:
        """mean|J| for the training loss (and the detached J, for logging): one fused pass
        (`active_jacobian_l1`) with the products in `cfg.jacobian_dtype`."""
        dtype = penalty_dtype(self.cfg.jacobian_dtype, x.device)
        kwargs = self._jacobian_inputs(top_in, top_out, x, pre, dtype)
        return active_jacobian_l1(**kwargs, input_values=_token_rows(top_in.values), output_values=_token_rows(top_out.values))

    def _edge_sparsity(self, top_in: _TopK, top_out: _TopK, x: torch.Tensor, pre: Any = None) -> torch.Tensor:
        """The scale-free per-node penalty (`attribution_row_ratio`), differentiable w.r.t. both
        SAEs; J (products in `cfg.jacobian_dtype`) from `active_jacobian_values`, a second pass
        over the tokens when λ > 0 too (the fused mean|J| pass keeps only a detached J)."""
        dtype = penalty_dtype(self.cfg.jacobian_dtype, x.device)
        kwargs = self._jacobian_inputs(top_in, top_out, x, pre, dtype)
        values = active_jacobian_values(**kwargs)
        return attribution_row_ratio(values, _token_rows(top_in.values), _token_rows(top_out.values))

    def _weight_products(self, mlp: FrozenMLP, dtype: torch.dtype | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[W_dec_in @ W for W in the MLP's input weights] and W_out @ W_enc_out, in `dtype`
        (None: the weights' dtype, or autocast's).

        Under autograd they are recomputed every call (once per training step). Without grad
        (evaluation: thousands of batches, fixed weights) they are cached until a weight
        changes in place (tensor version counters) or is replaced: the cache holds weak
        references to the weights it was formed from and is used only when each is still the
        very same tensor (`is`, not `id`, which a new tensor may reuse), at the same version and
        on the same memory (`param.data = other` keeps both the object and its version).
        """
        tensors = (self.W_dec, self.W_enc_out, *mlp.input_weights(), mlp.W_out, *([mlp.w_post] if mlp.post_norm else []))
        if torch.is_grad_enabled():
            self.__dict__.pop("_weight_products_cache", None)
        else:
            autocast = torch.is_autocast_enabled(self.W_dec.device.type)
            key = (dtype, autocast, *((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors))
            cached = self.__dict__.get("_weight_products_cache")
            if cached is not None and cached[0] == key and all(ref() is t for ref, t in zip(cached[2], tensors, strict=True)):
                return cached[1]
        products = self.weight_product_rows(mlp, slice(None), dtype)
        products = (products[:-1], products[-1].T)  # B as the transpose of a contiguous Bᵀ: J gathers rows of Bᵀ
        if not torch.is_grad_enabled():
            self.__dict__["_weight_products_cache"] = (key, products, [weakref.ref(t) for t in tensors])
        return products

    def weight_product_rows(self, mlp: FrozenMLP, rows: slice, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Rows `rows` (latents) of [W_dec_in @ W for W in the MLP's input weights] + [Bᵀ], each
        (latents, d_mlp), uncached: `_weight_products` takes all rows, a data-parallel rank its
        share (`distributed.shard_weight_products`)."""
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
        W_dec, W_enc_out = cast(self.W_dec[rows]), cast(self.W_enc_out[:, rows])
        # an explicit dtype wins over autocast; without one, autocast (if on) picks it
        with torch.autocast(W_dec.device.type, enabled=False) if dtype is not None else contextlib.nullcontext():
            return [W_dec @ cast(W) for W in mlp.input_weights()] + [W_enc_out.T @ cast(mlp.output_weight()).T]

    def active_jacobian(self, x: torch.Tensor, chunk_size: int | None = None) -> ActiveJacobian:
        """The Jacobian ∂s_y/∂s_x on each token's active latents, for MLP inputs x (..., d_in).

        Rows are the output SAE's TopK latents of y = f(x), columns the input SAE's TopK latents
        of x (φ' is evaluated at the true x, as in the reference). Differentiable w.r.t. both SAEs.
        """
        mlp = self.require_mlp()
        x = x.to(self.dtype)
        top_in = self._encode_input_topk(x)
        pre = mlp.pre_activations(x)
        top_out = self._encode_output_topk(mlp.output_from_pre_activations(pre))
        return self._jacobian(top_in, top_out, x, pre, chunk_size)

    # ---- SAELens contract ---------------------------------------------------------------
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Fold decoder norms into the encoders of both SAEs.

        Only exact when every decoder row already has unit norm (as a JSAE trained here has): on
        other rows the fold rescales the encoder's pre-activations per latent, which changes
        which latents TopK picks. Like SAELens' `TopKSAE`, that case raises NotImplementedError,
        before any weight is touched.
        """
        for name in ("W_dec", "W_dec_out"):
            W = getattr(self, name)
            tolerance = min(100 * torch.finfo(W.dtype).eps, 1e-2)
            off = float((W.norm(dim=-1) - 1).abs().max()) if W.numel() else 0.0
            if off > tolerance:
                which = "input" if name == "W_dec" else "output"
                raise NotImplementedError(
                    f"Folding W_dec_norm is not safe for this Jacobian SAE: the {which} SAE's decoder ({name}) has rows "
                    f"whose norm is off 1 by up to {off:.3g}, and folding them into the encoder would change which "
                    "latents TopK picks (SAELens' TopKSAE refuses this too). Load without fold_W_dec_norm; call "
                    "normalize_decoders() only if you accept changed outputs."
                )
        self.fold_and_get_W_dec_norm()  # type: ignore[attr-defined]  # the input SAE
        norms = self.W_dec_out.norm(dim=-1).clamp(min=1e-8)
        self.W_dec_out.data.div_(norms[:, None])
        self.W_enc_out.data.mul_(norms[None, :])
        self.b_enc_out.data.mul_(norms)

    @torch.no_grad()
    def normalize_decoders(self) -> None:
        """Rescale both decoders' rows to unit norm (the reference does this after every step)."""
        for W in (self.W_dec, self.W_dec_out):
            W.data.div_(W.norm(dim=-1, keepdim=True).clamp(min=1e-8))

    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        raise NotImplementedError("Jacobian SAEs are trained on unscaled activations (normalize_activations='none').")


class JacobianSAE(_JacobianPairMixin, TopKSAE):
    """Inference Jacobian SAE pair. Its SAELens encode/decode/forward are the input SAE's."""

    cfg: JacobianSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: JacobianSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str | None = None, *args: Any, **kwargs: Any) -> JacobianSAE:  # type: ignore[override]
        """Load a pair from a Hub repo ("org/name"), the HF cache (offline too) or a local dir.

        `JacobianSAE.from_pretrained(repo_id, sae_id=None, *, revision=None, device="cpu",
        dtype=None)`; SAELens' positional order (device, dtype, force_download) also works.
        See `sae_lens_jsae.hub.load_jsae`; the files are found and checked by `pretrained.py`.
        """
        return load_pair(cls, (JacobianTrainingSAEConfig, JacobianSAEConfig), release, sae_id, *args, **kwargs)


class JacobianTrainingSAE(_JacobianPairMixin, TopKTrainingSAE):
    """Training Jacobian SAE pair: both SAEs trained jointly, MLP frozen."""

    cfg: JacobianTrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: JacobianTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def get_coefficients(self) -> dict[str, TrainCoefficientConfig | float]:
        coefficients: dict[str, TrainCoefficientConfig | float] = {
            "jacobian_coefficient": TrainCoefficientConfig(
                value=self.cfg.resolved_jacobian_coefficient,
                warm_up_steps=self.cfg.jacobian_warm_up_steps or 0,
            )
        }
        if self.cfg.edge_sparsity_coefficient > 0:  # absent by default: the paper's schedulers and logs unchanged
            coefficients["edge_sparsity_coefficient"] = TrainCoefficientConfig(
                value=self.cfg.edge_sparsity_coefficient, warm_up_steps=self.cfg.jacobian_warm_up_steps or 0
            )
        return coefficients

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        mlp = self.require_mlp()
        if self.cfg.normalize_decoder:
            self.normalize_decoders()
        x = step_input.sae_in.to(self.dtype)
        top_in = self._encode_input_topk(x)
        # Decoding only the k active rows (embedding_bag) equals the dense product.
        x_hat = self.hook_sae_recons(_decode_sparse(top_in, self.W_dec, self.b_dec))
        pre, y = mlp.pre_activations_and_output(x)
        top_out = self._encode_output_topk(y, dense=False)  # the dense s_y is only logged
        y_hat = _decode_sparse(top_out, self.W_dec_out, self.b_dec_out)
        with torch.no_grad():  # read by the trainer to count the output SAE's dead latents
            # no boolean-mask indexing (a host sync on GPU): clipped picks go to a spare slot
            fired_idx = top_out.indices.masked_fill(top_out.values <= 0, self.cfg.d_sae).reshape(-1)
            fired = torch.zeros(self.cfg.d_sae + 1, dtype=torch.bool, device=y.device).index_fill_(0, fired_idx, True)
            self.last_output_fired = fired[: self.cfg.d_sae]

        mse_in = F.mse_loss(x_hat, x)
        mse_out = F.mse_loss(y_hat, y)
        lam = step_input.coefficients.get("jacobian_coefficient", self.cfg.resolved_jacobian_coefficient)
        loss = mse_in + self.cfg.output_mse_coefficient * mse_out
        # Each reported term is weighted as in the loss, so the terms sum to `loss`. Not "mse_loss":
        # SAELens logs Σ_d (x̂ − x)² (mean over tokens) under that key, d_in times our per-element mean.
        losses = {"input_mse_loss": mse_in, "output_mse_loss": self.cfg.output_mse_coefficient * mse_out}
        mlp_of_x_hat = mlp(x_hat) if self.cfg.mlp_reconstruction_coefficient > 0 or self.cfg.replacement_coefficient > 0 else None
        if self.cfg.mlp_reconstruction_coefficient > 0:  # gradients reach x̂ only: the MLP is frozen
            losses["mlp_reconstruction_loss"] = self.cfg.mlp_reconstruction_coefficient * F.mse_loss(mlp_of_x_hat, y)
            loss = loss + losses["mlp_reconstruction_loss"]
        if self.cfg.replacement_coefficient > 0:  # the spliced replacement: output SAE of f(x̂)
            replaced = _decode_sparse(self._encode_output_topk(mlp_of_x_hat, dense=False), self.W_dec_out, self.b_dec_out)
            losses["replacement_loss"] = self.cfg.replacement_coefficient * F.mse_loss(replaced, y)
            loss = loss + losses["replacement_loss"]
        if self.cfg.intervention_consistency_coefficient > 0:
            losses["intervention_consistency_loss"] = self.cfg.intervention_consistency_coefficient * self.intervention_consistency(top_in, top_out, pre)
            loss = loss + losses["intervention_consistency_loss"]
        penalty: JacobianPenalty | None = None
        if lam > 0:  # λ = 0: a plain TopK pair, J is not computed (except for logging)
            penalty = self._jacobian_penalty(top_in, top_out, x, pre)
            losses["jacobian_loss"] = lam * penalty.mean_abs
            loss = loss + losses["jacobian_loss"]
        else:
            losses["jacobian_loss"] = loss.new_zeros(())
        if self.cfg.edge_sparsity_coefficient > 0:
            h = step_input.coefficients.get("edge_sparsity_coefficient", self.cfg.edge_sparsity_coefficient)
            term = h * self._edge_sparsity(top_in, top_out, x, pre) if h > 0 else loss.new_zeros(())
            losses["edge_sparsity_loss"] = term
            loss = loss + term
        metrics: dict[str, Any] = {}
        if step_input.is_logging_step:
            with torch.no_grad():
                top_out = top_out._replace(dense=torch.zeros_like(top_out.hidden_pre).scatter(-1, top_out.indices, top_out.values))
            metrics = _logging_metrics(self, top_in, top_out, x, x_hat, y, y_hat, pre, None if penalty is None else penalty.values)
        _check_finite(losses, loss, step_input.n_training_steps, self, step_input.is_logging_step)
        return TrainStepOutput(
            sae_in=x,
            sae_out=x_hat,
            feature_acts=top_in.dense,
            hidden_pre=top_in.hidden_pre,
            loss=loss,
            losses=losses,
            metrics=metrics,
        )

    def intervention_consistency(self, top_in: _TopK, top_out: _TopK, pre: Any) -> torch.Tensor:
        """The consistency term C of the module docstring (unweighted), differentiable w.r.t. both
        SAEs; `pre`: the frozen MLP's `pre_activations` at the batch's true x."""
        mlp = self.require_mlp()
        values, indices = _token_rows(top_in.values), _token_rows(top_in.indices)
        n_tokens = max(1, math.ceil(self.cfg.intervention_consistency_token_fraction * values.shape[0]))
        m = min(self.cfg.intervention_consistency_latents, self.cfg.k)
        s, slot = values[:n_tokens].topk(m, dim=-1)
        directions = self.W_dec[indices[:n_tokens].gather(-1, slot)]  # (tokens, m, d)
        pre = pre._replace(**{f: _token_rows(getattr(pre, f))[:n_tokens] for f in pre._fields if getattr(pre, f) is not None})
        real = mlp.directional_derivative(pre, directions)  # (tokens, m, d): the MLP's change per unit sᵢ
        out_idx = _token_rows(top_out.indices)[:n_tokens].repeat_interleave(m, 0)
        out_active = _token_rows(top_out.values)[:n_tokens].repeat_interleave(m, 0) > 0
        flat = real.reshape(-1, real.shape[-1])
        edges = gathered_dots(flat, self.W_enc_out, out_idx) * out_active  # J[o, i] over active o
        predicted = F.embedding_bag(out_idx, self.W_dec_out, per_sample_weights=edges, mode="sum")
        weight = s.detach().reshape(-1).pow(2)
        energy = (weight * flat.detach().pow(2).sum(-1)).sum()
        return (weight * (predicted - flat).pow(2).sum(-1)).sum() / energy.clamp_min(torch.finfo(energy.dtype).tiny)

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Any) -> None:
        """SAELens' resume, refusing a checkpoint trained on another MLP than the attached one."""
        import json
        from pathlib import Path

        cfg_path = Path(checkpoint_path) / "cfg.json"
        saved = json.loads(cfg_path.read_text()).get("mlp_sha256") if cfg_path.is_file() else None
        if saved is not None and self.cfg.mlp_sha256 is not None and saved != self.cfg.mlp_sha256:
            raise MLPMismatchError(
                f"{checkpoint_path} was trained on an MLP with sha256 {saved[:16]}…, but the attached MLP "
                f"({self.mlp.source if self.mlp is not None else 'none'}) has {self.cfg.mlp_sha256[:16]}…: resume with the model it was trained on."
            )
        super().load_weights_from_checkpoint(checkpoint_path)

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints (`save_model`) keep the live weights so a resumed run is bit-identical;
        # the inference save has the unit-norm decoders the next step would have used.
        if self.cfg.normalize_decoder:
            for name in ("W_dec", "W_dec_out"):
                W = state_dict[name]
                state_dict[name] = W / W.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _token_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (tokens, n): the Jacobian code works on a flat token axis."""
    return t.reshape(-1, t.shape[-1])


def _decode_sparse(top: _TopK, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    shape = top.indices.shape
    idx = top.indices.reshape(-1, shape[-1])
    out = F.embedding_bag(idx, W_dec, per_sample_weights=top.values.reshape(-1, shape[-1]), mode="sum")
    return out.reshape(*shape[:-1], W_dec.shape[-1]) + b_dec


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; carries the step and the term."""

    def __init__(self, step: int, term: str, value: float):
        self.step, self.term, self.value = step, term, value
        super().__init__(
            f"Loss term {term!r} is {value} at training step {step}. Training stopped; the last "
            "good checkpoint (if checkpointing is on) is kept. Lower the learning rate or "
            "jacobian_coefficient, or check the activations for NaN/inf."
        )


def _check_finite(
    losses: dict[str, torch.Tensor], loss: torch.Tensor, step: int, owner: Any = None, is_logging_step: bool = True
) -> None:
    """Raise `NonFiniteLossError` naming the step and term of the first NaN/inf loss term.

    On CPU the check reads the flags directly (no device transfer). On an accelerator it does not
    sync every step: a non-logging step only records, on the device, the first step and term
    that went non-finite (in `owner._nonfinite`); the host reads that record on the next logging
    step and raises naming the recorded step and term.
    """
    names = [*losses, "overall_loss"]
    terms = torch.stack([t.detach().float().reshape(()) for t in [*losses.values(), loss]])
    bad = ~torch.isfinite(terms)
    if terms.device.type != "cpu":
        record = getattr(owner, "_nonfinite", None)
        if record is None or record.device != terms.device:
            record = torch.full((2,), -1, dtype=torch.long, device=terms.device)
            if owner is not None:
                owner._nonfinite = record
        new = torch.stack([torch.full_like(record[0], step), bad.long().argmax()])
        record.copy_(torch.where(bad.any() & (record[0] < 0), new, record))
        if not is_logging_step:
            return
        bad_step, term = (int(v) for v in record.tolist())  # the one sync, on logging steps
        if bad_step >= 0:
            raise NonFiniteLossError(bad_step, names[term], float("nan"))
        return
    if bool(bad.any()):
        for name, value in [*losses.items(), ("overall_loss", loss)]:
            if not torch.isfinite(value).all():
                raise NonFiniteLossError(step, name, float(value))


@torch.no_grad()
def _logging_metrics(
    sae: JacobianTrainingSAE,
    top_in: _TopK,
    top_out: _TopK,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    y: torch.Tensor,
    y_hat: torch.Tensor,
    pre: Any,
    jacobian_values: torch.Tensor | None,
) -> dict[str, Any]:
    if jacobian_values is None:
        jacobian_values = sae._jacobian(top_in, top_out, x, pre).values
    J = jacobian_values.detach().abs()
    l1, l2 = J.sum((-1, -2)), J.pow(2).sum((-1, -2)).sqrt()
    nonzero = l2 > 0
    total_var = (y - y.mean(0)).pow(2).sum(-1).mean()

    def explained_variance(y_approx: torch.Tensor) -> float:
        return (1 - (y - y_approx).pow(2).sum(-1).mean() / total_var).item()

    return {
        "output_explained_variance": explained_variance(y_hat),
        # f(x̂) against y = f(x): how much of the MLP's output survives the input SAE's error
        "mlp_through_reconstruction_explained_variance": explained_variance(sae.require_mlp()(x_hat.detach())),
        "output_l0": (top_out.dense > 0).float().sum(-1).mean().item(),
        "jacobian_abs_mean": J.mean().item(),
        "jacobian_count_above_0.01": (J > 0.01).float().sum((-1, -2)).mean().item(),
        # the scale-free headline (docs/metrics.md): mean over tokens with J ≠ 0 of ‖J‖₁/(‖J‖₂·k)
        "jacobian_l1_l2_ratio": (l1[nonzero] / (l2[nonzero] * sae.cfg.k)).mean().item() if nonzero.any() else float("nan"),
        # per output latent: the edge-sparsity penalty's ratio (what `edge_sparsity_coefficient` lowers)
        "edge_l1_l2_ratio": attribution_row_ratio(jacobian_values.detach(), _token_rows(top_in.values), _token_rows(top_out.values)).item(),
    }

