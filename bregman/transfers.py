"""Transfer functions ``f = ∇F`` of neural network layers and their Bregman divergences.

Every transfer function here is the gradient of a convex potential ``F``; it induces the
layer's Bregman divergence (its "matching loss")::

    D_F(â, a) = F(â) − F(a) − f(a)·(â − a)  ≥ 0

whose gradient in ``â`` is ``f(â) − f(a)``. All functions act on the last dimension of a
torch tensor; potentials and divergences are summed over that dimension (one value per row).

Names: ``"identity"``, ``"leaky_relu"`` (``negative_slope``, default 0.01), ``"relu"``
(``hessian_floor``, default 1e-6), ``"sigmoid"``, ``"tanh"``, ``"softmax"``. Non-monotone
activations (GELU, SiLU/swish, Mish, ...) have no convex potential and are refused with
:class:`NonMonotoneTransferError`.

Examples
--------
>>> import torch
>>> t = get_transfer("leaky_relu", negative_slope=0.1)
>>> a = torch.tensor([[1.0, -2.0]])
>>> t.f(a)
tensor([[ 1.0000, -0.2000]])
>>> float(t.divergence(a, a)[0])
0.0
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F_nn

__all__ = [
    "Transfer",
    "Identity",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "get_transfer",
    "TRANSFERS",
    "NonMonotoneTransferError",
    "UnknownTransferError",
]

_LOG2 = math.log(2.0)


class UnknownTransferError(ValueError):
    """The transfer function name (or its parameters) is not one this library supports."""


class NonMonotoneTransferError(ValueError):
    """The activation is not monotone, so it is not the gradient of a convex potential."""


def _nonnegative(x: torch.Tensor) -> torch.Tensor:
    """Clamp round-off below 0 without cutting the gradient (the divergence's gradient
    ``f(â) − f(a)`` must survive for training losses, also where the value rounds below 0)."""
    if x.requires_grad:
        return x + (x.clamp_min(0) - x).detach()
    return x.clamp_min(0)


def _bernoulli_kl_logits(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(Bern(σ(x)) ‖ Bern(σ(x̂))) = softplus(x̂) − softplus(x) − σ(x)(x̂ − x).

    With ``s = sign(x)``, ``z = s x`` ≥ 0 and ``ẑ = s x̂`` (the KL is symmetric under swapping
    the two labels) it equals ``logσ(z) − logσ(ẑ) + σ(−z)(ẑ − z)``: every term is small
    or exactly what the true value is made of, so saturated units lose no precision.
    """
    s = torch.copysign(x.new_ones(()), x)  # ±1, +1 at +0 (a comparison is 5-20x slower)
    z, z_hat = s * x, s * x_hat
    kl = F_nn.logsigmoid(z) - F_nn.logsigmoid(z_hat) + torch.sigmoid(-z) * (z_hat - z)
    return _nonnegative(kl)


def _piecewise_quadratic_divergence(a_hat: torch.Tensor, a: torch.Tensor, s_hat: torch.Tensor,
                                    s: torch.Tensor) -> torch.Tensor:
    """Divergence of ``F(x) = ½ s(x) x²`` (leaky ReLU, ReLU), ``s(x)`` the slope on x's side of 0.

    ``D = ½ s(a)(â − a)² + ½ (s(â) − s(a)) â²``: exact, and on one side of 0 (the common case)
    a plain square with no cancellation. Without autograd the temporaries are reused in place
    (the fit evaluates this on every row block many times; each pass over a block costs about
    as much as a small GEMM).
    """
    if a_hat.requires_grad or a.requires_grad:
        diff = a_hat - a
        return _nonnegative(0.5 * s * diff * diff + 0.5 * (s_hat - s) * a_hat * a_hat)
    diff = a_hat - a
    sq = diff.mul_(diff).mul_(s)
    cross = (s_hat - s).mul_(a_hat).mul_(a_hat)
    return sq.add_(cross).mul_(0.5).clamp_min_(0)


def _step_slope(a: torch.Tensor, low: float) -> torch.Tensor:
    """``1`` where ``a > 0``, else ``low``, from ``sign`` (a comparison or ``torch.where`` on CPU
    costs 5-20x an arithmetic pass: measured 7.3 ms against 0.22 ms for sign on a 2563 x 256
    float32 block, one thread)."""
    return a.sign().clamp_min_(0).mul_(1.0 - low).add_(low)


