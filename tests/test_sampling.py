from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.sampling import AttackSchedule, choose_malicious, malicious_count, sample_round
from fedbackdoor.seeding import make_generator


def test_choose_malicious_draws_round_fraction_distinct_clients() -> None:
    chosen = choose_malicious(20, 0.1, generator=make_generator(0, "m"))

    assert len(chosen) == 2
    assert all(0 <= c < 20 for c in chosen)


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.04, 0), (0.05, 1), (1.0, 10)])
def test_choose_malicious_rounds_the_count(fraction: float, expected: int) -> None:
    assert len(choose_malicious(10, fraction, generator=make_generator(1))) == expected


def test_choose_malicious_rejects_fraction_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="attack.fraction=1.5"):
        choose_malicious(10, 1.5, generator=torch.Generator())


@pytest.mark.parametrize(
    ("num_clients", "fraction", "expected"),
    [
        (50, 0.29, 15),  # 14.5 exactly; in floats 0.29 * 50 = 14.499999999999998
        (20, 0.1, 2),
        (10, 0.05, 1),  # 0.5 rounds up
        (10, 0.15, 2),  # 1.5 rounds up (round() would give 2 too, but 0 for 0.5)
        (10, 0.7, 7),  # 0.7 * 10 = 7.000000000000001 in floats
        (100, 0.145, 15),  # 14.5 exactly; 14.499999999999998 in floats
        (10, 0.04, 0),
        (10, 0.0, 0),
        (10, 1.0, 10),
        (0, 0.5, 0),
        (7, 1, 7),  # an int fraction (YAML `1`)
    ],
)
def test_malicious_count_rounds_the_typed_decimal_half_up(
    num_clients: int, fraction: float, expected: int
) -> None:
    assert malicious_count(num_clients, fraction) == expected


@settings(max_examples=300, deadline=None)
@given(
    num_clients=st.integers(min_value=0, max_value=10_000),
    digits=st.integers(min_value=0, max_value=6),
    data=st.data(),
)
def test_malicious_count_equals_exact_rational_rounding(
    num_clients: int, digits: int, data: st.DataObject
) -> None:
    # Prepare: the user types the decimal k / 10**digits in [0, 1]
    scale = 10**digits
    k = data.draw(st.integers(min_value=0, max_value=scale))
    # Exact half-up rounding of k * n / scale in integers only: floor((2kn + scale) / (2 scale)).
    expected = (2 * k * num_clients + scale) // (2 * scale)

    # Execute: the float the user's decimal parses to
    count = malicious_count(num_clients, k / scale)

    # Assert
    assert count == expected
    assert 0 <= count <= num_clients


@pytest.mark.parametrize(
    ("num_clients", "fraction", "message"),
    [
        (10, -0.1, "attack.fraction"),
        (10, float("nan"), "attack.fraction"),
        (10, "0.1", "attack.fraction"),
        (-1, 0.1, "num_clients"),
        (2.0, 0.1, "num_clients"),
    ],
)
def test_malicious_count_rejects_bad_arguments(
    num_clients: object, fraction: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        malicious_count(num_clients, fraction)  # type: ignore[arg-type]


def test_same_seed_same_rounds_and_different_seed_different_rounds() -> None:
    def rounds(seed: int) -> list[tuple[int, ...]]:
        gen = make_generator(seed, "sample")
        return [
            sample_round(50, 10, frozenset({1, 2}), per_round=None, generator=gen).partitions
            for _ in range(5)
        ]

    assert rounds(3) == rounds(3)
    assert rounds(3) != rounds(4)


def test_fixed_set_marks_exactly_the_sampled_malicious_clients() -> None:
    malicious = frozenset({0, 5, 7})
    gen = make_generator(0)
    for _ in range(20):
        sample = sample_round(10, 6, malicious, per_round=None, generator=gen)

        assert list(sample.partitions) == sorted(set(sample.partitions))
        assert len(sample.partitions) == 6
        assert sample.malicious == tuple(p in malicious for p in sample.partitions)


def test_per_round_puts_exactly_m_malicious_clients_in_every_sample() -> None:
    malicious = frozenset({2, 3, 9})
    gen = make_generator(0)
    seen = set()
    for _ in range(30):
        sample = sample_round(20, 5, malicious, per_round=2, generator=gen)

        assert sample.num_malicious == 2
        seen |= {p for p, m in zip(sample.partitions, sample.malicious, strict=True) if m}
    assert seen == malicious  # every attacker gets its turn


@pytest.mark.parametrize(
    ("per_round", "clients_per_round", "message"),
    [(4, 5, "attack.per_round=4"), (3, 2, "attack.per_round=3")],
)
def test_per_round_beyond_what_exists_is_rejected(
    per_round: int, clients_per_round: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sample_round(
            10,
            clients_per_round,
            frozenset({1, 2, 3}),
            per_round=per_round,
            generator=torch.Generator(),
        )


def test_clients_per_round_above_population_is_rejected() -> None:
    with pytest.raises(ValueError, match="clients_per_round=11"):
        sample_round(10, 11, frozenset(), per_round=None, generator=torch.Generator())


@pytest.mark.parametrize(
    ("start", "end", "every", "expected"),
    [
        (1, None, 1, [1, 2, 3, 4, 5, 6, 7, 8]),
        (3, 3, 1, [3]),  # single shot
        (2, 6, 2, [2, 4, 6]),
        (5, None, 3, [5, 8]),
    ],
)
def test_attack_schedule_rounds(
    start: int, end: int | None, every: int, expected: list[int]
) -> None:
    schedule = AttackSchedule(start, end, every)

    assert [r for r in range(1, 9) if schedule.active(r)] == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, None, 1), "attack.start_round=0"),
        ((4, 3, 1), "attack.end_round=3"),
        ((1, None, 0), "attack.every=0"),
    ],
)
def test_attack_schedule_rejects_bad_settings(
    args: tuple[int, int | None, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AttackSchedule(*args)
