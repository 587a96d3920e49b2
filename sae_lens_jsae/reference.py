"""Convert the authors' reference artifacts (`jacobian_saes`, a SAELens 4 fork) into a JSAE."""

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file

from sae_lens_jsae.hub import (
    PICKLE_SUFFIXES,
    PretrainedNotFoundError,
    pickle_disk_loader,
    refuse_pickle,
)
from sae_lens_jsae.mlp import FrozenMLP
from sae_lens_jsae.sae import (
    ARCHITECTURE,
    INPUT_HOOK_PATTERN,
    JacobianSAE,
    JacobianSAEConfig,
)
from sae_lens_jsae.util import dtype_name

REFERENCE_SAE_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
REFERENCE_MLP_KEYS = ("W_in", "b_in", "W_out", "b_out")


class ReferenceArtifact(NamedTuple):
    """A reference (`jacobian_saes`, SAELens 4 fork) pair as read from disk: cfg and state dict."""

    cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def read_reference(directory: str | Path, allow_pickle: bool = False) -> ReferenceArtifact:
    """Read `cfg.json` and the one weights file of a reference artifact folder, keys un-prefixed
    (`_W_enc` -> `W_enc`; keys already without the underscore are accepted too)."""
    directory = Path(directory)
    if not (directory / SAE_CFG_FILENAME).is_file():
        raise PretrainedNotFoundError(f"{directory} has no {SAE_CFG_FILENAME}; is it a reference artifact folder?")
    cfg = json.loads((directory / SAE_CFG_FILENAME).read_text())
    candidates = sorted(p for p in directory.glob("*.safetensors") if p.name != SPARSITY_FILENAME)
    if len(candidates) > 1:
        preferred = directory / SAE_WEIGHTS_FILENAME
        if preferred not in candidates:
            raise ValueError(f"{directory} has several weight files ({', '.join(p.name for p in candidates)}); keep one.")
        candidates = [preferred]
    if candidates:
        raw = load_file(candidates[0])
    else:
        pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise PretrainedNotFoundError(f"{directory} has no weights file (*.safetensors).")
        if not allow_pickle:
            raise refuse_pickle(str(directory), pickles[0].name)
        raw = pickle_disk_loader(pickles[0])(directory, "cpu", None)[1]
    state = {(key[1:] if key.startswith("_") else key): value for key, value in raw.items()}
    return ReferenceArtifact(cfg, state)


def _check_reference(ref: ReferenceArtifact, where: str) -> int:
    """Refuse anything that is not a TopK pair with a dense MLP copy; return k."""
    cfg, state = ref.cfg, ref.state_dict

    def refuse(reason: str) -> None:
        raise ValueError(f"Cannot convert {where}: {reason}. Only TopK Jacobian SAE pairs of the reference code convert.")

    activation = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    if activation != "topk":
        refuse(f"activation_fn_str is {activation!r}, not 'topk'")
    if cfg.get("architecture", "standard") != "standard":
        refuse(f"architecture is {cfg['architecture']!r} (the reference pairs are 'standard' + topk)")
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if not isinstance(k, int):
        refuse("activation_fn_kwargs has no integer 'k'")
    missing = [f"_{name}" for name in REFERENCE_SAE_KEYS if name not in state]
    missing += [f"_{name}_out" for name in REFERENCE_SAE_KEYS if f"{name}_out" not in state]
    if missing:
        kind = "a single SAE, not a pair" if "_W_enc_out" in missing and "_W_enc" not in missing else "incomplete"
        refuse(f"the state dict is {kind} (missing {', '.join(missing)})")
    missing_mlp = [f"mlp.{name}" for name in REFERENCE_MLP_KEYS if f"mlp.{name}" not in state]
    if missing_mlp:
        refuse(f"the state dict has no frozen MLP copy (missing {', '.join(missing_mlp)})")
    if "mlp.W_gate" in state:
        refuse("the MLP copy is gated; the reference code only trained on dense MLPs")
    if cfg.get("normalize_activations", "none") not in (None, "none"):
        refuse(f"normalize_activations={cfg['normalize_activations']!r} (a Jacobian SAE reads unscaled activations)")
    if cfg.get("finetuning_scaling_factor") or "finetuning_scaling_factor" in state:
        refuse("it has a finetuning scaling factor")
    hook = cfg.get("hook_name", cfg.get("hook_point"))
    if not INPUT_HOOK_PATTERN.match(hook or ""):
        refuse(f"hook_name {hook!r} is not an MLP input hook 'blocks.L.ln2.hook_normalized'")
    return k  # type: ignore[return-value]


