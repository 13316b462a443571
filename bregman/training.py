"""The one training loop: mini-batch gradient descent over in-memory tensors.

Every method that trains a network in this project (teachers, the labels-only baseline, soft-label
distillation, hints, Bregman coefficients) runs through :func:`train_loop`; a method differs only
by the *batch-loss function* it hands in. :func:`train_classifier` is the thin labels-only entry
used to train teachers.

Cancellation: ``progress(phase, fraction, metrics)`` is called between steps; an exception raised
inside it propagates out of the loop unchanged (that is how queue workers cancel a job). The
model is left in eval mode whatever happens.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F_nn

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, dict], None]
#: ``batch_loss(model, batch) -> (loss, metrics)``; ``batch`` holds one mini-batch of each tensor
#: handed to :func:`train_loop`, in the same order. ``metrics`` maps names to scalar tensors (or
#: floats) that are averaged over the epoch and recorded in the history; it may be empty.
BatchLossFn = Callable[[nn.Module, Sequence[Tensor]], "tuple[Tensor, dict[str, Tensor | float]]"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


class TrainingError(RuntimeError):
    """Training could not go on (e.g. the loss became NaN or infinite)."""


def default_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block with the global RNGs seeded, restoring their states afterwards.

    Used to make weight initialization and dropout reproducible per ``seed`` without changing
    the caller's random state.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def _validate_common(n: int, epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    if n < 1:
        raise ValueError("the training set is empty: pass at least one example")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a non-negative finite number, got {weight_decay!r}")


def make_optimizer(
    params, *, optimizer: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD with Nesterov momentum."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def train_loop(
    model: nn.Module,
    tensors: Sequence[Tensor],
    batch_loss: BatchLossFn,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    phase: str = "train",
    epoch_end: Callable[[int], dict[str, float]] | None = None,
    params: Sequence[nn.Parameter] | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` by mini-batch descent on ``batch_loss`` over aligned ``tensors``.

    Parameters
    ----------
    model : nn.Module
        Trained in place (``train()`` mode during the loop, ``eval()`` afterwards). It must
        already be on ``device``.
    tensors : sequence of Tensor
        Aligned along dimension 0 (same length N): inputs, labels, cached teacher targets, ...
        They are moved to ``device`` once; every epoch visits them in a fresh random order.
    batch_loss : callable
        ``batch_loss(model, batch) -> (loss, metrics)`` with ``batch`` one mini-batch of each
        tensor; ``loss`` a scalar tensor to minimize, ``metrics`` a dict of scalars averaged per
        epoch into the history.
    epochs, batch_size, lr, weight_decay : training budget and optimizer settings.
    optimizer : {"adamw", "sgd"}
        AdamW (default) or SGD with Nesterov momentum 0.9.
    schedule : {"cosine", "constant"}
        Learning rate: cosine decay from ``lr`` to 0 over all steps (default), or constant.
    seed : int
        Seeds the order of the examples and the global RNG (dropout) inside the loop; the
        caller's random state is restored afterwards.
    device : torch device, optional
        Where to train; default: the model's device.
    progress : callable, optional
        ``progress(phase, fraction, metrics)`` called after every step (``metrics`` holds
        ``epoch`` and ``step``) and after every epoch (``metrics`` holds the epoch's averages).
        An exception raised inside it aborts training and propagates.
    phase : str
        The phase name passed to ``progress``.
    epoch_end : callable, optional
        ``epoch_end(epoch) -> dict`` called after every epoch with the model in eval mode;
        its values are added to the history (e.g. validation accuracy).
    params : sequence of parameters, optional
        What to optimize; default: every parameter of ``model`` that requires a gradient.
    max_grad_norm : float, optional
        Clip the global gradient norm to this value.

    Returns
    -------
    history : dict of lists
        One entry per epoch for ``loss``, every metric of ``batch_loss``, ``lr`` (at the epoch's
        end), ``time_s`` (wall-clock seconds of the epoch's steps, evaluation excluded) and every
        value of ``epoch_end``.
    """
    if not tensors:
        raise ValueError("train_loop needs at least one tensor")
    n = int(tensors[0].shape[0])
    for i, t in enumerate(tensors):
        if int(t.shape[0]) != n:
            raise ValueError(f"tensor {i} has {t.shape[0]} rows but tensor 0 has {n}: they must be aligned")
    _validate_common(n, epochs, batch_size, lr, weight_decay)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    dev = torch.device(device) if device is not None else default_device(model)
    data = [t.to(dev) for t in tensors]
    opt = make_optimizer(params if params is not None else model.parameters(),
                         optimizer=optimizer, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = steps_per_epoch * int(epochs)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total_steps)))
             if schedule == "cosine" else None)
    order_gen = torch.Generator().manual_seed(int(seed))
    history: dict[str, list[float]] = {"loss": [], "lr": [], "time_s": []}
    step = 0
    try:
        with seeded(seed, dev):
            for epoch in range(int(epochs)):
                model.train()
                order = torch.randperm(n, generator=order_gen).to(dev)
                sums: dict[str, Tensor] = {}
                t0 = time.perf_counter()
                for start in range(0, n, batch_size):
                    idx = order[start:start + batch_size]
                    batch = [t[idx] for t in data]
                    loss, metrics = batch_loss(model, batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if max_grad_norm is not None:
                        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], max_grad_norm)
                    opt.step()
                    if sched is not None:
                        sched.step()
                    step += 1
                    w = float(len(idx))
                    # accumulate on the device: no host sync per step
                    for name, value in {"loss": loss, **metrics}.items():
                        v = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value), device=dev)
                        sums[name] = sums.get(name, 0.0) + v * w
                    if progress is not None:
                        progress(phase, step / total_steps, {"epoch": epoch, "step": step})
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                elapsed = time.perf_counter() - t0
                means = {name: float(total) / n for name, total in sums.items()}
                if not math.isfinite(means["loss"]):
                    raise TrainingError(
                        f"the training loss became {means['loss']} in epoch {epoch + 1}: "
                        f"lower the learning rate (lr={lr}) or check the inputs for NaN/inf")
                for name, value in means.items():
                    history.setdefault(name, []).append(value)
                history["lr"].append(opt.param_groups[0]["lr"])
                history["time_s"].append(elapsed)
                if epoch_end is not None:
                    model.eval()
                    with torch.no_grad():
                        for name, value in epoch_end(epoch).items():
                            history.setdefault(name, []).append(float(value))
                logger.debug("%s epoch %d/%d: %s", phase, epoch + 1, epochs, means)
                if progress is not None:
                    progress(phase, step / total_steps,
                             {"epoch": epoch + 1, **{k: v[-1] for k, v in history.items()}})
    finally:
        model.eval()
    return history


