"""`jsae` CLI and YAML run configs."""

import subprocess
import sys
from pathlib import Path

import pytest

from sae_lens_jsae.cli import build_parser
from sae_lens_jsae.config import load_run_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


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


def test_train_cli_rejects_bad_config_before_training(tmp_path):
    demo = Path(__file__).parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    res = subprocess.run([sys.executable, "-m", "sae_lens_jsae", "train", str(demo), "--set", "runner.hook_name=blocks.3.hook_resid_pre"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode != 0 and "not an MLP input hook" in res.stderr
    assert not (tmp_path / "outputs").exists()
