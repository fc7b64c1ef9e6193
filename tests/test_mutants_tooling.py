"""The mutation-testing script (tools/mutation.py): its source rewrite keeps the registry the same,
and its groups cover every module of schedules/ and solvers/ exactly once."""

from __future__ import annotations

import ast
import importlib.util
import types
from fnmatch import fnmatch
from pathlib import Path

import pytest

import solvers

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _modules() -> list[str]:
    return [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for d in ("schedules", "solvers")
        for p in sorted((ROOT / d).glob("*.py"))
        if any(isinstance(n, ast.FunctionDef | ast.ClassDef) for n in ast.parse(p.read_text()).body)
    ]


def test_every_module_is_in_exactly_one_group():
    groups = _tool().GROUPS
    for module in _modules():
        owners = [
            g
            for g, (patterns, _) in groups.items()
            if any(fnmatch(f"{module}.x_f", p) for p in patterns)
        ]
        assert len(owners) == 1, (module, owners)


def test_every_selected_test_file_exists():
    for _, selection in _tool().GROUPS.values():
        files = [a for a in selection if a.startswith("tests/")]
        assert files and all((ROOT / f).is_file() for f in files), files


@pytest.mark.parametrize("path", sorted((ROOT / "solvers").glob("*.py")), ids=lambda p: p.name)
def test_undecorated_solvers_register_the_same_functions(path):
    source = path.read_text()
    rewritten = _tool().undecorate(source)
    tree = ast.parse(rewritten)
    for node in tree.body:  # no registration decorator is left
        if isinstance(node, ast.FunctionDef):
            assert not any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") in ("register", "_register")
                for d in node.decorator_list
            ), node.name
    # run the rewritten module under a scratch registry: the same names, kinds and functions
    from solvers import registry

    saved = dict(registry._REGISTRY)
    module_name = f"solvers.{path.stem}"
    mine = {n: s for n, s in saved.items() if s.fn.__module__ == module_name}
    try:
        for name in mine:
            del registry._REGISTRY[name]
        module = types.ModuleType(module_name)
        module.__package__ = "solvers"
        exec(compile(rewritten, str(path), "exec"), module.__dict__)
        new = {n: s for n, s in registry._REGISTRY.items() if n not in saved or n in mine}
        assert sorted(new) == sorted(mine)
        for name, spec in new.items():
            old = mine[name]
            assert (spec.kind, spec.order, spec.evals_per_step, spec.options, spec.description) == (
                old.kind,
                old.order,
                old.evals_per_step,
                old.options,
                old.description,
            )
            assert (
                spec.fn.__name__ == old.fn.__name__ and spec.fn is module.__dict__[old.fn.__name__]
            )
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
    assert solvers.available() == sorted(saved)
