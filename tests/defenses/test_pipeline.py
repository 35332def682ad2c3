"""Tests for fedbackdoor.defenses.pipeline and the configs in conf/defense."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from fedbackdoor.defenses.averaging import mean
from fedbackdoor.defenses.base import Aggregate, NotEnoughClients
from fedbackdoor.defenses.distance import krum
from fedbackdoor.defenses.pipeline import Defense
from fedbackdoor.defenses.transforms import add_gaussian_noise, clip_to_norm
from fedbackdoor.experiment import build_defense
from fedbackdoor.round_context import StandInContext

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFENSE_FILES = sorted((CONF_DIR / "defense").glob("*.yaml"))
# The root keys a defense config interpolates (the DP rules' ${clients_per_round}).
ROOT_KEYS = {"clients_per_round": 7}


def _compose_defense(name: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    """Compose ``defense=<name>`` with Hydra, mounted at ``defense`` as in the root config."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        # No root config: only the defense group, so other groups cannot break this test.
        root_keys = [f"+{key}={value}" for key, value in ROOT_KEYS.items()]
        root = compose(overrides=[f"+defense={name}", *root_keys, *overrides])
    return root.defense


# --------------------------------------------------------------------------------------------
# Every config composes, builds and runs
# --------------------------------------------------------------------------------------------


def test_the_expected_defense_configs_exist() -> None:
    # Assert
    names = {path.stem for path in DEFENSE_FILES}
    assert {
        "fedavg",
        "clip",
        "dp",
        "median",
        "trimmed_mean",
        "krum",
        "multikrum",
        "bulyan",
        "geomed",
        "centered_clip",
        "adaptive_clip",
        "foolsgold",
        "flame",
        "rlr",
        "dnc",
    } <= names


@pytest.mark.parametrize("path", DEFENSE_FILES, ids=[path.stem for path in DEFENSE_FILES])
def test_every_defense_config_builds_and_runs(path: Path) -> None:
    # Prepare
    cfg = _compose_defense(path.stem)
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(7, 5, generator=generator)
    weights = torch.arange(1, 8, dtype=torch.float32)

    # The round's context, for the defenses that ask for one (FLTrust, FoolsGold)
    context = StandInContext.for_round(7, 5)

    # Execute
    defense = build_defense(cfg)
    result = defense(updates, weights, generator=generator, context=context)

    # Assert
    assert isinstance(defense, Defense)
    assert isinstance(result, Aggregate)
    assert result.update.shape == (5,)
    assert result.update.dtype == torch.float32
    assert torch.all(torch.isfinite(result.update))
    if result.flagged is not None:
        assert result.flagged.shape == (7,)
        assert result.flagged.dtype == torch.bool


@pytest.mark.parametrize("path", DEFENSE_FILES, ids=[path.stem for path in DEFENSE_FILES])
def test_every_defense_config_loads_without_hydra(path: Path) -> None:
    # Prepare: the plain-OmegaConf way of mounting the group at `defense`
    root = OmegaConf.create({"defense": OmegaConf.load(path), **ROOT_KEYS})

    # Execute
    defense = build_defense(root.defense)

    # Assert
    assert callable(defense.rule)
    assert all(callable(t) for t in (*defense.pre, *defense.post))


def test_user_settings_are_interpolated_into_the_nodes() -> None:
    # Prepare
    cfg = _compose_defense("dp", ("defense.max_norm=0.5", "defense.sigma=0"))
    updates = torch.tensor([[3.0, 4.0], [0.0, 0.1]])
    weights = torch.tensor([1.0, 1.0])

    # Execute
    result = build_defense(cfg)(updates, weights, generator=torch.Generator().manual_seed(0))

    # Assert: row 0 clipped to norm 0.5 -> (0.3, 0.4) ; mean with (0, 0.1) -> (0.15, 0.25)
    torch.testing.assert_close(result.update, torch.tensor([0.15, 0.25]))


def test_krum_config_gives_the_outlier_no_influence() -> None:
    # Prepare
    cfg = _compose_defense("krum")
    updates = torch.tensor([[0.0], [1.0], [2.5], [3.0], [100.0]])

    # Execute
    result = build_defense(cfg)(updates, torch.ones(5), generator=torch.Generator())

    # Assert: the outlier is not selected (no influence); selection is no verdict
    assert result.flagged is None and result.influence is not None
    assert float(result.influence[-1]) == 0.0


