"""Attacks that shape a malicious client's local training: projected gradient descent onto an
L2 ball (constrain-and-scale) and Neurotoxin's coordinate mask.

The server-side model-poisoning attacks of :mod:`fedbackdoor.attacks._contract` see only the
finished updates; the attacks here act *during* the attacker's training, through the two hooks
of the one training loop (:func:`fedbackdoor.training.train`): ``after_backward`` may change the
gradients, ``after_step`` the weights. :meth:`LocalConstraint.finish` then shapes the finished
update (the whole state delta the server will see). A constraint is built per client update by a
factory ``factory(model, x, y) -> LocalConstraint`` (Hydra's ``_partial_`` of :func:`pgd` or
:func:`neurotoxin`) from the global model the client starts from and its *clean* local data.

The maths are pure functions (:func:`project_to_ball`, :func:`scale_to_norm`,
:func:`bottom_k_mask`); the classes only keep the anchor weights and the mask between steps.
Nothing here imports Flower or knows which defense runs.

References
----------
.. [1] Z. Sun, P. Kairouz, A. T. Suresh and H. B. McMahan, "Can You Really Backdoor Federated
   Learning?", arXiv:1911.07963, 2019 (norm-bounded attackers).
.. [2] H. Wang, K. Sreenivasan, S. Rajput, H. Vishwakarma, S. Agarwal, J. Sohn, K. Lee and
   D. Papailiopoulos, "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning",
   NeurIPS 2020 (PGD with model replacement).
.. [3] Z. Zhang, A. Panda, L. Song, Y. Yang, M. W. Mahoney, J. E. Gonzalez, K. Ramchandran and
   P. Mittal, "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "LocalConstraint",
    "Neurotoxin",
    "Projection",
    "bottom_k_mask",
    "neurotoxin",
    "pgd",
    "project_to_ball",
    "scale_to_norm",
]


def _check_bound(norm_bound: object) -> float:
    if isinstance(norm_bound, bool) or not isinstance(norm_bound, int | float):
        raise ValueError(f"norm_bound must be a number > 0, got {norm_bound!r}")
    if not (math.isfinite(norm_bound) and norm_bound > 0):
        raise ValueError(f"norm_bound must be a finite number > 0, got {norm_bound!r}")
    return float(norm_bound)


def project_to_ball(delta: Tensor, norm_bound: float) -> Tensor:
    """Euclidean projection of ``delta`` onto the L2 ball of radius ``norm_bound``.

    Returns ``delta`` itself (no copy) when it already lies inside, else
    ``delta * norm_bound / ||delta||``.
    """
    bound = _check_bound(norm_bound)
    norm = float(torch.linalg.vector_norm(delta))
    if norm <= bound:
        return delta
    return delta * (bound / norm)


def scale_to_norm(delta: Tensor, norm_bound: float) -> Tensor:
    """``delta`` rescaled to L2 norm exactly ``norm_bound`` ("then scale up to the bound",
    [1]_ [2]_); a zero ``delta`` stays zero."""
    bound = _check_bound(norm_bound)
    norm = float(torch.linalg.vector_norm(delta))
    if norm == 0.0:
        return delta.clone()
    return delta * (bound / norm)


def bottom_k_mask(scores: Tensor, ratio: float) -> Tensor:
    """Boolean mask of the ``round(ratio * scores.numel())`` entries of smallest ``|scores|``.

    Neurotoxin's mask [3]_: the coordinates benign clients change least. Ties are broken by
    position (stable sort), so the mask is deterministic.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1], got mask_ratio={ratio!r}")
    flat = scores.detach().abs().flatten()
    keep = round(ratio * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep:
        order = torch.sort(flat, stable=True).indices
        mask[order[:keep]] = True
    return mask.view(scores.shape)


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


class LocalConstraint:
    """No constraint; the base of the hooks the training loop calls (all no-ops)."""

    def after_backward(self) -> None:
        """Called after ``loss.backward()``, before the optimizer step."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def finish(self, state: dict[str, Tensor], anchor: dict[str, Tensor]) -> dict[str, Tensor]:
        """Shape the finished weights ``state`` (the update is ``state - anchor``)."""
        return state


class Projection(LocalConstraint):
    """PGD onto the L2 ball of radius ``norm_bound`` around the starting weights [1]_ [2]_.

    After every step the trained parameters are projected back into the ball, so the update
    never exceeds the bound during training. :meth:`finish` projects the trainable parameters'
    delta (the update the server sees: buffers such as BatchNorm statistics are not part of it,
    see :mod:`fedbackdoor.layout`) and, with ``scale_to_bound``, scales it up to the bound
    exactly: the largest update a norm-clipping server with that bound lets through unchanged.
    """

    def __init__(self, model: nn.Module, *, norm_bound: float, scale_to_bound: bool = True):
        self.norm_bound = _check_bound(norm_bound)
        self.scale_to_bound = bool(scale_to_bound)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.anchor = [p.detach().clone() for p in self.params]

    def after_step(self) -> None:
        with torch.no_grad():
            delta = _flat([p - a for p, a in zip(self.params, self.anchor, strict=True)])
            norm = float(torch.linalg.vector_norm(delta))
            if norm > self.norm_bound:
                factor = self.norm_bound / norm
                for p, a in zip(self.params, self.anchor, strict=True):
                    p.copy_(a + (p - a) * factor)

    def finish(self, state: dict[str, Tensor], anchor: dict[str, Tensor]) -> dict[str, Tensor]:
        keys = self.names
        delta = torch.cat([(state[k] - anchor[k]).reshape(-1).float() for k in keys])
        shaped = (
            scale_to_norm(delta, self.norm_bound)
            if self.scale_to_bound
            else project_to_ball(delta, self.norm_bound)
        )
        out = dict(state)
        offset = 0
        for k in keys:
            size = state[k].numel()
            piece = shaped[offset : offset + size].view_as(state[k]).to(state[k].dtype)
            out[k] = anchor[k].to(state[k].dtype) + piece
            offset += size
        return out


class Neurotoxin(LocalConstraint):
    """Neurotoxin [3]_: train only the coordinates benign clients change least.

    The benign update is estimated by the gradient of the attacker's *clean* local data at the
    global model (as the authors' released code does); the ``mask_ratio`` share of coordinates
    with the smallest magnitude there may change, the others stay at the global weights (their
    gradients are zeroed after ``backward`` and their values reset after each step, so momentum
    or weight decay cannot leak into them). With ``norm_bound`` the update is also projected
    onto that L2 ball after each step and at the end, as in the paper's PGD variant.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        mask_ratio: float,
        norm_bound: float | None = None,
        max_samples: int = 1024,
        batch_size: int = 256,
    ):
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be an integer >= 1, got {max_samples!r}")
        self.projection = (
            None
            if norm_bound is None
            else Projection(model, norm_bound=norm_bound, scale_to_bound=False)
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.anchor = [p.detach().clone() for p in self.params]
        grads = _clean_gradient(model, x[:max_samples], y[:max_samples], batch_size)
        mask = bottom_k_mask(_flat(grads), mask_ratio)
        self.masks = []
        offset = 0
        for p in self.params:
            self.masks.append(mask[offset : offset + p.numel()].view_as(p).to(p.device))
            offset += p.numel()

    def after_backward(self) -> None:
        for p, m in zip(self.params, self.masks, strict=True):
            if p.grad is not None:
                p.grad.mul_(m)

    def after_step(self) -> None:
        with torch.no_grad():
            for p, a, m in zip(self.params, self.anchor, self.masks, strict=True):
                p.copy_(torch.where(m, p, a))
        if self.projection is not None:
            self.projection.after_step()

    def finish(self, state: dict[str, Tensor], anchor: dict[str, Tensor]) -> dict[str, Tensor]:
        return state if self.projection is None else self.projection.finish(state, anchor)


def _clean_gradient(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> list[Tensor]:
    """Summed gradient of the cross-entropy over ``(x, y)`` at the model's current weights
    (eval mode, so batch-norm statistics are not touched)."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    if len(y) == 0:
        return sums
    device = params[0].device
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        grads = torch.autograd.grad(loss_fn(model(xb), yb), params)
        for s, g in zip(sums, grads, strict=True):
            s.add_(g)
    model.train(was_training)
    return sums


def pgd(
    model: nn.Module, x: Tensor, y: Tensor, *, norm_bound: float, scale_to_bound: bool = True
) -> Projection:
    """Constrain-and-scale [1]_ [2]_ for the model the client starts from (``x``, ``y`` unused;
    every factory takes the clean local data)."""
    return Projection(model, norm_bound=norm_bound, scale_to_bound=scale_to_bound)


def neurotoxin(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    mask_ratio: float,
    norm_bound: float | None = None,
    max_samples: int = 1024,
) -> Neurotoxin:
    """Neurotoxin [3]_ for the model the client starts from, masked by its clean data."""
    return Neurotoxin(
        model, x, y, mask_ratio=mask_ratio, norm_bound=norm_bound, max_samples=max_samples
    )
