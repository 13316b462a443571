"""The teacher's targets of a transfer set, computed once and cached.

One teacher pass over the transfer set gives the teacher's outputs: the body gives the layer's
pre-activations ``a`` batch by batch, and the head applied to ``f(a)`` gives the outputs
(``head(f(body(x))) == teacher(x)``). The pre-activations themselves are **not** kept: an image
layer's map is ``N x C*H*W`` values (64x8x8 floats, 16 KiB an image, more than the image).
What a method trains on is computed from them in streamed batches instead (peak memory grows
with the batch, not with N):

- ``bregman``: the coefficients (``N x k`` flat, ``N x k x H x W`` channels), each batch of
  pre-activations recomputed by the body and projected (:func:`coefficients`); the channels
  fit reads its sampled rows from the same stream (:func:`bregman.layouts.sample_rows`);
- ``hint`` and bregman's divergence term train on the layer's map itself, so for them (and
  for a flat fit, which reads every row) :attr:`TeacherTargets.preactivations` materializes the
  map once (one more streamed pass) and holds it from then on;
- ``kd`` and ``labels`` need the outputs only.

A flat cut (an mlp teacher's layer, or a conv map in the flat layout) holds its pre-activations
from the teacher pass as before: its fit reads every row, so streaming would only add passes.

A student epoch then reads these tensors and never runs the teacher (inputs are not augmented).
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from bregman.training import default_device

logger = logging.getLogger(__name__)


class StreamedPreactivations:
    """The tapped layer's pre-activations of ``x``, recomputed by ``body`` batch by batch.

    Re-iterable: each ``iter()`` runs the body over ``x`` again (no gradients) and yields
    ``(B, d)`` float CPU blocks, so nothing of size ``N x d`` is ever allocated. ``n_rows`` and
    ``shape`` describe the whole; ``passes`` counts the iterations started (tests, logs).
    """

    def __init__(self, x: Tensor, body: nn.Module, d: int, batch_size: int, device: torch.device) -> None:
        self.x, self.body, self.batch_size, self.device = x, body, int(batch_size), device
        self.n_rows, self.d = int(x.shape[0]), int(d)
        self.passes = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.d)

    def __iter__(self) -> Iterator[Tensor]:
        self.passes += 1
        for start in range(0, self.n_rows, self.batch_size):
            with torch.no_grad():  # not around the yield: the caller's grad mode stays its own
                a = self.body(self.x[start:start + self.batch_size].to(self.device))
                a = a.reshape(a.shape[0], -1).float().cpu()
            yield a


@dataclass
class TeacherTargets:
    """Targets of one transfer set (all on the CPU, rows aligned with the inputs).

    Attributes
    ----------
    outputs : Tensor (N, C)
        The teacher's outputs (logits).
    source : Tensor, StreamedPreactivations or None
        Where the tapped layer's pre-activations come from: a stream that recomputes them batch
        by batch (the default), or a held ``(N, d)`` tensor (None without a layer).
    coefficients : dict
        Bregman coefficients (N, k) (or (N, k, H, W)) per representation key (see
        :func:`representation_key`).
    """

    outputs: Tensor
    source: "Tensor | StreamedPreactivations | None" = None
    coefficients: dict[str, Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.outputs.shape[0])

    @property
    def preactivations(self) -> Tensor | None:
        """The pre-activations ``(N, d)`` as one tensor, held from the first access on (hint's
        targets, bregman's divergence term and flat fits need every value)."""
        if isinstance(self.source, StreamedPreactivations):
            self.source = torch.cat(list(self.source))
        return self.source

    def preactivation_blocks(self, rows: int) -> Iterator[Tensor]:
        """The pre-activations in blocks of about ``rows`` examples (streamed unless held)."""
        if isinstance(self.source, StreamedPreactivations):
            yield from self.source
            return
        for start in range(0, int(self.source.shape[0]), rows):
            yield self.source[start:start + rows]


def fingerprint(x: Tensor) -> str:
    """A content hash of a tensor (shape, dtype and bytes): the cache key of a transfer set."""
    x = x.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(f"{tuple(x.shape)}|{x.dtype}".encode())
    if x.numel():  # hashed from the tensor's own buffer: a memory-mapped data set is not copied
        h.update(memoryview(x.view(torch.uint8).reshape(-1).numpy()))
    return h.hexdigest()


def representation_key(representation: Any) -> str:
    """A content hash of a representation's mean, directions and transfer."""
    h = hashlib.sha256()
    for name in ("mean", "components"):
        t = _representation_tensor(representation, name)
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    transfer = getattr(representation, "transfer", None) or getattr(representation, "transfer_", None)
    if transfer is not None:
        h.update(f"{getattr(transfer, 'name', transfer)}|{sorted(getattr(transfer, 'params', {}).items())}".encode())
    return h.hexdigest()


def _representation_tensor(representation: Any, name: str) -> Tensor:
    for attr in (name + "_", name):  # a fitted estimator (mean_) or an exported layer (mean)
        value = getattr(representation, attr, None)
        if value is not None:
            return torch.as_tensor(value)
    raise ValueError(f"the representation {type(representation).__name__} has no {name!r}: pass a fitted "
                     "BregmanPCA or an ExportedLayer")


@torch.no_grad()
def compute_targets(x: Tensor, *, cut: Any = None, teacher: nn.Module | None = None, batch_size: int = 512,
                    device: torch.device | str | None = None,
                    progress: Callable[[float], None] | None = None,
                    hold_preactivations: bool | None = None) -> TeacherTargets:
    """Run the teacher once over ``x``.

    With a ``cut`` (an object with ``body``, ``transfer``, ``head`` and optionally
    ``map_shape``): the outputs from ``head(f(body(x)))``, batch by batch, and the source of the
    pre-activations: a :class:`StreamedPreactivations` for a channels cut (``map_shape`` not
    None), the ``(N, d)`` tensor of this pass for a flat one (a flat fit reads every row).
    ``hold_preactivations`` overrides that choice. Without a cut: the outputs of ``teacher``.
    """
    if (cut is None) == (teacher is None):
        raise ValueError("pass exactly one of cut= and teacher=")
    if hold_preactivations is None:
        hold_preactivations = cut is not None and getattr(cut, "map_shape", None) is None
    first = cut.body if cut is not None else teacher
    dev = torch.device(device) if device is not None else default_device(first)
    outputs, held = [], []
    d = 0
    for start in range(0, int(x.shape[0]), batch_size):
        xb = x[start:start + batch_size].to(dev)
        if cut is not None:
            a = cut.body(xb)
            a = a.reshape(a.shape[0], -1)
            out = cut.head(cut.transfer.f(a))
            d = int(a.shape[1])
            if hold_preactivations:
                held.append(a.float().cpu())
        else:
            out = teacher(xb)
        outputs.append(out.reshape(out.shape[0], -1).float().cpu())
        if progress is not None:  # the teacher pass over a large transfer set takes minutes
            progress(min(1.0, (start + batch_size) / int(x.shape[0])))
    if not outputs:
        raise ValueError("the transfer set is empty: pass at least one example")
    source: Tensor | StreamedPreactivations | None = None
    if cut is not None:
        source = torch.cat(held) if hold_preactivations else StreamedPreactivations(x, cut.body, d, batch_size, dev)
    return TeacherTargets(outputs=torch.cat(outputs), source=source)


class TargetCache:
    """Teacher targets and fitted representations per transfer set, for one teacher.

    Several students distilled from the same teacher on the same inputs (methods, seeds, student
    sizes) share one teacher pass per layer and one representation fit per setting. Keys are
    content hashes of the inputs, so a changed transfer set is never served stale targets. A
    cache belongs to one teacher: :meth:`bind` enforces that.

    Attributes
    ----------
    teacher_passes : int
        How many times the teacher ran over a transfer set (for tests and logs).
    """

    def __init__(self) -> None:
        self._targets: dict[tuple[str, Any], TeacherTargets] = {}
        self._representations: dict[tuple[str, Any], Any] = {}
        self._owner: int | None = None
        self.teacher_passes = 0

    def bind(self, teacher: nn.Module) -> None:
        """Tie the cache to one teacher module (the first call wins)."""
        if self._owner is None:
            self._owner = id(teacher)
        elif self._owner != id(teacher):
            raise ValueError("this TargetCache holds targets of another teacher: use one cache per teacher")

    def targets(self, x: Tensor, key: Any, compute: Callable[[], TeacherTargets]) -> TeacherTargets:
        """The targets of ``x`` for ``key`` (e.g. the layer and transfer); ``compute()`` on a miss."""
        k = (fingerprint(x), key)
        if k not in self._targets:
            self._targets[k] = compute()
            self.teacher_passes += 1
        return self._targets[k]

    def representation(self, x: Tensor, key: Any, fit: Callable[[], Any]) -> Any:
        """The representation fitted on ``x`` with settings ``key``; ``fit()`` runs on a miss."""
        k = (fingerprint(x), key)
        if k not in self._representations:
            self._representations[k] = fit()
        return self._representations[k]


def coefficients(targets: TeacherTargets, representation: Any, map_shape: Any = None) -> Tensor:
    """The teacher's Bregman coefficients (N, k) of the transfer set's pre-activations, memoized.

    ``representation`` is a fitted :class:`bregman.pca.BregmanPCA` (its ``transform``) or an
    :class:`bregman.exported.ExportedLayer` (projected with the same per-row solver). With
    ``map_shape`` (C, H, W) (the channels layout) every position is projected and the result is
    a coefficient map (N, k, H, W), block by block of the streamed pre-activations: only the
    ``k x H x W`` coefficients of an example are kept, and the float64 work arrays stay bounded
    whatever N. Flat: one projection of the held ``(N, d)`` pre-activations (a flat fit read
    them all already).
    """
    if targets.source is None:
        raise ValueError("these targets hold no pre-activations: compute them with a layer cut")
    key = representation_key(representation) + (f"|channels{tuple(map_shape)}" if map_shape is not None else "")
    if key not in targets.coefficients:
        if map_shape is None:
            targets.coefficients[key] = exact_coefficients(representation, targets.preactivations).float().cpu()
        else:
            from bregman.layouts import map_of_rows, rows_of_map

            d = math.prod(int(s) for s in map_shape)
            block = max(1, (1 << 20) // max(1, d))  # about 1 M values per block (a held tensor's)
            parts = [map_of_rows(exact_coefficients(representation, rows_of_map(a, map_shape)).float().cpu(), map_shape[1:])
                     for a in targets.preactivation_blocks(block)]
            targets.coefficients[key] = torch.cat(parts)
    return targets.coefficients[key]


def exact_coefficients(representation: Any, a: Tensor) -> Tensor:
    """Coefficients of the rows ``a`` under a fitted estimator or a loaded exported layer,
    solved in float64 (returned in float64): what students regress on and what jobs save.

    Float32 solves reconstruct the same map but leave the coefficients along nearly flat
    directions (those only dead ReLU units see: curvature ~ the Hessian floor, condition ~1e6)
    undetermined: on a ResNet map with 56 % dead units they differed by an rms 12 % of the
    coefficients' std (README, session 7)."""
    if hasattr(representation, "transform"):
        # float64: the per-row Newton solves are then exact to round-off whatever the source
        return torch.as_tensor(representation.transform(a.double()))
    return project_onto_layer(representation, a)


@torch.no_grad()
def project_onto_layer(layer: Any, a: Tensor, *, max_steps: int = 50) -> Tensor:
    """Coefficients of pre-activations ``a`` under a loaded exported layer ``g(c) = f(m + V c)``.

    Solves ``min_c D_F(m + V c, a) + (λ/2)‖c‖²`` per row with the ridge ``λ`` recorded in the
    layer's manifest: the projection ``BregmanPCA.transform`` computes, for a layer whose
    estimator is not at hand (e.g. the result of an earlier representation job).
    """
    from bregman.pca import DEFAULT_RIDGE, project_coefficients

    d = layer.components.shape[1]
    if a.shape[1] != d:
        raise ValueError(f"the exported layer has d={d} units but the pre-activations have {a.shape[1]}: "
                         "the representation belongs to another layer")
    # float64: the per-row Newton solves are then exact to round-off whatever the source
    a = a.to(device=layer.mean.device, dtype=torch.float64)
    ridge = float(layer.manifest.get("ridge", DEFAULT_RIDGE))
    return project_coefficients(layer.transfer, layer.mean.detach().double(), layer.components.detach().double(),
                                a, ridge=ridge, max_steps=max_steps)
