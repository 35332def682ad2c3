"""Every attack against FedAvg: per-round curves of each backdoor attack's backdoor accuracy
(10 % attackers, sampled like everyone else) and each untargeted attack's main-accuracy damage
(20 % attackers, exactly 3 in every round of 10: the omniscient attacks act only with several
attackers in a round -- ALIE's z_max is 0 with one of 10 -- see the README).

    .venv/bin/python simulations/attack_study.py [--scale paper] [--out DIR] [OVERRIDES]

Small (default): Fashion-MNIST, 60 clients of 1,000 images, 10 per round, 15 rounds, seed 0;
15 runs (14 attacks and the clean baseline), about 15 minutes on 2 CPU cores. Paper: CIFAR-10,
ResNet-18, 100 clients, 100 rounds, 3 seeds.
"""

from __future__ import annotations

import sys

from _study import PAPER, run_study

BACKDOORS = "attack=none,badnets,blend,dba,label_flip,edge_case,scaling,pgd,neurotoxin"
UNTARGETED = ["attack=sign_flip,gaussian,alie,ipm,minmax,minsum", "attack.fraction=0.2",
              "attack.per_round=3"]  # fmt: skip
SMALL = ["defense=fedavg", "seed=0", "num_clients=60", "clients_per_round=10", "num_rounds=15"]
PAPER_RUNS = ["defense=fedavg", "seed=0,1,2", *PAPER]
GRIDS = {
    "small": [[BACKDOORS, *SMALL], [*UNTARGETED, *SMALL]],
    "paper": [[BACKDOORS, *PAPER_RUNS], [*UNTARGETED, *PAPER_RUNS]],
}

if __name__ == "__main__":
    run_study("attack_study", GRIDS, sys.argv[1:], description=__doc__ or "")
