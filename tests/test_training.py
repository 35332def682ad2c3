from __future__ import annotations

import copy

import pytest
import torch

from fedbackdoor.defenses.averaging import mean
from fedbackdoor.layout import Layout, trainable_names
from fedbackdoor.models import SmallCNN
from fedbackdoor.training import evaluate, train


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_fedavg_of_full_batch_steps_equals_one_step_on_the_union() -> None:
    # Two clients, one full-batch SGD step each from the same weights, averaged with weights
    # n_i / N, equal one full-batch step on the union: the union's mean loss is the n-weighted
    # mean of the clients' mean losses, so the gradients combine the same way.
    torch.manual_seed(0)
    start = SmallCNN(1, 3, (8, 8))
    (xa, ya), (xb, yb) = _data(7, 1), _data(13, 2)
    layout = Layout.of(start.state_dict(), trainable_names(start))
    base = layout.flatten(start.state_dict())
    updates = []
    for x, y in ((xa, ya), (xb, yb)):
        client = copy.deepcopy(start)
        train(client, x, y, epochs=1, batch_size=len(y), lr=0.1, generator=torch.Generator())
        updates.append(layout.flatten(client.state_dict()) - base)

    fedavg = base + mean(torch.stack(updates), torch.tensor([7.0, 13.0])).update
    central = copy.deepcopy(start)
    train(
        central,
        torch.cat([xa, xb]),
        torch.cat([ya, yb]),
        epochs=1,
        batch_size=20,
        lr=0.1,
        generator=torch.Generator(),
    )

    assert torch.allclose(fedavg, layout.flatten(central.state_dict()), atol=1e-6)


def test_training_is_reproducible_with_the_same_generator_and_learns() -> None:
    x, y = _data(64, 3)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()  # a learnable rule
    torch.manual_seed(0)
    start = SmallCNN(1, 2, (8, 8))
    a, b = copy.deepcopy(start), copy.deepcopy(start)

    ra = train(
        a, x, y, epochs=30, batch_size=16, lr=0.1, generator=torch.Generator().manual_seed(5)
    )
    train(b, x, y, epochs=30, batch_size=16, lr=0.1, generator=torch.Generator().manual_seed(5))

    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert ra.num_examples == 64 and ra.steps == 30 * 4
    assert evaluate(a, x, y)[0] > 0.9


def test_evaluate_counts_correct_predictions_exactly() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # predicts class 1 for every input
            return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)

    y = torch.tensor([1, 0, 1, 1, 0])

    acc, loss, nonfinite = evaluate(Fixed(), torch.zeros(5, 1, 2, 2), y, batch_size=2)

    assert acc == pytest.approx(3 / 5)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 1.0]]).repeat(5, 1), y)
    assert loss == pytest.approx(float(expected))
    assert nonfinite == 0.0


def test_a_nan_output_never_counts_as_the_target_class() -> None:
    # argmax of an all-NaN row is 0: a diverged model would "predict" target 0 everywhere.
    class Diverged(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.full((len(x), 3), float("nan"))
            out[0] = torch.tensor([5.0, 0.0, 0.0])  # one finite row, predicting class 0
            out[1, 0] = float("inf")  # inf beside NaNs: not finite either
            return out

    y = torch.zeros(4, dtype=torch.long)  # the backdoor test: every label is the target 0

    result = evaluate(Diverged(), torch.zeros(4, 1, 2, 2), y)

    assert result.accuracy == pytest.approx(1 / 4)  # only the finite row counts
    assert result.nonfinite == pytest.approx(3 / 4)


def test_train_can_stop_after_a_number_of_steps() -> None:
    model = SmallCNN(1, 3, (8, 8))

    result = train(
        model, *_data(40, 0), epochs=3, steps=7, batch_size=4, lr=0.1, generator=torch.Generator()
    )

    assert result.steps == 7


def test_train_rejects_empty_data_and_bad_settings() -> None:
    model = SmallCNN(1, 2, (8, 8))
    with pytest.raises(ValueError, match="empty"):
        train(
            model,
            torch.zeros(0, 1, 8, 8),
            torch.zeros(0, dtype=torch.long),
            epochs=1,
            batch_size=4,
            lr=0.1,
            generator=torch.Generator(),
        )
    with pytest.raises(ValueError, match="batch_size=0"):
        train(model, *_data(4, 0), epochs=1, batch_size=0, lr=0.1, generator=torch.Generator())
