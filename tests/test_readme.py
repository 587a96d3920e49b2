"""The README's Quickstart snippet runs as written (offline SmolLM2)."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_quickstart_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LENS_JSAE_CACHE", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(python_block_after("## Quickstart"), "README Quickstart", "exec"), {})
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"torch\.Size\(\[\d+, 32, 32\]\)", lines[0]), lines
    assert lines[-1].startswith("tensor(")
