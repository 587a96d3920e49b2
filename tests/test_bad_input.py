"""Bad input is one line naming the file, raised before any heavy work: a truncated or corrupt
safetensors file, a cfg.json with a wrong type or no JSON at all, a missing config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import make_tiny_model

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.cli import main as cli_main
from sae_lens_jsae.hub import load_jsae


@pytest.fixture
def pair_dir(tmp_path):
    """A local pair folder as `jsae train` leaves it (cfg.json, sae_weights, mlp.safetensors)."""
    sae = build_jacobian_sae(make_tiny_model("dense_gelu", dtype=torch.float32), 1, d_sae=48, k=6)
    sae.save_inference_model(tmp_path / "pair")
    sae.save_mlp(tmp_path / "pair")
    return tmp_path / "pair"


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one `jsae: error: …` line on stderr."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jsae: error: ") and "Traceback" not in err, err
    return lines[0]


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "name, damage",
    [
        ("sae_weights.safetensors", truncate),  # a download or copy cut short
        ("sae_weights.safetensors", lambda p: p.write_bytes(b"<html>404</html>" * 8)),  # not safetensors at all
        ("mlp.safetensors", lambda p: truncate(p, 0.9)),
    ],
)
def test_a_truncated_or_corrupt_safetensors_file_is_one_line_naming_it(pair_dir, tmp_path, capsys, name, damage):
    damage(pair_dir / name)
    for argv in (["eval", str(pair_dir)], ["graph", str(pair_dir), "a prompt", "--out", str(tmp_path / "g")]):
        line = one_line_error(capsys, argv)
        assert str(pair_dir / name) in line and "truncated or corrupt" in line, line
    with pytest.raises(ValueError, match=str(pair_dir / name)):
        load_jsae(pair_dir)


@pytest.mark.parametrize(
    "change, field",
    [({"k": "32"}, "'k' must be int, not '32' (str)"), ({"d_sae": "48"}, "'d_sae' must be int"), ({"gated_mlp": "no"}, "'gated_mlp' must be bool")],
)
def test_a_cfg_json_with_a_wrong_type_is_one_line_naming_file_and_field(pair_dir, tmp_path, capsys, change, field):
    cfg = json.loads((pair_dir / "cfg.json").read_text())
    (pair_dir / "cfg.json").write_text(json.dumps({**cfg, **change}))
    for argv in (["eval", str(pair_dir)], ["graph", str(pair_dir), "--out", str(tmp_path / "g")]):
        line = one_line_error(capsys, argv)
        assert str(pair_dir / "cfg.json") in line and field in line, line
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        load_jsae(pair_dir)


@pytest.mark.parametrize(
    "change, field",
    [({"k": "32"}, "'k' must be int, not '32' (str)"), ({"d_sae": "48"}, "'d_sae' must be int"), ({"gated_mlp": "no"}, "'gated_mlp' must be bool")],
)
def test_saelens_own_load_from_disk_gives_the_same_one_line_error(pair_dir, change, field):
    """SAELens' `SAE.load_from_disk` builds the config straight from the dict (no jsae pre-check):
    the config's own check must name the file, the field and the type, in the words `jsae` uses
    (a check only in the loaders, or none, leaves the TypeError from comparing '32' with d_sae)."""
    from sae_lens import SAE

    cfg = json.loads((pair_dir / "cfg.json").read_text())
    (pair_dir / "cfg.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError) as saelens:
        SAE.load_from_disk(pair_dir)
    with pytest.raises(ValueError) as ours:
        load_jsae(pair_dir)
    line = str(saelens.value)
    assert "\n" not in line and line == str(ours.value), (line, str(ours.value))
    assert line.startswith(f"{pair_dir / 'cfg.json'}: ") and field in line, line


def test_a_config_built_in_python_with_a_wrong_type_names_its_class():
    from sae_lens_jsae.sae import JacobianTrainingSAEConfig

    with pytest.raises(ValueError, match=r"^JacobianTrainingSAEConfig: 'jacobian_coefficient' must be int or float or null, not '1' \(str\)\.$"):
        JacobianTrainingSAEConfig(d_in=16, d_sae=48, k=6, jacobian_coefficient="1")


def test_a_cfg_json_that_is_not_json_is_one_line_naming_it(pair_dir, capsys):
    (pair_dir / "cfg.json").write_text('{"d_in": 16, "d_sae": ')  # cut short
    line = one_line_error(capsys, ["eval", str(pair_dir)])
    assert str(pair_dir / "cfg.json") in line and "not valid JSON" in line, line


def test_a_missing_train_config_is_reported_before_the_heavy_imports(tmp_path):
    """In a fresh interpreter: the one-line error comes with neither torch nor sae_lens imported."""
    missing = tmp_path / "no_such_config.yaml"
    script = textwrap.dedent(
        f"""
        import sys
        from sae_lens_jsae.cli import main
        rc = main(["train", {str(missing)!r}])
        print(rc, sorted(m for m in ("torch", "sae_lens", "transformer_lens") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.stdout.split() == ["2", "[]"], (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "does not exist" in lines[0], out.stderr
    # a --resume that does not exist is caught there too (the config exists)
    (tmp_path / "c.yaml").write_text("sae: {d_in: 16}\n")
    script = script.replace(repr(str(missing)), f"{str(tmp_path / 'c.yaml')!r}, '--resume', {str(tmp_path / 'gone')!r}")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "[]"] and str(tmp_path / "gone") in out.stderr, (out.stdout, out.stderr)
