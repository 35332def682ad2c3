"""DP-SGD client training and the privacy ledger (fedbackdoor.privacy, training.train(private=)).

Compared with: Opacus' own accountants and noise search (the ledger must equal a fresh
accountant fed the same steps), and per-example gradients worked out by hand for a linear model
with zero weights (softmax uniform, so the cross-entropy gradient is (1/K - onehot) x^T).
"""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from torch import nn

from fedbackdoor.models import ResNet18, SmallCNN
from fedbackdoor.privacy import DPSGD, PrivacyLedger, fix_model, gradient_analysis
from fedbackdoor.training import PrivateSteps, train


def test_the_ledger_composes_a_clients_rounds_as_one_accountant_would() -> None:
    ledger = PrivacyLedger(delta=1e-5)
    ledger.spend(3, noise_multiplier=1.1, sample_rate=0.01, steps=100)
    composed = ledger.spend(3, noise_multiplier=1.1, sample_rate=0.01, steps=150)
    one = RDPAccountant()
    for _ in range(250):
        one.step(noise_multiplier=1.1, sample_rate=0.01)
    orders = RDPAccountant.DEFAULT_ALPHAS
    by_hand, _ = rdp_analysis.get_privacy_spent(
        orders=orders,
        rdp=rdp_analysis.compute_rdp(q=0.01, noise_multiplier=1.1, steps=250, orders=orders),
        delta=1e-5,
    )

    assert composed == pytest.approx(one.get_epsilon(delta=1e-5), rel=1e-12)
    assert composed == pytest.approx(by_hand, rel=1e-12)
    assert ledger.epsilon(4) == 0.0  # never trained with DP-SGD
    assert ledger.max_epsilon() == composed


def test_clipping_only_spends_an_infinite_epsilon() -> None:
    ledger = PrivacyLedger(delta=1e-5)

    assert ledger.spend(0, noise_multiplier=0.0, sample_rate=0.1, steps=10) == math.inf
    assert ledger.max_epsilon() == math.inf


def test_a_target_epsilon_is_reached_by_a_client_that_trains_every_round() -> None:
    dp = DPSGD(max_grad_norm=1.0, target_epsilon=3.0, delta=1e-5)
    n, batch_size, epochs, rounds = 3000, 32, 1, 20
    sigma = dp.noise_for(n, batch_size, epochs, rounds)
    ledger = PrivacyLedger(delta=1e-5)
    for _ in range(rounds):
        spent = ledger.spend(
            0,
            noise_multiplier=sigma,
            sample_rate=DPSGD.sample_rate(n, batch_size),
            steps=epochs * DPSGD.steps_per_epoch(n, batch_size),
        )

    assert DPSGD.sample_rate(n, batch_size) == 1 / 94  # ceil(3000 / 32) = 94 steps an epoch
    assert spent == pytest.approx(3.0, abs=0.02)  # Opacus' search tolerance is 0.01


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"max_grad_norm": 0.0, "noise_multiplier": 1.0}, "client_dp.max_grad_norm=0.0"),
        ({"max_grad_norm": 1.0}, "client_dp.noise_multiplier=None"),
        (
            {"max_grad_norm": 1.0, "noise_multiplier": 0.0, "target_epsilon": 2.0},
            "client_dp.noise_multiplier=0.0",
        ),
        ({"max_grad_norm": 1.0, "noise_multiplier": -1.0}, "client_dp.noise_multiplier=-1.0"),
        ({"max_grad_norm": 1.0, "noise_multiplier": 1.0, "delta": 1.0}, "client_dp.delta=1.0"),
        (
            {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "accountant": "moments"},
            "client_dp.accountant='moments'",
        ),
    ],
)
def test_dp_settings_opacus_cannot_use_are_refused_naming_the_key(
    settings: dict[str, object], key: str
) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("(", r"\(")):
        DPSGD(**settings)  # type: ignore[arg-type]


def test_delta_must_be_below_one_over_the_smallest_partition() -> None:
    dp = DPSGD(max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-3)

    dp.check_delta(999)
    with pytest.raises(ValueError, match=r"client_dp\.delta=0\.001.*1000 samples"):
        dp.check_delta(1000)


def _linear_zero(d: int = 2, k: int = 2) -> nn.Module:
    model = nn.Linear(d, k, bias=False)
    nn.init.zeros_(model.weight)
    return model


def test_a_noiseless_dp_sgd_step_averages_the_clipped_per_example_gradients() -> None:
    # Two examples, batch_size 2: one step per epoch with sample rate 1 (both always drawn).
    # At W = 0 the softmax is uniform, so the gradient of example (x, y) is (1/2 - onehot_y) x^T:
    #   x1 = (3, 4), y1 = 0: [[-1.5, -2], [1.5, 2]], norm 2.5 * sqrt(2) = 3.5355 -> clipped to 1
    #   x2 = (0.1, 0), y2 = 1: [[0.05, 0], [-0.05, 0]], norm 0.0707 (kept)
    # Opacus divides the clipped sum by the expected batch size int(2 * 1) = 2.
    model = _linear_zero()
    x = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    y = torch.tensor([0, 1])
    g1 = torch.tensor([[-1.5, -2.0], [1.5, 2.0]])
    g2 = torch.tensor([[0.05, 0.0], [-0.05, 0.0]])
    expected_grad = (g1 / g1.norm() + g2) / 2

    result = train(
        model,
        x,
        y,
        epochs=1,
        batch_size=2,
        lr=1.0,
        generator=torch.Generator().manual_seed(0),
        private=PrivateSteps(0.0, 1.0, torch.Generator().manual_seed(1)),
    )

    assert result.steps == 1 and result.sample_rate == 1.0
    torch.testing.assert_close(model.weight.detach(), -expected_grad)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # hooks removed


