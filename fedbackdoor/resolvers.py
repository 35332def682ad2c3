"""OmegaConf resolvers used in conf/ (registered when the package is imported).

Kept free of torch and flwr so that importing any part of the package stays cheap.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def resolve_boost(boost: object, clients_per_round: int, server_lr: float) -> float:
    """``attack.boost``: a number, or ``auto`` = clients per round / server learning rate, the
    factor with which one attacker's update replaces the global model under FedAvg
    (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning", eq. 3)."""
    if boost == "auto":
        return float(clients_per_round) / float(server_lr)
    return float(boost)  # type: ignore[arg-type]


def register() -> None:
    # `${fb.boost:${attack.boost},${clients_per_round},${server_lr}}` in conf/attack/*.yaml
    OmegaConf.register_new_resolver("fb.boost", resolve_boost, replace=True)
