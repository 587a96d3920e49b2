"""pyproject.toml declares every distribution the package imports, and .gitignore covers build outputs."""

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Modules only an extra provides: imported lazily (inside a function) or behind a one-line
# "install the extra" error, never at the top of a module `import sae_lens_jsae` reaches.
EXTRA_MODULES = {"sae_bench": "saebench", "playwright": "browser"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def imported_modules() -> dict[str, set[str]]:
    """Top-level module name -> files of sae_lens_jsae importing it (third-party only)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "sae_lens_jsae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "sae_lens_jsae":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared():
    """Fails for `import wandb` (or numpy, pydantic, ...) that arrives only through another package."""
    core = requirement_names(PYPROJECT["dependencies"])
    extras = {name: requirement_names(reqs) for name, reqs in PYPROJECT["optional-dependencies"].items()}
    dists = packages_distributions()
    modules = imported_modules()
    assert {"torch", "sae_lens", "wandb", "numpy", "pydantic"} <= set(modules), sorted(modules)
    undeclared = []
    for module, files in sorted(modules.items()):
        if module in EXTRA_MODULES:
            extra = EXTRA_MODULES[module]
            assert extra in extras, (module, extra)
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & core:
            undeclared.append(f"{module} ({', '.join(sorted(names))}) imported by {', '.join(sorted(files))}")
    assert not undeclared, "imported but not in [project] dependencies: " + "; ".join(undeclared)


def test_build_outputs_are_ignored(tmp_path):
    for path in ("build/lib/sae_lens_jsae/sae.py", "dist/sae_lens_jsae-0.1.0-py3-none-any.whl", "dist/sae_lens_jsae-0.1.0.tar.gz",
                 "sae_lens_jsae.egg-info/PKG-INFO", ".eggs/x", "outputs/demo/cfg.json"):
        out = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True)
        assert out.returncode == 0, f"{path} is not ignored by .gitignore"
