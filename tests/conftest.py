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