def test_multikrum_config_averages_the_m_best_scored_updates() -> None:
    # Prepare: f = 1, m = 5, n = 6 -> n - f - 2 = 3 neighbours
    cfg = _compose_defense("multikrum")
    updates = torch.tensor([[0.0], [1.0], [2.5], [3.0], [100.0], [5.5]])

    # Execute
    result = build_defense(cfg)(updates, torch.ones(6), generator=torch.Generator())

    # Assert: scores 0: 1+6.25+9=16.25  1: 1+2.25+4=7.25  2.5: 0.25+2.25+6.25=8.75
    # 3: 0.25+4+6.25=10.5  100: 94.5^2+97^2+97.5^2=27845.5  5.5: 6.25+9+20.25=35.5
    # -> all but 100 averaged: (0 + 1 + 2.5 + 3 + 5.5) / 5 = 12 / 5, 1/5 each
    assert result.flagged is None and result.influence is not None
    assert (result.influence == 0).tolist() == [False, False, False, False, True, False]
    torch.testing.assert_close(
        result.influence, torch.tensor([0.2, 0.2, 0.2, 0.2, 0.0, 0.2], dtype=torch.float64)
    )
    torch.testing.assert_close(result.update, torch.tensor([12.0 / 5]))


def test_bulyan_config_gives_the_outliers_no_influence() -> None:
    # Prepare: f = 1 by default, n = 7 = 4f + 3
    cfg = _compose_defense("bulyan")
    updates = torch.tensor([[5.0], [20.0], [0.0], [8.0], [1.0], [-10.0], [2.0]])

    # Execute
    result = build_defense(cfg)(updates, torch.ones(7), generator=torch.Generator())

    # Assert: see test_bulyan_by_hand: 20 and -10 (clients 1 and 5) are left out, and of the
    # 5 selected the 3 values closest to the median (2, 1, 0) averaged, 1/3 each
    assert result.flagged is None and result.influence is not None
    assert float(result.influence[1]) == 0.0 and float(result.influence[5]) == 0.0
    torch.testing.assert_close(
        result.influence,
        torch.tensor([0, 0, 1 / 3, 0, 1 / 3, 0, 1 / 3], dtype=torch.float64),
    )
    torch.testing.assert_close(result.update, torch.tensor([1.0]))


def test_bulyan_config_skips_rounds_with_too_few_clients() -> None:
    # Prepare: f = 2 needs n >= 11
    defense = build_defense(_compose_defense("bulyan", ("defense.f=2",)))

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"n >= 4f \+ 3 = 11 clients, got n=7 \(f=2\)"):
        defense(torch.randn(7, 3), torch.ones(7), generator=torch.Generator())


def test_adaptive_clip_config_clips_to_the_median_norm_then_averages() -> None:
    # Prepare
    cfg = _compose_defense("adaptive_clip")
    updates = torch.tensor([[3.0, 4.0], [0.0, 1.0], [2.0, 0.0]])

    # Execute
    result = build_defense(cfg)(updates, torch.tensor([1.0, 1.0, 2.0]), generator=torch.Generator())

    # Assert: median norm 2 -> (3, 4) to (1.2, 1.6) ; FedAvg (1.2 + 0 + 2*2, 1.6 + 1 + 0) / 4
    torch.testing.assert_close(result.update, torch.tensor([5.2 / 4, 2.6 / 4]))
    assert result.flagged is None


@pytest.mark.parametrize(
    ("name", "overrides", "pattern"),
    [
        ("geomed", ("defense.eps=0",), r"eps=0"),
        ("geomed", ("defense.max_iter=0",), r"max_iter=0"),
        ("centered_clip", ("defense.tau=-1",), r"tau=-1"),
        ("centered_clip", ("defense.iters=0",), r"iters=0"),
        ("adaptive_clip", ("defense.multiplier=0",), r"multiplier=0"),
        ("multikrum", ("defense.m=0",), r"m=0"),
        ("foolsgold", ("defense.kappa=0",), r"kappa=0"),
        ("flame", ("defense.noise_lambda=-1",), r"noise_lambda=-1"),
        ("rlr", ("defense.theta=0",), r"theta=0"),
        ("dnc", ("defense.f=-1",), r"f=-1"),
        ("dnc", ("defense.c=0",), r"c=0"),
        ("dnc", ("defense.niters=0",), r"niters=0"),
        ("dnc", ("defense.b=0",), r"b=0"),
        ("centered_clip", ("defense.start=mean",), r"start='mean'"),
        ("flower_dp_fixed", ("defense.clipping_norm=0",), r"clipping_norm=0"),
        ("flower_dp_fixed", ("clients_per_round=0",), r"num_sampled_clients=0"),
        ("flower_dp_adaptive", ("defense.clip_norm_lr=0",), r"clip_norm_lr=0"),
        ("flower_dp_adaptive", ("defense.noise_multiplier=0.7",), r"noise_multiplier=0\.7"),
        ("flower_dp_adaptive", ("defense.target_clipped_quantile=2",), r"quantile=2"),
    ],
)
def test_new_config_settings_reach_the_functions(
    name: str, overrides: tuple[str, ...], pattern: str
) -> None:
    # Prepare
    defense = build_defense(_compose_defense(name, overrides))

    # Execute / Assert
    with pytest.raises(ValueError, match=pattern):
        defense(
            torch.randn(7, 2),
            torch.ones(7),
            generator=torch.Generator(),
            context=StandInContext.for_round(7, 2),
        )


