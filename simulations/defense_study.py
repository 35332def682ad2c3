"""The aggregator benchmark: every defense against no attack, a backdoor (BadNets + model
replacement) and an untargeted attack (ALIE), with main accuracy, backdoor accuracy, detection
rates and malicious influence. The report's heatmap is defenses x attacks.

    .venv/bin/python simulations/defense_study.py [--scale paper] [--out DIR] [OVERRIDES]

Small (default): Fashion-MNIST, 60 clients of 1,000 images, 10 per round, 10 rounds, seed 0.
Two sweeps: no attack and model replacement with 10 % attackers sampled like everyone else
(part0); ALIE with 20 % attackers and exactly 3 of them in every round (part1) -- ALIE's
``z_max`` is 0 with one attacker among 10 (its update is then the benign mean: no attack),
0.25 with two, 0.52 with three. 18 defenses x 3 attacks = 54 runs, about 50 minutes on 2 CPU
cores. Paper: CIFAR-10, ResNet-18, 100 clients, 100 rounds, 3 seeds.
"""

from __future__ import annotations

import sys

from _study import PAPER, run_study

DEFENSES = (
    "defense=fedavg,clip,adaptive_clip,dp,median,trimmed_mean,krum,multikrum,bulyan,geomed,"
    "centered_clip,foolsgold,flame,fltrust,rlr,dnc,flower_dp_fixed,flower_dp_adaptive"
)
SMALL = ["seed=0", "num_clients=60", "clients_per_round=10", "num_rounds=10"]
ALIE = ["attack=alie", "attack.fraction=0.2", "attack.per_round=3"]
GRIDS = {
    "small": [["attack=none,scaling", DEFENSES, *SMALL], [*ALIE, DEFENSES, *SMALL]],
    "paper": [
        ["attack=none,scaling", DEFENSES, "seed=0,1,2", *PAPER],
        [*ALIE, DEFENSES, "seed=0,1,2", *PAPER],
    ],
}

if __name__ == "__main__":
    run_study("defense_study", GRIDS, sys.argv[1:], description=__doc__ or "")