class Transfer:
    """A layer's transfer function ``f = ∇F`` with its potential and divergence.

    Subclasses implement the maths; instances are cheap, immutable and compare by name and
    parameters.

    Attributes
    ----------
    name : str
        Canonical name (a key of :data:`TRANSFERS`).
    params : dict
        JSON-able parameters (e.g. ``{"negative_slope": 0.01}``); empty when there are none.
    elementwise : bool
        True when ``f`` acts unit by unit, so ``∇²F`` is diagonal (:meth:`hessian_diag`).
        False for softmax, whose Hessian is ``diag(p) − p pᵀ`` (use :meth:`hvp`).
    invertible : bool
        Whether :meth:`f_inv` exists.
    """

    name: ClassVar[str] = "transfer"
    elementwise: ClassVar[bool] = True
    invertible: ClassVar[bool] = True

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @property
    def hessian_floor(self) -> float:
        """Lower bound applied to the Hessian diagonal (0 unless the Hessian is singular)."""
        return 0.0

    # --- the maths -------------------------------------------------------------------
    def f(self, a: torch.Tensor) -> torch.Tensor:
        """The transfer function (the layer's output for pre-activations ``a``)."""
        raise NotImplementedError

    def F(self, a: torch.Tensor) -> torch.Tensor:
        """The convex potential, summed over the last dimension: shape ``a.shape[:-1]``."""
        return self.F_elements(a).sum(-1)

    def F_elements(self, a: torch.Tensor) -> torch.Tensor:
        """Per-unit terms of the potential (element-wise transfers only)."""
        raise NotImplementedError(f"{self.name} has no per-unit potential")

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        """A pre-activation ``a`` with ``f(a) = y`` (outputs must lie in the range of ``f``)."""
        raise NotImplementedError

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        """Diagonal of ``∇²F(a)`` (the whole Hessian for element-wise transfers)."""
        raise NotImplementedError

    def hessian_diag_from_output(self, a: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        """:meth:`hessian_diag` when ``fa = f(a)`` is already known (saves work for sigmoid/tanh)."""
        return self.hessian_diag(a)

    def hvp(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``∇²F(a)`` applied to ``v`` (row by row, same shape as ``v``)."""
        return self.hessian_diag(a) * v

    def divergence(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Bregman divergence ``D_F(â, a)`` summed over the last dimension (≥ 0, exact 0 at â = a)."""
        return self.divergence_elements(a_hat, a).sum(-1)

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Per-unit terms of the divergence (element-wise transfers only)."""
        raise NotImplementedError

    def remove_gauge(self, x: torch.Tensor) -> torch.Tensor:
        """Project out directions that ``f`` ignores (softmax: per-row shifts). Identity otherwise."""
        return x

    # --- bookkeeping -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description: ``{"name": ..., "params": {...}}``."""
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "Transfer":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(spec, dict) or "name" not in spec:
            raise UnknownTransferError(
                f"a transfer description must be a dict with a 'name' key, got {spec!r}"
            )
        return get_transfer(spec["name"], **dict(spec.get("params") or {}))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transfer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class Identity(Transfer):
    """``f(a) = a``, ``F(a) = ½‖a‖²``: the divergence is half the squared distance."""

    name = "identity"

    def f(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def F_elements(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * a

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(a)

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        diff = a_hat - a
        return 0.5 * diff * diff


class LeakyReLU(Transfer):
    """``f(a) = a if a > 0 else s·a`` (``s = negative_slope > 0``), ``F(a) = ½ a·f(a)``.

    Parameters
    ----------
    negative_slope : float
        Slope ``s`` for negative inputs; must be positive (``s = 0`` is ReLU, use ``"relu"``).
    """

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        try:
            slope = float(negative_slope)
        except (TypeError, ValueError):
            raise UnknownTransferError(
                f"leaky_relu negative_slope must be a number, got {negative_slope!r}"
            ) from None
        if not math.isfinite(slope) or slope <= 0:
            hint = (
                "use transfer='relu' for slope 0"
                if slope == 0
                else "a negative slope makes the function non-monotone, so it has no convex potential"
            )
            raise UnknownTransferError(
                f"leaky_relu negative_slope must be a finite number > 0, got {negative_slope!r}: {hint}"
            )
        self.negative_slope = slope

    @property
    def params(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def _slope(self, a: torch.Tensor) -> torch.Tensor:
        return _step_slope(a, self.negative_slope)

    def f(self, a: torch.Tensor) -> torch.Tensor:
        return F_nn.leaky_relu(a, self.negative_slope)

    def F_elements(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * self.f(a)

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y > 0, y, y / self.negative_slope)

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        return self._slope(a)

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _piecewise_quadratic_divergence(a_hat, a, self._slope(a_hat), self._slope(a))


class ReLU(Transfer):
    """``f(a) = max(a, 0)``, ``F(a) = ½‖max(a, 0)‖²``, tapped on the pre-activations.

    ReLU is not invertible and its Hessian ``diag(1[a > 0])`` is singular; solvers use
    ``max(1[a > 0], hessian_floor)`` instead, and the floor is recorded in manifests.

    Parameters
    ----------
    hessian_floor : float
        Positive lower bound for the Hessian diagonal (default 1e-6).
    """

    name = "relu"
    invertible = False

    def __init__(self, hessian_floor: float = 1e-6) -> None:
        try:
            floor = float(hessian_floor)
        except (TypeError, ValueError):
            raise UnknownTransferError(
                f"relu hessian_floor must be a number, got {hessian_floor!r}"
            ) from None
        if not math.isfinite(floor) or not 0 < floor <= 1:
            raise UnknownTransferError(
                f"relu hessian_floor must be in (0, 1], got {hessian_floor!r}; the default 1e-6 suits most layers"
            )
        self._floor = floor

    @property
    def params(self) -> dict[str, Any]:
        return {"hessian_floor": self._floor}

    @property
    def hessian_floor(self) -> float:
        return self._floor

    def f(self, a: torch.Tensor) -> torch.Tensor:
        return a.clamp_min(0)

    def F_elements(self, a: torch.Tensor) -> torch.Tensor:
        y = a.clamp_min(0)
        return 0.5 * y * y

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "ReLU is not invertible (every a <= 0 maps to 0): tap the layer's pre-activations "
            "directly instead of inverting its outputs, or use leaky_relu"
        )

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        return _step_slope(a, self._floor)

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _piecewise_quadratic_divergence(a_hat, a, _step_slope(a_hat, 0.0), _step_slope(a, 0.0))


class Sigmoid(Transfer):
    """``f = σ``, ``F(a) = Σ softplus(a)``; the divergence is a sum of Bernoulli KLs."""

    name = "sigmoid"

    def f(self, a: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(a)

    def F_elements(self, a: torch.Tensor) -> torch.Tensor:
        return F_nn.softplus(a)

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(y.dtype).tiny if y.is_floating_point() else 1e-38
        return torch.logit(y.clamp(eps, 1 - torch.finfo(y.dtype).eps / 2))

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(a)
        return p * (1 - p)

    def hessian_diag_from_output(self, a: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        return fa * (1 - fa)

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _bernoulli_kl_logits(a_hat, a)


class Tanh(Transfer):
    """``f = tanh``, ``F(a) = Σ log cosh(a)``; ``D_tanh(â, a) = D_sigmoid(2â, 2a)``."""

    name = "tanh"

    def f(self, a: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a)

    def F_elements(self, a: torch.Tensor) -> torch.Tensor:
        x = a.abs()
        # log cosh(x) = |x| + log(1 + e^{-2|x|}) − log 2, exact for large |x|.
        return x + F_nn.softplus(-2 * x) - _LOG2

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        lim = 1 - torch.finfo(y.dtype).eps
        return torch.atanh(y.clamp(-lim, lim))

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(a)
        return 1 - t * t

    def hessian_diag_from_output(self, a: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        return 1 - fa * fa

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _bernoulli_kl_logits(2 * a_hat, 2 * a)


class Softmax(Transfer):
    """``f = softmax`` over the last dimension, ``F = logsumexp``.

    ``D_F(â, a) = KL(softmax(a) ‖ softmax(â))``. Softmax ignores per-row shifts (the gauge
    direction, the all-ones vector): :meth:`remove_gauge` subtracts the row mean, and
    :meth:`f_inv` returns the sum-zero representative.
    """

    name = "softmax"
    elementwise = False

    def f(self, a: torch.Tensor) -> torch.Tensor:
        return torch.softmax(a, dim=-1)

    def F(self, a: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(a, dim=-1)

    def f_inv(self, y: torch.Tensor) -> torch.Tensor:
        log_y = torch.log(y.clamp_min(torch.finfo(y.dtype).tiny))
        return log_y - log_y.mean(-1, keepdim=True)

    def hessian_diag(self, a: torch.Tensor) -> torch.Tensor:
        """Diagonal ``p(1 − p)`` only; the full Hessian is ``diag(p) − p pᵀ`` (see :meth:`hvp`)."""
        p = torch.softmax(a, dim=-1)
        return p * (1 - p)

    def hvp(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (Hv)_j = p_j (v_j − pᵀv). Where p is peaked and v large (normalized directions at a
        # peaked mean reach 1e5), v_j − pᵀv cancels catastrophically and VᵀHV loses ~1e-5.
        # H·1 = 0, so v may be shifted by a constant first: shifting it to 0 at the dominant
        # unit leaves only small-weighted terms in pᵀv, and the subtraction is exact enough.
        p, v = torch.broadcast_tensors(torch.softmax(a, dim=-1), v)
        w = v - v.gather(-1, p.argmax(-1, keepdim=True))
        return p * (w - (p * w).sum(-1, keepdim=True))

    def divergence(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(a, dim=-1)
        log_q = torch.log_softmax(a_hat, dim=-1)
        return _nonnegative((log_p.exp() * (log_p - log_q)).sum(-1))

    def divergence_elements(self, a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the softmax divergence does not split over units; use divergence()")

    def remove_gauge(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True)


TRANSFERS: dict[str, type[Transfer]] = {
    cls.name: cls for cls in (Identity, LeakyReLU, ReLU, Sigmoid, Tanh, Softmax)
}

_ALIASES = {
    "linear": "identity",
    "none": "identity",
    "leakyrelu": "leaky_relu",
    "logistic": "sigmoid",
}

_NON_MONOTONE = {
    "gelu": "GELU",
    "silu": "SiLU",
    "swish": "Swish (SiLU)",
    "mish": "Mish",
    "hardswish": "Hard-Swish",
    "hard_swish": "Hard-Swish",
    "quick_gelu": "QuickGELU",
    "gelu_new": "GELU",
    "snake": "Snake",
    "sin": "sine",
}

# torch.nn activation modules recognised by get_transfer (class name -> transfer name)
_MODULE_NAMES = {
    "Identity": "identity",
    "ReLU": "relu",
    "LeakyReLU": "leaky_relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "GELU": "gelu",
    "SiLU": "silu",
    "Mish": "mish",
    "Hardswish": "hardswish",
}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


def _from_module(module: torch.nn.Module) -> tuple[str, dict[str, Any]]:
    cls_name = type(module).__name__
    name = _MODULE_NAMES.get(cls_name)
    if name is None:
        raise UnknownTransferError(
            f"activation module {cls_name} is not a supported transfer function; supported: "
            f"{', '.join(_MODULE_NAMES)}"
        )
    params: dict[str, Any] = {}
    if name == "leaky_relu":
        params["negative_slope"] = float(module.negative_slope)
    if name == "softmax":
        dim = getattr(module, "dim", None)
        if dim not in (None, -1, 1):
            raise UnknownTransferError(
                f"Softmax over dim={dim} is not supported: the representation needs softmax over the "
                "feature (last) dimension of a flattened (batch, features) layer"
            )
    return name, params


def get_transfer(name_or_transfer: "str | Transfer | torch.nn.Module", **params: Any) -> Transfer:
    """Return the :class:`Transfer` for a name, a transfer object or an activation module.

    Parameters
    ----------
    name_or_transfer : str, Transfer or torch.nn.Module
        A name (``"identity"``, ``"leaky_relu"``, ``"relu"``, ``"sigmoid"``, ``"tanh"``,
        ``"softmax"``; case and ``-``/``_`` do not matter), a :class:`Transfer` (returned as
        is), or an activation module such as ``nn.LeakyReLU(0.2)``.
    **params
        Parameters of the transfer, e.g. ``negative_slope=0.01`` or ``hessian_floor=1e-6``.

    Raises
    ------
    NonMonotoneTransferError
        For GELU, SiLU/swish, Mish, ...: they are not monotone, hence not the gradient of a
        convex potential, and define no Bregman divergence.
    UnknownTransferError
        For unknown names or invalid parameters.

    Examples
    --------
    >>> get_transfer("leaky_relu", negative_slope=0.2).params
    {'negative_slope': 0.2}
    """
    if isinstance(name_or_transfer, Transfer):
        if params and params != name_or_transfer.params:
            raise UnknownTransferError(
                f"got a {name_or_transfer!r} object together with parameters {params}: pass either "
                "a name with parameters or a configured transfer object"
            )
        return name_or_transfer
    if isinstance(name_or_transfer, torch.nn.Module):
        name, module_params = _from_module(name_or_transfer)
        params = {**module_params, **params}
    elif isinstance(name_or_transfer, str):
        name = _canonical(name_or_transfer)
    else:
        raise UnknownTransferError(
            f"transfer must be a name, a Transfer or an activation module, got {type(name_or_transfer).__name__}"
        )
    if name in _NON_MONOTONE:
        raise NonMonotoneTransferError(
            f"{_NON_MONOTONE[name]} is not monotone, so it is not the gradient of a convex potential "
            "and defines no Bregman divergence; tap a neighbouring layer instead (e.g. the output of "
            f"the next linear layer with transfer='identity'), or use one of: {', '.join(TRANSFERS)}"
        )
    cls = TRANSFERS.get(name)
    if cls is None:
        raise UnknownTransferError(
            f"unknown transfer function {name_or_transfer!r}; choose one of: {', '.join(TRANSFERS)}"
        )
    try:
        return cls(**params)
    except TypeError:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise UnknownTransferError(
            f"transfer {name!r} got unexpected parameters {sorted(params)}; it accepts "
            f"{allowed if allowed else 'no parameters'}"
        ) from None