def test_centered_clip_config_starts_from_the_previous_rounds_aggregate() -> None:
    # Prepare: the case of test_centered_clip's two rounds (tau = 1, one iteration)
    defense = build_defense(_compose_defense("centered_clip"))
    updates = torch.tensor([[1.0], [2.0], [4.0]])

    # Execute: the defense keeps the rule's state from one call to the next
    first = defense(updates, torch.ones(3), generator=torch.Generator())
    second = defense(updates, torch.ones(3), generator=torch.Generator())

    # Assert: 1 from zero, then 5/3 from 1
    torch.testing.assert_close(first.update, torch.tensor([1.0]))
    torch.testing.assert_close(second.update, torch.tensor([5.0 / 3]))


def test_centered_clip_config_can_start_from_the_median() -> None:
    # Prepare: the case of test_centered_clip_by_hand_from_the_median
    overrides = ("defense.start=median", "defense.iters=2")
    defense = build_defense(_compose_defense("centered_clip", overrides))
    updates = torch.tensor([[0.0], [1.0], [2.0], [2.5], [10.0]])

    # Execute
    result = defense(updates, torch.ones(5), generator=torch.Generator())

    # Assert
    torch.testing.assert_close(result.update, torch.tensor([1.86]))


def test_flower_dp_adaptive_config_moves_its_norm_across_rounds() -> None:
    # Prepare: no noise; every update of norm 2 is clipped by the initial norm 0.1, so the
    # clipped mean is 0.1 in the first round and grows by exp(0.2 * 0.5) per round after
    cfg = _compose_defense(
        "flower_dp_adaptive", ("defense.noise_multiplier=0", "defense.clipped_count_stddev=0")
    )
    defense = build_defense(cfg)
    updates = torch.full((7, 1), 2.0)

    # Execute
    rounds = [defense(updates, torch.ones(7), generator=torch.Generator()) for _ in range(3)]

    # Assert
    for number, result in enumerate(rounds):
        expected = 0.1 * math.exp(0.1 * number)
        torch.testing.assert_close(result.update, torch.tensor([expected]))


def test_rlr_config_skips_rounds_with_fewer_clients_than_theta() -> None:
    # Prepare: theta = 4 by default
    defense = build_defense(_compose_defense("rlr"))

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"got n=3 \(theta=4\)"):
        defense(torch.randn(3, 2), torch.ones(3), generator=torch.Generator())


def test_dnc_config_skips_rounds_it_would_empty() -> None:
    # Prepare: f = 1, c = 1 removes one update per iteration
    defense = build_defense(_compose_defense("dnc"))

    # Execute / Assert
    with pytest.raises(NotEnoughClients, match=r"got n=1 \(f=1, c=1\.0\)"):
        defense(torch.randn(1, 2), torch.ones(1), generator=torch.Generator())


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("flame", ()), ("dnc", ("defense.b=3",))],
    ids=["flame", "dnc"],
)
def test_randomised_rules_draw_from_the_defense_generator(
    name: str, overrides: tuple[str, ...]
) -> None:
    # Prepare: FLAME's noise and DnC's coordinate samples come from the generator passed in
    defense = build_defense(_compose_defense(name, overrides))
    updates = torch.randn(9, 40, generator=torch.Generator().manual_seed(2))
    weights = torch.ones(9)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()

    # Execute
    first = defense(updates, weights, generator=generator)
    second = defense(updates, weights, generator=torch.Generator().manual_seed(7))

    # Assert
    assert not torch.equal(generator.get_state(), state)
    assert torch.equal(first.update, second.update)


def test_dp_config_is_reproducible_with_the_same_seed() -> None:
    # Prepare
    defense = build_defense(_compose_defense("dp"))
    updates = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    weights = torch.ones(4)

    # Execute
    first = defense(updates, weights, generator=torch.Generator().manual_seed(5))
    second = defense(updates, weights, generator=torch.Generator().manual_seed(5))

    # Assert
    assert torch.equal(first.update, second.update)


def test_bad_config_setting_raises_value_error_when_run() -> None:
    # Prepare
    defense = build_defense(_compose_defense("trimmed_mean", ("defense.beta=0.6",)))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"beta=0\.6"):
        defense(torch.ones(5, 2), torch.ones(5), generator=torch.Generator())


