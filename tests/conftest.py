"""Shared test fixtures."""

from __future__ import annotations

import pytest

from solvers import registry


@pytest.fixture(autouse=True)
def _restore_solver_registry():
    """Solvers registered by a test (or by an example it imports) do not leak into later tests."""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A tiny moons MLP checkpoint (3 training steps) for CLI tests of sample / export / check."""
    from scoresde.cli import main

    run = tmp_path_factory.mktemp("run")
    args = ["train", "--data", "moons", "--steps", "3", "--out", str(run), "--hidden", "16"]
    assert main([*args, "--depth", "1", "--batch", "32", "--no-progress", "--warmup", "1"]) == 0
    return str(run / "checkpoint.pt")
