"""Fixtures for the Flower adapters."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def task_identity() -> None:
    """Flower stamps every message it creates with the running task's identity, which its
    runtimes set; tests that make messages set one through the public setters."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
