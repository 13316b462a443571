"""The per-method losses, as plain functions of tensors (averaged over the batch).

Conventions: every loss is a mean over the examples of the batch; within an example it is the
quantity named below (a sum over units unless said otherwise).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:  # only for the type hint: losses never import the transfers module
    from bregman.transfers import Transfer


def coefficient_loss(c_hat: Tensor, c: Tensor) -> Tensor:
    """Squared error on Bregman coefficients: mean over the batch of ½‖ĉ − c‖².

    The representation is normalized so that ``Vᵀ ∇²F(m) V = I``: near the mean, ½‖ĉ − c‖² is
    a second-order approximation of the layer's divergence between the two reconstructions.
    """
    if c_hat.shape != c.shape:
        raise ValueError(f"predicted coefficients have shape {tuple(c_hat.shape)}, targets {tuple(c.shape)}")
    # one fused kernel (and its backward) instead of sub/pow/sum/mean: this loss is the whole
    # per-step cost of the method beyond the student's forward and backward
    return F.mse_loss(c_hat, c, reduction="sum") * (0.5 / max(1, c_hat.shape[0]))


def weighted_coefficient_loss(c_hat: Tensor, c: Tensor, weights: Tensor | None = None, *,
                              robust: bool = False, delta: float = 1.0) -> Tensor:
    """½ Σ_j w_j ρ(ĉ_j − c_j), batch mean: per-direction weights ``w`` and, with ``robust``, the
    Huber ρ (quadratic up to ``delta``, linear beyond: a confident example's large coefficient
    pulls no harder than an error of ``delta``). ``weights=None`` and ``robust=False`` is
    :func:`coefficient_loss`."""
    if c_hat.shape != c.shape:
        raise ValueError(f"predicted coefficients have shape {tuple(c_hat.shape)}, targets {tuple(c.shape)}")
    if robust:
        per = F.huber_loss(c_hat, c, reduction="none", delta=float(delta))  # ½e² for |e| <= delta
    else:
        per = 0.5 * (c_hat - c) ** 2
    if weights is not None:
        per = per * weights
    return per.sum() / max(1, c_hat.shape[0])


def bregman_divergence_loss(a_hat: Tensor, a: Tensor, transfer: "Transfer") -> Tensor:
    """The layer's Bregman divergence ``D_F(â, a)``, averaged over the batch.

    ``â`` is the reconstructed pre-activation ``m + V ĉ``; ``a`` the teacher's pre-activation.
    Its gradient in ``â`` is ``f(â) − f(a)``: the error is measured in the layer's output space.
    """
    if a_hat.shape != a.shape:
        raise ValueError(f"reconstruction has shape {tuple(a_hat.shape)}, targets {tuple(a.shape)}")
    return transfer.divergence(a_hat, a).mean()


def soft_label_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al.'s soft-label loss: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean.

    The factor ``T²`` keeps the gradient's scale independent of the temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits have shape {tuple(student_logits.shape)}, teacher's {tuple(teacher_logits.shape)}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return temperature**2 * kl.mean()


def label_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of logits against integer labels, batch mean."""
    return F.cross_entropy(logits, y)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    y: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Soft-label distillation: ``α · soft_label_loss + (1 − α) · cross-entropy(labels)``.

    Without labels (``y is None``) the loss is the soft-label term alone (``α`` is ignored).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    soft = soft_label_loss(student_logits, teacher_logits, temperature)
    if y is None:
        return soft
    return alpha * soft + (1.0 - alpha) * label_loss(student_logits, y)


def hint_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """FitNets-style hint: mean squared error over the units, batch mean (``F.mse_loss``)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has shape {tuple(prediction.shape)}, target {tuple(target.shape)}")
    return F.mse_loss(prediction, target)


def kl_to_teacher(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(softmax(teacher) ‖ softmax(student))`` per example (N,), for evaluation."""
    log_p_student = F.log_softmax(student_logits.float(), dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float(), dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)


__all__ = [
    "bregman_divergence_loss",
    "coefficient_loss",
    "hint_loss",
    "kd_loss",
    "kl_to_teacher",
    "label_loss",
    "soft_label_loss",
    "weighted_coefficient_loss",
]
