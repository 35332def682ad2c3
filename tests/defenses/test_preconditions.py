"""Every rule's precondition on the number of clients raises NotEnoughClients naming it.

The message names the requirement, its value for the settings, the ``n`` received and the
settings, e.g. "bulyan needs n >= 4f + 3 = 15 clients, got n=10 (f=3)", so that a skipped round
can be read from the log. The rules without another precondition need one client.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import pytest
import torch

from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.base import Aggregate, NotEnoughClients
from fedbackdoor.defenses.centered_clip import centered_clip
from fedbackdoor.defenses.clustering import dnc, flame
from fedbackdoor.defenses.coordinatewise import median, trimmed_mean
from fedbackdoor.defenses.distance import bulyan, krum
from fedbackdoor.defenses.dp import dp_adaptive_clipping, dp_fixed_clipping
from fedbackdoor.defenses.geometric_median import geometric_median
from fedbackdoor.defenses.robust_lr import rlr
from fedbackdoor.defenses.trust import fltrust, foolsgold

# (id, rule, too few clients, just enough clients, message for too few)
CASES: list[tuple[str, Callable[..., Aggregate], int, int, str]] = [
    (
        "bulyan",
        functools.partial(bulyan, f=3),
        10,
        15,
        "bulyan needs n >= 4f + 3 = 15 clients, got n=10 (f=3)",
    ),
    (
        "bulyan-f0",
        functools.partial(bulyan, f=0),
        2,
        3,
        "bulyan needs n >= 4f + 3 = 3 clients, got n=2 (f=0)",
    ),
    (
        "krum",
        functools.partial(krum, f=1),
        4,
        5,
        "krum needs n >= 2f + 3 = 5 clients, got n=4 (f=1, m=1)",
    ),
    (
        "multi-krum-f",
        functools.partial(krum, f=2, m=3),
        6,
        7,
        "krum needs n >= 2f + 3 = 7 clients, got n=6 (f=2, m=3)",
    ),
    (
        "multi-krum-m",
        functools.partial(krum, f=1, m=6),
        5,
        6,
        "krum needs n >= m = 6 clients to select m updates, got n=5 (f=1, m=6)",
    ),
    (
        "rlr",
        functools.partial(rlr, theta=4),
        3,
        4,
        "rlr needs n >= theta = 4 clients (no sign vote can reach theta otherwise, and every "
        "coordinate would be reversed), got n=3 (theta=4)",
    ),
    (
        "dnc",
        functools.partial(dnc, f=2, c=1.5, generator=torch.Generator()),
        3,
        4,
        "dnc needs n >= floor(c * f) + 1 = 4 clients (it removes floor(c * f) = 3 per "
        "iteration), got n=3 (f=2, c=1.5)",
    ),
    (
        "trimmed_mean",
        functools.partial(trimmed_mean, beta=0.2),
        0,
        1,
        "trimmed_mean needs n - 2 floor(beta * n) >= 1 clients left after trimming k=0 from "
        "each end, got n=0 (beta=0.2)",
    ),
    ("mean", mean, 0, 1, "mean needs n >= 1 clients, got n=0"),
    ("median", median, 0, 1, "median needs n >= 1 clients, got n=0"),
    ("geometric_median", geometric_median, 0, 1, "geometric_median needs n >= 1 clients, got n=0"),
    ("centered_clip", centered_clip, 0, 1, "centered_clip needs n >= 1 clients, got n=0"),
    ("foolsgold", foolsgold, 0, 1, "foolsgold needs n >= 1 clients, got n=0"),
    (
        "flame",
        functools.partial(flame, generator=torch.Generator()),
        0,
        1,
        "flame needs n >= 1 clients, got n=0",
    ),
    (
        "fltrust",
        functools.partial(fltrust, reference=torch.ones(3)),
        0,
        1,
        "fltrust needs n >= 1 clients, got n=0",
    ),
    (
        "dp_fixed_clipping",
        functools.partial(
            dp_fixed_clipping,
            noise_multiplier=0.1,
            clipping_norm=1.0,
            num_sampled_clients=10,
            generator=torch.Generator(),
        ),
        0,
        1,
        "dp_fixed_clipping needs n >= 1 clients, got n=0",
    ),
    (
        "dp_adaptive_clipping",
        functools.partial(
            dp_adaptive_clipping,
            noise_multiplier=0.1,
            num_sampled_clients=10,
            generator=torch.Generator(),
            state={},
        ),
        0,
        1,
        "dp_adaptive_clipping needs n >= 1 clients, got n=0",
    ),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("rule", "too_few", "enough", "message"), [c[1:] for c in CASES], ids=IDS)
def test_too_few_clients_raise_not_enough_clients_naming_the_requirement(
    rule: Callable[..., Aggregate], too_few: int, enough: int, message: str
) -> None:
    # Prepare
    updates = torch.randn(too_few, 3, generator=torch.Generator().manual_seed(too_few))

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=f"^{re.escape(message)}$"):
        rule(updates, torch.ones(too_few))


@pytest.mark.parametrize(("rule", "too_few", "enough", "message"), [c[1:] for c in CASES], ids=IDS)
def test_the_required_number_of_clients_is_enough(
    rule: Callable[..., Aggregate], too_few: int, enough: int, message: str
) -> None:
    # Prepare
    updates = torch.randn(enough, 3, generator=torch.Generator().manual_seed(enough))

    # Execute
    result = rule(updates, torch.ones(enough))

    # Assert
    assert result.update.shape == (3,)
