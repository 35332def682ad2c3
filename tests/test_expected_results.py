"""The expected-results suite's exact checks (simulations/expected_results.py --fast): with the
benign updates at zero, a real BadNets attacker's boosted update becomes the global model."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "simulations" / "expected_results.py"


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("expected_results", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_exact_checks_pass_on_fashion_mnist(data_cache: str) -> None:
    checks = _load().exact_checks()

    assert len(checks) == 3
    for check in checks:
        assert check.ok, f"{check.quantity}: {check.measured}"
        assert check.measured < 1e-6


def test_a_check_outside_its_range_is_not_ok() -> None:
    module = _load()

    inside = module.Check("e", "p", "q", 0.9, math.inf, 0.95)
    outside = module.Check("e", "p", "q", 0.9, math.inf, 0.5)
    missing = module.Check("e", "p", "q", -math.inf, 0.1, math.nan)

    assert inside.ok and not outside.ok and not missing.ok
    assert inside.expected == ">= 0.9" and missing.expected == "<= 0.1"
