"""Fixtures of the data tests: no test reads the user's cache or env, or touches the network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision.datasets.cifar
import torchvision.datasets.mnist

from fedbackdoor.data.loading import clear_cache
from fedbackdoor.data.torchvision_sets import CACHE_DIR_ENV, DATA_DIR_ENV
from tests.data.fakes import OFFLINE


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache dir (returned), no ``$FEDBACKDOOR_DATA_DIR``, downloads that fail with
    :data:`OFFLINE`, and no dataset cached in the process before or after the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError(OFFLINE)

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    clear_cache()
    yield cache
    clear_cache()
