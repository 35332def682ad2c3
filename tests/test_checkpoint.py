"""A run's checkpoint: written atomically with the one before kept; one that cannot be used
is named and the previous one is used."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fedbackdoor.checkpoint import (
    CHECKPOINT,
    PREVIOUS,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedbackdoor.config import compose_config

CFG = OmegaConf.to_yaml(compose_config(["dataset=synthetic"]), resolve=True)


def _checkpoint(round_: int, config: str = CFG) -> Checkpoint:
    generator = torch.Generator().manual_seed(round_)
    return Checkpoint(
        round=round_,
        model={"w": torch.full((2, 2), float(round_))},
        generators={"sample": generator.get_state()},
        defense_states={"rule": {"history": torch.arange(3.0), "count": round_}},
        ledger={"3": [[1.0, 0.1, 5.0]]},
        config=config,
        diverged=[1],
        skipped=[],
    )


def test_the_latest_checkpoint_comes_back_exactly(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2))
    save_checkpoint(tmp_path, _checkpoint(4))

    loaded = load_checkpoint(tmp_path, CFG, rows_through=4)

    assert (tmp_path / PREVIOUS).exists()
    assert loaded is not None and loaded.round == 4
    assert torch.equal(loaded.model["w"], torch.full((2, 2), 4.0))
    again = torch.Generator()
    again.set_state(loaded.generators["sample"])
    expected = torch.rand(3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.rand(3, generator=again), expected)
    assert torch.equal(loaded.defense_states["rule"]["history"], torch.arange(3.0))
    assert loaded.ledger == {"3": [[1.0, 0.1, 5.0]]} and loaded.diverged == [1]


def test_a_cut_or_corrupt_checkpoint_is_named_and_the_previous_one_used(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2))
    save_checkpoint(tmp_path, _checkpoint(4))
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 2])  # cut short
    said: list[str] = []

    loaded = load_checkpoint(tmp_path, CFG, rows_through=4, say=said.append)

    assert loaded is not None and loaded.round == 2
    assert len(said) == 1 and said[0].startswith(f"checkpoint {tmp_path / CHECKPOINT} not used")


def test_a_checkpoint_ahead_of_the_rows_or_of_other_settings_is_not_used(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2))
    save_checkpoint(tmp_path, _checkpoint(4))
    said: list[str] = []

    behind = load_checkpoint(tmp_path, CFG, rows_through=3, say=said.append)  # rows end at 3
    other = OmegaConf.to_yaml(compose_config(["dataset=synthetic", "seed=9"]), resolve=True)
    none = load_checkpoint(tmp_path, other, rows_through=4, say=said.append)

    assert behind is not None and behind.round == 2
    assert "metrics.csv ends at round 3" in said[0]
    assert none is None and all("other settings" in line for line in said[1:])


def test_backend_settings_do_not_make_other_settings(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2))
    engine = OmegaConf.to_yaml(
        compose_config(["dataset=synthetic", "backend.parallel_runs=2"]), resolve=True
    )

    assert load_checkpoint(tmp_path, engine, rows_through=2) is not None


def test_a_checkpoint_carrying_a_pickle_payload_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo owned",))

    torch.save({"version": 1, "round": 2, "evil": Payload()}, tmp_path / CHECKPOINT)
    said: list[str] = []

    assert load_checkpoint(tmp_path, CFG, rows_through=2, say=said.append) is None
    assert "not used" in said[0]  # weights_only=True: nothing of the pickle ran
