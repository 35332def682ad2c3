"""Shared fixtures. Tests never phone home and never touch the user's data cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A per-session dataset cache, shared by every simulation a test starts (Ray actors
    inherit the environment)."""
    path = str(tmp_path_factory.mktemp("fedbackdoor-cache"))
    os.environ["FEDBACKDOOR_CACHE_DIR"] = path
    return path
