"""The post-training runner (fedbackdoor.posttrain.runner): checkpoints, the held-out split,
before/after evaluation, a failing defense recorded while the others go on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from fedbackdoor.config import compose_config
from fedbackdoor.experiment import build_data, build_model
from fedbackdoor.posttrain import Outcome, ServerData
from fedbackdoor.posttrain.runner import PostTrainer, checkpoints

HERE = "tests.posttrain.test_runner"


def always_target(model: nn.Module, data: ServerData, **_: object) -> Outcome:
    """A 'repair' that makes the model predict class 1 for everything, and flags labels 0 2."""
    repaired = nn.Sequential(nn.Flatten(), nn.Linear(data.x[0].numel(), data.num_classes))
    with torch.no_grad():
        repaired[1].weight.zero_()
        repaired[1].bias.copy_(torch.arange(data.num_classes) == 1)
    return Outcome(model=repaired, fields={"flagged_labels": "0 2", "seen": len(data.y)})


def detector(
    model: nn.Module, data: ServerData, *, earlier: Mapping[str, Outcome], **_: object
) -> Outcome:
    return Outcome(fields={"saw_earlier": " ".join(earlier)})


def broken(model: nn.Module, data: ServerData, **_: object) -> Outcome:
    raise ValueError("no convolution in this model")


def test_checkpoints_are_every_kth_round_and_the_last() -> None:
    assert checkpoints(10, None) == [10]
    assert checkpoints(10, 4) == [4, 8, 10]
    assert checkpoints(9, 3) == [3, 6, 9]
    with pytest.raises(ValueError, match=r"posttrain\.every=0"):
        checkpoints(10, 0)


def test_rows_measure_before_and_after_on_the_held_out_rest_and_keep_going_after_a_failure(
    tmp_path: Path,
) -> None:
    cfg = compose_config(
        [
            "dataset=synthetic",
            "num_rounds=3",
            "posttrain.server_size=100",
            "attack.target_label=2",
            f"+posttrain.defenses.repair={{_target_: {HERE}.always_target, _partial_: true}}",
            f"+posttrain.defenses.broken={{_target_: {HERE}.broken, _partial_: true}}",
            f"+posttrain.defenses.detector={{_target_: {HERE}.detector, _partial_: true}}",
        ]
    )
    data = build_data(cfg)
    model = build_model(cfg, data)
    said: list[str] = []
    trainer = PostTrainer(cfg, data, model, tmp_path, said.append)

    rows = trainer.run(3, model.state_dict())

    # Server data and evaluation data split the test set: 100 held out, the rest evaluated.
    assert len(trainer.data.y) == 100 and len(trainer.evaluator.y_test) == len(data.y_test) - 100
    held = {tuple(x.flatten()[:5].tolist()) for x in trainer.data.x}
    rest = {tuple(x.flatten()[:5].tolist()) for x in trainer.evaluator.x_test}
    assert not held & rest
    repair, failed, detect = rows
    # The repaired model predicts class 1: main accuracy = the share of class 1 in the rest,
    # backdoor accuracy (target 2) = 0.
    share_of_1 = float((trainer.evaluator.y_test == 1).float().mean())
    assert repair["main_acc_after"] == pytest.approx(share_of_1)
    assert repair["backdoor_acc_after"] == 0.0
    assert repair["target_flagged"] is True and repair["seen"] == 100
    assert failed["error"] == "ValueError: no convolution in this model"
    assert "main_acc_after" not in failed
    assert detect["saw_earlier"] == "repair"  # the failed one is not among the outcomes
    assert detect["backdoor_acc_after"] == detect["backdoor_acc_before"]  # a detector
    table = pd.read_csv(tmp_path / "posttrain.csv")
    assert list(table["posttrain"]) == ["repair", "broken", "detector"]
    assert (tmp_path / "posttrain" / "broken_round3.error.txt").exists()
    assert any("broken at round 3 FAILED" in line for line in said)


def test_a_server_set_as_large_as_the_test_set_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(["dataset=synthetic", "posttrain=strip", "posttrain.server_size=500"])
    data = build_data(cfg)

    with pytest.raises(ValueError, match=r"posttrain\.server_size=500"):
        PostTrainer(cfg, data, build_model(cfg, data), tmp_path)


def test_without_defenses_nothing_is_split_or_checked(tmp_path: Path) -> None:
    # The synthetic test set has 500 samples, fewer than the default server_size of 1000: a run
    # without post-training defenses must not care.
    cfg = compose_config(["dataset=synthetic"])
    data = build_data(cfg)

    trainer = PostTrainer(cfg, data, build_model(cfg, data), tmp_path)

    assert not trainer and not trainer.due(int(cfg.num_rounds))
    assert not (tmp_path / "posttrain.csv").exists()
