"""Client training with DP-SGD (Opacus), and the server's ledger of what each client spent.

DP-SGD here is a *defense against poisoning*, gradient shaping (Hong et al., "On the
Effectiveness of Mitigating Data Poisoning Attacks with Gradient Shaping", arXiv:2002.11497):
clipping every example's gradient bounds how far one poisoned sample can pull the model
(its gradient's magnitude), and the noise blurs the direction it pulls in (its orientation).
Hong et al. found it mitigates indiscriminate and targeted poisoning even at noise levels that
give no meaningful privacy.

Everything private is Opacus' (Yousefpour et al., "Opacus: User-Friendly Differential Privacy
Library in PyTorch", 2021): per-example gradients (``GradSampleModule``), clipping and noise
(``DPOptimizer``, its noise drawn from the client's own ``torch.Generator``), the noise for a
target epsilon (``get_noise_multiplier``) and the accountants (RDP, PRV, GDP). What this module
adds is only the federation's bookkeeping:

* a client's batches are drawn by Poisson sampling with rate ``q = 1 / ceil(n / batch_size)``
  (Opacus' ``DPDataLoader`` convention, ``expected_batch_size = int(n q)``), from the client's
  generator, so the accountants' assumption holds;
* a client is stateless between rounds (a Ray actor or SuperNode serves many clients), so the
  server composes each client's spending over the rounds it trained in: :class:`PrivacyLedger`
  keeps one Opacus accountant per client, fed with the ``(noise_multiplier, sample_rate,
  steps)`` every reply reports.

Models Opacus cannot train per example as they are (BatchNorm mixes the examples of a batch)
are converted by Opacus' own ``ModuleValidator.fix`` (BatchNorm -> GroupNorm) for the whole run,
server included: :func:`fix_model`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["DPSGD", "PrivacyLedger", "fix_model", "gradient_analysis"]

_ACCOUNTANTS = ("rdp", "prv", "gdp")


@dataclass(frozen=True)
class DPSGD:
    """The ``client_dp`` settings: DP-SGD for every client that runs the federation's code.

    Parameters
    ----------
    max_grad_norm : float
        Per-example clipping bound ``C`` (L2 over all trainable parameters), > 0.
    noise_multiplier : float, optional
        Gaussian noise std over ``C`` (0 = clipping only: gradient shaping without privacy,
        epsilon infinite). Give this or ``target_epsilon``, not both.
    target_epsilon : float, optional
        The epsilon a client reaches at ``delta`` if it trains in *every* round (the worst
        case: sampled clients spend less); its noise multiplier is found by Opacus'
        ``get_noise_multiplier`` for its own sample rate and number of steps.
    delta : float
        The delta of the reported epsilons; must be below ``1 / n`` of the smallest partition
        (checked when the partitions are known).
    accountant : {"rdp", "prv", "gdp"}
        Opacus' accountant for epsilon (and for ``target_epsilon``).
    """

    max_grad_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if not (isinstance(self.max_grad_norm, int | float) and 0 < self.max_grad_norm < math.inf):
            raise ValueError(
                f"client_dp.max_grad_norm={self.max_grad_norm!r} must be a positive number"
            )
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                f"client_dp.noise_multiplier={self.noise_multiplier!r} and "
                f"client_dp.target_epsilon={self.target_epsilon!r}: set exactly one of the two "
                "(the other null)"
            )
        if self.noise_multiplier is not None and not 0 <= self.noise_multiplier < math.inf:
            raise ValueError(
                f"client_dp.noise_multiplier={self.noise_multiplier!r} must be a number >= 0"
            )
        if self.target_epsilon is not None and not 0 < self.target_epsilon < math.inf:
            raise ValueError(
                f"client_dp.target_epsilon={self.target_epsilon!r} must be a positive number"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"client_dp.delta={self.delta!r} must be in (0, 1)")
        if self.accountant not in _ACCOUNTANTS:
            raise ValueError(
                f"client_dp.accountant={self.accountant!r} must be one of {', '.join(_ACCOUNTANTS)}"
            )

    @staticmethod
    def steps_per_epoch(n: int, batch_size: int) -> int:
        """Poisson-sampled steps in one epoch: ``ceil(n / batch_size)``."""
        return max(1, -(-n // batch_size))

    @classmethod
    def sample_rate(cls, n: int, batch_size: int) -> float:
        """Each example's chance to be in a step's batch: ``1 / ceil(n / batch_size)``."""
        return 1.0 / cls.steps_per_epoch(n, batch_size)

    def check_delta(self, smallest_partition: int) -> None:
        """Opacus and the literature take ``delta < 1 / n``: a larger delta allows releasing
        one example outright."""
        if smallest_partition > 0 and self.delta >= 1.0 / smallest_partition:
            raise ValueError(
                f"client_dp.delta={self.delta!r} must be below 1/n = "
                f"{1.0 / smallest_partition:.3g} for the smallest partition "
                f"({smallest_partition} samples)"
            )

    def noise_for(self, n: int, batch_size: int, epochs: int, rounds: int) -> float:
        """The noise multiplier of a client with ``n`` samples: ``noise_multiplier``, or for
        ``target_epsilon`` the one that spends it in ``rounds`` rounds of ``epochs`` epochs."""
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        assert self.target_epsilon is not None
        steps = rounds * epochs * self.steps_per_epoch(n, batch_size)
        return _noise_for_target(
            float(self.target_epsilon),
            float(self.delta),
            self.sample_rate(n, batch_size),
            steps,
            self.accountant,
        )


@functools.lru_cache(maxsize=256)
def _noise_for_target(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # the search tries noise levels far from the answer
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


def fix_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model Opacus can train per example: Opacus' ``ModuleValidator.fix`` (BatchNorm ->
    GroupNorm, ...) when ``ModuleValidator.validate`` finds a problem, else the model itself.
    Returns the model and the problems that were fixed (to say at the start of a run)."""
    from opacus.validators import ModuleValidator

    problems = [str(e) for e in ModuleValidator.validate(model, strict=False)]
    if not problems:
        return model, []
    fixed = ModuleValidator.fix(model)
    left = ModuleValidator.validate(fixed, strict=False)
    if left:
        raise ValueError(f"Opacus cannot train {type(model).__name__} per example: {left[0]}")
    return fixed, problems


