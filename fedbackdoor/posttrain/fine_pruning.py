"""Fine-pruning: prune the channels of the last convolution that clean data leaves dormant,
then fine-tune on clean data.

Liu et al. [1]_ observe that a backdoor tends to live in neurons that clean inputs barely
activate. Their defense ranks the channels of the *last* convolutional layer by their mean
activation over clean validation data, removes them one at a time in increasing order until the
validation accuracy has fallen too far, and then fine-tunes the pruned network on the same clean
data, which also removes backdoors hidden in channels that clean data does use (their
pruning-aware attack).

What was compared, and where this module deviates
-------------------------------------------------
* The authors' code (github ``kangliucn/Fine-pruning-defense``, ``face/conv_output_prune.py``)
  averages the activations of the last convolution over the batch and both spatial axes and
  zeroes the pruned channels' filter weights *and* biases; :func:`channel_activations` and
  :func:`mask_channels` do the same. Their network's last convolution is followed by a ReLU;
  here the ReLU is applied to the convolution's output in the hook, so a convolution followed by
  BatchNorm (ResNet-18) is ranked by its *pre*-BatchNorm response (a documented approximation).
* Pruning is a mask on the convolution's output channels (a forward hook reading a
  non-persistent ``channel_mask`` buffer), not a smaller layer: the architecture, and so the
  runner's evaluation, stay unchanged, the mask moves with ``.to(device)`` and survives
  ``copy.deepcopy``, and fine-tuning cannot revive a pruned channel. For a convolution followed by
  BatchNorm a masked channel still emits BatchNorm's constant shift (no information about the
  input), whereas Liu et al. remove the neuron after its non-linearity.
* Stop rule: pruning stops at the first level whose clean accuracy is more than
  ``max_acc_drop`` (absolute) below the unpruned accuracy, keeping the last level within the
  drop. Our reading of Liu et al. is that they stop at a 4-point drop in validation accuracy, so
  the default is ``0.04``. We could not open the paper's full text here to check this number
  again, so treat it as a setting to report with the results.
* Data: Liu et al. prune and fine-tune on a clean validation set held out from training. Here
  both steps use the whole server set ``data.x, data.y`` (clean samples no client holds). The
  runner measures accuracy on the rest of the test set, so the pruned and fine-tuned models are
  never scored on the samples that chose them.

References
----------
.. [1] K. Liu, B. Dolan-Gavitt and S. Garg, "Fine-Pruning: Defending Against Backdooring
   Attacks on Deep Neural Networks", RAID 2018, LNCS 11050, pp. 273-294.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fedbackdoor.posttrain import Outcome, ServerData
from fedbackdoor.training import evaluate, train

__all__ = [
    "Pruning",
    "channel_activations",
    "fine_pruning",
    "last_conv",
    "mask_channels",
    "prune_by_activation",
]

_MASK = "channel_mask"
_WHEN = ("always", "flagged")


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last :class:`torch.nn.Conv2d` of ``model`` in module order (``named_modules``).

    Raises
    ------
    ValueError
        If ``model`` has no ``Conv2d`` (naming the model's class).
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"fine-pruning needs a convolutional layer, but {type(model).__name__} has no nn.Conv2d"
        )
    return convs[-1]


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


@torch.no_grad()
def channel_activations(
    model: nn.Module,
    conv: nn.Conv2d,
    x: Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Mean activation of each output channel of ``conv`` over the clean inputs ``x``.

    A forward hook on ``conv`` applies a ReLU to the convolution's output and averages it over
    the samples and both spatial positions (Liu et al. [1]_ rank neurons by their average
    activation after the non-linearity). For a convolution followed by BatchNorm (ResNet-18)
    this is the ReLU of the *pre*-BatchNorm response, an approximation. A mask already set by
    :func:`mask_channels` applies first, so a pruned channel reads 0.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (moved to ``device``), without gradients.
    conv : nn.Conv2d
        A submodule of ``model`` (see :func:`last_conv`).
    x : Tensor
        Clean inputs ``[N, C, H, W]``.
    batch_size : int
        Inputs per forward pass; the result does not depend on it.
    device : torch.device or str
        Where to compute.

    Returns
    -------
    Tensor
        ``[conv.out_channels]`` float64 on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if int(x.shape[0]) == 0:
        raise ValueError("channel_activations needs at least one input")
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    count = 0

    def record(_module: nn.Module, _args: tuple[Any, ...], output: Tensor) -> None:
        nonlocal count
        out = torch.relu(output).double()
        total.add_(out.sum(dim=(0, 2, 3)).cpu())
        count += out.shape[0] * out.shape[2] * out.shape[3]

    model.to(device).eval()
    handle = conv.register_forward_hook(record)
    try:
        for start in range(0, int(x.shape[0]), batch_size):
            model(x[start : start + batch_size].to(device))
    finally:
        handle.remove()
    if count == 0:
        raise ValueError(f"the {type(conv).__name__} never ran: it is not used by the model")
    return total / count


def _apply_channel_mask(module: nn.Module, _args: tuple[Any, ...], output: Tensor) -> Tensor:
    # A module-level function reading the module's own buffer: a deep copy of the model keeps
    # the hook and uses the copy's mask, and the mask follows the module across devices.
    return output * module.get_buffer(_MASK).view(-1, 1, 1)


@torch.no_grad()
def mask_channels(conv: nn.Conv2d, pruned: Tensor, *, zero_weights: bool = True) -> None:
    """Prune output channels of ``conv`` in place: multiply their output by 0 on every forward
    pass (also during later training) and zero their filters and biases.

    The mask is a non-persistent buffer ``channel_mask`` of ``conv`` (outside the
    ``state_dict``) read by a forward hook registered once; calling again replaces the mask
    (a channel unmasked again keeps whatever weights it has).

    Parameters
    ----------
    conv : nn.Conv2d
        The layer to prune.
    pruned : Tensor
        Boolean ``[conv.out_channels]``, True for the channels to prune.
    zero_weights : bool
        Also zero the pruned channels' filters and biases. The mask alone already silences
        them; the search over pruning levels masks only, so that a level it rejects leaves
        the weights intact.
    """
    if pruned.dtype != torch.bool or tuple(pruned.shape) != (conv.out_channels,):
        raise ValueError(
            f"pruned must be a bool tensor of shape ({conv.out_channels},), got "
            f"{pruned.dtype} {tuple(pruned.shape)}"
        )
    keep = (~pruned).to(device=conv.weight.device, dtype=conv.weight.dtype)
    if _MASK in dict(conv.named_buffers(recurse=False)):
        conv.get_buffer(_MASK).copy_(keep)
    else:
        conv.register_buffer(_MASK, keep, persistent=False)
        conv.register_forward_hook(_apply_channel_mask)
    if not zero_weights:
        return
    conv.weight[pruned.to(conv.weight.device)] = 0.0
    if conv.bias is not None:
        conv.bias[pruned.to(conv.bias.device)] = 0.0


class Pruning(NamedTuple):
    """What :func:`prune_by_activation` did."""

    #: Boolean ``[out_channels]``: the channels pruned (the kept level).
    pruned: Tensor
    #: Mean activation of each channel on the clean data, before pruning.
    activations: Tensor
    #: Clean accuracy before pruning and at the kept level.
    acc_before: float
    acc_pruned: float


def _levels(channels: int, step: int, max_share: float) -> list[int]:
    """Numbers of channels to try pruning: ``step, 2 step, ...`` up to the cap (which is tried
    last even when ``step`` does not divide it); never all channels."""
    cap = min(math.floor(max_share * channels), channels - 1)
    if cap < 1:
        return []
    levels = list(range(step, cap + 1, step))
    if not levels or levels[-1] != cap:
        levels.append(cap)
    return levels


def prune_by_activation(
    model: nn.Module,
    conv: nn.Conv2d,
    x: Tensor,
    y: Tensor,
    *,
    max_acc_drop: float,
    step: int = 1,
    max_share: float = 0.95,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Pruning:
    """Prune the channels of ``conv`` in increasing order of mean activation on ``x`` until
    the clean accuracy on ``(x, y)`` drops by more than ``max_acc_drop`` (Liu et al. [1]_).

    Levels of ``step``, ``2 step``, ... channels are tried in turn (then the cap, if ``step``
    does not divide it); the first level whose accuracy is more than ``max_acc_drop`` below the
    unpruned accuracy ends the search and the previous level is kept. A drop of exactly
    ``max_acc_drop`` is within. At most ``floor(max_share x channels)`` channels and never all of
    them are pruned. Ties in activation are pruned in channel order (a stable sort).

    ``model`` is left pruned at the kept level (see :func:`mask_channels`); each level costs
    one evaluation over ``x``.

    Returns
    -------
    Pruning
    """
    _check_pruning(max_acc_drop, step, max_share, batch_size)
    activations = channel_activations(model, conv, x, batch_size=batch_size, device=device)
    acc_before = evaluate(model, x, y, batch_size=batch_size, device=device).accuracy
    order = torch.argsort(activations, stable=True)
    pruned = torch.zeros(conv.out_channels, dtype=torch.bool)
    acc_kept = acc_before
    for level in _levels(conv.out_channels, step, max_share):
        trial = torch.zeros_like(pruned)
        trial[order[:level]] = True
        mask_channels(conv, trial, zero_weights=False)
        acc = evaluate(model, x, y, batch_size=batch_size, device=device).accuracy
        # Accuracies are fractions k / N: allow for the rounding of acc_before - max_acc_drop.
        if acc_before - acc > max_acc_drop + 1e-9:
            break
        acc_kept, pruned = acc, trial
    mask_channels(conv, pruned)
    return Pruning(
        pruned=pruned, activations=activations, acc_before=acc_before, acc_pruned=acc_kept
    )


def _check_pruning(max_acc_drop: float, step: int, max_share: float, batch_size: int) -> None:
    if not (math.isfinite(max_acc_drop) and 0.0 <= max_acc_drop <= 1.0):
        raise ValueError(f"max_acc_drop={max_acc_drop!r} must be in [0, 1] (absolute accuracy)")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step={step!r} must be an int >= 1 (channels pruned per level)")
    if not (0.0 < max_share < 1.0):
        raise ValueError(f"max_share={max_share!r} must be in (0, 1)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")


def fine_pruning(
    model: nn.Module,
    data: ServerData,
    *,
    generator: torch.Generator,
    device: torch.device | str,
    earlier: Mapping[str, Outcome],
    max_acc_drop: float = 0.04,
    step: int = 1,
    max_share: float = 0.95,
    fine_tune_epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 32,
    eval_batch_size: int = 256,
    when: str = "always",
) -> Outcome:
    """Fine-pruning (Liu et al. [1]_) of the last convolution; a
    :class:`~fedbackdoor.posttrain.PostTrainDefense`.

    Prunes the channels of :func:`last_conv` in increasing order of mean activation on the
    server's clean data (:func:`prune_by_activation`), then fine-tunes the pruned model on the
    same data with :func:`fedbackdoor.training.train` (plain SGD, batches drawn from
    ``generator``). The pruned channels stay masked through fine-tuning and in the returned
    model.

    Parameters
    ----------
    model : nn.Module
        The checkpoint's global model (a copy; pruned and fine-tuned in place).
    data : ServerData
        ``data.x, data.y`` drive both the pruning and the fine-tuning (Liu et al. use a clean
        validation set for both); the held-out test inputs are not touched.
    generator : torch.Generator
        The order of the fine-tuning batches (the only randomness).
    device : torch.device or str
        Where to compute.
    earlier : mapping of str to Outcome
        Read only for ``when="flagged"``.
    max_acc_drop : float
        Largest clean-accuracy drop (absolute, in [0, 1]) a kept pruning level may cause;
        0.04 is our reading of Liu et al.'s 4 %.
    step : int
        Channels pruned per level (1 as Liu et al.; the search costs one evaluation of
        ``data.x`` per level, so a 512-channel ResNet-18 layer may want a larger step).
    max_share : float
        At most ``floor(max_share x channels)`` channels are pruned, and never all, whatever
        the accuracy says (in (0, 1)).
    fine_tune_epochs, lr, batch_size : int, float, int
        SGD fine-tuning settings (no momentum, no weight decay). Our defaults, not Liu et
        al.'s (their networks and data differ): 5 epochs at 0.01 with batches of 32, for the
        1000-sample server set (the clients train at 0.05).
    eval_batch_size : int
        Batch size of the activation pass and of the accuracy evaluations.
    when : {"always", "flagged"}
        ``"flagged"`` runs only when the Neural Cleanse outcome in ``earlier`` has
        ``fields["flagged"]`` true (and is skipped otherwise).

    Returns
    -------
    Outcome
        ``model``: the pruned and fine-tuned model; ``stages["pruned"]``: a separate copy of the
        model after pruning, before fine-tuning; ``fields``: ``pruned_channels``, ``channels``,
        ``pruned_share``, ``server_acc_before`` and ``server_acc_pruned`` (clean accuracy on
        ``data.x`` before pruning and at the kept level) and ``layer`` (the pruned layer's
        qualified module name). Skipped (no model) under ``when="flagged"`` when Neural Cleanse
        flagged nothing.

    Raises
    ------
    ValueError
        For a bad setting; for ``when="flagged"`` without a Neural Cleanse outcome in
        ``earlier``; for a model without ``nn.Conv2d``.
    """
    _check_pruning(max_acc_drop, step, max_share, eval_batch_size)
    if isinstance(fine_tune_epochs, bool) or not isinstance(fine_tune_epochs, int):
        raise ValueError(f"fine_tune_epochs={fine_tune_epochs!r} must be an int >= 0")
    if fine_tune_epochs < 0:
        raise ValueError(f"fine_tune_epochs={fine_tune_epochs!r} must be an int >= 0")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a finite number > 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    if when not in _WHEN:
        raise ValueError(f"when={when!r} must be one of {', '.join(_WHEN)}")
    if when == "flagged":
        skipped = _skip_unless_flagged(earlier)
        if skipped is not None:
            return Outcome(skipped=skipped)

    conv = last_conv(model)
    layer = _module_name(model, conv)
    pruning = prune_by_activation(
        model, conv, data.x, data.y,
        max_acc_drop=max_acc_drop, step=step, max_share=max_share,
        batch_size=eval_batch_size, device=device,
    )  # fmt: skip
    pruned_model = copy.deepcopy(model)  # keeps the mask hook and its own copy of the buffer
    if fine_tune_epochs > 0:
        train(
            model, data.x, data.y,
            epochs=fine_tune_epochs, batch_size=batch_size, lr=lr, generator=generator,
            device=device,
        )  # fmt: skip
    count = int(pruning.pruned.sum())
    return Outcome(
        model=model,
        stages={"pruned": pruned_model},
        fields={
            "pruned_channels": count,
            "channels": conv.out_channels,
            "pruned_share": count / conv.out_channels,
            "server_acc_before": pruning.acc_before,
            "server_acc_pruned": pruning.acc_pruned,
            "layer": layer,
        },
    )


def _skip_unless_flagged(earlier: Mapping[str, Outcome]) -> str | None:
    """Why fine-pruning with ``when="flagged"`` does not run, or None when it does."""
    if "neural_cleanse" not in earlier:
        raise ValueError(
            "fine_pruning.when=flagged needs posttrain neural_cleanse before it (it reads "
            "Neural Cleanse's 'flagged' finding), but no Neural Cleanse outcome precedes it "
            "(not listed before fine_pruning, or it failed); list it first or set when=always"
        )
    cleanse = earlier["neural_cleanse"]
    if "flagged" not in cleanse.fields:
        if cleanse.skipped is not None:
            return f"Neural Cleanse did not run ({cleanse.skipped})"
        raise ValueError("the neural_cleanse outcome has no 'flagged' field to read")
    if not bool(cleanse.fields["flagged"]):
        return "Neural Cleanse flagged no label"
    return None
