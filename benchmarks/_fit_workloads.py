"""Synthetic pre-activation workloads for the Bregman PCA fit benchmark.

Each workload imitates one real layer:

- ``a``: the hidden pre-activations of a random 2-layer leaky-ReLU network fed with
  low-dimensional inputs, so the 512-dim rows lie near a curved low-dimensional manifold with a
  decaying spectrum, plus a little isotropic noise (leaky ReLU transfer, slope 0.01).
- ``b``: the logits of a 100-class "classifier": class prototypes in a 20-dim feature space,
  examples scattered around their prototype, a linear read-out scaled so that most softmax
  rows are peaked and some are near one-hot (they make the coefficient problems almost flat).
- ``c``: the same rows as ``a`` scored with the identity transfer (Euclidean PCA).
- ``d``: a 256-unit layer from ``a``'s generator (leaky ReLU), timed against scikit-learn's PCA.

Rows are generated in blocks of :data:`GEN_BLOCK_ROWS`, block ``j`` from its own seed, so the
full matrix and a lazy chunk iterator give identical rows, and a chunked fit never needs the
whole ``N x d`` matrix in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

GEN_BLOCK_ROWS = 500

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class WorkloadSpec:
    """What a workload is: its layer kind, shapes and the number of components to fit."""

    name: str
    transfer: str
    transfer_params: dict[str, Any]
    n: int
    d: int
    k: int
    description: str


SPECS: dict[str, WorkloadSpec] = {
    "a": WorkloadSpec("a", "leaky_relu", {"negative_slope": 0.01}, 20000, 512, 32,
                      "leaky-ReLU hidden layer of a random 2-layer net on 12-dim inputs"),
    "b": WorkloadSpec("b", "softmax", {}, 20000, 100, 16,
                      "logits of a 100-class classifier with peaked softmax rows"),
    "c": WorkloadSpec("c", "identity", {}, 20000, 512, 32,
                      "the rows of (a) with the identity transfer"),
    "d": WorkloadSpec("d", "leaky_relu", {"negative_slope": 0.01}, 20000, 256, 16,
                      "a 256-unit leaky-ReLU layer like (a), against scikit-learn PCA of the same matrix"),
}

# Small sizes for smoke runs: the same generators, fewer rows and units.
QUICK_SIZES: dict[str, tuple[int, int, int]] = {"a": (600, 48, 6), "b": (600, 20, 4), "c": (600, 48, 6),
                                                "d": (600, 64, 4)}


def get_spec(name: str, *, n: int | None = None, quick: bool = False) -> WorkloadSpec:
    """The spec of workload ``name`` ("a", "b" or "c"), at full or quick size, ``n`` rows if given."""
    if name not in SPECS:
        raise ValueError(f"unknown workload {name!r}; choose from {sorted(SPECS)}")
    spec = SPECS[name]
    n_rows, d, k = (spec.n, spec.d, spec.k) if not quick else QUICK_SIZES[name]
    if n is not None:
        if n < k + 1:
            raise ValueError(f"--n {n} is too small for k={k}; pass at least {k + 1} rows")
        n_rows = n
    return WorkloadSpec(spec.name, spec.transfer, spec.transfer_params, n_rows, d, k, spec.description)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@dataclass
class _LayerModel:
    """The fixed random parameters that turn latent draws into one workload's rows."""

    kind: str
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def _make_model(spec: WorkloadSpec, seed: int) -> _LayerModel:
    g = _generator(seed * 7919 + 17)
    d = spec.d
    if spec.name in ("a", "c", "d"):
        n_in, hidden = 12, 4 * 12
        w1 = torch.randn(n_in, hidden, generator=g, dtype=torch.float64) / math.sqrt(n_in)
        b1 = 0.3 * torch.randn(hidden, generator=g, dtype=torch.float64)
        # Read-out with a decaying spectrum (singular values ~ 1/i^0.7) so the principal
        # directions have clearly ordered importance, as in trained layers.
        q1, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn(d, hidden, generator=g, dtype=torch.float64))
        s = 3.0 * torch.arange(1, hidden + 1, dtype=torch.float64) ** -0.7
        w2 = (q1 * s) @ q2.T * math.sqrt(d / hidden)
        # A negative bias per unit so that a share of units sit below zero most of the time,
        # where leaky ReLU's slope is 0.01 and the geometry differs most from Euclidean.
        b2 = 0.5 * torch.randn(d, generator=g, dtype=torch.float64) - 0.3
        return _LayerModel("mlp", {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "noise": torch.tensor(0.05)})
    if spec.name == "b":
        n_feat = 20
        protos = 1.2 * torch.randn(d, n_feat, generator=g, dtype=torch.float64)
        w = protos.T.clone()  # class c's logit rises with the feature's alignment to prototype c
        b = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
        # Per-example confidence: most rows peaked, some near one-hot, a few uncertain.
        return _LayerModel("classifier", {"protos": protos, "w": w, "b": b, "noise": torch.tensor(0.1)})
    raise ValueError(f"no generator for workload {spec.name!r}")


