"""Training-time attacks: PGD onto an L2 ball and Neurotoxin's coordinate mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedbackdoor.attacks.constraints import (
    bottom_k_mask,
    neurotoxin,
    pgd,
    project_to_ball,
    scale_to_norm,
)
from fedbackdoor.training import train


def _state_delta(state: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(state[k] - anchor[k]).flatten() for k in state])


def _setup(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(64, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return model, x, y


def test_project_to_ball_hand_worked() -> None:
    # ||(3, 4)|| = 5: radius 2.5 halves it; radius 10 leaves it.
    delta = torch.tensor([3.0, 4.0])
    assert torch.allclose(project_to_ball(delta, 2.5), torch.tensor([1.5, 2.0]))
    assert project_to_ball(delta, 10.0) is delta


def test_scale_to_norm_reaches_the_bound_exactly() -> None:
    delta = torch.tensor([0.3, 0.4])  # norm 0.5
    assert torch.allclose(scale_to_norm(delta, 2.0), torch.tensor([1.2, 1.6]))
    assert torch.equal(scale_to_norm(torch.zeros(3), 1.0), torch.zeros(3))


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "1", True])
def test_bounds_must_be_positive_finite_numbers(bad: object) -> None:
    with pytest.raises(ValueError, match="norm_bound"):
        project_to_ball(torch.ones(2), bad)  # type: ignore[arg-type]


def test_bottom_k_mask_keeps_smallest_magnitudes() -> None:
    scores = torch.tensor([0.5, -0.1, 3.0, 0.0, -2.0])
    # The 3 (= round(0.6 * 5)) smallest |scores| are 0.0, -0.1, 0.5 at positions 3, 1, 0.
    assert bottom_k_mask(scores, 0.6).tolist() == [True, True, False, True, False]
    assert not bottom_k_mask(scores, 0.0).any() and bottom_k_mask(scores, 1.0).all()
    with pytest.raises(ValueError, match="1.5"):
        bottom_k_mask(scores, 1.5)


@pytest.mark.parametrize("bound", [0.05, 0.3, 2.0])
def test_pgd_update_never_exceeds_the_bound(bound: float) -> None:
    # Prepare: a large learning rate so unconstrained training would leave the ball.
    model, x, y = _setup()
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    constraint = pgd(model, x, y, norm_bound=bound, scale_to_bound=False)
    norms: list[float] = []
    original = constraint.after_step

    def watched() -> None:
        original()
        deltas = [(p.detach() - anchor[k]).flatten() for k, p in zip(anchor, params, strict=True)]
        norms.append(float(torch.cat(deltas).norm()))

    constraint.after_step = watched  # type: ignore[method-assign]

    # Execute
    train(
        model,
        x,
        y,
        epochs=3,
        batch_size=8,
        lr=1.0,
        generator=torch.Generator(),
        hooks=constraint,
    )
    state = constraint.finish(model.state_dict(), anchor)

    # Assert: after every step and at the end
    assert norms and max(norms) <= bound * (1 + 1e-5)
    assert float(_state_delta(state, anchor).norm()) <= bound * (1 + 1e-5)


def test_pgd_scales_up_to_the_bound() -> None:
    # Prepare: a tiny learning rate, so the trained update lies deep inside the ball.
    model, x, y = _setup()
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    constraint = pgd(model, x, y, norm_bound=5.0)

    # Execute
    train(
        model,
        x,
        y,
        epochs=1,
        batch_size=64,
        lr=1e-3,
        generator=torch.Generator(),
        hooks=constraint,
    )
    trained = _state_delta(model.state_dict(), anchor)
    state = constraint.finish(model.state_dict(), anchor)
    shaped = _state_delta(state, anchor)

    # Assert: same direction, norm exactly the bound
    assert float(trained.norm()) < 5.0
    assert float(shaped.norm()) == pytest.approx(5.0, rel=1e-5)
    assert torch.allclose(shaped / shaped.norm(), trained / trained.norm(), atol=1e-5)


def test_neurotoxin_changes_only_the_allowed_coordinates() -> None:
    # Prepare: weight decay and momentum would move every coordinate without the reset.
    model, x, y = _setup()
    anchor = [p.detach().clone() for p in model.parameters()]
    constraint = neurotoxin(model, x, y, mask_ratio=0.5)
    allowed = torch.cat([m.flatten() for m in constraint.masks])

    # Execute
    train(
        model,
        x,
        y,
        epochs=2,
        batch_size=8,
        lr=0.5,
        momentum=0.9,
        weight_decay=0.1,
        generator=torch.Generator(),
        hooks=constraint,
    )
    delta = torch.cat(
        [(p.detach() - a).flatten() for p, a in zip(model.parameters(), anchor, strict=True)]
    )

    # Assert: half the coordinates may move; the others are exactly the global weights
    assert int(allowed.sum()) == round(0.5 * allowed.numel())
    assert torch.all(delta[~allowed] == 0)
    assert torch.count_nonzero(delta[allowed]) > 0


def test_neurotoxin_masks_the_coordinates_clean_training_uses_most() -> None:
    # Prepare: the clean gradient of a linear model on data with one informative pixel.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    x = torch.zeros(32, 1, 2, 2)
    x[:, 0, 0, 0] = torch.linspace(0.1, 1.0, 32)
    y = torch.zeros(32, dtype=torch.long)

    # Execute: forbid the top 25% (2 of 8 weights)
    constraint = neurotoxin(model, x, y, mask_ratio=0.75)

    # Assert: only pixel (0, 0) carries a gradient, so its two weights are the masked ones
    forbidden = ~constraint.masks[0]
    assert forbidden[:, 0].all() and not forbidden[:, 1:].any()


def test_neurotoxin_with_a_bound_projects_too() -> None:
    model, x, y = _setup(1)
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    constraint = neurotoxin(model, x, y, mask_ratio=0.9, norm_bound=0.1)
    train(
        model,
        x,
        y,
        epochs=2,
        batch_size=8,
        lr=1.0,
        generator=torch.Generator(),
        hooks=constraint,
    )
    state = constraint.finish(model.state_dict(), anchor)
    assert float(_state_delta(state, anchor).norm()) <= 0.1 * (1 + 1e-5)


def test_pgd_spends_its_bound_on_the_parameters_of_a_batchnorm_model() -> None:
    # Prepare: a model with BatchNorm (running statistics and a step counter change in training)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    constraint = pgd(model, x, y, norm_bound=0.5)

    # Execute
    train(model, x, y, epochs=2, batch_size=8, lr=0.01, generator=g, hooks=constraint)
    state = constraint.finish(model.state_dict(), anchor)

    # Assert: the parameter delta has the bound's norm; buffers are as trained, untouched
    names = [name for name, _ in model.named_parameters()]
    delta = torch.cat([(state[k] - anchor[k]).flatten() for k in names])
    assert float(delta.norm()) == pytest.approx(0.5, rel=1e-5)
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(state[key], model.state_dict()[key])
    assert int(state["1.num_batches_tracked"]) == 8