def convert_reference(
    directory: str | Path,
    out_dir: str | Path | None = None,
    *,
    mlp_act_fn: str | None = None,
    ln2_weight: torch.Tensor | None = None,
    ln2_bias: torch.Tensor | None = None,
    model: Any = None,
    allow_pickle: bool = False,
) -> JacobianSAE:
    """Convert an authors' reference artifact folder into a `JacobianSAE` (saved to `out_dir`).

    The MLP copy (`mlp.W_in, b_in, W_out, b_out`, TransformerLens names, unfolded) is mapped AS
    GIVEN, so the converted pair computes exactly what the reference computed: it fed
    `ln2.hook_normalized` into that copy. Our FrozenMLP is meant to hold ln2's affine folded in
    (so that f(hook_normalized) == hook_mlp_out in today's TransformerLens); when the artifact's
    model had a non-trivial ln2 affine, pass that block's `ln2_weight` (and `ln2_bias` for
    LayerNorm) to fold them in here instead, or the unprocessed HookedTransformer as `model`
    (its block's ln2 is used). `mlp_act_fn` defaults to the cfg's `act_fn`/`mlp_act_fn` if present, else "gelu" (Pythia).
    """
    ref = read_reference(directory, allow_pickle)
    k = _check_reference(ref, str(directory))
    cfg, state = ref.cfg, ref.state_dict
    hook = cfg.get("hook_name", cfg.get("hook_point"))
    layer = int(INPUT_HOOK_PATTERN.match(hook).group(1))  # type: ignore[union-attr]
    if cfg.get("hook_layer", layer) != layer:
        raise ValueError(f"Cannot convert {directory}: hook_layer={cfg['hook_layer']} but hook_name is {hook!r}.")
    W_in, b_in = state["mlp.W_in"], state["mlp.b_in"]
    if model is not None:
        ln2 = model.blocks[layer].ln2
        ln2_weight, ln2_bias = getattr(ln2, "w", None), getattr(ln2, "b", None)
        ln2_weight = torch.ones(W_in.shape[0]) if ln2_weight is None else ln2_weight.detach()
        ln2_bias = None if ln2_bias is None else ln2_bias.detach()
    if ln2_weight is not None or ln2_bias is not None:
        w = torch.ones(W_in.shape[0], dtype=W_in.dtype) if ln2_weight is None else ln2_weight.to(W_in.dtype)
        b = torch.zeros(W_in.shape[0], dtype=W_in.dtype) if ln2_bias is None else ln2_bias.to(W_in.dtype)
        W_in, b_in = w[:, None] * W_in, b_in + b @ W_in
    act_fn = mlp_act_fn or cfg.get("mlp_act_fn") or cfg.get("act_fn") or "gelu"
    lam = cfg.get("jacobian_coefficient")
    metadata = SAEMetadata(
        model_name=cfg.get("model_name"),
        hook_name=hook,
        hook_layer=layer,
        context_size=cfg.get("context_size"),
        dataset_path=cfg.get("dataset_path"),
        prepend_bos=cfg.get("prepend_bos", True),
        training_architecture=ARCHITECTURE,
        training_architecture_details={
            "jacobian_coefficient": lam,
            "output_mse_coefficient": cfg.get("mlp_out_mse_coefficient", 1.0),
        },
        converted_from="jacobian_saes reference artifact",
    )
    sae_cfg = JacobianSAEConfig(
        d_in=int(cfg.get("d_in", state["W_enc"].shape[0])),
        d_sae=int(cfg.get("d_sae", state["W_enc"].shape[1])),
        k=k,
        dtype=dtype_name(state["W_enc"].dtype),
        device="cpu",
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
        d_mlp=W_in.shape[1],
        mlp_act_fn=act_fn,
        gated_mlp=False,
        metadata=metadata,
    )
    sae_cfg.output_hook_name = sae_cfg.resolved_output_hook_name(hook)
    sae = JacobianSAE(sae_cfg)
    mlp = FrozenMLP(W_in.shape[0], W_in.shape[1], act_fn, False, W_in.dtype)
    with torch.no_grad():
        for name, value in (("W_in", W_in), ("b_in", b_in), ("W_out", state["mlp.W_out"]), ("b_out", state["mlp.b_out"])):
            getattr(mlp, name).copy_(value)
    sae.attach_mlp(mlp)
    ours = {name: state[name] for name in REFERENCE_SAE_KEYS} | {f"{n}_out": state[f"{n}_out"] for n in REFERENCE_SAE_KEYS}
    sae.load_state_dict({**ours, **{f"mlp.{n}": getattr(mlp, n) for n in REFERENCE_MLP_KEYS}})
    if out_dir is not None:
        sae.save_model(out_dir)
        sae.save_mlp(out_dir)  # the artifact's MLP, kept locally beside the SAE (`jsae push` leaves it out)
        sparsity = Path(directory) / SPARSITY_FILENAME
        if sparsity.is_file():
            shutil.copyfile(sparsity, Path(out_dir) / SPARSITY_FILENAME)
    return sae