def test_dp_sgd_training_is_reproducible_and_its_noise_comes_from_its_generator() -> None:
    torch.manual_seed(123)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 10

    def run(noise_seed: int) -> torch.Tensor:
        model = SmallCNN(1, 10, image_size=(8, 8))
        model.load_state_dict(reference)
        train(
            model,
            x,
            y,
            epochs=2,
            batch_size=8,
            lr=0.1,
            generator=torch.Generator().manual_seed(0),
            private=PrivateSteps(1.0, 1.0, torch.Generator().manual_seed(noise_seed)),
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    reference = SmallCNN(1, 10, image_size=(8, 8)).state_dict()
    torch.manual_seed(999)  # the global RNG must not matter

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_gradient_analysis_measures_the_mean_gradients_by_hand() -> None:
    # W = 0: per-example gradient (1/2 - onehot_y) x^T (see above).
    #   poisoned: x = (2, 0), y = 0 -> [[-1, 0], [1, 0]]; x = (0, 2), y = 0 -> [[0, -1], [0, 1]]
    #     mean [[-0.5, -0.5], [0.5, 0.5]], norm 1
    #   clean:    x = (1, 0), y = 1 -> [[0.5, 0], [-0.5, 0]], norm sqrt(0.5)
    #   cosine = (-0.25 - 0.25) / (1 * sqrt(0.5)) = -0.5 / 0.7071 = -0.7071
    # Clipped at 1: the poisoned examples' norms are sqrt(2) -> scaled by 1/sqrt(2): mean norm
    # 1/sqrt(2); the clean one (norm 0.707) is kept; the cosine is unchanged.
    model = _linear_zero()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    poisoned = torch.tensor([True, True, False])

    stats = gradient_analysis(model, x, y, poisoned, max_grad_norm=1.0, batch_size=2)

    assert stats["poison_norm"] == pytest.approx(1.0, rel=1e-6)
    assert stats["clean_norm"] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert stats["cosine"] == pytest.approx(-math.sqrt(0.5), rel=1e-6)
    assert stats["poison_norm_clipped"] == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    assert stats["clean_norm_clipped"] == pytest.approx(math.sqrt(0.5), rel=1e-5)
    assert stats["cosine_clipped"] == pytest.approx(-math.sqrt(0.5), rel=1e-5)
    assert torch.count_nonzero(model.weight) == 0  # the model is not changed


def test_opacus_fixes_batchnorm_and_leaves_the_cnn_alone() -> None:
    cnn = SmallCNN(1, 10)
    same, problems = fix_model(cnn)
    fixed, resnet_problems = fix_model(ResNet18(3, 10, image_size=(32, 32)))

    assert same is cnn and problems == []
    assert resnet_problems and "BatchNorm" in resnet_problems[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())


@pytest.mark.parametrize("batchnorm", [False, True])
def test_gradient_analysis_equals_a_loop_over_examples(batchnorm: bool) -> None:
    # Without BatchNorm the per-example gradients come from Opacus' GradSampleModule, with it
    # from torch.func in eval mode (running statistics): both must equal one backward per example.
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(6, 5)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(5))
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(5, 3))
    if batchnorm:
        model[1].running_mean.uniform_(-1, 1)  # type: ignore[operator]
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(9) % 3
    poisoned = torch.tensor([True, False, True, False, False, True, False, False, False])
    model.eval()
    rows = []
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))  # type: ignore[union-attr]
    grads = torch.stack(rows).double()
    clipped = grads * (0.5 / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)

    stats = gradient_analysis(model, x, y, poisoned, max_grad_norm=0.5, batch_size=4)

    for suffix, g in (("", grads), ("_clipped", clipped)):
        mean_p, mean_c = g[poisoned].mean(0), g[~poisoned].mean(0)
        assert stats[f"poison_norm{suffix}"] == pytest.approx(float(mean_p.norm()), rel=1e-5)
        assert stats[f"clean_norm{suffix}"] == pytest.approx(float(mean_c.norm()), rel=1e-5)
        cosine = float(nn.functional.cosine_similarity(mean_p, mean_c, dim=0))
        assert stats[f"cosine{suffix}"] == pytest.approx(cosine, rel=1e-5, abs=1e-7)
    assert not model.training  # the caller's mode is restored


def test_the_ledger_state_round_trips_exactly() -> None:
    from fedbackdoor.privacy import PrivacyLedger

    ledger = PrivacyLedger(1e-5, "rdp")
    ledger.spend(3, noise_multiplier=1.1, sample_rate=0.05, steps=40)
    ledger.spend(3, noise_multiplier=1.1, sample_rate=0.05, steps=40)
    ledger.spend(7, noise_multiplier=0.0, sample_rate=0.1, steps=5)

    restored = PrivacyLedger(1e-5, "rdp")
    restored.load_state_dict(ledger.state_dict())

    assert restored.epsilon(3) == ledger.epsilon(3) and restored.epsilon(7) == float("inf")
    restored.spend(3, noise_multiplier=1.1, sample_rate=0.05, steps=40)
    ledger.spend(3, noise_multiplier=1.1, sample_rate=0.05, steps=40)
    assert restored.epsilon(3) == ledger.epsilon(3)
