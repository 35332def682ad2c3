"""Gradient shaping (Hong et al. 2020, arXiv:2002.11497): DP-SGD on the clients as a defense
against data poisoning, in the *poisoned data, honest code* threat model
(``attack.follows_protocol=true``: the attackers' data is BadNets-poisoned, but they run the
federation's training code, DP-SGD included).

    .venv/bin/python simulations/gradient_shaping.py [--scale paper] [--out DIR] [OVERRIDES]

BadNets by attacker fraction x per-example clipping norm x noise multiplier, plus the same
fractions without DP-SGD; every run logs the malicious clients' poisoned vs clean gradients
(``gradient_analysis=true``: the paper's magnitude and orientation artifacts). The report has
the poisoning curves (backdoor accuracy against attacker fraction, one line per DP setting),
the main-accuracy cost (``summary.csv``: ``main_acc_drop`` against the no-attack run of the
same DP setting), each run's privacy spending (``dp_epsilon``) and the gradients figure.

Small (default): Fashion-MNIST, 20 clients, 10 per round, 10 rounds, seed 0; fractions 0, 0.1,
0.3; C in {1, 0.25} x sigma in {0, 0.5}: 3 + 12 = 15 runs. Paper: CIFAR-10, ResNet-18
(BatchNorm -> GroupNorm by Opacus), 100 clients, 3 seeds.
"""

from __future__ import annotations

import sys

from _study import PAPER, run_study

ATTACK = ["attack=badnets", "attack.follows_protocol=true", "gradient_analysis=true"]
FRACTIONS = "attack.fraction=0,0.1,0.3"
PAPER_FRACTIONS = "attack.fraction=0,0.05,0.1,0.2,0.3"
DP = ["client_dp=dpsgd", "client_dp.max_grad_norm=1,0.25", "client_dp.noise_multiplier=0,0.5"]
SMALL = ["seed=0", "num_rounds=10"]
GRIDS = {
    "small": [[*ATTACK, FRACTIONS, *SMALL], [*ATTACK, FRACTIONS, *DP, *SMALL]],
    "paper": [
        [*ATTACK, PAPER_FRACTIONS, "seed=0,1,2", *PAPER],
        [*ATTACK, PAPER_FRACTIONS, *DP, "seed=0,1,2", *PAPER],
    ],
}

if __name__ == "__main__":
    run_study("gradient_shaping", GRIDS, sys.argv[1:], description=__doc__ or "")
