"""Fine-pruning on hand-built networks whose channel activations and accuracies are known."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from fedbackdoor.models import SmallCNN
from fedbackdoor.posttrain import Outcome, ServerData
from fedbackdoor.posttrain.fine_pruning import (
    channel_activations,
    fine_pruning,
    last_conv,
    mask_channels,
    prune_by_activation,
)

# Four groups of 1x1 "images" with 4 input channels: a sample of group g is SCALE[g] * e_g.
# The network copies input channel c to conv channel c (identity 1x1 convolution), and the
# head predicts class 1 when the channels sum to more than 0.05, else class 0. Every label is
# 1, so a sample is classified correctly exactly while its group's channel is not pruned.
GROUP_SIZES = (10, 1, 1, 8)  # 20 samples
SCALE = (0.2, 0.6, 0.4, 0.2)
# Mean activation of channel c = SCALE[c] * GROUP_SIZES[c] / 20 = (0.1, 0.03, 0.02, 0.08):
# increasing order 2, 1, 3, 0; pruning them in turn leaves accuracy 0.95, 0.90, 0.50, (0.0).
MEANS = (0.1, 0.03, 0.02, 0.08)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These networks are tiny: a second intra-op thread only adds synchronisation, which on a
    busy machine costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def group_data() -> tuple[Tensor, Tensor]:
    rows = [SCALE[g] * torch.eye(4)[g] for g, size in enumerate(GROUP_SIZES) for _ in range(size)]
    x = torch.stack(rows).view(-1, 4, 1, 1)
    y = torch.ones(x.shape[0], dtype=torch.int64)
    return x, y


class GroupNet(nn.Module):
    """Identity 1x1 convolution, ReLU, and a head voting class 1 above a total of 0.05."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, kernel_size=1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            assert self.conv.bias is not None
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
            self.head.bias.copy_(torch.tensor([0.05, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def group_model() -> GroupNet:
    return GroupNet()


def server_data(x: Tensor, y: Tensor) -> ServerData:
    return ServerData(x=x, y=y, num_classes=2, x_test_clean=x[:0], x_test_triggered=x[:0])


def test_last_conv_is_the_last_in_module_order() -> None:
    # Prepare
    model = SmallCNN(1, 10)

    # Execute
    conv = last_conv(model)

    # Assert
    assert conv is model.features[4]


def test_last_conv_names_the_model_without_a_convolution() -> None:
    # Prepare
    class OnlyDense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

    # Execute / Assert
    with pytest.raises(ValueError, match="OnlyDense has no nn.Conv2d"):
        last_conv(OnlyDense())


def test_fine_pruning_raises_on_a_model_without_a_convolution() -> None:
    # Prepare
    x, y = group_data()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))

    # Execute / Assert
    with pytest.raises(ValueError, match="Sequential has no nn.Conv2d"):
        fine_pruning(
            model, server_data(x, y), generator=torch.Generator(), device="cpu", earlier={}
        )


def test_channel_activations_are_the_mean_relu_output_over_samples_and_positions() -> None:
    # Prepare: a 1x1 conv with weights (1, -1, 2, 0.5) on 2x2 images of constant value 1, 0.5
    # and 0.25 (mean 1.75 / 3); in batches of 2, so the last batch is smaller.
    conv = nn.Conv2d(1, 4, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5]).view(4, 1, 1, 1))
        assert conv.bias is not None
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.Flatten())
    x = torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()

    # Execute
    means = channel_activations(model, conv, x, batch_size=2)

    # Assert: channel 1 is negative before the ReLU, so its mean activation is 0
    mean_x = 1.75 / 3
    expected = torch.tensor([mean_x, 0.0, 2 * mean_x, 0.5 * mean_x], dtype=torch.float64)
    torch.testing.assert_close(means, expected)


def test_channel_activations_of_the_hand_built_groups() -> None:
    # Prepare
    x, _ = group_data()
    model = group_model()

    # Execute
    means = channel_activations(model, model.conv, x, batch_size=7)

    # Assert
    torch.testing.assert_close(means, torch.tensor(MEANS, dtype=torch.float64))


