"""Atomic writes (fedbackdoor.files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbackdoor.files import atomic_path


def test_atomic_path_replaces_the_file_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old")

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    kept = target.read_text()
    with atomic_path(target) as tmp:
        tmp.write_text("new")

    assert kept == "old" and target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left
