from __future__ import annotations

import pytest
import torch

from fedbackdoor.attacks.corrupt import corrupt_state

STATE = {"w": torch.ones(2, 3), "steps": torch.tensor(4), "b": torch.zeros(3)}


@pytest.mark.parametrize(("kind", "check"), [("nan", torch.isnan), ("inf", torch.isinf)])
def test_non_finite_corruption_fills_the_first_float_tensor(kind: str, check) -> None:  # type: ignore[no-untyped-def]
    out = corrupt_state(STATE, kind=kind)

    assert check(out["w"]).all()
    assert torch.equal(out["b"], STATE["b"]) and torch.equal(STATE["w"], torch.ones(2, 3))


def test_shape_corruption_drops_one_element() -> None:
    out = corrupt_state(STATE, kind="shape")

    assert out["w"].shape == (5,) and STATE["w"].shape == (2, 3)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind='zero'"):
        corrupt_state(STATE, kind="zero")