@pytest.mark.parametrize(
    ("max_acc_drop", "expected_pruned", "expected_acc"),
    [
        (0.04, [], 1.0),  # pruning channel 2 already costs 0.05
        (0.05, [2], 0.95),  # a drop of exactly max_acc_drop is within
        (0.10, [1, 2], 0.90),
        (0.49, [1, 2], 0.90),  # channel 3 next would cost 0.5
        (1.00, [1, 2, 3], 0.50),  # never all channels, whatever the accuracy
    ],
)
def test_prune_stops_before_the_accuracy_drop_exceeds_the_limit(
    max_acc_drop: float, expected_pruned: list[int], expected_acc: float
) -> None:
    # Prepare
    x, y = group_data()
    model = group_model()

    # Execute
    pruning = prune_by_activation(model, model.conv, x, y, max_acc_drop=max_acc_drop)

    # Assert
    assert pruning.pruned.nonzero().flatten().tolist() == expected_pruned
    assert pruning.acc_before == 1.0
    assert pruning.acc_pruned == pytest.approx(expected_acc)


def test_prune_in_steps_and_under_the_share_cap() -> None:
    # Prepare
    x, y = group_data()
    models = [group_model() for _ in range(3)]

    # Execute: levels of 2 channels (then the cap, 3); a cap of floor(0.5 * 4) = 2 channels
    coarse = prune_by_activation(models[0], models[0].conv, x, y, max_acc_drop=0.05, step=2)
    stepped = prune_by_activation(models[1], models[1].conv, x, y, max_acc_drop=1.0, step=2)
    capped = prune_by_activation(models[2], models[2].conv, x, y, max_acc_drop=1.0, max_share=0.5)

    # Assert: the first level of 2 already costs 0.10, so nothing is kept
    assert coarse.pruned.nonzero().flatten().tolist() == []
    assert stepped.pruned.nonzero().flatten().tolist() == [1, 2, 3]
    assert capped.pruned.nonzero().flatten().tolist() == [1, 2]


def test_channel_activations_of_a_layer_the_model_does_not_use_raises() -> None:
    # Prepare
    x, _ = group_data()

    # Execute / Assert
    with pytest.raises(ValueError, match="never ran"):
        channel_activations(group_model(), nn.Conv2d(4, 4, 1), x)


def test_a_rejected_level_leaves_its_channels_intact() -> None:
    # Prepare
    x, y = group_data()
    model = group_model()
    conv = model.conv

    # Execute: level 3 (channel 3) is tried and rejected
    prune_by_activation(model, conv, x, y, max_acc_drop=0.1)

    # Assert: channels 1, 2 zeroed; channels 0, 3 keep their identity filters and still fire
    torch.testing.assert_close(conv.weight.view(4, 4)[[1, 2]], torch.zeros(2, 4))
    torch.testing.assert_close(conv.weight.view(4, 4)[[0, 3]], torch.eye(4)[[0, 3]])
    with torch.no_grad():
        out = conv(x)
    assert out[:, 1:3].abs().sum() == 0
    assert out[:, 0].sum() > 0 and out[:, 3].sum() > 0


def test_fine_pruning_prunes_the_least_active_channels_and_reports_them() -> None:
    # Prepare
    x, y = group_data()
    model = group_model()

    # Execute
    outcome = fine_pruning(
        model, server_data(x, y), generator=torch.Generator().manual_seed(0), device="cpu",
        earlier={}, max_acc_drop=0.1, fine_tune_epochs=1, lr=0.01, batch_size=4,
    )  # fmt: skip

    # Assert
    assert outcome.model is model
    assert outcome.fields == {
        "pruned_channels": 2,
        "channels": 4,
        "pruned_share": 0.5,
        "server_acc_before": 1.0,
        "server_acc_pruned": pytest.approx(0.9),
        "layer": "conv",
    }
    stage = outcome.stages["pruned"]
    assert isinstance(stage, GroupNet) and stage is not model
    with torch.no_grad():
        out = stage.conv(x)
    assert out[:, 1:3].abs().sum() == 0


