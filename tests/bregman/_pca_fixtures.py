"""Small synthetic pre-activation data sets for the Bregman PCA tests."""
from __future__ import annotations

import pytest
import torch

from benchmarks.fit_optimum import digits_teacher_logits  # noqa: F401  (one home: the benchmark's)

ALL_TRANSFERS = ("identity", "leaky_relu", "relu", "sigmoid", "tanh", "softmax")
NONLINEAR_TRANSFERS = ALL_TRANSFERS[1:]


def low_rank_data(n: int = 300, d: int = 10, rank: int = 4, noise: float = 0.3, seed: int = 0,
                  dtype: torch.dtype = torch.float64, scale: float = 1.5) -> torch.Tensor:
    """Rows near a rank-``rank`` affine subspace with a decaying spectrum plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, rank, generator=g, dtype=torch.float64)
    spectrum = torch.linspace(1.0, 0.4, rank, dtype=torch.float64)
    mix = torch.randn(rank, d, generator=g, dtype=torch.float64) / rank**0.5
    offset = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    a = scale * (latent * spectrum) @ mix + offset + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.to(dtype)


def peaked_logits(n: int = 300, d: int = 6, seed: int = 0, temperature_max: float = 8.0,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Classifier-like logits: most softmax rows peaked, some one-hot to ~1e-9."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, d, (n,), generator=g)
    proto = 3 * torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    temp = torch.empty(n, 1, dtype=torch.float64).uniform_(0.3, temperature_max, generator=g)
    logits = temp * (proto[labels] + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64))
    return logits.to(dtype)


def data_for(transfer: str, **kw) -> torch.Tensor:
    """A data set suited to a transfer (peaked logits for softmax)."""
    if transfer == "softmax":
        return peaked_logits(**{k: v for k, v in kw.items() if k in ("n", "d", "seed", "dtype")})
    return low_rank_data(**kw)


@pytest.fixture(scope="module", autouse=False)
def single_thread():
    """Run a module's small-array tests on one intra-op thread (restored afterwards): on a
    shared 2-core machine thread hand-offs cost more than these tiny kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_fit_invariants(est) -> None:
    """What every fitted BregmanPCA must satisfy: the explained shares lie in [0, 1] and do
    not decrease, the last one is the fit's own, and ``converged_`` is exactly the optimality
    test."""
    import numpy as np

    r = np.asarray(est.explained_divergence_ratio_)
    assert r.shape == (est.n_components_,)
    assert np.all(r >= 0) and np.all(r <= 1), r
    assert np.all(np.diff(r) >= 0), r
    d0 = est.mean_only_divergence_
    assert d0 > 0
    assert r[-1] == pytest.approx(max(0.0, (d0 - est.divergence_) / d0), rel=1e-9, abs=1e-12)
    assert est.converged_ == (est.optimality_ <= est.optimality_tol_)
    assert np.isfinite(est.optimality_) and est.optimality_ >= 0
