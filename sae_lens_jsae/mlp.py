"""The frozen MLP sublayer `f` between a JSAE's input and output spaces.

TransformerLens fires `blocks.L.ln2.hook_normalized` on `x / scale`, before ln2's weight `w`
(and bias `b` for LayerNorm). `FrozenMLP` therefore folds ln2's affine into the MLP, exactly as
TransformerLens' `fold_ln` would, so that `FrozenMLP(hook_normalized) == hook_mlp_out`.

Dense:  z(x) = φ(x W_in + b_in) W_out + b_out
Gated:  z(x) = (σ(x W_gate + b_gate) ⊙ (x W_in + b_lin) + b_in) W_out + b_out
(`b_gate`/`b_lin` are zero unless a LayerNorm bias was folded in; TransformerLens' GatedMLP adds
`b_in` after the product.) f(x) = z(x), or, for a block with a norm after the MLP (Gemma 2/3:
TransformerLens' `ln2_post`, which fires before `hook_mlp_out`), the RMSNorm of it:

    f(x) = w_post ⊙ z / rms(z),   rms(z) = sqrt(mean(z²) + eps)

(TransformerLens' `RMSNorm`; Gemma's `1 + w` is already in `w_post`). Its Jacobian is one rank-one
correction per token: docs/jacobian_post_norm.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# name -> (φ, φ'); each φ is the function TransformerLens uses under that name.
_TANH_GELU_CONSTANTS = {
    "gelu_new": math.sqrt(2.0 / math.pi),
    "gelu_pytorch_tanh": math.sqrt(2.0 / math.pi),
    "gelu_fast": 0.7978845608,  # transformer_lens.utilities.activation_functions.gelu_fast
}


def _tanh_gelu(c: float) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    def phi(h: torch.Tensor) -> torch.Tensor:
        return 0.5 * h * (1.0 + torch.tanh(c * (h + 0.044715 * h**3)))

    def dphi(h: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(c * (h + 0.044715 * h**3))
        return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * h * h)

    return phi, dphi


def _erf_gelu_derivative(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0))) + h * torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)


def _silu_derivative(h: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(h)
    return s * (1.0 + h * (1.0 - s))


ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "relu": (F.relu, lambda h: (h > 0).to(h.dtype)),
    "gelu": (F.gelu, _erf_gelu_derivative),
    "silu": (F.silu, _silu_derivative),
    **{name: _tanh_gelu(c) for name, c in _TANH_GELU_CONSTANTS.items()},
}
"""Activation functions the closed-form Jacobian supports: name -> (φ, φ')."""

GATE_ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")


def check_activation(act_fn: str, gated: bool) -> None:
    """Raise a ValueError naming the supported activations if `act_fn` is not one."""
    allowed = GATE_ACTIVATIONS if gated else tuple(ACTIVATIONS)
    if act_fn not in allowed:
        kind = "gated" if gated else "dense"
        raise ValueError(
            f"Unsupported activation function {act_fn!r} for a {kind} MLP; "
            f"the Jacobian SAE supports {', '.join(allowed)}."
        )


class MLPPreActivations(NamedTuple):
    """The MLP's hidden pre-activations at an input, all the Jacobian needs besides weights."""

    linear: torch.Tensor
    """`x W_in + b` (dense: the argument of φ; gated: the linear branch u). Shape (..., d_mlp)."""
    gate: torch.Tensor | None
    """Gated MLPs only: `x W_gate + b_gate`, the argument of σ. Shape (..., d_mlp)."""
    unnormed: torch.Tensor | None = None
    """Post-norm MLPs only: z, the MLP's output before the norm. Shape (..., d_model)."""


MLP_WEIGHTS_FILENAME = "mlp.safetensors"
"""A local copy of a pair's frozen MLP, beside its `sae_weights.safetensors` (never published)."""

CHECKSUM_ORDER = ("W_in", "b_in", "W_out", "b_out", "W_gate", "b_gate", "b_lin", "w_post", "post_norm_eps")


class FrozenMLP(nn.Module):
    """A copy of one block's MLP with ln2's affine folded in; weights are buffers (never trained).

    `FrozenMLP.state_dict()` holds the buffers (what `save_mlp` writes); a Jacobian SAE pair
    leaves them out of its own state dict, so a pair's `sae_weights.safetensors` holds SAE
    weights only and its cfg the MLP's `mlp_checksum`. `post_norm_eps` (not None) adds the
    post-MLP RMSNorm: buffers `w_post` and `post_norm_eps` (a 0-dim tensor, so a file carries it).
    """

    W_in: torch.Tensor
    b_in: torch.Tensor
    W_out: torch.Tensor
    b_out: torch.Tensor

    def __init__(
        self,
        d_model: int,
        d_mlp: int,
        act_fn: str,
        gated: bool,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        post_norm_eps: float | None = None,
    ):
        super().__init__()
        check_activation(act_fn, gated)
        self.act_fn_name = act_fn
        self.gated = gated
        self.act_fn, self.act_fn_derivative = ACTIVATIONS[act_fn]
        self.source = "the given MLP"
        """Where the weights came from ("<model> block L", a file), for error messages."""

        def empty(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.register_buffer("W_in", empty(d_model, d_mlp))
        self.register_buffer("b_in", empty(d_mlp))
        self.register_buffer("W_out", empty(d_mlp, d_model))
        self.register_buffer("b_out", empty(d_model))
        if gated:
            self.register_buffer("W_gate", empty(d_model, d_mlp))
            self.register_buffer("b_gate", empty(d_mlp))
            self.register_buffer("b_lin", empty(d_mlp))
        if post_norm_eps is not None:
            self.register_buffer("w_post", torch.ones(d_model, dtype=dtype, device=device))
            self.register_buffer("post_norm_eps", torch.tensor(float(post_norm_eps), dtype=dtype, device=device))

    @property
    def post_norm(self) -> bool:
        """Whether an RMSNorm follows the MLP (f = w_post ⊙ z / rms(z))."""
        return "w_post" in self._buffers

    @property
    def d_model(self) -> int:
        return self.W_in.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[1]

    @classmethod
    def from_hooked_transformer(cls, model: nn.Module, layer: int) -> FrozenMLP:
        """Copy block `layer`'s MLP out of a TransformerLens `HookedTransformer`, ln2 folded in.

        The model should be loaded without weight processing (or with it: folded norms have
        w = 1, b = 0 and the fold is then the identity).
        """
        cfg = model.cfg
        name = getattr(cfg, "model_name", type(model).__name__)
        _check_supported(cfg, name, layer)
        block = model.blocks[layer]
        mlp, ln2 = block.mlp, block.ln2
        w = getattr(ln2, "w", None)
        b = getattr(ln2, "b", None)
        W_in = mlp.W_in.detach()
        dtype, device = W_in.dtype, W_in.device
        w = torch.ones(cfg.d_model, dtype=dtype, device=device) if w is None else w.detach()
        b = torch.zeros(cfg.d_model, dtype=dtype, device=device) if b is None else b.detach()
        post = block.ln2_post if getattr(cfg, "use_normalization_before_and_after", False) else None
        frozen = cls(cfg.d_model, cfg.d_mlp, cfg.act_fn, bool(cfg.gated_mlp), dtype, device, None if post is None else post.eps)
        with torch.no_grad():
            if post is not None:
                frozen.w_post.copy_(post.w.detach())
            frozen.W_in.copy_(w[:, None] * W_in)
            frozen.W_out.copy_(mlp.W_out.detach())
            frozen.b_out.copy_(mlp.b_out.detach())
            if cfg.gated_mlp:
                W_gate = mlp.W_gate.detach()
                frozen.W_gate.copy_(w[:, None] * W_gate)
                frozen.b_gate.copy_(b @ W_gate)
                frozen.b_lin.copy_(b @ W_in)
                frozen.b_in.copy_(mlp.b_in.detach())
            else:
                frozen.b_in.copy_(mlp.b_in.detach() + b @ W_in)
        frozen.source = f"{name} block {layer}"
        return frozen

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], act_fn: str, source: str = "a state dict") -> FrozenMLP:
        """An MLP from its buffers (`FrozenMLP.state_dict()`, e.g. read from `mlp.safetensors`)."""
        missing = [name for name in ("W_in", "b_in", "W_out", "b_out") if name not in state]
        if missing:
            raise ValueError(f"{source} is not a frozen MLP's weights: no {', '.join(missing)}.")
        W_in, W_out = state["W_in"], state["W_out"]
        eps = state.get("post_norm_eps")
        mlp = cls(W_in.shape[0], W_in.shape[1], act_fn, "W_gate" in state, W_out.dtype, W_out.device, None if eps is None else float(eps))
        mlp.load_state_dict(dict(state))
        mlp.source = source
        return mlp

    def pre_activations(self, x: torch.Tensor) -> MLPPreActivations:
        """Hidden pre-activations at `x` (reused by the Jacobian: no second MLP pass); with a
        post-norm also the un-normed output z (the norm's scale enters the Jacobian)."""
        if self.gated:
            pre = MLPPreActivations(linear=x @ self.W_in + self.b_lin, gate=x @ self.W_gate + self.b_gate)
        else:
            pre = MLPPreActivations(linear=x @ self.W_in + self.b_in, gate=None)
        if self.post_norm:
            pre = pre._replace(unnormed=self._unnormed_output(pre))
        return pre

    def _unnormed_output(self, pre: MLPPreActivations) -> torch.Tensor:
        if pre.gate is None:
            hidden = self.act_fn(pre.linear)
        else:
            hidden = self.act_fn(pre.gate) * pre.linear + self.b_in
        return hidden @ self.W_out + self.b_out

    def _inverse_rms(self, z: torch.Tensor) -> torch.Tensor:
        """1 / rms(z) = 1 / sqrt(mean(z²) + eps), (..., 1), as TransformerLens' RMSNorm."""
        return torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + self.post_norm_eps)

    def output_from_pre_activations(self, pre: MLPPreActivations) -> torch.Tensor:
        """`f(x)` given `pre_activations(x)`."""
        if not self.post_norm:
            return self._unnormed_output(pre)
        z = pre.unnormed if pre.unnormed is not None else self._unnormed_output(pre)
        return z * self._inverse_rms(z) * self.w_post

    @torch.no_grad()
    def pre_activations_and_output(self, x: torch.Tensor) -> tuple[MLPPreActivations, torch.Tensor]:
        """(`pre_activations(x)`, `f(x)`) without grad, reused while the same `x` comes again.

        A λ sweep trains every pair on the same batch tensor with this one shared MLP, so the
        MLP runs once per batch, not once per pair. The cache holds `x` itself, so a new batch
        can never alias it; an in-place edit of `x` (version counter) also invalidates it.
        """
        cached = self.__dict__.get("_last_pass")
        if cached is not None and cached[0] is x and cached[1] == x._version:
            return cached[2]
        pre = self.pre_activations(x)
        result = (pre, self.output_from_pre_activations(pre))
        self.__dict__["_last_pass"] = (x, x._version, result)
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`f(x)`: equals the model's `hook_mlp_out` given `ln2.hook_normalized`."""
        return self.output_from_pre_activations(self.pre_activations(x.to(self.W_in.dtype)))

    def output_weight(self) -> torch.Tensor:
        """The (d_mlp × d_model) weight the hidden layer leaves through: W_out, or W_out diag(w_post)."""
        return self.W_out * self.w_post if self.post_norm else self.W_out

    def post_norm_factors(self, pre: MLPPreActivations, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-norm MLPs only: (y, q) of the per-token rank-one Jacobian term.

        y = f(x) = w_post ⊙ n (d_model) and q = n W_outᵀ / d_model (d_mlp), with n = z / rms(z):
        the norm's derivative along a hidden direction v is (v W_out diag(w_post) − (v·q) y) / rms(z)
        (docs/jacobian_post_norm.md). q costs one (tokens × d_model × d_mlp) product, run in
        `dtype` (None: the MLP's; the bf16 penalty passes bfloat16, as its other products).
        """
        if not self.post_norm or pre.unnormed is None:
            raise ValueError("post_norm_factors needs a post-norm MLP's pre_activations (with `unnormed`).")
        n = pre.unnormed * self._inverse_rms(pre.unnormed)
        cast = n.dtype if dtype is None else dtype
        return n * self.w_post, (n.to(cast) @ self.W_out.T.to(cast)) / self.d_model

    def input_weights(self) -> list[torch.Tensor]:
        """The (d_model × d_mlp) weights directions enter through: [W_in] or [W_gate, W_in]."""
        return [self.W_gate, self.W_in] if self.gated else [self.W_in]

    def local_slopes(self, pre: MLPPreActivations) -> list[torch.Tensor]:
        """Per-token coefficients pairing with `input_weights()` in the directional derivative.

        Dense: [φ'(h)].  Gated: [σ'(g) ⊙ u, σ(g)], since
        d z(x)[v] = ((σ'(g) ⊙ u) ⊙ (v W_gate) + σ(g) ⊙ (v W_in)) W_out.
        With a post-norm each is divided by the token's rms(z) (the norm's diagonal part).
        """
        if pre.gate is None:
            slopes = [self.act_fn_derivative(pre.linear)]
        else:
            slopes = [self.act_fn_derivative(pre.gate) * pre.linear, self.act_fn(pre.gate)]
        if self.post_norm:
            if pre.unnormed is None:
                raise ValueError("local_slopes of a post-norm MLP needs pre_activations with `unnormed`.")
            scale = self._inverse_rms(pre.unnormed)
            slopes = [c * scale for c in slopes]
        return slopes

    def directional_derivative(self, pre: MLPPreActivations, directions: torch.Tensor) -> torch.Tensor:
        """f'(x)·u for n input directions per token: (tokens, n, d_model) from `directions`
        (tokens, n, d_model) and `pre_activations(x)` of (tokens, d_model) inputs.

        The JVP of the frozen MLP from the same slopes the Jacobian uses, at tokens·n·(R + 1)·d·d_mlp
        (no second pass over the MLP, unlike `torch.func.jvp`): mixed = Σ_r (u W_r) ⊙ c_r, then
        mixed W_out (diag(w_post)), minus (mixed·q) y with a post-norm (`post_norm_factors`)."""
        slopes = self.local_slopes(pre)
        mixed = sum((directions @ W) * c[:, None, :] for W, c in zip(self.input_weights(), slopes, strict=True))
        out = mixed @ self.output_weight()
        if self.post_norm:
            y, q = self.post_norm_factors(pre)
            out = out - (mixed @ q[:, :, None]) * y[:, None, :]
        return out

    def extra_repr(self) -> str:
        post = f", post_norm_eps={float(self.post_norm_eps):g}" if self.post_norm else ""
        return f"d_model={self.d_model}, d_mlp={self.d_mlp}, act_fn={self.act_fn_name!r}, gated={self.gated}{post}"


def mlp_checksum(mlp: FrozenMLP) -> str:
    """sha256 (hex) of the MLP's weights: each buffer's name, shape and values, in `CHECKSUM_ORDER`.

    Values are rounded to bfloat16 first, so float32, float64 and bfloat16 copies of the same
    weights agree (a pair is trained, loaded and evaluated in different dtypes). It identifies
    the weights (another model, layer or a randomized control differ in every bit that counts);
    it is not a bit-exact fingerprint.
    """
    digest = hashlib.sha256()
    buffers = dict(mlp.named_buffers())
    for name in CHECKSUM_ORDER:
        if name not in buffers:
            continue
        t = buffers[name].detach().to("cpu", torch.bfloat16).contiguous()
        digest.update(f"{name}{tuple(t.shape)};".encode())
        digest.update(t.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def save_mlp(mlp: FrozenMLP, path: str | Path) -> Path:
    """Write the MLP's buffers to `path` (safetensors), its activation and checksum as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {"act_fn": mlp.act_fn_name, "gated": str(mlp.gated), "sha256": mlp_checksum(mlp)}
    save_file({name: t.detach().contiguous() for name, t in mlp.state_dict().items()}, str(path), metadata=metadata)
    return path


def load_mlp(path: str | Path, act_fn: str | None = None, device: str | torch.device = "cpu") -> FrozenMLP:
    """Read an MLP that `save_mlp` wrote; `act_fn` defaults to the file's own."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt", device=str(device)) as f:
            state = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): truncated or corrupt; delete it (the MLP is then read from the model).") from None
    act_fn = act_fn or metadata.get("act_fn")
    if act_fn is None:
        raise ValueError(f"{path} names no activation function (metadata act_fn); pass act_fn.")
    return FrozenMLP.from_state_dict(state, act_fn, source=str(path))


def _check_supported(cfg: object, name: str, layer: int) -> None:
    """Raise a ValueError naming the model and the reason for MLPs the JSAE cannot wrap."""

    def refuse(reason: str) -> None:
        raise ValueError(f"Cannot build a Jacobian SAE on {name} block {layer}: {reason}.")

    n_layers = cfg.n_layers
    if not 0 <= layer < n_layers:
        refuse(f"layer must be in [0, {n_layers - 1}]")
    if getattr(cfg, "attn_only", False):
        refuse("the model is attention-only (no MLP sublayer)")
    if getattr(cfg, "num_experts", None):
        refuse("mixture-of-experts MLPs are not supported")
    act_fn = getattr(cfg, "act_fn", None)
    if act_fn in ("solu", "solu_ln") or cfg.is_layer_norm_activation():  # type: ignore[attr-defined]
        refuse(f"act_fn={act_fn!r} has a LayerNorm inside the MLP, which has no closed-form Jacobian here")
    if getattr(cfg, "normalization_type", None) is None:
        refuse("the model has no ln2, so there is no `ln2.hook_normalized` input hook")
    if getattr(cfg, "use_normalization_before_and_after", False) and not str(cfg.normalization_type).startswith("RMS"):
        refuse(f"the norm after the MLP (ln2_post) is {cfg.normalization_type!r}; only an RMSNorm there is supported")
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        refuse(
            "post-norm architectures (OLMo 2/3) have no norm before the MLP: the MLP reads hook_resid_mid and "
            "ln2 normalises its output, so ln2.hook_normalized is not the MLP's input"
        )
    check_activation(act_fn, bool(getattr(cfg, "gated_mlp", False)))  # type: ignore[arg-type]
