from __future__ import annotations

import torch

from fedbackdoor.seeding import derive_seed, make_generator, seeded_init


def test_derived_seeds_are_stable_and_separate_streams() -> None:
    assert derive_seed(0, "train", 1, 2) == derive_seed(0, "train", 1, 2)
    assert derive_seed(0, "train", 1, 2) != derive_seed(0, "train", 2, 1)
    assert derive_seed(0, "sample") != derive_seed(1, "sample")
    assert 0 <= derive_seed(123, "x") < 2**63


def test_generators_with_the_same_tags_draw_the_same_numbers() -> None:
    a = torch.rand(5, generator=make_generator(7, "a"))
    b = torch.rand(5, generator=make_generator(7, "a"))
    c = torch.rand(5, generator=make_generator(7, "c"))

    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seeded_init_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)

    with seeded_init(5, "model"):
        first = torch.nn.Linear(4, 3).weight.detach().clone()
    with seeded_init(5, "model"):
        second = torch.nn.Linear(4, 3).weight.detach().clone()

    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), expected_next)