class PrivacyLedger:
    """Each client's privacy spending over a run, composed by Opacus' accountants.

    Clients are stateless between rounds; each DP reply reports the ``noise_multiplier``,
    ``sample_rate`` and number of ``steps`` of its round, and the ledger adds them to that
    client's accountant (RDP, PRV or GDP, as configured).
    """

    def __init__(self, delta: float, accountant: str = "rdp") -> None:
        if accountant not in _ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {_ACCOUNTANTS}, got {accountant!r}")
        self.delta = delta
        self.kind = accountant
        self._accountants: dict[int, object] = {}

    def spend(
        self, client: int, *, noise_multiplier: float, sample_rate: float, steps: int
    ) -> float:
        """Add a round of ``steps`` DP-SGD steps to ``client``'s account; return its epsilon
        so far at the ledger's delta (``inf`` for noise 0)."""
        from opacus.accountants import create_accountant

        if steps < 0 or not 0 < sample_rate <= 1 or noise_multiplier < 0:
            raise ValueError(
                f"client {client}: bad DP report noise_multiplier={noise_multiplier}, "
                f"sample_rate={sample_rate}, steps={steps}"
            )
        accountant = self._accountants.setdefault(client, create_accountant(self.kind))
        if noise_multiplier == 0:
            accountant.history.append((0.0, sample_rate, steps))  # type: ignore[attr-defined]
            return math.inf
        for _ in range(steps):
            accountant.step(  # type: ignore[attr-defined]
                noise_multiplier=noise_multiplier, sample_rate=sample_rate
            )
        return self.epsilon(client)

    def state_dict(self) -> dict[str, list[list[float]]]:
        """Every client's accountant history (``[sigma, sample_rate, steps]`` entries), for a
        checkpoint; :meth:`load_state_dict` restores it exactly."""
        return {
            str(client): [[float(v) for v in entry] for entry in accountant.history]  # type: ignore[attr-defined]
            for client, accountant in self._accountants.items()
        }

    def load_state_dict(self, state: Mapping[str, Sequence[Sequence[float]]]) -> None:
        from opacus.accountants import create_accountant

        self._accountants = {}
        for client, history in state.items():
            accountant = create_accountant(self.kind)
            accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]  # type: ignore[attr-defined]
            self._accountants[int(client)] = accountant

    def max_epsilon(self) -> float:
        """The largest epsilon of any client so far (0 before any DP-SGD round)."""
        return max((self.epsilon(c) for c in self._accountants), default=0.0)

    def epsilon(self, client: int) -> float:
        """``client``'s epsilon so far (0 if it never trained with DP-SGD)."""
        accountant = self._accountants.get(client)
        if accountant is None or not accountant.history:  # type: ignore[attr-defined]
            return 0.0
        if any(sigma == 0 for sigma, _, _ in accountant.history):  # type: ignore[attr-defined]
            return math.inf
        return float(accountant.get_epsilon(delta=self.delta))  # type: ignore[attr-defined]


