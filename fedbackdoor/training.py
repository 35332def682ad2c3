"""The local training loop and the evaluation function: one of each, used by every client,
the server and the benchmarks.

Data are whole tensors in memory (``x`` in ``[0, 1]``, ``y`` int64); batches are index slices,
so there is no DataLoader, no per-sample Python work and no worker processes. Batch order is
drawn from the caller's ``torch.Generator`` only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn


class TrainingHooks(Protocol):
    """What the loop calls around every optimizer step, e.g. a malicious client's
    training-time attack (:mod:`fedbackdoor.attacks.constraints`: PGD's projection, Neurotoxin's
    mask)."""

    def after_backward(self) -> None:
        """After ``loss.backward()``, before the optimizer step (may edit the gradients)."""

    def after_step(self) -> None:
        """After every optimizer step (may edit the parameters)."""


@dataclass(frozen=True)
class PrivateSteps:
    """DP-SGD in :func:`train` (:mod:`fedbackdoor.privacy` builds it from ``client_dp``):
    Opacus' per-example clipping at ``max_grad_norm`` and Gaussian noise of std
    ``noise_multiplier x max_grad_norm`` drawn from ``noise_generator``, batches drawn by
    Poisson sampling."""

    noise_multiplier: float
    max_grad_norm: float
    noise_generator: torch.Generator


@dataclass(frozen=True)
class TrainResult:
    """What a local training run reports (``sample_rate`` only for DP-SGD: each example's
    chance to be in a step's batch)."""

    num_examples: int
    mean_loss: float
    steps: int
    sample_rate: float | None = None


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    hooks: TrainingHooks | None = None,
    steps: int | None = None,
    private: PrivateSteps | None = None,
) -> TrainResult:
    """Train ``model`` in place with mini-batch SGD on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to ``device``).
    x, y : Tensor
        Inputs ``[N, C, H, W]`` and labels ``[N]``; moved to ``device`` once.
    epochs, batch_size : int
        Passes over the data and samples per step (the last batch may be smaller).
    lr, momentum, weight_decay : float
        SGD settings (a fresh optimizer per call, as clients keep no state between rounds).
    generator : torch.Generator
        CPU generator for the shuffling of each epoch.
    device : torch.device or str
        Where to compute.
    steps : int, optional
        Stop after this many optimizer steps (``epochs`` must allow at least as many): a
        fixed number of iterations, as FLTrust's server takes.
    hooks : TrainingHooks, optional
        E.g. a malicious client's training-time attack (:mod:`fedbackdoor.attacks.constraints`):
        ``after_backward`` runs before every optimizer step, ``after_step`` after it. Built
        for this model after it was moved to ``device``.
    private : PrivateSteps, optional
        Train with DP-SGD (Abadi et al. 2016) through Opacus: the model is wrapped in Opacus'
        ``GradSampleModule`` for the call (its hooks removed after), the optimizer in its
        ``DPOptimizer``. Each epoch takes ``ceil(N / batch_size)`` steps whose batches hold
        every sample independently with probability ``q = 1 / ceil(N / batch_size)`` (Poisson
        sampling, drawn from ``generator``: what Opacus' accountants assume), and the clipped
        sum is divided by ``int(N q)``, Opacus' expected batch size. A step whose batch is
        empty still adds the noise, as Opacus does.

    Returns
    -------
    TrainResult
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must both be >= 1")
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1 (or None)")
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty dataset")
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    if private is not None:
        return _train_private(
            model, x, y, epochs, batch_size, generator, private, hooks, steps,
            lr=lr, momentum=momentum, weight_decay=weight_decay,
        )  # fmt: skip
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    total, taken = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            if steps is not None and taken >= steps:
                break
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if hooks is not None:
                hooks.after_backward()
            optimizer.step()
            if hooks is not None:
                hooks.after_step()
            total += float(loss.detach())
            taken += 1
    return TrainResult(num_examples=n, mean_loss=total / taken, steps=taken)


def _train_private(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    private: PrivateSteps,
    hooks: TrainingHooks | None,
    steps: int | None,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> TrainResult:
    """:func:`train`'s loop with Opacus' DP-SGD (see its ``private``)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = int(y.shape[0])
    per_epoch = max(1, -(-n // batch_size))
    rate = 1.0 / per_epoch
    module = GradSampleModule(model)
    try:
        optimizer = DPOptimizer(
            torch.optim.SGD(
                module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
            ),
            noise_multiplier=private.noise_multiplier,
            max_grad_norm=private.max_grad_norm,
            expected_batch_size=max(1, int(n * rate)),
            generator=private.noise_generator,
        )
        loss_fn = nn.CrossEntropyLoss()
        total, taken, batches = 0.0, 0, 0
        for _ in range(epochs):
            for _ in range(per_epoch):
                if steps is not None and taken >= steps:
                    break
                chosen = torch.rand(n, generator=generator) < rate
                idx = chosen.nonzero().squeeze(1).to(x.device)
                optimizer.zero_grad(set_to_none=True)
                if len(idx):
                    loss = loss_fn(module(x[idx]), y[idx])
                    with warnings.catch_warnings():  # Opacus' hooks on the first layer, whose
                        # input needs no gradient: harmless, said on every step otherwise
                        warnings.filterwarnings("ignore", "Full backward hook is firing")
                        loss.backward()
                    total += float(loss.detach())
                    batches += 1
                else:  # an empty batch: no example's gradient, the noise all the same
                    for p in module.parameters():
                        if p.requires_grad:
                            p.grad_sample = p.new_zeros((0, *p.shape))
                if hooks is not None:
                    hooks.after_backward()
                optimizer.step()
                if hooks is not None:
                    hooks.after_step()
                taken += 1
    finally:
        module._close()
    mean = total / batches if batches else float("nan")
    return TrainResult(num_examples=n, mean_loss=mean, steps=taken, sample_rate=rate)


class Evaluation(NamedTuple):
    """What :func:`evaluate` measures."""

    accuracy: float
    loss: float
    #: Share of inputs whose logits hold a NaN or an infinity (never counted as correct).
    nonfinite: float


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``.

    Backdoor accuracy is this function's accuracy on the triggered test set (see
    :class:`fedbackdoor.metrics.Evaluator`), so clean and backdoor figures can never be
    computed differently.

    A prediction counts only where the model's logits are finite: the argmax of a row holding
    NaN is 0 (or wherever the NaN is), and would otherwise count as class 0 -- a diverged model
    would read backdoor accuracy 1.0 for target 0.

    Returns
    -------
    Evaluation
        Accuracy as a fraction in [0, 1], mean cross-entropy, and the share of inputs whose
        logits are not all finite; ``(nan, nan, 0)`` for an empty set.
    """
    n = int(y.shape[0])
    if n == 0:
        return Evaluation(float("nan"), float("nan"), 0.0)
    model.to(device).eval()
    correct, loss_sum, broken = 0, 0.0, 0
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        logits = model(xb)
        finite = torch.isfinite(logits).all(dim=1)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int(((logits.argmax(dim=1) == yb) & finite).sum())
        broken += int((~finite).sum())
    return Evaluation(correct / n, loss_sum / n, broken / n)