def test_build_defense_treats_missing_pre_and_post_as_empty() -> None:
    # Prepare
    cfg = OmegaConf.create(
        {"rule": {"_target_": "fedbackdoor.defenses.averaging.mean", "_partial_": True}}
    )

    # Execute
    defense = build_defense(cfg)

    # Assert
    assert defense.pre == ()
    assert defense.post == ()


def test_build_defense_rejects_a_rule_that_is_not_partial() -> None:
    # Prepare: without _partial_ Hydra would call mean() itself
    cfg = OmegaConf.create(
        {
            "rule": {
                "_target_": "fedbackdoor.defenses.base.Aggregate",
                "update": 0,
                "flagged": None,
            }
        }
    )

    # Execute / Assert
    with pytest.raises(TypeError, match="_partial_"):
        build_defense(cfg)


def test_build_defense_requires_a_rule() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="rule"):
        build_defense(OmegaConf.create({"pre": []}))


# --------------------------------------------------------------------------------------------
# Defense
# --------------------------------------------------------------------------------------------


def test_defense_runs_pre_then_rule_then_post() -> None:
    # Prepare: pre doubles, rule is FedAvg, post adds 1 -- the order changes the answer
    calls: list[str] = []

    def double(updates: Tensor, *, generator: torch.Generator) -> Tensor:
        calls.append("pre")
        return 2 * updates

    def rule(updates: Tensor, weights: Tensor, *, generator: torch.Generator) -> Aggregate:
        calls.append("rule")
        return mean(updates, weights)

    def add_one(update: Tensor, *, generator: torch.Generator) -> Tensor:
        calls.append("post")
        return update + 1

    defense = Defense(rule=rule, pre=[double], post=[add_one])
    updates = torch.tensor([[1.0, 2.0], [3.0, 4.0]])

    # Execute
    result = defense(updates, torch.tensor([1.0, 3.0]), generator=torch.Generator())

    # Assert: 2 * (0.25 * (1, 2) + 0.75 * (3, 4)) + 1 = 2 * (2.5, 3.5) + 1 = (6, 8)
    torch.testing.assert_close(result.update, torch.tensor([6.0, 8.0]))
    assert calls == ["pre", "rule", "post"]


def _flag_far_from_the_median(
    updates: Tensor, weights: Tensor, *, generator: torch.Generator | None = None
) -> Aggregate:
    """A rule that classifies: flags the updates farther than 5 from the median, averages the
    others (as FLAME, DnC, FoolsGold and FLTrust flag; Krum and Bulyan select, flag nobody)."""
    far = (updates - updates.median(dim=0).values).norm(dim=1) > 5
    influence = (~far).to(torch.float64) / int((~far).sum())
    return Aggregate(update=updates[~far].mean(dim=0), flagged=far, influence=influence)


def test_defense_keeps_the_rules_flags_and_passes_the_generator() -> None:
    # Prepare
    defense = Defense(
        rule=_flag_far_from_the_median,
        pre=[functools.partial(clip_to_norm, max_norm=10.0)],
        post=[functools.partial(add_gaussian_noise, sigma=1.0)],
    )
    updates = torch.tensor([[0.0], [1.0], [2.5], [3.0], [100.0]])

    # Execute
    first = defense(updates, torch.ones(5), generator=torch.Generator().manual_seed(3))
    second = defense(updates, torch.ones(5), generator=torch.Generator().manual_seed(3))

    # Assert: 100 clipped to 10 is still the outlier (7.5 from the median 2.5) and flagged ;
    # the others are averaged, (0 + 1 + 2.5 + 3) / 4, then noised
    assert first.flagged is not None
    assert first.flagged.tolist() == [False, False, False, False, True]
    assert first.influence is not None
    assert first.influence.tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
    assert torch.equal(first.update, second.update)
    assert not torch.equal(first.update, torch.tensor([6.5 / 4]))


def test_defense_propagates_not_enough_clients() -> None:
    # Prepare
    defense = Defense(rule=functools.partial(krum, f=1))

    # Execute / Assert
    with pytest.raises(NotEnoughClients):
        defense(torch.ones(4, 2), torch.ones(4), generator=torch.Generator())


def test_defense_rejects_a_pre_transform_that_changes_the_shape() -> None:
    # Prepare
    def drop_first(updates: Tensor, *, generator: torch.Generator) -> Tensor:
        return updates[1:]

    defense = Defense(rule=mean, pre=[drop_first])

    # Execute / Assert
    with pytest.raises(ValueError, match="shape"):
        defense(torch.ones(3, 2), torch.ones(3), generator=torch.Generator())


def test_defense_is_frozen_and_hashable() -> None:
    # Prepare
    defense = Defense(rule=mean, pre=[functools.partial(clip_to_norm, max_norm=1.0)])

    # Execute / Assert
    assert isinstance(defense.pre, tuple)
    hash(defense)
    with pytest.raises(AttributeError):
        defense.rule = mean  # type: ignore[misc]
