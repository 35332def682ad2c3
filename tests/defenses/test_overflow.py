"""Huge finite outliers in the distance rules (Krum, Multi-Krum, Bulyan).

A row of 1e25 has squares (1e50) beyond float32's range, and 3e38 is close to float32's largest
value: float32 products of such a row are inf. Measured on the cases below before the float64
fallback of ``centred_gram(..., precision="native")`` (fedbackdoor.defenses._linalg): the
outlier's distances came out inf (1e25) or ``inf - inf = nan`` (3e38) in all 9 placements, and
Bulyan's recursive Krum selected the outlier in 6 of them for 1e25 and 5 for 3e38 (Krum and
Multi-Krum happened not to).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from fedbackdoor.defenses._linalg import pairwise_squared_distances
from fedbackdoor.defenses.base import Aggregate
from fedbackdoor.defenses.distance import _bulyan_selection, bulyan, krum

SIZES = [1e25, 3e38]


def _with_outlier(n: int, position: int, size: float) -> tuple[Tensor, Tensor]:
    """``n - 1`` normal rows of dimension 50 and, at ``position``, a row of ``size``."""
    updates = torch.randn(n, 50, generator=torch.Generator().manual_seed(n + position))
    updates[position] = size
    benign = torch.cat([updates[:position], updates[position + 1 :]])
    return updates, benign


CASES = [(n, position) for n in (7, 9, 11) for position in (0, n // 2, n - 1)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("n", "position"), CASES)
def test_pairwise_distances_to_a_huge_outlier_are_huge_and_never_nan(
    size: float, n: int, position: int
) -> None:
    # Prepare
    updates, _ = _with_outlier(n, position, size)
    exact = torch.cdist(updates.double(), updates.double()).square()

    # Execute
    distances = pairwise_squared_distances(updates)

    # Assert: finite (float64 holds 50 * (3e38)^2 ~ 5e78), exact to rounding, and the benign
    # distances untouched by the outlier
    assert not bool(distances.isnan().any())
    assert bool(torch.isfinite(distances).all())
    others = [i for i in range(n) if i != position]
    assert bool((distances[position, others] > 1e40).all())
    torch.testing.assert_close(distances, exact, rtol=1e-5, atol=1e-4)


RULES: dict[str, Callable[[Tensor, Tensor], Aggregate]] = {
    "krum": functools.partial(krum, f=1),
    "multi_krum": functools.partial(krum, f=1, m=4),
    "bulyan": functools.partial(bulyan, f=1),
}


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("n", "position"), CASES)
def test_distance_rules_never_select_a_huge_finite_outlier(
    name: str, size: float, n: int, position: int
) -> None:
    # Prepare
    updates, benign = _with_outlier(n, position, size)

    # Execute
    result = RULES[name](updates, torch.ones(n))

    # Assert: the outlier is not selected, so it has no influence (selection is no verdict:
    # flagged is None); the aggregate is finite and stays in the benign range, within the
    # benign spread of the benign mean
    assert result.flagged is None and result.influence is not None
    assert float(result.influence[position]) == 0.0
    if name == "bulyan":
        # Bulyan gives 0 also to a selected client none of whose values it averages, which an
        # extreme row would be: check its selection (step 1) itself.
        assert position not in _bulyan_selection(pairwise_squared_distances(updates), 1).tolist()
    assert bool(torch.isfinite(result.update).all())
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert bool(((result.update >= low) & (result.update <= high)).all())
    spread = float((benign - benign.mean(dim=0)).norm(dim=1).max())
    assert float((result.update - benign.mean(dim=0)).norm()) <= spread


@pytest.mark.parametrize("size", SIZES)
def test_multi_krum_of_all_benign_rows_is_the_benign_mean(size: float) -> None:
    # Prepare: m = n - 1 selects exactly the benign rows
    updates, benign = _with_outlier(9, 4, size)

    # Execute
    result = krum(updates, torch.ones(9), f=1, m=8)

    # Assert
    torch.testing.assert_close(result.update, benign.mean(dim=0))


def test_ordinary_rows_keep_the_float32_products() -> None:
    # Prepare: no huge row, so the float64 fallback must not be needed to be exact
    updates = torch.randn(8, 100, generator=torch.Generator().manual_seed(0)) * 1e15

    # Execute
    distances = pairwise_squared_distances(updates)

    # Assert: float32 products of values ~1e15 (squares ~1e30 < 3.4e38) stay finite
    exact = torch.cdist(updates.double(), updates.double()).square()
    torch.testing.assert_close(distances, exact, rtol=1e-5, atol=0)