def gradient_analysis(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    poisoned: Tensor,
    *,
    max_grad_norm: float | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Magnitude and orientation of the poisoned samples' gradients against the clean ones'
    (Hong et al. 2020, Sec. 3-4: the two artifacts gradient shaping targets).

    Per-example gradients of the cross-entropy over the trainable parameters, at ``model``'s
    current weights: by Opacus' ``GradSampleModule`` (the per-example gradients DP-SGD clips)
    for a model Opacus can train per example (no BatchNorm: every example's gradient is its own
    in training mode too; the models here have no dropout); otherwise in eval mode with
    ``torch.func`` (``vmap`` of ``grad``; BatchNorm with its running statistics), about 3x
    slower on the CNN. Hong et al. average each group's gradients and compare the two
    averages; so do we: ``poison_norm`` and ``clean_norm`` are the L2 norms of the mean
    gradient of the poisoned and of the clean samples, ``cosine`` the cosine between the two
    means. With
    ``max_grad_norm``, the same three of the per-example gradients clipped to that norm
    (``*_clipped``: what DP-SGD's clipping lets through before the noise).

    Parameters
    ----------
    model : nn.Module
        The model (the round's global model); not changed.
    x, y : Tensor
        The client's samples and labels (after poisoning).
    poisoned : Tensor
        Bool ``[N]``: which samples are poisoned. Needs at least one of each kind for a
        cosine (otherwise NaN).

    Returns
    -------
    dict of str to float
        ``poison_norm``, ``clean_norm``, ``cosine`` (and ``poison_norm_clipped``,
        ``clean_norm_clipped``, ``cosine_clipped``).
    """
    if poisoned.shape != y.shape or poisoned.dtype != torch.bool:
        raise ValueError(f"poisoned must be a bool tensor of shape {tuple(y.shape)}")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
    was_training = model.training
    model.to(device)
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sums = {k: torch.zeros(dim, dtype=torch.float64, device=device) for k in ("p", "c", "pc", "cc")}
    try:
        for start, flat in _per_example_gradients(model, x, y, batch_size, device):
            # Sums as products with 0/1 (and clipping-factor) weights: no masked or clipped
            # copies of the [b, d] per-example gradients.
            bad = poisoned[start : start + len(flat)].to(device=device, dtype=flat.dtype)
            sums["p"] += (bad @ flat).double()
            sums["c"] += ((1 - bad) @ flat).double()
            if max_grad_norm is not None:
                factor = (max_grad_norm / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)
                sums["pc"] += ((bad * factor) @ flat).double()
                sums["cc"] += (((1 - bad) * factor) @ flat).double()
    finally:
        model.train(was_training)
    n_p, n_c = int(poisoned.sum()), int((~poisoned).sum())

    def trio(p: Tensor, c: Tensor, suffix: str) -> dict[str, float]:
        mean_p = p / n_p if n_p else torch.full_like(p, math.nan)
        mean_c = c / n_c if n_c else torch.full_like(c, math.nan)
        cos = nn.functional.cosine_similarity(mean_p, mean_c, dim=0, eps=1e-30)
        return {
            f"poison_norm{suffix}": float(mean_p.norm()),
            f"clean_norm{suffix}": float(mean_c.norm()),
            f"cosine{suffix}": float(cos),
        }

    result = trio(sums["p"], sums["c"], "")
    if max_grad_norm is not None:
        result |= trio(sums["pc"], sums["cc"], "_clipped")
    return result


def _per_example_gradients(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device | str
) -> Iterator[tuple[int, Tensor]]:
    """``(start, [b, d] flat per-example gradients)`` of the cross-entropy, batch by batch."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    params = [p for p in model.parameters() if p.requires_grad]
    if not ModuleValidator.validate(model, strict=False):
        model.train()
        module = GradSampleModule(model, loss_reduction="sum")
        try:
            for start in range(0, len(y), batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device)
                module.zero_grad(set_to_none=True)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Full backward hook is firing")
                    nn.functional.cross_entropy(module(xb), yb, reduction="sum").backward()
                grads = [p.grad_sample.reshape(len(yb), -1) for p in params]  # type: ignore[attr-defined]
                yield start, torch.cat(grads, dim=1)
        finally:
            module._close()
            model.zero_grad(set_to_none=True)
        return
    from torch.func import functional_call, grad, vmap

    model.eval()
    named = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_of(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_example = vmap(grad(loss_of), in_dims=(None, 0, 0))
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        grads = per_example(named, xb, yb)
        yield start, torch.cat([g.reshape(len(yb), -1) for g in grads.values()], dim=1)