def _block(spec: WorkloadSpec, model: _LayerModel, seed: int, j: int, rows: int) -> torch.Tensor:
    """Rows of generation block ``j`` (float64), drawn from the block's own seed."""
    g = _generator(seed * 1_000_003 + 1009 * j + 1)
    p = model.params
    if model.kind == "mlp":
        x = torch.randn(rows, p["w1"].shape[0], generator=g, dtype=torch.float64)
        h = torch.nn.functional.leaky_relu(x @ p["w1"] + p["b1"], 0.01)
        a = h @ p["w2"] + p["b2"]
        return a + float(p["noise"]) * torch.randn(rows, spec.d, generator=g, dtype=torch.float64)
    protos = p["protos"]
    labels = torch.randint(0, protos.shape[0], (rows,), generator=g)
    feat = protos[labels] + 0.6 * torch.randn(rows, protos.shape[1], generator=g, dtype=torch.float64)
    # Inverse temperature per row, log-uniform in [0.15, 1.2]: at the top end rows are one-hot
    # to within 1e-6, at the bottom they are soft.
    temp = torch.exp(torch.empty(rows, 1, dtype=torch.float64).uniform_(math.log(0.15), math.log(1.2), generator=g))
    logits = temp * (feat @ p["w"] + p["b"])
    return logits + float(p["noise"]) * torch.randn(rows, spec.d, generator=g, dtype=torch.float64)


class ChunkedRows:
    """A re-iterable of ``(rows, d)`` chunks of one workload, generated lazily.

    Every ``iter()`` starts over and regenerates the chunks from their seeds, so at most one
    chunk (plus one generation block) is in memory at a time. Concatenating the chunks gives
    exactly :func:`make_data`'s matrix.
    """

    def __init__(self, spec: WorkloadSpec, *, chunk_rows: int = 2000, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.spec = spec
        self.chunk_rows = chunk_rows
        self.seed = seed
        self.dtype = dtype
        self._model = _make_model(spec, seed)
        self.n_rows = spec.n
        self.d = spec.d

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        parts = []
        j0, j1 = start // GEN_BLOCK_ROWS, (stop - 1) // GEN_BLOCK_ROWS
        for j in range(j0, j1 + 1):
            b_start = j * GEN_BLOCK_ROWS
            b_rows = min(GEN_BLOCK_ROWS, self.spec.n - b_start)
            block = _block(self.spec, self._model, self.seed, j, b_rows)
            lo, hi = max(start, b_start) - b_start, min(stop, b_start + b_rows) - b_start
            parts.append(block[lo:hi].to(self.dtype))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.spec.n, self.chunk_rows):
            yield self._rows(start, min(start + self.chunk_rows, self.spec.n))

    def __len__(self) -> int:
        return -(-self.spec.n // self.chunk_rows)


def make_data(spec: WorkloadSpec, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full ``(n, d)`` pre-activation matrix of a workload."""
    out = torch.empty(spec.n, spec.d, dtype=dtype)
    for i, chunk in enumerate(ChunkedRows(spec, chunk_rows=GEN_BLOCK_ROWS * 4, seed=seed, dtype=dtype)):
        out[i * GEN_BLOCK_ROWS * 4: i * GEN_BLOCK_ROWS * 4 + chunk.shape[0]] = chunk
    return out


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"float64"`` -> torch dtype, with a clear error otherwise."""
    if name not in _DTYPES:
        raise ValueError(f"unknown --dtype {name!r}; choose from {sorted(_DTYPES)}")
    return _DTYPES[name]
