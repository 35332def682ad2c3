from __future__ import annotations

import math

import pytest
import torch

from fedbackdoor.attacks.poison import backdoor_testset
from fedbackdoor.attacks.triggers import square
from fedbackdoor.metrics import Evaluator, detection


class AlwaysTarget(torch.nn.Module):
    """Classifies every input as class 2, the attack's target."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 3)
        logits[:, 2] = 1.0
        return logits


class TriggerDetector(torch.nn.Module):
    """A perfectly backdoored model: class 2 if the bottom-right pixel is white, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 3)
        hit = x[:, 0, -2, -2] == 1.0
        logits[hit, 2] = 1.0
        logits[~hit, 0] = 1.0
        return logits


def _evaluator() -> Evaluator:
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.tensor([0, 0, 1, 2, 2, 0])
    trigger = square(image_size=(8, 8), size=2, location="bottom_right")
    x_bd, y_bd = backdoor_testset(x, y, trigger=trigger, target_label=2)
    return Evaluator(x, y, x_bd, y_bd, batch_size=4)


def test_backdoor_accuracy_leaves_out_inputs_of_the_target_class() -> None:
    evaluator = _evaluator()

    assert len(evaluator.y_backdoor) == 4  # the two inputs labelled 2 are not backdoor tests
    assert torch.all(evaluator.y_backdoor == 2)


def test_a_constant_target_classifier_scores_full_backdoor_and_its_share_of_main() -> None:
    out = _evaluator()(AlwaysTarget())

    assert out["backdoor_acc"] == 1.0
    assert out["main_acc"] == pytest.approx(2 / 6)


def test_a_backdoored_model_is_caught_by_the_triggered_test_set() -> None:
    out = _evaluator()(TriggerDetector())

    assert out["backdoor_acc"] == 1.0
    assert out["main_acc"] == pytest.approx(3 / 6)  # clean inputs -> class 0: three are right


def test_detection_counts_by_hand() -> None:
    flagged = [True, True, False, False, True]
    malicious = [True, False, True, False, False]

    d = detection(flagged, malicious)

    assert (d.tp, d.fp, d.fn, d.tn) == (1, 2, 1, 1)
    assert d.tpr == pytest.approx(1 / 2) and d.fpr == pytest.approx(2 / 3)


def test_detection_rates_are_nan_without_positives_or_negatives() -> None:
    assert math.isnan(detection([False, True], [False, False]).tpr)
    assert math.isnan(detection([True], [True]).fpr)
    with pytest.raises(ValueError, match="2 flags for 3 clients"):
        detection([True, False], [True, False, True])
