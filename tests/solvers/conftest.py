"""Shared helpers for the solver tests."""

import warnings

import jax
import pytest


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled (finite differences need it)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def jaxopt():
    """jaxopt as a test oracle (it warns on import: unmaintained)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("jaxopt")
