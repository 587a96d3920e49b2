"""`jsae saebench --config FILE`: SAEBench evals (built-in + jacobian_*) on JSAE pairs' two SAEs.

Config (YAML or JSON):
    checkpoints: {name: path, ...}        # JSAE checkpoints (e.g. jsae, lambda0)
    saes: [release/sae_id, ...]           # optional other SAELens SAEs on the same hooks
    model_source: hub                     # or gguf-smollm2 (offline)
    model_name: EleutherAI/pythia-70m-deduped
    device: cuda
    output_dir: saebench_results
    evals: [core, jacobian_sparsity, jacobian_linearity, sparse_probing, absorption]
    context_size: 128
    n_tokens: 102400                      # jacobian_sparsity / core sparsity-variance tokens
    dataset: ""                           # HF dataset for tokens (hub); default: the sotu eval split
Each eval writes `{output_dir}/{eval}/{release}_{sae_id}_eval_results.json`; evals that cannot
run here (no Hub access, a model TransformerLens cannot load by name, …) are skipped with the
reason, and `{output_dir}/saebench_run.json` records what ran and what was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Any

BUILTIN = ("core", "sparse_probing", "absorption")
OURS = ("jacobian_sparsity", "jacobian_linearity")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML/JSON config (see `sae_lens_jsae.cli.saebench`)")
    p.add_argument("--force-rerun", action="store_true")


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face Hub can be reached, and why not."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True, ""
    except OSError as e:
        return False, f"huggingface.co unreachable ({e.__class__.__name__})"


def load_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def run(args: argparse.Namespace) -> int:
    import torch

    from sae_lens_jsae.evals import saebench as sb
    from sae_lens_jsae.evals.pipeline import _load_extra_sae, load_checkpoint

    cfg = load_config(args.config)
    out = Path(cfg.get("output_dir", "saebench_results"))
    device = cfg.get("device", "cuda" if torch.cuda.is_available() else "cpu")
    evals = cfg.get("evals", [*BUILTIN, *OURS])
    online, why_offline = hub_reachable()
    status: dict[str, Any] = {"ran": {}, "skipped": {}}

    jsaes = {name: load_checkpoint(path).to(device) for name, path in (cfg.get("checkpoints") or {}).items()}
    first = next(iter(jsaes.values()), None)
    model_name = cfg.get("model_name") or (first.cfg.metadata.model_name if first is not None else None)
    from sae_lens_jsae.sources import load_hooked_model, sotu_token_dataset

    model = load_hooked_model(cfg.get("model_source", "hub"), model_name, device=device)
    for jsae in jsaes.values():  # saved pairs carry no LLM weights: the MLP comes from the model, checksum-checked
        if jsae.mlp is None:
            jsae.attach_mlp_from_model(model)
    ctx = int(cfg.get("context_size", 128))
    n_tokens = int(cfg.get("n_tokens", 102_400))
    if cfg.get("dataset") and online:
        from sae_lens.training.activations_store import ActivationsStore

        store = ActivationsStore.from_sae(model, first, context_size=ctx, dataset=cfg["dataset"])
        tokens = store.get_batch_tokens(-(-n_tokens // ctx))
    else:
        ds = sotu_token_dataset(model.tokenizer, ctx, split="eval")
        tokens = torch.tensor(ds["input_ids"][: -(-n_tokens // ctx)])

    plain = [(f"{name}", which, getattr(j, f"{which}_sae")) for name, j in jsaes.items() for which in ("input", "output")]
    extra = []
    for spec in cfg.get("saes", []) or []:
        try:
            extra.append(_load_extra_sae(spec, device))
        except Exception as e:  # noqa: BLE001
            status["skipped"][f"load {spec}"] = f"could not load: {e}"
    for ev in evals:
        if ev == "core":
            paths = [str(sb.run_core_eval(model, s, tokens, out / "core", rel, f"{which}_sae" if which in ("input", "output") else which,
                                          n_sparsity_variance_tokens=n_tokens, force_rerun=args.force_rerun))
                     for rel, which, s in [*plain, *extra]]
            status["ran"]["core"] = paths
        elif ev in OURS:
            runner, conf = (sb.run_eval, sb.JacobianSparsityEvalConfig(model_name=model_name, context_size=ctx, n_tokens=n_tokens)) if ev == "jacobian_sparsity" \
                else (sb.run_linearity_eval, sb.JacobianLinearityEvalConfig(model_name=model_name, context_size=ctx))
            res = runner(conf, list(jsaes.items()), device, str(out / ev), args.force_rerun, model=model, tokens=tokens)
            status["ran"][ev] = sorted(res)
        elif ev in ("sparse_probing", "absorption"):
            if not online:
                status["skipped"][ev] = f"needs the Hugging Face Hub (datasets and a model loaded by name): {why_offline}"
                continue
            if cfg.get("model_source", "hub") != "hub":
                status["skipped"][ev] = f"SAEBench's {ev} loads the model by name with TransformerLens; model_source {cfg.get('model_source')!r} is not a Hub model"
                continue
            try:
                if ev == "sparse_probing":
                    from sae_bench.evals.sparse_probing.eval_config import (
                        SparseProbingEvalConfig as C,
                    )
                    from sae_bench.evals.sparse_probing.main import run_eval as R
                else:
                    from sae_bench.evals.absorption.eval_config import (
                        AbsorptionEvalConfig as C,
                    )
                    from sae_bench.evals.absorption.main import run_eval as R
                conf = C(model_name=model_name)
                if hasattr(conf, "llm_dtype") and not conf.llm_dtype:
                    conf.llm_dtype = "float32"
                if hasattr(conf, "llm_batch_size") and not conf.llm_batch_size:
                    conf.llm_batch_size = 32
                selected = [(f"{rel}_{which}", s) for rel, which, s in [*plain, *extra]]
                R(conf, selected, device, str(out / ev), args.force_rerun)
                status["ran"][ev] = [name for name, _ in selected]
            except Exception as e:  # noqa: BLE001  (e.g. absorption on a tokenizer without single-letter tokens)
                status["skipped"][ev] = f"failed: {e.__class__.__name__}: {e}"
        else:
            status["skipped"][ev] = "unknown eval (choose from " + ", ".join([*BUILTIN, *OURS]) + ")"
    out.mkdir(parents=True, exist_ok=True)
    (out / "saebench_run.json").write_text(json.dumps(status, indent=2))
    for ev, files in status["ran"].items():
        print(f"ran     {ev}: {len(files)} result(s)")
    for ev, why in status["skipped"].items():
        print(f"SKIPPED {ev}: {why}")
    return 0
