"""Small synthetic pre-activation data sets for the Bregman PCA tests."""
from __future__ import annotations

import pytest
import torch

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
