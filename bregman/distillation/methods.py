"""The distillation methods: one training loop, one batch loss per method.

Every method trains a *student* network and deploys a :class:`DistilledModel` that maps inputs
to the teacher's output space:

=========  ======================  ==============================  =================================
method     student outputs         deployed model                  loss (batch mean)
=========  ======================  ==============================  =================================
labels     C logits                student                         cross-entropy on labels
kd         C logits                student                         α·T²·KL(p_T ‖ q_T) + (1−α)·CE
hint       d pre-activations â     head(f(student(x)))             mse(â, a) [+ w_label·CE(output)]
bregman    k coefficients ĉ        head(g(student(x))), g(c) =     w_coef·½‖ĉ − c‖²
                                   f(m + V c) the imported layer   [+ w_div·D_F(m + Vĉ, a)]
                                                                   [+ w_label·CE(output)]
                                                                   [+ w_soft·T²·KL(p_T ‖ q_T)]
=========  ======================  ==============================  =================================

The teacher's targets (outputs, pre-activations ``a``, coefficients ``c``) come from the cache
(:mod:`bregman.distillation.targets`), so no method runs the teacher during the student's epochs.
The imported layer and the head are frozen copies: training never touches the teacher.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from bregman.distillation.losses import (
    bregman_divergence_loss,
    coefficient_loss,
    hint_loss,
    kd_loss,
    label_loss,
    soft_label_loss,
    weighted_coefficient_loss,
)

METHODS = ("bregman", "kd", "hint", "labels")
#: what ``distill`` accepts: the methods, and ``auto`` (train several, keep the best on validation)
METHOD_CHOICES = METHODS + ("auto",)
COEFFICIENT_SCALINGS = ("none", "whiten", "head")
COEFFICIENT_LOSSES = ("squared", "huber")
#: methods that use a teacher layer (the others only use the teacher's outputs, or nothing)
LAYER_METHODS = ("bregman", "hint")


class MethodError(ValueError):
    """An unknown method, or settings/data the method cannot use."""


def check_method(method: str, choices: tuple[str, ...] = METHODS) -> str:
    if method not in choices:
        raise MethodError(f"unknown method {method!r}: choose one of {', '.join(choices)}")
    return method


@dataclass(frozen=True)
class LossSettings:
    """The weights and temperatures of the method losses (see the module's table).

    Parameters
    ----------
    temperature : float, default 4.0
        ``kd``'s softmax temperature T.
    alpha : float, default 0.9
        ``kd``'s weight of the soft-label term; ``1 − α`` weighs the label cross-entropy (when
        the transfer set has labels).
    coefficient_weight : float, default 1.0
        ``bregman``: weight of ½‖ĉ − c‖².
    divergence_weight : float, default 0.0
        ``bregman``: weight of the layer's divergence ``D_F(m + V ĉ, a)``.
    label_weight : float, default 0.0
        ``bregman`` and ``hint``: weight of the cross-entropy of the deployed model's output
        against the labels (used only when labels exist).
    soft_label_weight : float, default 0.0
        ``bregman``: weight of kd's soft-label term ``T²·KL(p_T ‖ q_T)`` between the teacher's
        outputs and the deployed model's (the student's coefficients through the imported layer
        and the frozen head), at kd's ``temperature``.
    coefficient_scaling : {"none", "whiten", "head"}, default "none"
        ``bregman``: ``"whiten"`` weighs direction j of the coefficient loss by
        ``mean_j E[c²] / E[c_j²]`` (every direction equally, instead of by its divergence);
        ``"head"`` (flat layers) by how much the deployed model's logits move with c_j at the
        teacher's coefficients, ``E‖∂ logits/∂c_j‖²`` over its mean, clamped to [0.1, 10].
        Both measured behind ``"none"`` (README, distillation quality).
    coefficient_loss : {"squared", "huber"}, default "squared"
        ``bregman``: ½‖ĉ − c‖², or the Huber loss, which bounds the pull of large coefficient
        errors. (:class:`~bregman.distillation.settings.TrainSettings` defaults to ``"auto"``:
        Huber on a transfer set with teacher-labelled copies, where it measured ahead.)
    huber_delta : float, default 1.0
        ``bregman`` with ``coefficient_loss="huber"``: the error (in coefficient units) where
        the loss turns from quadratic to linear.
    """

    _coefficient_loss_choices: ClassVar[tuple[str, ...]] = COEFFICIENT_LOSSES
    #: weights that may be None ("decide from the targets"): TrainSettings' label_weight
    _undecided_weights: ClassVar[tuple[str, ...]] = ()

    temperature: float = 4.0
    alpha: float = 0.9
    coefficient_weight: float = 1.0
    divergence_weight: float = 0.0
    label_weight: float = 0.0
    soft_label_weight: float = 0.0
    coefficient_scaling: str = "none"
    coefficient_loss: str = "squared"
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        if self.coefficient_scaling not in COEFFICIENT_SCALINGS:
            raise MethodError(f"coefficient_scaling must be one of {', '.join(COEFFICIENT_SCALINGS)}, "
                              f"got {self.coefficient_scaling!r}")
        if self.coefficient_loss not in self._coefficient_loss_choices:
            raise MethodError(f"coefficient_loss must be one of {', '.join(self._coefficient_loss_choices)}, "
                              f"got {self.coefficient_loss!r}")
        if not self.huber_delta > 0:
            raise MethodError(f"huber_delta must be positive, got {self.huber_delta}")
        if not self.temperature > 0:
            raise MethodError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise MethodError(f"alpha must lie in [0, 1], got {self.alpha}")
        for name in ("coefficient_weight", "divergence_weight", "label_weight", "soft_label_weight"):
            if getattr(self, name) is None and name in self._undecided_weights:
                continue
            if getattr(self, name) < 0:
                raise MethodError(f"{name} must be non-negative, got {getattr(self, name)}")

    def for_method(self, method: str) -> dict[str, float]:
        """The settings that matter to ``method`` (for manifests and reports)."""
        keep = {"kd": ("temperature", "alpha"), "hint": ("label_weight",),
                "bregman": ("coefficient_weight", "divergence_weight", "label_weight", "soft_label_weight",
                            "coefficient_scaling", "coefficient_loss", "huber_delta"), "labels": ()}[method]
        return {k: v for k, v in asdict(self).items() if k in keep}


class TransferLayer(nn.Module):
    """A transfer function as a module (``hint``'s deployed model: ``head(f(â))``)."""

    def __init__(self, transfer: Any) -> None:
        super().__init__()
        self.transfer = transfer

    def forward(self, a: Tensor) -> Tensor:
        return self.transfer.f(a)

    def extra_repr(self) -> str:
        return repr(self.transfer)


class ProbabilitiesToLogits(nn.Module):
    """``log p``: turns a probability output into logits (a teacher that ends in softmax)."""

    def forward(self, p: Tensor) -> Tensor:
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


class DistilledModel(nn.Module):
    """Inputs → teacher's output space: ``head(layer(student(x)))``; ``layer``/``head`` optional.

    ``layer`` (the imported Bregman layer, or the transfer function) and ``head`` (the frozen
    teacher part above the tapped layer) stay in eval mode and receive no gradient updates.
    """

    def __init__(self, student: nn.Module, layer: nn.Module | None = None, head: nn.Module | None = None,
                 output: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.layer = layer
        self.head = head
        self.output = output  # e.g. a softmax when the teacher's outputs are probabilities

    def forward(self, x: Tensor) -> Tensor:
        return self.above_student(self.student(x))

    def above_student(self, h: Tensor) -> Tensor:
        """The frozen part: the student's outputs to the teacher's output space."""
        if self.layer is not None:
            h = self.layer(h)
        if self.head is not None:
            h = self.head(h)
        if self.output is not None:
            h = self.output(h)
        return h

    def train(self, mode: bool = True) -> "DistilledModel":
        super().train(mode)
        for frozen in (self.layer, self.head, self.output):
            if frozen is not None:
                frozen.eval()
        return self


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with no trainable parameters (the teacher is not touched)."""
    module = copy.deepcopy(module).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def reconstruct_preactivation(layer: nn.Module, c: Tensor) -> Tensor:
    """``m + V c``: the imported layer's reconstruction before its transfer function."""
    if hasattr(layer, "preactivation"):
        return layer.preactivation(c).flatten(1)  # a channels layer's (B, C, H, W) map as its (B, C*H*W) rows
    return layer.mean + c @ layer.components


def student_width(method: str, *, num_outputs: int, d: int | None = None, k: int | None = None) -> int:
    """The number of outputs the student network needs for ``method``."""
    if method == "bregman":
        if k is None:
            raise MethodError("the bregman method needs k (the number of components)")
        return int(k)
    if method == "hint":
        if d is None:
            raise MethodError("the hint method needs the layer width d")
        return int(d)
    return int(num_outputs)


BatchLoss = Callable[[nn.Module, Sequence[Tensor]], "tuple[Tensor, dict[str, Tensor]]"]


def make_batch_loss(
    method: str,
    settings: LossSettings,
    *,
    has_labels: bool,
    transfer: Any = None,
    outputs_to_logits: Callable[[Tensor], Tensor] | None = None,
    coefficient_weights: Tensor | None = None,
) -> tuple[BatchLoss, tuple[str, ...]]:
    """The batch loss of ``method`` and the names of the tensors it reads, in order.

    Tensor names: ``"x"`` (inputs), ``"y"`` (labels), ``"teacher_logits"`` (N, C),
    ``"preactivations"`` (N, d), ``"coefficients"`` (N, k). The model handed to the loss is a
    :class:`DistilledModel`. ``outputs_to_logits`` maps the deployed model's outputs to logits
    for the label term (identity for teachers that output logits). ``coefficient_weights`` (k,)
    weigh the directions of bregman's coefficient loss (``coefficient_scaling="whiten"``).
    """
    check_method(method)
    if settings.coefficient_loss not in COEFFICIENT_LOSSES:  # e.g. TrainSettings' unresolved "auto"
        raise MethodError(f"coefficient_loss {settings.coefficient_loss!r} is not a loss: pass "
                          f"TrainSettings.loss_settings(), which resolves it to one of {', '.join(COEFFICIENT_LOSSES)}")
    if settings.label_weight is None:  # TrainSettings' undecided default
        raise MethodError("label_weight None is not a weight: pass TrainSettings.with_label_weight_for(...)"
                          ".loss_settings(), which decides it for the targets")
    to_logits = outputs_to_logits or (lambda out: out)

    if method == "labels":
        if not has_labels:
            raise MethodError("the labels method needs labels: pass (x, y) with y not None")

        def labels_loss(model: nn.Module, batch: Sequence[Tensor]):
            xb, yb = batch
            logits = to_logits(model(xb))
            return label_loss(logits, yb), {}

        return labels_loss, ("x", "y")

    if method == "kd":
        def kd_batch(model: nn.Module, batch: Sequence[Tensor]):
            xb, tb = batch[0], batch[1]
            yb = batch[2] if has_labels else None
            logits = to_logits(model(xb))
            return kd_loss(logits, tb, yb, temperature=settings.temperature, alpha=settings.alpha), {}

        return kd_batch, ("x", "teacher_logits", "y") if has_labels else ("x", "teacher_logits")

    use_labels = has_labels and settings.label_weight > 0

    if method == "hint":
        def hint_batch(model: nn.Module, batch: Sequence[Tensor]):
            xb, ab = batch[0], batch[1]
            a_hat = model.student(xb)
            hint = hint_loss(a_hat, ab)
            metrics = {"hint": hint.detach()}
            loss = hint
            if use_labels:
                ce = label_loss(to_logits(model.above_student(a_hat)), batch[2])
                loss = loss + settings.label_weight * ce
                metrics["label_loss"] = ce.detach()
            return loss, metrics

        return hint_batch, ("x", "preactivations", "y") if use_labels else ("x", "preactivations")

    # bregman
    use_divergence = settings.divergence_weight > 0
    if use_divergence and transfer is None:
        raise MethodError("the divergence term needs the layer's transfer function")
    use_soft = settings.soft_label_weight > 0
    if settings.coefficient_weight == 0 and not (use_divergence or use_labels or use_soft):
        raise MethodError("every term of the bregman loss has weight 0: give coefficient_weight, "
                          "divergence_weight, soft_label_weight or (with labels) label_weight a positive value")
    names = (("x", "coefficients") + (("preactivations",) if use_divergence else ()) + (("y",) if use_labels else ())
             + (("teacher_logits",) if use_soft else ()))
    plain_coefficients = coefficient_weights is None and settings.coefficient_loss == "squared"

    def bregman_batch(model: nn.Module, batch: Sequence[Tensor]):
        tensors = dict(zip(names, batch))
        c_hat = model.student(tensors["x"])
        if plain_coefficients:
            coef = coefficient_loss(c_hat, tensors["coefficients"])
        else:
            coef = weighted_coefficient_loss(c_hat, tensors["coefficients"], coefficient_weights,
                                             robust=settings.coefficient_loss == "huber",
                                             delta=settings.huber_delta)
        if not (use_divergence or use_labels or use_soft):  # the loss is the coefficient term alone
            return (coef if settings.coefficient_weight == 1 else settings.coefficient_weight * coef), {}
        metrics = {"coefficient_loss": coef.detach()}
        loss = settings.coefficient_weight * coef
        if use_divergence:
            a_hat = reconstruct_preactivation(model.layer, c_hat)
            div = bregman_divergence_loss(a_hat, tensors["preactivations"], transfer)
            loss = loss + settings.divergence_weight * div
            metrics["divergence"] = div.detach()
        if use_labels or use_soft:
            logits = to_logits(model.above_student(c_hat))
        if use_labels:
            ce = label_loss(logits, tensors["y"])
            loss = loss + settings.label_weight * ce
            metrics["label_loss"] = ce.detach()
        if use_soft:
            soft = soft_label_loss(logits, tensors["teacher_logits"], settings.temperature)
            loss = loss + settings.soft_label_weight * soft
            metrics["soft_label_loss"] = soft.detach()
        return loss, metrics

    return bregman_batch, names