def test_pruned_channels_stay_zero_through_fine_tuning() -> None:
    # Prepare: a SmallCNN (8x8 inputs, to be quick) on random data, pruned as far as the cap
    # allows (30 of its 32 last-layer channels)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN(1, 10, image_size=(8, 8))
    before = copy.deepcopy(model)

    # Execute
    outcome = fine_pruning(
        model, server_data(x, y), generator=torch.Generator().manual_seed(2), device="cpu",
        earlier={}, max_acc_drop=1.0, fine_tune_epochs=3, lr=0.1, batch_size=16,
    )  # fmt: skip

    # Assert
    assert outcome.fields["pruned_channels"] == 30
    conv, conv_before = last_conv(model), last_conv(before)
    pruned = conv.get_buffer("channel_mask") == 0
    assert int(pruned.sum()) == 30
    outputs: list[Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert outputs[0][:, pruned].abs().sum() == 0
    assert conv.bias is not None
    assert conv.weight[pruned].abs().sum() == 0 and conv.bias[pruned].abs().sum() == 0
    # fine-tuning did change the kept channels, and left the pruned stage as it was
    assert not torch.equal(conv.weight[~pruned], conv_before.weight[~pruned])
    stage_conv = last_conv(outcome.stages["pruned"])
    torch.testing.assert_close(stage_conv.weight[~pruned], conv_before.weight[~pruned])
    assert stage_conv.weight[pruned].abs().sum() == 0


def test_mask_follows_a_deep_copy_and_can_be_replaced() -> None:
    # Prepare
    x, _ = group_data()
    model = group_model()
    mask_channels(model.conv, torch.tensor([True, False, False, False]), zero_weights=False)

    # Execute
    twin = copy.deepcopy(model)
    mask_channels(twin.conv, torch.tensor([False, True, False, False]), zero_weights=False)

    # Assert: each model uses its own mask, one hook each
    with torch.no_grad():
        out, twin_out = model.conv(x), twin.conv(x)
    assert out[:, 0].abs().sum() == 0 and out[:, 1].abs().sum() > 0
    assert twin_out[:, 1].abs().sum() == 0 and twin_out[:, 0].abs().sum() > 0
    assert len(twin.conv._forward_hooks) == 1


def test_when_flagged_skips_when_neural_cleanse_flagged_nothing() -> None:
    # Prepare
    x, y = group_data()
    model = group_model()
    earlier = {"neural_cleanse": Outcome(fields={"flagged": False})}

    # Execute
    outcome = fine_pruning(
        model, server_data(x, y), generator=torch.Generator(), device="cpu", earlier=earlier,
        when="flagged",
    )  # fmt: skip

    # Assert
    assert outcome.skipped == "Neural Cleanse flagged no label"
    assert outcome.model is None and outcome.fields == {}
    torch.testing.assert_close(model.conv.weight.view(4, 4), torch.eye(4))


def test_when_flagged_runs_when_neural_cleanse_flagged_a_label() -> None:
    # Prepare
    x, y = group_data()
    earlier = {"neural_cleanse": Outcome(fields={"flagged": True})}

    # Execute
    outcome = fine_pruning(
        group_model(), server_data(x, y), generator=torch.Generator(), device="cpu",
        earlier=earlier, when="flagged", max_acc_drop=0.05, fine_tune_epochs=0,
    )  # fmt: skip

    # Assert
    assert outcome.skipped is None
    assert outcome.fields["pruned_channels"] == 1


def test_when_flagged_without_neural_cleanse_before_it_raises() -> None:
    # Prepare
    x, y = group_data()

    # Execute / Assert
    with pytest.raises(ValueError, match="needs posttrain neural_cleanse before it"):
        fine_pruning(
            group_model(), server_data(x, y), generator=torch.Generator(), device="cpu",
            earlier={"strip": Outcome()}, when="flagged",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"max_acc_drop": -0.01}, "max_acc_drop=-0.01"),
        ({"step": 0}, "step=0"),
        ({"max_share": 1.0}, "max_share=1.0"),
        ({"fine_tune_epochs": -1}, "fine_tune_epochs=-1"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"when": "sometimes"}, "when='sometimes'"),
    ],
)
def test_bad_settings_raise(setting: dict[str, object], match: str) -> None:
    # Prepare
    x, y = group_data()

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        fine_pruning(
            group_model(), server_data(x, y), generator=torch.Generator(), device="cpu",
            earlier={}, **setting,  # type: ignore[arg-type]
        )  # fmt: skip
