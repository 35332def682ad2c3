"""STRIP on models whose output distributions are known, and on a toy trojaned model."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from fedbackdoor.posttrain import ServerData
from fedbackdoor.posttrain.strip import (
    accepted,
    detection_boundary,
    strip,
    strip_entropy,
    superimpose,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These networks are tiny: a second intra-op thread only adds synchronisation, which on a
    busy machine costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FixedLogits(nn.Module):
    """Returns the same logits for every input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: Tensor) -> Tensor:
        return self.get_buffer("logits").expand(x.shape[0], -1)


class ToyTrojan(nn.Module):
    """A random linear classifier over the pixels of 1x4x4 images, plus a backdoor: a bright
    top-left pixel (the trigger) adds 100 to the logit of class 0."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        weights = torch.randn(16, 4, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("weights", weights)

    def forward(self, x: Tensor) -> Tensor:
        logits = x.flatten(1) @ self.get_buffer("weights")
        trigger = torch.relu(x[:, 0, 0, 0] - 0.5) * 200.0
        return logits + trigger.unsqueeze(1) * torch.eye(4)[0]


def clean_images(count: int, generator: torch.Generator) -> Tensor:
    """Images in [0, 0.5) whose top-left pixel is 0, so blends of two never hold the trigger."""
    x = 0.5 * torch.rand(count, 1, 4, 4, generator=generator)
    x[:, 0, 0, 0] = 0.0
    return x


def toy_data(generator: torch.Generator, *, triggered: bool = True) -> ServerData:
    x = clean_images(800, generator)
    stamped = clean_images(2000, generator)
    stamped[:, 0, 0, 0] = 1.0
    return ServerData(
        x=x,
        y=torch.zeros(800, dtype=torch.int64),
        num_classes=4,
        x_test_clean=clean_images(2000, generator),
        x_test_triggered=stamped if triggered else stamped[:0],
    )


def test_superimpose_adds_and_saturates() -> None:
    # Prepare
    x = torch.tensor([[0.8, 0.2]])
    overlays = torch.tensor([[0.7, 0.1]])

    # Execute
    saturated = superimpose(x, overlays)
    summed = superimpose(x, overlays, saturate=False)

    # Assert: the authors' cv2.addWeighted(x, 1, overlay, 1, 0) on float images is the sum
    torch.testing.assert_close(saturated, torch.tensor([[1.0, 0.3]]))
    torch.testing.assert_close(summed, torch.tensor([[1.5, 0.3]]))
    torch.testing.assert_close(x, torch.tensor([[0.8, 0.2]]))  # inputs untouched


@pytest.mark.parametrize(
    ("probabilities", "bits"),
    [([0.5, 0.25, 0.25], 1.5), ([0.25, 0.25, 0.25, 0.25], 2.0), ([0.5, 0.5], 1.0)],
)
def test_entropy_of_a_known_distribution_in_bits(probabilities: list[float], bits: float) -> None:
    # Prepare
    model = FixedLogits([math.log(p) for p in probabilities])
    gen = torch.Generator().manual_seed(0)
    x, pool = torch.rand(5, 1, 2, 2, generator=gen), torch.rand(3, 1, 2, 2, generator=gen)

    # Execute
    entropy = strip_entropy(model, x, pool, n=4, generator=gen, batch_size=8)

    # Assert
    torch.testing.assert_close(entropy, torch.full((5,), bits, dtype=torch.float64))


def test_entropy_is_nan_where_a_blend_has_non_finite_logits() -> None:
    # Prepare: NaN logits for blends whose first pixel is bright
    class NanWhenBright(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            logits = torch.zeros(x.shape[0], 2)
            logits[x[:, 0, 0, 0] > 0.5] = torch.nan
            return logits

    x = torch.tensor([0.0, 0.9]).view(2, 1, 1, 1)
    pool = torch.zeros(1, 1, 1, 1)

    # Execute
    entropy = strip_entropy(NanWhenBright(), x, pool, n=3, generator=torch.Generator())

    # Assert: input 0 reads a uniform 1 bit; input 1 is NaN and never accepted
    assert entropy[0].item() == pytest.approx(1.0)
    assert math.isnan(entropy[1].item())
    assert accepted(entropy, 0.5).tolist() == [True, False]


def test_entropy_does_not_depend_on_the_batch_size() -> None:
    # Prepare
    model = ToyTrojan()
    gen = torch.Generator().manual_seed(3)
    x, pool = clean_images(30, gen), clean_images(20, gen)

    # Execute
    whole = strip_entropy(model, x, pool, n=7, generator=torch.Generator().manual_seed(4))
    pieces = strip_entropy(
        model, x, pool, n=7, generator=torch.Generator().manual_seed(4), batch_size=10
    )

    # Assert
    torch.testing.assert_close(whole, pieces)


def test_quantile_boundary_by_hand() -> None:
    # Prepare: sorted 0.1 .. 0.5, positions frr * (5 - 1)
    entropy = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3])

    # Execute
    at_order_statistic = detection_boundary(entropy, 0.25)  # position 1
    between = detection_boundary(entropy, 0.1)  # position 0.4: 0.1 + 0.4 * (0.2 - 0.1)

    # Assert
    assert at_order_statistic == pytest.approx(0.2)
    assert between == pytest.approx(0.14)
    assert accepted(entropy, between).tolist() == [True, False, True, True, True]
    # only an entropy below the boundary is rejected: 0.2 at the boundary 0.2 is accepted
    assert accepted(entropy, at_order_statistic).tolist() == [True, False, True, True, True]


def test_quantile_boundary_agrees_with_torch_quantile() -> None:
    # Prepare
    entropy = torch.rand(101, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    # Execute
    boundaries = [detection_boundary(entropy, q) for q in (0.01, 0.05, 0.333)]

    # Assert
    expected = [float(torch.quantile(entropy, q)) for q in (0.01, 0.05, 0.333)]
    assert boundaries == pytest.approx(expected)


def test_quantile_boundary_ranks_nan_lowest() -> None:
    # Prepare
    entropy = torch.tensor([math.nan, 0.2, 0.3, 0.4, 0.5])

    # Execute
    among_nan = detection_boundary(entropy, 0.1)  # between the NaN and 0.2
    above_nan = detection_boundary(entropy, 0.25)

    # Assert
    assert among_nan == -math.inf
    assert above_nan == pytest.approx(0.2)
    assert accepted(entropy, among_nan).tolist() == [False, True, True, True, True]


def test_normal_boundary_is_the_fitted_percentile() -> None:
    # Prepare: mean 3, maximum-likelihood std sqrt(2); the 1 % point of N(0, 1) is -2.3263479
    entropy = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])

    # Execute
    threshold = detection_boundary(entropy, 0.01, rule="normal")

    # Assert
    assert threshold == pytest.approx(3.0 - 2.3263478740 * math.sqrt(2.0))


def test_strip_separates_a_toy_trojan() -> None:
    # Prepare
    data = toy_data(torch.Generator().manual_seed(6))

    # Execute
    outcome = strip(
        ToyTrojan(), data, generator=torch.Generator().manual_seed(7), device="cpu", earlier={},
        n=10, frr=0.05,
    )  # fmt: skip

    # Assert: every triggered blend is class 0 (entropy ~ 0): none accepted; the clean FRR is
    # near its target (400 calibration inputs set it, 2000 clean inputs measure it)
    fields = {name: float(value) for name, value in outcome.fields.items()}
    assert outcome.model is None
    assert fields["far"] == 0.0
    assert abs(fields["frr"] - 0.05) < 0.03
    assert fields["frr_target"] == 0.05
    assert fields["entropy_triggered_mean"] < 1e-6
    assert fields["entropy_triggered_mean"] < fields["threshold"] < fields["entropy_clean_mean"]
    assert fields["nonfinite"] == 0.0


def test_strip_without_triggered_inputs_reports_far_nan() -> None:
    # Prepare
    data = toy_data(torch.Generator().manual_seed(6), triggered=False)

    # Execute
    outcome = strip(
        ToyTrojan(), data, generator=torch.Generator().manual_seed(7), device="cpu", earlier={},
        n=2, test_size=100,
    )  # fmt: skip

    # Assert
    fields = {name: float(value) for name, value in outcome.fields.items()}
    assert math.isnan(fields["far"])
    assert math.isnan(fields["entropy_triggered_mean"])
    assert 0.0 <= fields["frr"] <= 1.0


def test_strip_is_deterministic_given_the_generator() -> None:
    # Prepare
    data = toy_data(torch.Generator().manual_seed(6))

    def run(seed: int) -> dict[str, float | int | bool | str]:
        return strip(
            ToyTrojan(), data, generator=torch.Generator().manual_seed(seed), device="cpu",
            earlier={}, n=3, test_size=200,
        ).fields  # fmt: skip

    # Execute
    first, again, other = run(8), run(8), run(9)

    # Assert
    assert first == again
    assert first["threshold"] != other["threshold"]


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"n": 0}, "n=0"),
        ({"frr": 0.0}, "frr=0.0"),
        ({"frr": 1.0}, "frr=1.0"),
        ({"calibration": 1.0}, "calibration=1.0"),
        ({"calibration": 0.0001}, "leaves 0 calibration inputs"),
        ({"boundary": "median"}, "boundary='median'"),
        ({"test_size": 0}, "test_size=0"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_settings_raise(setting: dict[str, object], match: str) -> None:
    # Prepare
    data = toy_data(torch.Generator().manual_seed(6))

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        strip(
            ToyTrojan(), data, generator=torch.Generator(), device="cpu", earlier={},
            **setting,  # type: ignore[arg-type]
        )  # fmt: skip
