"""Writing files so that readers never see half of one. Standard library only: the data layer,
the run records and the figures all write through here without importing each other.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["atomic_path"]


def atomic_path(path: str | Path) -> _AtomicPath:
    """A temporary path in ``path``'s folder that replaces ``path`` when the block succeeds.

    ``with atomic_path(out) as tmp: frame.to_csv(tmp)``: readers see the old file or the whole
    new one, never half of it (``os.replace`` within one folder is atomic, so processes racing
    to write the same file each leave a whole one); on an error the temporary file is removed
    and ``path`` is left as it was. The folder must exist.
    """
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
