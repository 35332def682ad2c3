"""One client's local update (fedbackdoor.client): poisoning, attacks, reproducibility."""

from __future__ import annotations

import time

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedbackdoor.client import ClientSpec, client_update
from fedbackdoor.config import compose_config
from fedbackdoor.experiment import (
    build_data,
    build_model,
    build_partitions,
)

SMALL = [
    "dataset=synthetic",
    "num_clients=4",
    "clients_per_round=4",
    "attack.fraction=0.25",
    "attack.poison_ratio=0.5",
    "local_epochs=5",
]


def test_a_malicious_client_learns_the_trigger_and_a_benign_one_does_not() -> None:
    cfg = compose_config(SMALL)
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    model = build_model(cfg, data)
    indices = build_partitions(cfg, data)[0]
    target = int(cfg.attack.target_label)
    stamped = instantiate(cfg.attack.trigger).apply(data.x_test[data.y_test != target])

    def share_of_target(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        return float((model(stamped).argmax(1) == target).float().mean())

    start = {k: v.clone() for k, v in model.state_dict().items()}
    bad, _, _ = client_update(cfg_yaml, start, ClientSpec(1, 0, True, indices))
    good, result, _ = client_update(cfg_yaml, start, ClientSpec(1, 0, False, indices))

    assert result.num_examples == len(indices)
    assert share_of_target(bad) > 0.9
    assert share_of_target(good) < 0.2


def test_client_update_is_reproducible() -> None:
    cfg_yaml = OmegaConf.to_yaml(compose_config(SMALL), resolve=True)
    cfg = compose_config(SMALL)
    data = build_data(cfg)
    start = build_model(cfg, data).state_dict()
    spec = ClientSpec(3, 1, False, build_partitions(cfg, data)[1])

    a, _, _ = client_update(cfg_yaml, start, spec)
    b, _, _ = client_update(cfg_yaml, start, spec)

    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_client_reports_its_time_and_memory_and_nothing_else_unasked() -> None:
    import resource

    cfg_yaml = OmegaConf.to_yaml(compose_config(SMALL), resolve=True)
    cfg = compose_config(SMALL)
    data = build_data(cfg)
    start = build_model(cfg, data).state_dict()
    spec = ClientSpec(3, 1, False, build_partitions(cfg, data)[1])

    before = time.perf_counter()
    _, _, report = client_update(cfg_yaml, start, spec)
    took = time.perf_counter() - before

    assert set(report) == {"client_seconds", "peak_rss_mb"}  # no GPU here: no gpu_peak_mb
    assert 0 < report["client_seconds"] <= took
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 0 < report["peak_rss_mb"] <= peak


def _update_norm(cfg_yaml: str, state: dict[str, torch.Tensor], spec: ClientSpec) -> float:
    new, _, _ = client_update(cfg_yaml, state, spec)
    return float(torch.cat([(new[k] - state[k]).flatten() for k in state]).norm())


def test_a_pgd_attacker_sends_an_update_of_exactly_the_bound() -> None:
    # Prepare: benign clients of this config move far more than 0.25.
    cfg = compose_config([*SMALL, "attack=pgd", "attack.norm_bound=0.25"])
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    state = build_model(cfg, data).state_dict()
    indices = build_partitions(cfg, data)[0]

    # Execute
    benign = _update_norm(cfg_yaml, state, ClientSpec(1, 0, False, indices))
    malicious = _update_norm(cfg_yaml, state, ClientSpec(1, 0, True, indices))

    # Assert
    assert benign > 0.25
    assert malicious == pytest.approx(0.25, rel=1e-4)


def test_attackers_train_with_their_own_epochs() -> None:
    cfg = compose_config([*SMALL, "attack=badnets", "attack.local_epochs=2"])
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    state = build_model(cfg, data).state_dict()
    indices = build_partitions(cfg, data)[0]

    _, benign, _ = client_update(cfg_yaml, state, ClientSpec(1, 0, False, indices))
    _, malicious, _ = client_update(cfg_yaml, state, ClientSpec(1, 0, True, indices))

    # 5 benign epochs, 2 malicious ones over the same number of samples.
    assert benign.steps == 5 * malicious.steps // 2


def test_attackers_train_with_their_own_learning_rate() -> None:
    # Prepare: one full-batch step on unpoisoned data (sign_flip poisons only the update,
    # server side), so the client's update is exactly -lr x the same gradient.
    overrides = ["attack=sign_flip", "local_epochs=1", "batch_size=100000", "lr=0.05"]
    cfg = compose_config([*SMALL, *overrides, "attack.lr=0.2"])
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    state = build_model(cfg, data).state_dict()
    indices = build_partitions(cfg, data)[0]

    benign = _update_norm(cfg_yaml, state, ClientSpec(1, 0, False, indices))
    malicious = _update_norm(cfg_yaml, state, ClientSpec(1, 0, True, indices))

    assert malicious == pytest.approx(4 * benign, rel=1e-4)


def _reports(overrides: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    cfg = compose_config([*SMALL, "attack=badnets", "local_epochs=1", *overrides])
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    data = build_data(cfg)
    start = build_model(cfg, data).state_dict()
    indices = build_partitions(cfg, data)[0]
    _, _, benign = client_update(cfg_yaml, start, ClientSpec(1, 0, False, indices))
    _, _, malicious = client_update(cfg_yaml, start, ClientSpec(1, 0, True, indices))
    return benign, malicious


def test_malicious_code_skips_dp_sgd_and_sanitization_honest_code_runs_both() -> None:
    stages = ["client_dp=dpsgd", "sanitize=isolation_forest", "gradient_analysis=true"]

    benign, bypassing = _reports(stages)
    _, honest_code = _reports([*stages, "attack.follows_protocol=true"])

    for report in (benign, honest_code):
        assert report["dp_noise_multiplier"] == 1.0 and report["dp_steps"] >= 1
        assert report["san_removed"] >= 1
    assert benign["san_poisoned"] == 0 and "grad_poison_norm" not in benign
    assert not any(k.startswith(("dp_", "san_")) for k in bypassing)
    # Half of the attacker's 500 samples are poisoned (attack.poison_ratio=0.5); it sanitizes
    # them with the others and measures its gradients either way.
    assert honest_code["san_poisoned"] == 250
    assert 0 <= honest_code["san_removed_poisoned"] <= honest_code["san_removed"]
    for report in (bypassing, honest_code):
        assert report["grad_poison_norm"] > 0 and -1 <= report["grad_cosine"] <= 1
    assert "grad_cosine_clipped" in honest_code
