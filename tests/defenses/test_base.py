"""What every aggregation rule shares: the contract of fedbackdoor.defenses.base (bad settings
and bad inputs raise ``ValueError``, no client raises ``NotEnoughClients``, the update keeps the
input dtype, ``flagged`` is a bool mask or ``None``) and the properties every rule must have
(permutation invariance; identical updates and huge outliers for the rules that combine by
robust statistics).

Rule-specific preconditions are in test_preconditions.py, influence in test_influence.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.base import Aggregate, NotEnoughClients
from fedbackdoor.defenses.centered_clip import centered_clip
from fedbackdoor.defenses.clustering import dnc, flame
from fedbackdoor.defenses.coordinatewise import median, trimmed_mean
from fedbackdoor.defenses.distance import bulyan, krum
from fedbackdoor.defenses.geometric_median import geometric_median
from fedbackdoor.defenses.robust_lr import rlr
from fedbackdoor.defenses.trust import fltrust, foolsgold
from tests.defenses.rounds import random_updates, reference_for, seeded

# Every rule with settings bound, called as rule(updates, weights, generator=...) (the rules that
# draw nothing ignore the generator); FLTrust also gets its reference, see _run.
RULES: dict[str, Callable[..., Aggregate]] = {
    "mean": mean,
    "median": median,
    "trimmed_mean": functools.partial(trimmed_mean, beta=0.2),
    "krum": functools.partial(krum, f=1),
    "multi_krum": functools.partial(krum, f=1, m=3),
    # Bulyan needs n >= 4f + 3, more clients than the shared properties use: see
    # test_distance.py.
    "bulyan": functools.partial(bulyan, f=0),
    "geometric_median": geometric_median,
    # From the round's median: from the previous aggregate (zero here) one step of tau = 1
    # cannot reach identical updates, and the previous aggregate is tested in
    # test_centered_clip.py.
    "centered_clip": functools.partial(centered_clip, start="median"),
    "foolsgold": foolsgold,
    "flame": flame,
    "rlr": functools.partial(rlr, theta=2),
    "dnc": functools.partial(dnc, f=1, b=4, niters=3),
    "fltrust": fltrust,
}
# The rules that combine the updates by robust statistics, and never classify a client.
STATISTICS = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clip",
]
# The rules that flag clients (exclude them or give them weight 0).
CLASSIFIERS = ["foolsgold", "flame", "dnc", "fltrust"]
ROBUST_RULES = [name for name in STATISTICS if name != "mean"]
# (fewest clients, most clients, fewest coordinates, most coordinates) for the properties: the
# rules that classify clients see at least 2 coordinates, where cosines say something.
SIZES = {name: (5, 12, 1, 16) for name in STATISTICS} | {
    name: (3, 10, 2, 12) for name in [*CLASSIFIERS, "rlr"]
}


def _run(name: str, updates: Tensor, weights: Tensor, reference: Tensor | None = None) -> Aggregate:
    if name == "fltrust":
        if reference is None:
            reference = reference_for(updates)
        return fltrust(updates, weights, reference=reference)
    return RULES[name](updates, weights, generator=seeded())


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_permutation_invariance(name: str, seed: int, data: st.DataObject) -> None:
    # Prepare
    fewest, most, narrowest, widest = SIZES[name]
    n = data.draw(st.integers(fewest, most), label="n")
    d = data.draw(st.integers(narrowest, widest), label="d")
    updates, weights = random_updates(seed, n, d)
    permutation = torch.tensor(data.draw(st.permutations(range(n))))

    # Execute: the same generator seed, so DnC draws the same coordinates and FLAME the same noise
    original = _run(name, updates, weights)
    permuted = _run(name, updates[permutation], weights[permutation])

    # Assert
    torch.testing.assert_close(permuted.update, original.update, rtol=1e-5, atol=1e-6)
    if original.flagged is None:
        assert permuted.flagged is None
    else:
        assert permuted.flagged is not None
        assert torch.equal(permuted.flagged, original.flagged[permutation])
    if name in ("krum", "multi_krum"):  # who is selected (influence 1/m) follows the clients
        assert original.influence is not None and permuted.influence is not None
        assert torch.equal(permuted.influence, original.influence[permutation])


@pytest.mark.parametrize("name", STATISTICS)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(5, 12), d=st.integers(1, 16))
def test_identical_updates_aggregate_to_themselves(name: str, seed: int, n: int, d: int) -> None:
    # Prepare
    row, weights = random_updates(seed, 1, d)
    updates = row.expand(n, d).clone()
    weights = weights.expand(n).clone()

    # Execute
    result = RULES[name](updates, weights)

    # Assert
    torch.testing.assert_close(result.update, row[0])


@pytest.mark.parametrize("name", ROBUST_RULES)
def test_huge_outliers_do_not_move_robust_rules_beyond_the_benign_range(name: str) -> None:
    # Prepare: 7 benign clients, f = 2 attackers sending 1e6 in every coordinate
    generator = torch.Generator().manual_seed(0)
    benign = torch.randn(7, 10, generator=generator)
    outliers = torch.full((2, 10), 1e6)
    updates = torch.cat([outliers[:1], benign, outliers[1:]])  # attackers not at the end
    weights = torch.ones(9)
    rules: dict[str, Callable[[Tensor, Tensor], Aggregate]] = {
        "median": median,
        "trimmed_mean": functools.partial(trimmed_mean, beta=0.25),  # k = floor(2.25) = 2
        "krum": functools.partial(krum, f=2),
        "multi_krum": functools.partial(krum, f=2, m=5),
        "geometric_median": geometric_median,
        "centered_clip": functools.partial(centered_clip, tau=0.01, start="median"),
    }

    # Execute
    robust = rules[name](updates, weights)
    averaged = mean(updates, weights)

    # Assert
    low, high = benign.min(dim=0).values, benign.max(dim=0).values
    assert torch.all((robust.update >= low) & (robust.update <= high))
    assert torch.all(averaged.update > 1e5)
    if name in ("krum", "multi_krum"):  # the outliers are not selected: no influence
        assert robust.flagged is None and robust.influence is not None
        assert float(robust.influence[0]) == 0.0 and float(robust.influence[-1]) == 0.0


# --------------------------------------------------------------------------------------------
# The contract: results, preconditions, bad settings and bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_rules_return_the_input_dtype_and_a_bool_mask(name: str) -> None:
    # Prepare
    updates, weights = random_updates(1, 7, 5)

    # Execute
    result = _run(name, updates.double(), weights)

    # Assert
    assert result.update.shape == (5,)
    assert result.update.dtype == torch.float64
    if name in CLASSIFIERS:
        assert result.flagged is not None
        assert result.flagged.dtype == torch.bool
        assert result.flagged.shape == (7,)
    else:
        assert result.flagged is None


@pytest.mark.parametrize("name", list(RULES))
def test_rules_raise_not_enough_clients_on_zero_updates(name: str) -> None:
    # Prepare
    updates, weights = torch.empty(0, 4), torch.empty(0)

    # Execute / Assert
    with pytest.raises(NotEnoughClients):
        _run(name, updates, weights, reference=torch.ones(4))


def test_not_enough_clients_is_a_value_error() -> None:
    # Assert
    assert issubclass(NotEnoughClients, ValueError)


@pytest.mark.parametrize(
    ("rule", "setting", "pattern"),
    [
        (trimmed_mean, {"beta": 0.6}, r"beta=0\.6"),
        (trimmed_mean, {"beta": 0.5}, r"beta=0\.5"),
        (trimmed_mean, {"beta": -0.1}, r"beta=-0\.1"),
        (trimmed_mean, {"beta": float("nan")}, r"beta=nan"),
        (krum, {"f": -1}, r"f=-1"),
        (krum, {"f": 1.5}, r"f=1\.5"),
        (krum, {"f": 1, "m": 0}, r"m=0"),
        (bulyan, {"f": -1}, r"f=-1"),
        (geometric_median, {"max_iter": 0}, r"max_iter=0"),
        (geometric_median, {"eps": 0.0}, r"eps=0\.0"),
        (geometric_median, {"tol": -1.0}, r"tol=-1\.0"),
        (centered_clip, {"tau": 0.0}, r"tau=0\.0"),
        (centered_clip, {"iters": 0}, r"iters=0"),
        (centered_clip, {"start": "mean"}, r"start='mean'"),
        (centered_clip, {"state": {"previous": torch.zeros(2)}}, r"state\['previous'\]"),
        (foolsgold, {"kappa": 0.0}, r"kappa=0\.0"),
        (foolsgold, {"kappa": float("inf")}, r"kappa=inf"),
        (foolsgold, {"kappa": True}, r"kappa=True"),
        (foolsgold, {"history": torch.zeros(9, 2)}, r"history"),
        (foolsgold, {"history": torch.full((9, 3), math.nan)}, r"history"),
        (flame, {"noise_lambda": -0.1}, r"noise_lambda=-0\.1"),
        (flame, {"noise_lambda": math.nan}, r"noise_lambda=nan"),
        (flame, {"generator": None}, r"generator=None"),
        (rlr, {"theta": 0}, r"theta=0"),
        (rlr, {"theta": 2.5}, r"theta=2\.5"),
        (dnc, {"f": -1}, r"f=-1"),
        (dnc, {"f": 1.5}, r"f=1\.5"),
        (dnc, {"f": 1, "c": 0.0}, r"c=0\.0"),
        (dnc, {"f": 1, "niters": 0}, r"niters=0"),
        (dnc, {"f": 1, "b": 0}, r"b=0"),
        (dnc, {"f": 1, "generator": None}, r"generator=None"),
        (fltrust, {"reference": torch.ones(2)}, r"reference"),
        (fltrust, {"reference": torch.tensor([1.0, math.inf, 0.0])}, r"reference"),
        (fltrust, {"reference": torch.ones(3, dtype=torch.int64)}, r"reference"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_setting(
    rule: Callable[..., Aggregate], setting: dict[str, object], pattern: str
) -> None:
    # Prepare
    updates, weights = random_updates(0, 9, 3)
    keywords: dict[str, object] = {"generator": seeded()}
    if rule is rlr:
        keywords["theta"] = 1
    keywords.update(setting)

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern) as raised:
        rule(updates, weights, **keywords)
    assert not isinstance(raised.value, NotEnoughClients)


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize(
    ("updates", "weights"),
    [
        (torch.ones(5, 3), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])),  # a zero weight
        (torch.ones(5, 3), torch.tensor([1.0, 1.0, -2.0, 1.0, 1.0])),  # a negative weight
        (torch.ones(5, 3), torch.ones(4)),  # one weight short
        (torch.ones(5), torch.ones(5)),  # not stacked
        (torch.ones(5, 3, dtype=torch.int64), torch.ones(5)),  # integer updates
    ],
    ids=["zero-weight", "negative-weight", "length-mismatch", "1-d", "int-updates"],
)
def test_bad_inputs_raise_value_error(name: str, updates: Tensor, weights: Tensor) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as raised:
        _run(name, updates, weights, reference=torch.ones(3))
    assert not isinstance(raised.value, NotEnoughClients)
