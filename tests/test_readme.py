"""README's Python snippets run as written, and its solver table matches the registry."""

from __future__ import annotations

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
TABLE = re.compile(r"<!-- solver-table:start -->\n(.*?)\n<!-- solver-table:end -->", re.S)


def _readme() -> str:
    with open(README, encoding="utf-8") as fh:
        return fh.read()


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_has_the_sections_users_need():
    text = _readme()
    for heading in (
        "## What scoresde is",
        "## `scoresde check`",
        "## A tour of the API",
        "## Solvers",
        "## Adding a solver",
        "## Benchmarks",
        "## Reproducibility",
    ):
        assert heading in text, heading
    assert "BENCHMARKS.md" in text
    assert len(python_blocks(text)) >= 5


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    """All blocks run in one namespace, in order (later snippets build on earlier ones), in a
    scratch directory so nothing they write lands in the repository."""
    pytest.importorskip("ot")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    try:
        for i, block in enumerate(python_blocks(_readme())):
            code = compile(block, f"README.md python block {i + 1}", "exec")
            exec(code, namespace)
    finally:
        import solvers

        for name in ("my_midpoint",):  # the solver the README registers
            if name in solvers.available():
                solvers.unregister(name)
    out = capsys.readouterr().out
    assert "torch.Size([5, 2])" in out
    # the tour's comments state what it prints (exact moments: no sampling noise)
    assert "ddim 1.0 0.97" in out and "dpm_solver_pp_2m 2.0 1.98" in out
    residual = float(re.search(r"^tensor\(([0-9.e-]+), dtype=torch.float64\)$", out, re.M).group(1))
    assert 3e-6 < residual < 3e-5  # "~1e-5"


def test_readme_solver_table_matches_the_registry():
    from scoresde.harness import solver_table

    match = TABLE.search(_readme())
    assert match, "README lacks the <!-- solver-table:start/end --> markers"
    assert match.group(1).strip() == solver_table().strip(), (
        "README's solver table is out of date; regenerate it with\n"
        "  python -c 'from scoresde.harness import solver_table; print(solver_table())'"
    )