def check_labels(y: Tensor, num_outputs: int | None = None) -> Tensor:
    """Validate class labels: a 1-D integer tensor of values in [0, num_outputs)."""
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        if y.dtype.is_floating_point and torch.equal(y, y.round()):
            y = y.long()
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.long()
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels must be non-negative class indices, got minimum {int(y.min())}")
    if num_outputs is not None and y.numel() and int(y.max()) >= num_outputs:
        raise ValueError(
            f"label {int(y.max())} is out of range for a model with {num_outputs} outputs: "
            f"labels must lie in [0, {num_outputs - 1}]")
    return y


def output_width(model: nn.Module, x: Tensor) -> int:
    """The width of ``model``'s (flattened) output on one example, without changing its state."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1].to(default_device(model)))
    finally:
        model.train(was_training)
    return int(out.reshape(1, -1).shape[1])


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    label_smoothing: float = 0.0,
    test: tuple[Tensor, Tensor] | None = None,
) -> dict[str, list[float]]:
    """Train a classifier on labels with cross-entropy (the ``labels`` method; also trains teachers).

    Parameters
    ----------
    model : nn.Module
        Maps a batch of inputs to logits (B, num_classes); trained in place and left in eval mode.
        Moved to ``device`` if one is given.
    x : Tensor
        Inputs (N, ...).
    y : Tensor
        Integer class labels (N,), in [0, num_classes).
    epochs : int, default 30
    batch_size : int, default 64
    lr : float, default 1e-3
        Peak learning rate (cosine-decayed to 0 by default).
    weight_decay : float, default 0.0
    seed : int, default 0
        Seeds the example order and dropout (not the initial weights: seed before building).
    device : optional
        Default: the model's device.
    progress : callable, optional
        ``progress(phase, fraction, metrics)``, phase ``"train"``; raising inside it aborts.
    optimizer : {"adamw", "sgd"}, default "adamw"
    schedule : {"cosine", "constant"}, default "cosine"
    label_smoothing : float, default 0.0
    test : (x_test, y_test), optional
        Evaluated after every epoch: ``test_accuracy`` is added to the history.

    Returns
    -------
    history : dict of lists
        Per epoch: ``loss``, ``accuracy`` (on the training batches, in train mode), ``lr``,
        ``time_s`` and, with ``test``, ``test_accuracy``.
    """
    if device is not None:
        model.to(device)
    x = torch.as_tensor(x)
    if y is None:
        raise ValueError("train_classifier needs labels y; got None")
    if int(x.shape[0]) != int(torch.as_tensor(y).shape[0]):
        raise ValueError(f"x has {x.shape[0]} rows but y has {torch.as_tensor(y).shape[0]}: they must match")
    if x.shape[0] == 0:
        raise ValueError("the training set is empty: pass at least one example")
    y = check_labels(y, output_width(model, x))

    def loss_fn(m: nn.Module, batch: Sequence[Tensor]):
        xb, yb = batch
        logits = m(xb)
        loss = F_nn.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        acc = (logits.detach().argmax(1) == yb).float().mean()
        return loss, {"accuracy": acc}

    epoch_end = None
    if test is not None:
        x_test = torch.as_tensor(test[0])
        y_test = check_labels(test[1])

        def epoch_end(_epoch: int) -> dict[str, float]:
            return {"test_accuracy": accuracy(model, x_test, y_test, batch_size=max(256, batch_size))}

    return train_loop(model, [x, y], loss_fn, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, optimizer=optimizer, schedule=schedule, seed=seed,
                      device=device, progress=progress, phase="train", epoch_end=epoch_end)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 512,
            device: torch.device | str | None = None) -> Tensor:
    """``model(x)`` in eval mode and in batches; the result is on the CPU, flattened per example."""
    dev = torch.device(device) if device is not None else default_device(model)
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, int(x.shape[0]), batch_size):
            out = model(x[start:start + batch_size].to(dev))
            outs.append(out.reshape(out.shape[0], -1).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("cannot predict on an empty input")
    return torch.cat(outs)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512,
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of ``model`` on labelled data (fraction in [0, 1])."""
    y = check_labels(y)
    pred = predict(model, x, batch_size=batch_size, device=device).argmax(1)
    return float((pred == y.cpu()).float().mean())
