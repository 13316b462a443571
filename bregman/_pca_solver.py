"""Numerical core of Bregman PCA (method.md §2). Private: use :class:`bregman.pca.BregmanPCA`.

Notation: ``X`` (B, d) a block of pre-activations (softmax: rows centred), ``m`` (d) the
mean, ``V`` (d, k) the directions (columns), ``C`` (B, k) coefficients, ``Â = m + C Vᵀ``.
The per-row objective of the coefficient step is ``φ(c) = D_F(m + V c, x) + (λ/2)‖c‖²``.

Everything works on row blocks, so memory grows with the block size, never with N; no
(N, d, k) tensor is ever built: the per-row k×k Hessians ``Vᵀ diag(h_n) V`` are one GEMM
``h @ P`` with ``P[:, (a,b)] = V[:, a] ⊙ V[:, b]`` over the upper triangle (a ≤ b).
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bregman._arrays import InputValidationError, RowSource
from bregman.transfers import Transfer

logger = logging.getLogger(__name__)

# Above this many elements in P (d × k(k+1)/2) the Hessians are built with batched matmuls.
_MAX_PAIR_ELEMENTS = 1 << 26
_LINE_SEARCH_HALVINGS = 30
_ARMIJO = 1e-4
_DIRECTION_STAGES = ((1.0,), (0.5, 0.25, 0.125), tuple(2.0 ** -i for i in range(4, 9)),
                     tuple(2.0 ** -i for i in range(9, 15)))
# safeguarded extrapolation of the alternating iterations (BregmanSolver.extrapolate)
_EXTRAPOLATE = True
_EXTRAPOLATION_START = 1.0
_EXTRAPOLATION_GROWTH = 1.5
_EXTRAPOLATION_MAX = 16.0
_EXTRAPOLATION_MIN = 0.25
# Newton steps per prefix re-projection, and the rows it uses at most (BregmanSolver.divergence_by_k)
_PREFIX_NEWTON_STEPS = 3
_PREFIX_ROWS = 4096
# conjugate-gradient iterations per softmax direction step (BregmanSolver._newton_cg)
_CG_MAX_ITER = 25
# The centroid-held start is screened on this many evenly spaced rows when the data have at
# least _SCREEN_MIN_FACTOR times as many (BregmanSolver._held_start_is_beaten), and polished
# on all rows only unless the screen shows it clearly above the first start: z standard errors
# of the rows' paired divergence differences.
_SCREEN_ROWS = 2000
_SCREEN_MIN_FACTOR = 4
_SCREEN_Z = 3.0
# Least curvature weight in the joint step's model (BregmanSolver._reduced_blocks) for a
# transfer whose Hessian is singular and floored (ReLU: 1[â > 0], floored at 1e-6). A row with
# few active units has a coefficient Hessian near that floor in some directions, and its
# linearized response to a change of (m, V) came out ~1e6 too large: the joint steps were cut
# back to 1e-4–1e-2 of their length and a ReLU conv layer's fit (layer3.0 of image_flow's
# resnet8, 8,192 positions, k = 16) crept for 378 iterations to divergence 3.73604. With the
# model floored at 1e-3 (coefficients, the fixed-coefficient step and the optimality measure
# still use the transfer's own floor) it converged in 17 iterations to 3.73518; 1e-4: 34
# iterations, 3.73630; 1e-2: 13 iterations, 3.73730 (session 10).
_JOINT_CURVATURE_FLOOR = 1e-3
_REFINED_STEPS = 2
# relative residual of the conjugate gradients behind the reduced optimality measure
_MEASURE_CG_RTOL = 1e-3



#: Elements per work array below which one intra-op thread is used (see :func:`threads_for`).
_ELEMENTS_PER_THREAD = 1 << 19


@contextlib.contextmanager
def threads_for(elements: int, device: torch.device) -> Iterator[None]:
    """Use at most one intra-op CPU thread per ``_ELEMENTS_PER_THREAD`` elements of work array.

    The solver runs thousands of small kernels (row-wise softmax, batched k×k Cholesky); with
    several OpenMP threads each kernel pays a fork/join (and, on a busy machine, spin-waits
    for descheduled threads), which measured 10–30× slower than one thread on 1437×10 logits.
    Large blocks keep the configured thread count. The previous setting is restored.
    """
    before = torch.get_num_threads()
    wanted = max(1, min(before, elements // _ELEMENTS_PER_THREAD))
    if device.type != "cpu" or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def newton_tolerance(dtype: torch.dtype) -> float:
    """Stop a row's Newton iterations when its decrement ``−gᵀδ`` falls below tol·(φ + atol)."""
    return 1e-11 if dtype == torch.float64 else 1e-5


# ------------------------------------------------------------------------------------------
# small linear-algebra helpers
# ------------------------------------------------------------------------------------------
class PairGram:
    """Computes ``Mᵀ diag(w_n) M`` for every row ``w_n`` of W, for a fixed (d, k) matrix M."""

    def __init__(self, M: torch.Tensor) -> None:
        d, k = M.shape
        self.M, self.k = M, k
        iu, ju = torch.triu_indices(k, k, device=M.device)
        index = torch.empty(k, k, dtype=torch.long, device=M.device)
        pos = torch.arange(iu.numel(), device=M.device)
        index[iu, ju] = pos
        index[ju, iu] = pos
        self.index = index.reshape(-1)
        self.P = M[:, iu] * M[:, ju] if d * iu.numel() <= _MAX_PAIR_ELEMENTS else None

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        B, k = W.shape[0], self.k
        if self.P is not None:
            return (W @ self.P)[:, self.index].reshape(B, k, k)
        rows = max(1, (1 << 24) // max(1, W.shape[1] * k))
        out = [
            (self.M.T.unsqueeze(0) * W[s : s + rows].unsqueeze(1)) @ self.M for s in range(0, B, rows)
        ]
        return torch.cat(out)


def pair_products(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise upper-triangle outer products of Z (B, K) -> (B, K(K+1)/2), and the (K, K) index."""
    K = Z.shape[1]
    iu, ju = torch.triu_indices(K, K, device=Z.device)
    index = torch.empty(K, K, dtype=torch.long, device=Z.device)
    pos = torch.arange(iu.numel(), device=Z.device)
    index[iu, ju] = pos
    index[ju, iu] = pos
    return Z[:, iu] * Z[:, ju], index


def solve_spd(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Solve ``H x = g`` for a batch of symmetric positive (semi)definite H; never NaN/inf.

    Cholesky where it succeeds; elsewhere a gradient step scaled by the mean diagonal.
    """
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()):
        # round-off made H indefinite (e.g. float32 with a tiny ridge): retry with a jitter
        eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
        jitter = torch.diagonal(H, dim1=-2, dim2=-1).abs().amax(-1).clamp_min(torch.finfo(H.dtype).tiny)
        H = H + (64 * torch.finfo(H.dtype).eps * jitter)[..., None, None] * eye
        L, info = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(x).all(-1)
    if bool(bad.any()):
        scale = torch.diagonal(H[bad], dim1=-2, dim2=-1).mean(-1, keepdim=True)
        scale = scale.clamp_min(torch.finfo(H.dtype).tiny)
        x[bad] = g[bad] / scale
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def preconditioned_cg(apply_h: Callable[[torch.Tensor], torch.Tensor], G: torch.Tensor,
                      precondition: Callable[[torch.Tensor], torch.Tensor], rtol: float) -> tuple[torch.Tensor, bool]:
    """Inexact Newton direction: preconditioned conjugate gradients on ``H x = −G``.

    Stops when ``‖r‖ ≤ rtol·‖G‖``, at non-positive curvature, when the preconditioned residual
    loses positivity, or after ``_CG_MAX_ITER`` products. Returns ``(x, curved)``; ``curved`` is
    False when the very first product already met non-positive curvature (x is then 0, and the
    caller picks its own fallback). The one CG loop of both direction steps.
    """
    x = torch.zeros_like(G)
    r = -G
    g_norm = float(G.norm())
    z = precondition(r)
    p = z
    rz = float((r * z).sum())
    for it in range(_CG_MAX_ITER):
        Hp = apply_h(p)
        pHp = float((p * Hp).sum())
        if not pHp > 0:
            return x, it > 0
        alpha = rz / pHp
        x = x + alpha * p
        r = r - alpha * Hp
        if float(r.norm()) <= rtol * g_norm:
            break
        z = precondition(r)
        rz_new = float((r * z).sum())
        if not rz_new > 0:
            break
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, True


def hessian_at(transfer: Transfer, m: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``∇²F(m)`` applied to the columns of V: (d, k)."""
    if transfer.elementwise:
        return transfer.hessian_diag(m).unsqueeze(1) * V
    return transfer.hvp(m.unsqueeze(0).expand(V.shape[1], -1), V.T).T


def off_span(V: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The orthogonal projector onto directions whose columns leave span(V): ``P − Q Qᵀ P``.

    Changes of (V, m) inside span(V) (``V → V A``, ``m → m + V u``) are compensated exactly by
    the coefficients and only trade the ridge against the normalization ``VᵀHV = I``; the
    reduced measure and the polishing joint steps leave them out."""
    Q, _ = torch.linalg.qr(V)
    return lambda P: P - Q @ (Q.T @ P)


def normalizer(transfer: Transfer, m: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric T with ``(VT)ᵀ ∇²F(m) (VT) = I`` and its inverse (coefficients map by ``C T⁻¹``)."""
    M = V.T @ hessian_at(transfer, m, V)
    M = 0.5 * (M + M.T)
    ev, U = torch.linalg.eigh(M)
    floor = ev.abs().max().clamp_min(torch.finfo(M.dtype).tiny) * torch.finfo(M.dtype).eps
    ev = ev.clamp_min(floor)
    T = (U * ev.rsqrt()) @ U.T
    T_inv = (U * ev.sqrt()) @ U.T
    return T, T_inv


# ------------------------------------------------------------------------------------------
# the coefficient step: batched damped Newton with a backtracking line search per row
# ------------------------------------------------------------------------------------------
@dataclass
class CoefResult:
    C: torch.Tensor
    A_hat: torch.Tensor
    divergence: torch.Tensor  # per row, without the ridge
    objective: torch.Tensor  # per row, with the ridge
    newton_iterations: int


def _row_objective(transfer, X, m, V, C, lam):
    A_hat = m + C @ V.T
    D = transfer.divergence(A_hat, X)
    return A_hat, D, D + 0.5 * lam * (C * C).sum(-1)


def _shifted_objective(transfer, X, Y, m, V, C, lam):
    """``φ(c)`` per row, up to a per-row constant, for line searches; also a round-off scale.

    ``F(â) − y·â + (λ/2)‖c‖²`` (one potential evaluation, no work on the target). For softmax
    in float32 it is evaluated as the cross-entropy ``−y·log_softmax(â)`` (same cost): the
    form ``logsumexp(â) − y·â`` carries round-off ~ eps·|â|max, which exceeds φ itself at
    near-exact fits (peaked logits: φ ~ 1e-7 per row against |â| ~ 10), so line searches
    accepted increases and fits ended above their start.
    """
    A_hat = m + C @ V.T
    ridge = 0.5 * lam * (C * C).sum(-1)
    if X.dtype != torch.float64 and not transfer.elementwise:
        # softmax: F(â) − y·â = −y·log_softmax(â) (a cross-entropy ≥ 0), free of cancellation
        phi = ridge - (Y * torch.log_softmax(A_hat, dim=-1)).sum(-1)
        return A_hat, phi, phi
    Fa = transfer.F(A_hat)
    ya = (Y * A_hat).sum(-1)
    return A_hat, Fa - ya + ridge, Fa.abs() + ya.abs() + ridge


def solve_coefficients(
    transfer: Transfer,
    X: torch.Tensor,
    m: torch.Tensor,
    V: torch.Tensor,
    lam: float,
    C0: torch.Tensor,
    *,
    max_steps: int,
    gram: PairGram | None = None,
    atol: float = 0.0,
    Y: torch.Tensor | None = None,
    settle: bool = True,
) -> CoefResult:
    """Minimize ``φ(c) = D_F(m + V c, x) + (λ/2)‖c‖²`` for every row of X, starting at C0.

    Each row takes at most ``max_steps`` Newton steps (``H = Vᵀ∇²F(â)V + λI``, solved by
    Cholesky); a step is accepted only if it passes an Armijo test on that row's own objective
    (halving up to 30 times), so φ never increases and stays finite. Rows leave the active set
    once their Newton decrement ``−gᵀδ`` is below ``tol·(φ + atol)`` and, with ``settle``, their
    Newton step is negligible too (needed for exact coefficients along nearly flat directions;
    the fit's inner iterations skip it, being warm-started on every pass).
    """
    k = V.shape[1]
    if k == 0:
        A_hat = m.expand_as(X).clone()
        D = transfer.divergence(A_hat, X)
        return CoefResult(C0, A_hat, D, D.clone(), 0)
    gram = gram or PairGram(V)
    Y = transfer.f(X) if Y is None else Y
    C = C0.clone()
    A_hat, psi, mag = _shifted_objective(transfer, X, Y, m, V, C, lam)
    eps = torch.finfo(X.dtype).eps
    tol = newton_tolerance(X.dtype)
    eye = torch.eye(k, dtype=X.dtype, device=X.device)
    active: torch.Tensor | None = None  # None: all rows (saves gathers and scatters)
    phi_scale = None
    steps = 0

    def take(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return x if idx is None else x[idx]

    for _ in range(max_steps):
        if active is not None and active.numel() == 0:
            break
        steps += 1
        Ya, Ca, Aa, psia, maga = (take(x, active) for x in (Y, C, A_hat, psi, mag))
        Q = transfer.f(Aa)
        g = (Q - Ya) @ V + lam * Ca
        if transfer.elementwise:
            H = gram(transfer.hessian_diag_from_output(Aa, Q))
        else:
            u = Q @ V
            H = gram(Q) - u.unsqueeze(2) * u.unsqueeze(1)
        H = H + lam * eye
        delta = -solve_spd(H, g)
        slope = (g * delta).sum(-1)  # = −(Newton decrement)², ≤ 0
        rows = active
        if max_steps > 1:
            if phi_scale is None:
                # the row objectives φ at the start set the scale of the stopping test
                phi_scale = transfer.divergence(A_hat, X) + 0.5 * lam * (C * C).sum(-1) + atol
            # A row moves on while its objective can still drop noticeably or while its step is
            # not negligible: along nearly flat directions (curvature ~ λ) the decrement is tiny
            # long before the coefficients have settled.
            moving = -slope > tol * take(phi_scale, active)
            if settle:
                moving |= delta.abs().amax(-1) > 1e3 * tol * (1 + Ca.abs().amax(-1))
            if not bool(moving.any()):
                break
            if not bool(moving.all()):
                sel = moving.nonzero().squeeze(1)
                rows = sel if active is None else active[sel]
                Ca, psia, maga, delta, slope = Ca[sel], psia[sel], maga[sel], delta[sel], slope[sel]
        Xr, Yr = take(X, rows), take(Y, rows)
        slack = 8 * eps * maga
        # first trial: the full step for every row (the common case needs no gathers)
        Ct = Ca + delta
        At, pt, mt = _shifted_objective(transfer, Xr, Yr, m, V, Ct, lam)
        ok = torch.isfinite(pt) & (pt <= psia + _ARMIJO * slope + slack)
        n_rows = Ca.shape[0]
        if bool(ok.all()):
            if rows is None:
                C, A_hat, psi, mag = Ct, At, pt, mt
            else:
                C[rows], A_hat[rows], psi[rows], mag[rows] = Ct, At, pt, mt
            active = rows if rows is not None else None
            continue
        accepted = ok.clone()
        target = rows[ok] if rows is not None else ok.nonzero().squeeze(1)
        C[target], A_hat[target], psi[target], mag[target] = Ct[ok], At[ok], pt[ok], mt[ok]
        pending = (~ok).nonzero().squeeze(1)
        floor = slack
        t = torch.full((n_rows,), 0.5, dtype=X.dtype, device=X.device)
        for _ls in range(_LINE_SEARCH_HALVINGS):
            Ct = Ca[pending] + t[pending].unsqueeze(1) * delta[pending]
            At, pt, mt = _shifted_objective(transfer, Xr[pending], Yr[pending], m, V, Ct, lam)
            ok = torch.isfinite(pt) & (pt <= psia[pending] + _ARMIJO * t[pending] * slope[pending] + slack[pending])
            if bool(ok.any()):
                done = pending[ok]
                target = rows[done] if rows is not None else done
                C[target], A_hat[target], psi[target], mag[target] = Ct[ok], At[ok], pt[ok], mt[ok]
                accepted[done] = True
            # give up on rows whose predicted decrease is below round-off: they are at their
            # optimum (without this they would run all 30 halvings on every Newton step)
            pending = pending[~ok]
            pending = pending[-t[pending] * slope[pending] > floor[pending]]
            if pending.numel() == 0:
                break
            t[pending] *= 0.5
        # Rows whose line search found no decrease are at their optimum to round-off.
        keep = accepted.nonzero().squeeze(1)
        active = keep if rows is None else rows[keep]
    D = transfer.divergence(A_hat, X)
    return CoefResult(C, A_hat, D, D + 0.5 * lam * (C * C).sum(-1), steps)


def initial_coefficients(
    transfer: Transfer, X: torch.Tensor, m: torch.Tensor, V: torch.Tensor, HV: torch.Tensor, lam: float
) -> torch.Tensor:
    """Cold start for a projection: the better (per row) of c = 0 and the local-metric
    projection ``(x − m)ᵀ ∇²F(m) V`` (exact for a quadratic potential with normalized V)."""
    C_proj = (X - m) @ HV / (1.0 + lam)
    _, _, phi_proj = _row_objective(transfer, X, m, V, C_proj, lam)
    phi_zero = transfer.divergence(m.expand_as(X), X)
    use_zero = ~(phi_proj <= phi_zero)
    C_proj[use_zero] = 0
    return C_proj


# ------------------------------------------------------------------------------------------
# coefficient storage between passes (in memory, or on disk for chunked data)
# ------------------------------------------------------------------------------------------
class CoefStore:
    """Holds the current coefficients of all N rows between passes.

    In memory for in-memory data; in a temporary memory-mapped file for chunked data, so
    RAM use grows with the block size, not with N. ``pending`` is a (k, k) change of basis
    applied when a block is read (normalizations between passes cost no extra pass).
    """

    def __init__(self, n: int, k: int, *, dtype: torch.dtype, device: torch.device, on_disk: bool):
        self.n, self.k, self.dtype, self.device = n, k, dtype, device
        self.pending: torch.Tensor | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        if on_disk:
            self._tmp = tempfile.TemporaryDirectory(prefix="bregman_coef_")
            np_dtype = np.float64 if dtype == torch.float64 else np.float32
            self._disk = np.lib.format.open_memmap(
                str(Path(self._tmp.name) / "coef.npy"), mode="w+", dtype=np_dtype, shape=(n, max(k, 1))
            )
            self._mem = None
        else:
            self._mem = torch.zeros(n, k, dtype=dtype, device=device)
            self._disk = None

    def get(self, start: int, stop: int) -> torch.Tensor:
        if self._mem is not None:
            C = self._mem[start:stop]
        else:
            C = torch.from_numpy(np.array(self._disk[start:stop, : self.k])).to(self.device)
        return C @ self.pending if self.pending is not None else C

    def set(self, start: int, stop: int, C: torch.Tensor) -> None:
        if self._mem is not None:
            self._mem[start:stop] = C
        else:
            self._disk[start:stop, : self.k] = C.detach().cpu().numpy()

    def change_basis(self, M: torch.Tensor) -> None:
        """Coefficients become ``C @ M`` (applied lazily on the next reads)."""
        if self._mem is not None:
            self._mem = self._mem @ M
        else:
            self.pending = M if self.pending is None else self.pending @ M

    def commit(self) -> None:
        """Every row has been rewritten in the current basis."""
        self.pending = None

    def copy(self) -> "CoefStore":
        """An independent store holding the current coefficients (in the current basis)."""
        new = CoefStore(self.n, self.k, dtype=self.dtype, device=self.device, on_disk=self._disk is not None)
        if self._mem is not None:
            new._mem = self._mem.clone()
            return new
        rows = max(1, (1 << 22) // max(1, self.k))
        for s in range(0, self.n, rows):
            new.set(s, min(s + rows, self.n), self.get(s, min(s + rows, self.n)))
        return new

    def take_over(self, other: "CoefStore") -> None:
        """Hold ``other``'s coefficients from now on (``other`` must not be used afterwards)."""
        self.close()
        self._mem, self._disk, self._tmp, self.pending = other._mem, other._disk, other._tmp, other.pending
        other._tmp = other._disk = other._mem = None

    def all(self) -> torch.Tensor:
        if self._mem is not None:
            return self._mem
        return self.get(0, self.n)

    def close(self) -> None:
        if self._tmp is not None:
            self._disk = None
            self._tmp.cleanup()
            self._tmp = None


# ------------------------------------------------------------------------------------------
# first pass: moments for Euclidean PCA and the dual-space centroid
# ------------------------------------------------------------------------------------------
@dataclass
class Moments:
    n: int
    mean: torch.Tensor  # Euclidean mean (d)
    scatter: torch.Tensor  # Σ (x − mean)(x − mean)ᵀ (d, d)
    mean_output: torch.Tensor  # (1/N) Σ f(x) (d)


def moments(source: RowSource, transfer: Transfer) -> Moments:
    """One pass: Euclidean mean and scatter (chunk-merged, Chan et al.), and the mean of f(x)."""
    n = 0
    mean = scatter = mean_out = None
    for _, X in source.blocks():
        X = transfer.remove_gauge(X)
        b = X.shape[0]
        mb = X.mean(0)
        Sb = _centered_scatter(X, mb)
        # identity: f(x) = x, so the mean output is the mean (saves a pass over the block)
        fb = mb if transfer.name == "identity" else transfer.f(X).mean(0)
        if mean is None:
            n, mean, scatter, mean_out = b, mb, Sb, fb
            continue
        tot = n + b
        delta = mb - mean
        scatter = scatter + Sb + torch.outer(delta, delta) * (n * b / tot)
        mean = mean + delta * (b / tot)
        mean_out = mean_out + (fb - mean_out) * (b / tot)
        n = tot
    scatter = 0.5 * (scatter + scatter.T)
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(torch.diagonal(scatter)).all())
            and bool(torch.isfinite(mean_out).all())):
        raise InputValidationError(
            f"{source.name} contains NaN or infinite values (or values so large that their squares "
            "overflow); remove or replace them (e.g. drop the affected rows) before fitting"
        )
    return Moments(n, mean, scatter, mean_out)


#: Elements of the buffer in which :func:`_centered_scatter` centres a block piece by piece.
_CENTERING_ELEMENTS = 1 << 20
#: Rows at least this wide are multiplied in column blocks by :func:`_centered_scatter`.
_SCATTER_SPLIT_WIDTH = 256


def _centered_scatter(X: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``(X − center)ᵀ (X − center)`` without a centred copy of X.

    Rows are centred a couple of thousand at a time into one reused buffer (4 MiB in
    float32), so the extra memory does not grow with the block and no fresh pages are
    touched per piece (a block-sized copy cost as much as the product in page faults).
    torch's own matmul on purpose: handing pieces to numpy's BLAS made its threads and
    torch's OpenMP threads contend (6× slower on 2 cores).
    """
    d = X.shape[1]
    rows = max(1, min(X.shape[0], _CENTERING_ELEMENTS // max(1, d)))
    buf = torch.empty(rows, d, dtype=X.dtype, device=X.device)
    # Only the upper block triangle is multiplied (a symmetric product's other half is a copy):
    # four column blocks do 5/8 of the full product's work; on 20,000 x 512 float32 rows
    # (fit_speed's (c)) 73 ms instead of 90. Narrow rows keep one product.
    width = d if d < _SCATTER_SPLIT_WIDTH else -(-d // 4)
    S = torch.zeros(d, d, dtype=X.dtype, device=X.device)
    for s in range(0, X.shape[0], rows):
        piece = buf[: min(rows, X.shape[0] - s)]
        torch.sub(X[s : s + rows], center, out=piece)
        for i in range(0, d, width):
            S[i : i + width, i:].addmm_(piece[:, i : i + width].T, piece[:, i:])
    if width == d:
        return S
    upper = torch.triu(S)
    return upper + torch.triu(S, 1).T


def top_eigenvectors(S: torch.Tensor, k: int, transfer: Transfer, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenvectors (descending) of a symmetric matrix, gauge-free, deterministic signs.

    Returns (V (d, k) orthonormal, all eigenvalues descending). Directions that the data do
    not determine (zero eigenvalues) are completed with random gauge-free directions.
    """
    ev, U = torch.linalg.eigh(S)
    ev, U = ev.flip(0), U.flip(1)
    V = transfer.remove_gauge(U[:, :k].T).T
    tiny = ev[:1].abs().clamp_min(torch.finfo(S.dtype).tiny) * S.shape[0] * torch.finfo(S.dtype).eps
    weak = ev[:k] <= tiny
    if bool(weak.any()):
        fill = torch.randn(S.shape[0], int(weak.sum()), generator=generator, dtype=torch.float64)
        V[:, weak] = transfer.remove_gauge(fill.to(V).T).T
        Q, R = torch.linalg.qr(V)
        V = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones_like(ev[:k]))
    return flip_signs(V), ev


def dual_centroid(transfer: Transfer, mean_output: torch.Tensor) -> torch.Tensor:
    """The optimal mean of the mean-only model: ``m`` with ``f(m) = (1/N) Σ f(a_n)``.

    ``f⁻¹`` of the mean output where f is invertible; ReLU: the mean output itself (it is
    ≥ 0, and f(y) = y there)."""
    if transfer.invertible:
        return transfer.remove_gauge(transfer.f_inv(mean_output))
    return mean_output


def _paired_z(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of the paired differences ``a − b`` in standard errors (``z``), and whether it
    exceeds :data:`_SCREEN_Z` (``beaten``: a is clearly higher)."""
    diff = a - b
    n = diff.numel()
    mean_diff = float(diff.mean())
    se = float(diff.std()) / math.sqrt(n) if n > 1 else math.inf
    z = mean_diff / se if se > 0 else (math.inf if mean_diff > 0 else 0.0)
    return {"z": z, "beaten": bool(mean_diff > _SCREEN_Z * se)}


def flip_signs(V: torch.Tensor) -> torch.Tensor:
    """Make the largest-magnitude entry of each column positive (deterministic output)."""
    idx = V.abs().argmax(0)
    signs = torch.sign(V[idx, torch.arange(V.shape[1], device=V.device)])
    signs[signs == 0] = 1
    return V * signs


# ------------------------------------------------------------------------------------------
# the alternating solver
# ------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    mean: torch.Tensor
    V: torch.Tensor  # (d, k), Vᵀ ∇²F(m) V = I, ordered by mean squared coefficient
    divergence: float
    pca_divergence: float
    init_divergence: float
    mean_only_divergence: float
    divergence_by_k: list[float]  # mean divergence with the first j directions, j = 1..k
    n_iter: int
    converged: bool
    history: list[dict[str, float]]
    coefficients: torch.Tensor | None  # (N, k) when the data are in memory
    coef_second_moment: torch.Tensor = field(default=None)  # type: ignore[assignment]
    optimality: float = 0.0  # relative gradient norm at the end (BregmanSolver.optimality)
    optimality_tol: float = 0.0
    starts: dict | None = None  # final divergence of each start (multi-start fits)
    screen: dict | None = None  # the held start's screen on a subsample (BregmanSolver._screen_held_start)
    stopped: bool = False  # the callback stopped the fit
    store: "CoefStore | None" = None  # the coefficients, kept open until finish() (multi-start)


@dataclass
class SolverOptions:
    ridge: float
    max_iter: int
    tol: float
    newton_steps: int
    polish_steps: int
    joint_mean: bool
    callback: Callable[[dict[str, float]], Any] | None
    generator: torch.Generator
    joint_steps: bool = True
    multi_start: bool = True


class BregmanSolver:
    """Alternating minimization of ``Σ_n D_F(m + V c_n, a_n) + (λ/2)‖c_n‖²`` over row blocks."""

    def __init__(self, source: RowSource, transfer: Transfer, k: int, opts: SolverOptions):
        self.src, self.tr, self.k, self.o = source, transfer, k, opts
        self.N, self.d = source.n_rows, source.d
        self.dtype, self.device = source.dtype, source.device
        self.t0 = time.perf_counter()
        # converged: relative gradient norm r <= sqrt(tol), i.e. a Newton step in (m, V) would
        # lower the objective by less than about tol/2 relative
        self.gtol = math.sqrt(opts.tol)
        # set once the per-unit measure is met (BregmanSolver._run): from then on the joint
        # steps are projected off span(V) and try the full step with re-solved coefficients
        self._polishing = False

    # --- passes ---------------------------------------------------------------------------
    @property
    def _block_width(self) -> int:
        """Width of the work arrays per row, which sets the rows per block."""
        return self.d + (self.k + 1) * (self.k + 2) // 2

    def _blocks(self):
        for s, X in self.src.blocks(self._block_width):
            yield s, self.tr.remove_gauge(X)

    def initial_pass(self, store: CoefStore, m: torch.Tensor, B: torch.Tensor, V: torch.Tensor,
                     pca_mean: torch.Tensor, pca_V: torch.Tensor, warm: bool) -> float:
        """Write starting coefficients; return Euclidean PCA's mean divergence."""
        total_pca = 0.0
        for s, X in self._blocks():
            Cp = (X - pca_mean) @ pca_V
            total_pca += float(self.tr.divergence(pca_mean + Cp @ pca_V.T, X).sum())
            if warm:
                C0 = initial_coefficients(self.tr, X, m, V, B, self.o.ridge)
            else:
                C0 = Cp if m is pca_mean and B is pca_V else (X - m) @ B
            store.set(s, s + X.shape[0], C0)
        store.commit()
        return total_pca / self.N

    def coefficient_pass(self, store: CoefStore, m, V, *, max_steps: int, stats: bool, second_moment: bool = False,
                         settle: bool = False):
        tr, lam = self.tr, self.o.ridge
        gram = PairGram(V)
        K = self.k + (1 if self.o.joint_mean else 0)
        G = torch.zeros(self.d, K, dtype=self.dtype, device=self.device) if stats else None
        Hs = None
        unit_div = torch.zeros(self.d if tr.elementwise else 1, dtype=self.dtype, device=self.device)
        unit_mag = torch.zeros_like(unit_div)
        tot_D = tot_phi = 0.0
        S = torch.zeros(self.k, self.k, dtype=self.dtype, device=self.device) if second_moment else None
        iters = 0
        for s, X in self._blocks():
            Y = tr.f(X)
            res = solve_coefficients(tr, X, m, V, lam, store.get(s, s + X.shape[0]), max_steps=max_steps,
                                     gram=gram, atol=self.atol, Y=Y, settle=settle)
            iters = max(iters, res.newton_iterations)
            store.set(s, s + X.shape[0], res.C)
            tot_D += float(res.divergence.sum())
            tot_phi += float(res.objective.sum())
            if S is not None:
                S += res.C.T @ res.C
            if stats:
                Z = torch.cat([res.C, torch.ones_like(res.C[:, :1])], 1) if self.o.joint_mean else res.C
                Q = tr.f(res.A_hat)
                G += (Q - Y).T @ Z
                W = tr.hessian_diag_from_output(res.A_hat, Q) if tr.elementwise else Q * (1 - Q)
                Zp, zindex = pair_products(Z)
                Hs = W.T @ Zp if Hs is None else Hs + W.T @ Zp
                value, mag = self._unit_divergence(res.A_hat, Y)
                unit_div += value
                unit_mag += mag
        store.commit()
        out = {"divergence": tot_D / self.N, "objective": tot_phi / self.N, "newton": iters}
        if stats:
            out.update(G=G, H=Hs[:, zindex.reshape(-1)].reshape(self.d, K, K), unit_div=unit_div, unit_mag=unit_mag)
        if S is not None:
            out["S"] = S / self.N
        return out

    def _unit_divergence(self, A_hat: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Σ_rows of ``F(â) − y·â`` per unit (element-wise) or in total (softmax: evaluated as
        the cross-entropy ``−y·log_softmax(â)``, free of the cancellation of
        ``logsumexp(â) − y·â``): the divergence up to a constant of the data, which is all that
        step comparisons need. Returns (value, round-off scale)."""
        if self.tr.elementwise:
            Fa, ya = self.tr.F_elements(A_hat), Y * A_hat
            return (Fa - ya).sum(0), (Fa.abs() + ya.abs()).sum(0)
        ce = -(Y * torch.log_softmax(A_hat, dim=-1)).sum()
        return ce.reshape(1), ce.abs().reshape(1)

    def _candidate_objectives(self, store, m, theta, delta, steps) -> torch.Tensor:
        """Shifted objectives (len(steps), units) at ``θ + t Δθ`` for each t, C fixed."""
        cand = torch.zeros(len(steps), self.d if self.tr.elementwise else 1, dtype=self.dtype, device=self.device)
        for s, X in self._blocks():
            Y = self.tr.f(X)
            C = store.get(s, s + X.shape[0])
            Z = torch.cat([C, torch.ones_like(C[:, :1])], 1) if self.o.joint_mean else C
            A0 = Z @ theta.T if self.o.joint_mean else m + Z @ theta.T
            dA = Z @ delta.T
            for i, t in enumerate(steps):
                cand[i] += self._unit_divergence(A0 + t * dA, Y)[0]
        store.commit()
        return cand

    def optimality(self, st: dict) -> float:
        """First-order optimality of (m, V) at the current coefficients: the relative gradient
        norm ``r = sqrt(gᵀ H⁻¹ g / (2 L))``, g the gradient of the objective L in (V, m) with C
        fixed, H its per-unit Hessian blocks (exact for element-wise transfers; softmax: the
        diagonal blocks of the coupled Hessian), L the objective (plus a small absolute floor).
        ``r²`` is the relative decrease a Newton step on (m, V) predicts, so r does not depend
        on the data's units, N, or the basis of V; it is 0 exactly at a stationary point (the
        coefficients being optimal for their rows)."""
        G, H = st["G"], st["H"]
        K = H.shape[-1]
        eye = torch.eye(K, dtype=self.dtype, device=self.device)
        scale = torch.diagonal(H, dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        x = solve_spd(H + eye * (torch.finfo(self.dtype).eps * 16 * scale).unsqueeze(-1), G)
        if not self.tr.elementwise:
            x = self.tr.remove_gauge(x.T).T
        dec = float((G * x).sum(dtype=torch.float64))
        total = self.N * (st["objective"] + self.atol)
        return math.sqrt(max(dec, 0.0) / (2 * total)) if total > 0 else 0.0

    def _hessian_blocks(self, store: CoefStore, m, V):
        """(Z, Q) per row block at the current (m, V, C): Z = [C, 1] (joint) or C, Q = f(Â).

        In memory they are computed once per direction step and reused by every
        Hessian-vector product; streamed data recompute them on each pass."""
        cache = getattr(self, "_hvp_cache", None)
        if cache is not None:
            yield from cache
            return
        keep = [] if self.src.in_memory else None
        for s, X in self._blocks():
            C = store.get(s, s + X.shape[0])
            Z = torch.cat([C, torch.ones_like(C[:, :1])], 1) if self.o.joint_mean else C
            A = Z @ torch.cat([V, m.unsqueeze(1)], 1).T if self.o.joint_mean else m + C @ V.T
            Q = self.tr.f(A)
            if keep is not None:
                keep.append((Z, Q))
            yield Z, Q
        store.commit()
        if keep is not None:
            self._hvp_cache = keep

    def _softmax_hvp(self, store: CoefStore, m, V, P: torch.Tensor) -> torch.Tensor:
        """The exact Hessian of the direction problem (C fixed) applied to P (d, K):
        ``Σ_n (diag(q_n) − q_n q_nᵀ) P z_n z_nᵀ``: two GEMMs per block, no (dK)² matrix."""
        out = torch.zeros_like(P)
        for Z, Q in self._hessian_blocks(store, m, V):
            U = Z @ P.T
            W = Q * U
            W = W - Q * W.sum(-1, keepdim=True)
            out += W.T @ Z
        return out

    def _newton_cg(self, store: CoefStore, m, V, G: torch.Tensor, Hd: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Softmax direction step: Newton-CG on (V, m) with C fixed.

        For fixed coefficients the direction problem is convex with Hessian
        ``Σ_n z_n z_nᵀ ⊗ (diag(q_n) − q_n q_nᵀ)``; units are coupled through ``q_n q_nᵀ``, so the
        per-unit blocks alone (the former step: block-Jacobi preconditioned gradient) overshoot
        on peaked rows and were rejected again and again (a random start "converged" after 4
        iterations with no decrease at all). Conjugate gradients with Hessian-vector products
        (two GEMMs per pass), preconditioned by the damped per-unit blocks ``Hd``, in the
        gauge-free subspace (columns summing to 0 over units); inexact (forcing term ≤ 0.1).
        """
        self._hvp_cache = None
        L, info = torch.linalg.cholesky_ex(Hd)
        bad = info != 0
        if bool(bad.any()):
            eye = torch.eye(Hd.shape[-1], dtype=Hd.dtype, device=Hd.device)
            L[bad] = torch.linalg.cholesky(Hd[bad] + eye * torch.diagonal(Hd[bad], dim1=-2, dim2=-1).amax(-1).clamp_min(
                torch.finfo(Hd.dtype).tiny)[:, None, None] * 1e-6)

        def precondition(r):
            return self.tr.remove_gauge(torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1).T).T

        mu = mu.reshape(-1, 1) if mu.numel() > 1 else mu
        g_norm = float(G.norm())
        if g_norm == 0 or not math.isfinite(g_norm):
            return torch.zeros_like(G)
        eta = min(0.1, math.sqrt(g_norm / max(getattr(self, "_g0", g_norm), torch.finfo(G.dtype).tiny)))
        self._g0 = max(getattr(self, "_g0", 0.0), g_norm)
        x, _ = preconditioned_cg(lambda p: self._softmax_hvp(store, m, V, p) + mu * p, G, precondition, eta)
        self._hvp_cache = None
        if not bool(torch.isfinite(x).all()) or float((G * x).sum()) >= 0:
            return -precondition(G)
        return self.tr.remove_gauge(x.T).T

    # --- the joint (variable projection) Newton step -------------------------------------
    def _apply_h(self, blk: dict, U: torch.Tensor) -> torch.Tensor:
        """``∇²F(â_n) u_n`` for every row (element-wise: a product; softmax: diag(q) − q qᵀ)."""
        if self.tr.elementwise:
            return blk["h"] * U
        W = blk["Q"] * U
        return W - blk["Q"] * W.sum(-1, keepdim=True)

    def _reduced_blocks(self, store: CoefStore, m, V):
        """Per row block at (m, V, C): Z, residual R = f(Â) − y, the Hessian weights and the
        Cholesky factors of the rows' coefficient Hessians ``Vᵀ∇²F(â)V + λI``. Kept in memory
        for in-memory data (one computation per step), recomputed per pass for streamed data."""
        cache = getattr(self, "_red_cache", None)
        if cache is not None:
            yield from cache
            return
        keep = [] if self.src.in_memory else None
        tr, lam = self.tr, self.o.ridge
        gram = PairGram(V)
        eye = torch.eye(self.k, dtype=self.dtype, device=self.device)
        # a floored singular Hessian (ReLU): the model's rows get a usable least curvature
        floored = tr.hessian_floor > 0
        for s, X in self._blocks():
            C = store.get(s, s + X.shape[0])
            Z = torch.cat([C, torch.ones_like(C[:, :1])], 1) if self.o.joint_mean else C
            A = m + C @ V.T
            Q = tr.f(A)
            blk = {"s": s, "Z": Z, "R": Q - tr.f(X)}
            if tr.elementwise:
                blk["h"] = tr.hessian_diag_from_output(A, Q)
                if floored:
                    blk["h"] = blk["h"].clamp_min_(_JOINT_CURVATURE_FLOOR)
                Hcc = gram(blk["h"])
            else:
                blk["Q"] = Q
                u = Q @ V
                Hcc = gram(Q) - u.unsqueeze(2) * u.unsqueeze(1)
            Hcc = Hcc + lam * eye
            Lc, info = torch.linalg.cholesky_ex(Hcc)
            if bool((info != 0).any()):
                jitter = torch.diagonal(Hcc, dim1=-2, dim2=-1).abs().amax(-1).clamp_min(torch.finfo(self.dtype).tiny)
                Lc, _ = torch.linalg.cholesky_ex(Hcc + (1e-6 * jitter)[:, None, None] * eye)
            blk["L"] = Lc
            if keep is not None:
                keep.append(blk)
            yield blk
        store.commit()
        if keep is not None:
            self._red_cache = keep

    def _coef_response(self, blk: dict, V, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a change P (d, K) of (V, m): the rows' coefficient change ``−w`` that keeps them
        optimal to first order, and U = Z Pᵀ (the change of Â at fixed C)."""
        U = blk["Z"] @ P.T
        b = self._apply_h(blk, U) @ V + blk["R"] @ P[:, : self.k]
        w = torch.cholesky_solve(b.unsqueeze(-1), blk["L"]).squeeze(-1)
        return w, U

    def _reduced_hvp(self, store: CoefStore, m, V, P: torch.Tensor) -> torch.Tensor:
        """Hessian of ``(m, V) ↦ min_C L`` (the Schur complement of the joint Hessian) applied
        to P: the coefficients follow the directions, so valleys where a change of V is
        compensated by C (which alternating steps crawl along) are taken in one step."""
        out = torch.zeros_like(P)
        for blk in self._reduced_blocks(store, m, V):
            w, U = self._coef_response(blk, V, P)
            dA = U - w @ V.T
            out += self._apply_h(blk, dA).T @ blk["Z"]
            out[:, : self.k] -= blk["R"].T @ w
        return out

    def _reduced_direction(self, store: CoefStore, m, V, G: torch.Tensor, Hd: torch.Tensor, mu: torch.Tensor,
                           rtol: float, project: Callable[[torch.Tensor], torch.Tensor] | None = None
                           ) -> torch.Tensor | None:
        """``x ≈ −(H_red + μ)⁻¹ G`` by conjugate gradients preconditioned with the per-unit
        blocks ``Hd`` (H_red: the reduced Hessian, :meth:`_reduced_hvp`); None where it finds no
        descent direction. Leaves the row blocks cached (``_red_cache``) for the caller."""
        tr = self.tr
        self._red_cache = None
        L, info = torch.linalg.cholesky_ex(Hd)
        if bool((info != 0).any()):
            return None

        keep = project if project is not None else (lambda P: P)

        def precondition(r):
            x = torch.cholesky_solve(keep(r).unsqueeze(-1), L).squeeze(-1)
            return keep(x if tr.elementwise else tr.remove_gauge(x.T).T)

        mu = mu.reshape(-1, 1)
        G = keep(G)
        g_norm = float(G.norm())
        if g_norm == 0 or not math.isfinite(g_norm):
            return None
        x, curved = preconditioned_cg(lambda p: keep(self._reduced_hvp(store, m, V, keep(p))) + mu * p, G,
                                      precondition, rtol)
        if not curved:  # negative curvature at once: the preconditioned gradient step, damped by mu
            p = precondition(-G)
            rz = float((-G * p).sum())
            x = p * (rz / max(float((p * (mu * p)).sum()), float((p * p).sum()) * 1e-12, 1e-300))
        if not tr.elementwise:
            x = tr.remove_gauge(x.T).T
        if not bool(torch.isfinite(x).all()) or float((G * x).sum()) >= 0:
            return None
        return x

    def _reduced_step(self, store: CoefStore, m, V, st, Hd: torch.Tensor, mu: torch.Tensor):
        """Newton-CG on the reduced objective; returns (ΔΘ, ΔC store) or None."""
        try:
            project = off_span(V) if self._polishing else None
            x = self._reduced_direction(store, m, V, st["G"], Hd, mu, 0.05, project)
            if x is None:
                return None
            dC = CoefStore(self.N, self.k, dtype=self.dtype, device=self.device, on_disk=not self.src.in_memory)
            for blk in self._reduced_blocks(store, m, V):
                w, _ = self._coef_response(blk, V, x)
                dC.set(blk["s"], blk["s"] + w.shape[0], -w)
            return x, dC
        finally:
            self._red_cache = None

    def reduced_optimality(self, store: CoefStore, m, V, st: dict) -> float:
        """The optimality measure of :meth:`optimality` in the metric of the **reduced**
        Hessian, that of ``(m, V) ↦ min_C L`` (the coefficients follow the directions):
        ``sqrt(gᵀ H_red⁻¹ g / 2L)``, by conjugate gradients (:data:`_CG_MAX_ITER` products at
        most; each iterate's estimate is a lower bound, rising to the exact value).

        Why both: ``H_red ≼ H`` (a Schur complement), so this one is at least the per-unit
        one; they differ where a change of V is compensated by C — a valley. On a digits
        classifier's logits (softmax, k = 6 and 8) the per-unit measure read 2.5e-3 and 3.0e-3
        (below the tolerance 3.2e-3: "converged") at points 0.75 % and 0.3 % above the bottom
        of their basins; the exact reduced measure read 0.050 and 0.052 there (session 11).
        Directions whose columns lie in span(V) are left out (see below)."""
        G = st["G"]
        Hd, mu = self._levenberg(st["H"], 0.0)
        # Directions inside span(V) change only the ridge term, which shrinks without bound as
        # V grows and C shrinks — the normalization VᵀHV = I fixes that gauge, so it is no
        # descent the fit could take (softmax, k = 8 of 9: the unprojected measure read 0.27
        # at a point no iteration could improve).
        project = off_span(V)
        try:
            x = self._reduced_direction(store, m, V, G, Hd, mu, _MEASURE_CG_RTOL, project)
        finally:
            self._red_cache = None
        if x is None:
            return 0.0
        dec = -float((project(G) * x).sum(dtype=torch.float64))
        total = self.N * (st["objective"] + self.atol)
        return math.sqrt(max(dec, 0.0) / (2 * total)) if total > 0 else 0.0

    @property
    def _reduced_measure(self) -> bool:
        # a floored Hessian (ReLU) has no reduced Hessian of its own: the joint step's model is
        # floored higher (_JOINT_CURVATURE_FLOOR), so its measure would not be the function's
        return self.o.joint_steps and self.tr.hessian_floor == 0

    def measure(self, store: CoefStore, m, V, st: dict) -> float:
        """The optimality measure reported and tested: the larger of the per-unit and the
        reduced one (:meth:`reduced_optimality`, where the transfer has a Hessian of its own)."""
        opt = self.optimality(st)
        if self._reduced_measure:
            opt = max(opt, self.reduced_optimality(store, m, V, st))
        return opt

    def _joint_candidates(self, store: CoefStore, dC: CoefStore, m, theta, delta, steps) -> torch.Tensor:
        """Objective (shifted by a constant of the data, ridge included) at
        ``(Θ + t ΔΘ, C + t ΔC)`` for each t."""
        lam = self.o.ridge
        out = torch.zeros(len(steps), dtype=torch.float64, device=self.device)
        for s, X in self._blocks():
            Y = self.tr.f(X)
            e = s + X.shape[0]
            C, D = store.get(s, e), dC.get(s, e)
            for i, t in enumerate(steps):
                Ct = C + t * D
                Z = torch.cat([Ct, torch.ones_like(Ct[:, :1])], 1) if self.o.joint_mean else Ct
                th = theta + t * delta
                A = Z @ th.T if self.o.joint_mean else m + Z @ th.T
                val = self._unit_divergence(A, Y)[0].sum() + 0.5 * lam * (Ct * Ct).sum()
                out[i] += val.to(torch.float64)
        store.commit()
        return out

    def _levenberg(self, H: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-unit blocks damped by ``(damping + 16 eps)`` times each unit's mean diagonal:
        ``(H + μ I, μ)``, the preconditioner and shift of the reduced Newton-CG."""
        eye = torch.eye(H.shape[-1], dtype=self.dtype, device=self.device)
        scale = torch.diagonal(H, dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        mu = (damping + 16 * torch.finfo(self.dtype).eps) * scale
        return H + eye * mu.unsqueeze(-1), mu

    def joint_step(self, store: CoefStore, m, V, st, damping: torch.Tensor):
        """Newton step on ``(m, V) ↦ min_C L`` with the coefficients moving along (to first
        order) with the directions; a backtracking line search on the joint objective keeps it
        monotone. Returns (m, V, accepted)."""
        G = st["G"]
        Hd, mu = self._levenberg(st["H"], float(damping.max()))
        got = self._reduced_step(store, m, V, st, Hd, mu)
        if got is None:
            return m, V, False
        delta, dC = got
        theta = torch.cat([V, m.unsqueeze(1)], 1) if self.o.joint_mean else V
        try:
            steps = [0.0]
            vals = None
            slope = float((G * delta).sum())
            for i_stage, stage in enumerate(_DIRECTION_STAGES):
                part = self._joint_candidates(store, dC, m, theta, delta, ((0.0,) if vals is None else ()) + stage)
                vals = part if vals is None else torch.cat([vals, part])
                steps += list(stage)
                base = float(vals[0])
                slack = 64 * torch.finfo(self.dtype).eps * abs(base)
                ts = torch.tensor(steps, dtype=torch.float64)
                ok = torch.isfinite(vals) & (vals <= base + _ARMIJO * ts * slope + slack) & (ts > 0)
                if bool(ok.any()):
                    break
                if i_stage == 0 and self._polishing:
                    moved = self._refined_full_step(store, dC, m, V, delta, st, slope)
                    if moved is not None:
                        self._joint_t = 1.0
                        return moved[0], moved[1], True
            if not bool(ok.any()):
                return m, V, False
            t = steps[int(ok.to(torch.int8).argmax())]
            for s0 in range(0, self.N, 1 << 16):
                e0 = min(s0 + (1 << 16), self.N)
                store.set(s0, e0, store.get(s0, e0) + t * dC.get(s0, e0))
            store.commit()
            self._joint_t = t
        finally:
            dC.close()
        step = t * delta
        if self.o.joint_mean:
            return m + step[:, -1], V + step[:, :-1], True
        return m, V + step, True

    def _refined_full_step(self, store: CoefStore, dC: CoefStore, m, V, delta, st, slope: float):
        """The full joint step with the coefficients re-solved (a few Newton steps from
        ``C + ΔC``) instead of moved along their linearization: (m, V) or None.

        Why: the line search scores ``(Θ + tΔΘ, C + tΔC)``, an upper bound of the reduced
        objective ``min_C L`` at ``Θ + tΔΘ``; where the linearized response is off, the full
        step is rejected although the reduced objective accepts it, and the fit crawls at
        t = 1/2 (softmax logits of a digits classifier, k = 6: hundreds of iterations)."""
        tr, lam = self.tr, self.o.ridge
        m1, V1 = (m + delta[:, -1], V + delta[:, :-1]) if self.o.joint_mean else (m, V + delta)
        trial = CoefStore(self.N, self.k, dtype=self.dtype, device=self.device, on_disk=not self.src.in_memory)
        gram = PairGram(V1)
        total = 0.0
        try:
            for s, X in self._blocks():
                e = s + X.shape[0]
                C0 = store.get(s, e) + dC.get(s, e)
                res = solve_coefficients(tr, X, m1, V1, lam, C0, max_steps=_REFINED_STEPS, gram=gram,
                                         atol=self.atol, settle=False)
                total += float(res.objective.sum(dtype=torch.float64))
                trial.set(s, e, res.C)
            trial.commit()
            base = st["objective"] * self.N
            slack = 64 * torch.finfo(self.dtype).eps * abs(base)
            if not (math.isfinite(total) and total <= base + _ARMIJO * slope + slack):
                trial.close()
                return None
        except BaseException:
            trial.close()
            raise
        store.take_over(trial)
        return m1, V1

    def direction_step(self, store: CoefStore, m, V, st, damping: torch.Tensor):
        """The (m, V) step of an outer iteration; the objective never increases.

        The joint step (:meth:`joint_step`: Newton-CG on ``(m, V) ↦ min_C L``, the coefficients
        following) where it finds a decrease, else the step with C fixed
        (:meth:`fixed_coefficient_step`). Returns (m, V, damping)."""
        if self.o.joint_steps:
            m2, V2, moved = self.joint_step(store, m, V, st, damping)
            t = getattr(self, "_joint_t", 0.0) if moved else 0.0
            # Levenberg-Marquardt: relax after full steps, tighten after short or failed ones
            damping = damping / 3 if t == 1.0 else damping if t >= 0.25 else damping * 4 + 1e-4
            damping = damping.clamp(0, 1e6)
            if moved:
                return m2, V2, damping
        return self.fixed_coefficient_step(store, m, V, st, damping)

    def fixed_coefficient_step(self, store: CoefStore, m, V, st, damping: torch.Tensor):
        """Damped Newton step on (V, m) with C fixed; a line search keeps the objective monotone.

        Element-wise transfers: d independent (k+1)-dim problems, each with its own step size.
        Softmax: Newton-CG with the exact coupled Hessian (:meth:`_newton_cg`); one step size
        for all units; gauge projected out. The full step is tried first (one pass); shorter
        steps are evaluated in stages only while some unit has none accepted.
        """
        tr = self.tr
        G, H, unit_obj = st["G"], st["H"], st["unit_div"]
        K = H.shape[-1]
        eye = torch.eye(K, dtype=self.dtype, device=self.device)
        diag = torch.diagonal(H, dim1=-2, dim2=-1)
        scale = diag.mean(-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        jitter = (torch.finfo(self.dtype).eps * 16) * scale
        damp = damping.unsqueeze(-1) if tr.elementwise else damping
        Hd = H + (eye * (jitter + damp * scale).unsqueeze(-1))
        if tr.elementwise:
            delta = -solve_spd(Hd, G)  # (d, K): rows are units, columns are [directions, mean]
        else:
            delta = self._newton_cg(store, m, V, G, Hd, damp * scale)
        slope = (G * delta).sum(-1)  # per unit
        if not tr.elementwise:
            slope = slope.sum().reshape(1)
        theta = torch.cat([V, m.unsqueeze(1)], 1) if self.o.joint_mean else V
        slack = 8 * torch.finfo(self.dtype).eps * st["unit_mag"]
        # Stages of step lengths, each one pass over the data, tried while some unit (softmax:
        # the whole step) has no acceptable step yet: far from the optimum the Newton step of a
        # nearly flat unit (peaked softmax rows, saturated sigmoids) can be orders too long, and
        # rejecting everything down to 1/8 stalled fits for many iterations.
        steps: list[float] = []
        cand = ok = None
        for stage in _DIRECTION_STAGES:
            part = self._candidate_objectives(store, m, theta, delta, stage)
            steps += list(stage)
            cand = part if cand is None else torch.cat([cand, part])
            t_col = torch.tensor(steps, dtype=self.dtype, device=self.device).unsqueeze(1)
            ok = torch.isfinite(cand) & (cand <= unit_obj + _ARMIJO * t_col * slope + slack)
            if bool(ok.any(0).all()):
                break
        steps_t = torch.tensor(steps, dtype=self.dtype, device=self.device)
        cand = torch.where(torch.isfinite(cand), cand, torch.full_like(cand, math.inf))
        # first (largest) accepted step per unit, else the best strict decrease, else none
        first = torch.where(ok.any(0), ok.to(torch.int8).argmax(0), cand.argmin(0))
        best = cand.gather(0, first.unsqueeze(0)).squeeze(0)
        use = ok.any(0) | (best < unit_obj)
        t = torch.where(use, steps_t[first], torch.zeros_like(unit_obj))
        # Marquardt damping: relax after full steps, tighten after rejected ones
        full = use & (first == 0)
        damping = torch.where(full, damping / 3, torch.where(use, damping, damping * 10 + 1e-6))
        damping = damping.clamp(0, 1e6)
        step = delta * t.unsqueeze(1) if tr.elementwise else delta * t
        if self.o.joint_mean:
            V, m = V + step[:, :-1], m + step[:, -1]
        else:
            V = V + step
        return m, V, damping

    def renormalize(self, store: CoefStore, m, V):
        """Re-normalize ``Vᵀ∇²F(m)V = I`` (coefficients map by ``C T⁻¹``) unless that raises
        the ridge term ``(λ/2)‖c‖²``: the reconstruction is unchanged, so the objective then
        cannot increase."""
        T, T_inv = normalizer(self.tr, m, V)
        if self.o.ridge > 0:
            if self.src.in_memory:
                C = store.all()
                S = C.T @ C / self.N
            else:
                S = sum((C.T @ C for C in (store.get(s, min(s + 65536, self.N)) for s in range(0, self.N, 65536))),
                        torch.zeros(self.k, self.k, dtype=self.dtype, device=self.device)) / self.N
            if float(torch.trace(T_inv.T @ S @ T_inv)) > float(torch.trace(S)):
                return m, V
        store.change_basis(T_inv)
        return m, V @ T

    def extrapolate(self, store: CoefStore, start, end, beta: float):
        """Safeguarded over-relaxation of one alternating iteration.

        Alternating minimization creeps along the valley where a change of the directions is
        compensated by the coefficients; the last iteration's move ``(m, V, C) − (m₀, V₀, C₀)``
        points along that valley. Try ``(m, V, C) + β·move`` and keep it only if the objective
        (with the ridge, same basis) is strictly lower, so the iterations stay monotone. β grows
        after a success and shrinks after a failure (one extra evaluation pass per iteration).
        """
        m0, V0, store0 = start
        m, V = end
        m_e, V_e = m + beta * (m - m0), V + beta * (V - V0)
        trial = CoefStore(self.N, self.k, dtype=self.dtype, device=self.device, on_disk=not self.src.in_memory)
        lam = self.o.ridge
        base = cand = 0.0
        for s, X in self._blocks():
            e = s + X.shape[0]
            C, C0 = store.get(s, e), store0.get(s, e)
            C_e = C + beta * (C - C0)
            trial.set(s, e, C_e)
            phi = self.tr.divergence(m + C @ V.T, X) + 0.5 * lam * (C * C).sum(-1)
            phi_e = self.tr.divergence(m_e + C_e @ V_e.T, X) + 0.5 * lam * (C_e * C_e).sum(-1)
            base += float(phi.sum(dtype=torch.float64))
            cand += float(phi_e.sum(dtype=torch.float64))
        store.commit()
        if math.isfinite(cand) and cand < base:
            store.take_over(trial)
            return m_e, V_e, min(beta * _EXTRAPOLATION_GROWTH, _EXTRAPOLATION_MAX)
        trial.close()
        return m, V, max(beta / (_EXTRAPOLATION_GROWTH ** 2), _EXTRAPOLATION_MIN)

    def finalize_basis(self, store: CoefStore, m, V, polish: bool = True):
        """Normalize ``Vᵀ∇²F(m)V = I``, polish C (unless ``polish`` is False), rotate to the
        eigenvectors of the coefficient second moment (descending); returns (V, polish stats)."""
        # twice: where ∇²F(m) is ill-conditioned (peaked softmax means) the first pass leaves
        # round-off of ~1e-5 in VᵀHV; the second starts near I and mends it to ~1e-12
        for _ in range(2):
            T, T_inv = normalizer(self.tr, m, V)
            V = V @ T
            store.change_basis(T_inv)
        st = self.coefficient_pass(store, m, V, max_steps=self.o.polish_steps if polish else 0, stats=True,
                                   second_moment=True, settle=True)
        ev, U = torch.linalg.eigh(0.5 * (st["S"] + st["S"].T))
        U = U.flip(1)
        V = V @ U
        signs = torch.sign(V[V.abs().argmax(0), torch.arange(V.shape[1], device=V.device)])
        signs[signs == 0] = 1
        V = V * signs
        R = U * signs
        store.change_basis(R)
        st["S"] = R.T @ st["S"] @ R
        # the gradient and per-unit Hessians in the new basis too (z = [c, 1] → Tᵀ z), so the
        # final measure reads them with the rotated V and coefficients
        T = torch.block_diag(R, torch.ones(1, 1, dtype=R.dtype, device=R.device)) if self.o.joint_mean else R
        st["G"] = st["G"] @ T
        st["H"] = T.T @ st["H"] @ T
        return V, st

    def divergence_by_k(self, store: CoefStore, m, V, centroid: torch.Tensor, final_div: float
                        ) -> tuple[float, list[float]]:
        """The best mean-only model's divergence ``D0`` and ``D_j`` for j = 1..k.

        ``D0``: all rows at the dual-space centroid ``f⁻¹(mean f(a))``, the optimal mean when
        there are no directions (the divergence is convex in its first argument, with
        gradient ``N (f(m) − mean f(a))``). ``D_j``: the divergence of the best of the
        models with at most j directions at hand: the centroid alone, and the fit's mean
        with its first j directions and coefficients re-optimized for them (each prefix
        re-projected by at most :data:`_PREFIX_NEWTON_STEPS` Newton steps, warm-started from the
        previous prefix's optimum, which Newton's line search can only improve). So
        ``D_k ≤ … ≤ D_1 ≤ D0`` and every share ``(D0 − D_j)/D0`` lies in [0, 1]; ``D_k`` is the
        fit's own divergence (or D0, were that lower). On more than :data:`_PREFIX_ROWS` rows
        the prefixes j < k are re-projected on that many evenly spaced rows, and ``D_j`` is
        ``D0`` times the share of the subsample's mean-only divergence they leave (at least
        ``D_k``); D0 and D_k are always exact on all rows."""
        tr, lam = self.tr, self.o.ridge
        tot0 = 0.0
        tots = [0.0] * (self.k - 1)
        # warm-started from the previous prefix's optimum, Newton needs few steps: 3 gave the
        # same curve to 5 digits as 10 on fit_speed's workload d, and each step costs a dozen
        # element-wise passes over the rows whatever j is (15 prefixes: 30 % of that fit)
        steps = _PREFIX_NEWTON_STEPS
        # on many rows the prefixes are re-projected on evenly spaced rows (every stride-th):
        # each costs a dozen element-wise passes per Newton step, and 31 prefixes took 48 of
        # 102 s on all 20,000 rows of fit_speed's workload (a)
        stride = max(1, math.ceil(self.N / _PREFIX_ROWS))
        tot0_sub, n_sub = 0.0, 0
        for s, X in self._blocks():
            C = store.get(s, s + X.shape[0])
            D0_rows = tr.divergence(centroid.expand_as(X), X)
            tot0 += float(D0_rows.sum())
            if stride > 1:
                first = (-s) % stride
                X, C, D0_rows = X[first::stride], C[first::stride], D0_rows[first::stride]
                if X.shape[0] == 0:
                    continue
            tot0_sub += float(D0_rows.sum())
            n_sub += X.shape[0]
            Y = tr.f(X)
            prev = C[:, :0]
            for j in range(1, self.k):
                Vj = V[:, :j]
                zero = torch.cat([prev, torch.zeros_like(C[:, :1])], 1)
                trunc = torch.cat([prev, C[:, j - 1 : j]], 1)
                _, _, phi_z = _row_objective(tr, X, m, Vj, zero, lam)
                _, _, phi_t = _row_objective(tr, X, m, Vj, trunc, lam)
                C0 = torch.where((phi_t < phi_z).unsqueeze(1), trunc, zero)
                res = solve_coefficients(tr, X, m, Vj, lam, C0, max_steps=steps, atol=self.atol, Y=Y, settle=False)
                prev = res.C
                tots[j - 1] += float(res.divergence.sum())
        store.commit()
        d0 = tot0 / self.N
        if stride > 1:
            # each prefix's share of the subsample's mean-only divergence, on the scale of all
            # rows; never below the fit's own divergence (the last entry, exact on all rows)
            d0_sub = tot0_sub / max(n_sub, 1)
            prefix = [d0 * (t / n_sub) / d0_sub if d0_sub > 0 else d0 for t in tots]
            prefix = [max(v, final_div) for v in prefix]
        else:
            prefix = [t / self.N for t in tots]
        by_k = prefix + [final_div]
        best, out = d0, []
        for v in by_k:
            best = min(best, v)
            out.append(best)
        return d0, out

    # --- driver ---------------------------------------------------------------------------
    def run(self, mom: Moments, init: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitResult:
        """Fit from ``init`` (a warm start), or, with the joint mean, from several starts.

        The objective is not jointly convex, and a start decides the basin: on the logits of
        a trained 10-class classifier the PCA start alone once ended 27x above the
        centroid-held fit. With ``init=None`` and the joint mean, two candidates are polished
        and the lower divergence is kept: (1) the joint fit from Euclidean PCA; (2) the
        centroid-held fit (the paper's model, from the centroid with directions from the
        scatter around it), then freed into a joint fit from where it ended. Every step is
        monotone, so the result is never above Euclidean PCA nor above the centroid fit.
        """
        if init is None and self.o.joint_mean and self.tr.invertible and self.o.multi_start:
            # the starts are compared by their final divergence; only the winner's per-prefix
            # curve is computed (each curve costs about as much as a fit)
            first = self._single(mom, None, finish=False)
            if first.stopped:  # the callback asked to stop: no further starts
                return self.finish(first, mom)
            held_opts = replace(self.o, joint_mean=False, multi_start=False)
            screen = self._screen_held_start(mom, first, held_opts)
            if screen is not None and screen["beaten"]:
                # the held start, polished on a subsample, ends clearly above the first start's
                # fit on the same rows; on all rows it would end higher still (a subsample's own
                # optimum is optimistic for it), so it is not polished on all rows
                first.starts, first.screen = {"pca": first.divergence}, screen
                return self.finish(first, mom)
            held = BregmanSolver(self.src, self.tr, self.k, held_opts)
            centroid = held._single(mom, None, finish=False)
            second = centroid
            # Freed into a joint fit only where the centroid-held fit already ends below the
            # first start: otherwise the first is at most the centroid fit as it stands, and
            # the freed fit (the costliest of the three: workload (d) of fit_speed spent 16 of
            # 34 s there to gain 6e-5 relative) is not needed for that guarantee.
            if not centroid.stopped and centroid.divergence < first.divergence:
                freed = BregmanSolver(self.src, self.tr, self.k, replace(self.o, multi_start=False))
                second = freed._single(mom, (centroid.mean, centroid.V), finish=False)
                second.n_iter += centroid.n_iter
            # the lowest of the three (the held fit itself too: a freed fit that starts at its
            # optimum can end above it by round-off, 2e-16 on a 1e-7 divergence once)
            best = min((first, centroid, second), key=lambda r: r.divergence)
            for r in {id(x): x for x in (first, centroid, second)}.values():
                if r is not best:
                    r.store.close()
                    r.store = None
            best.pca_divergence, best.init_divergence = first.pca_divergence, first.init_divergence
            best.starts = {"pca": first.divergence, "centroid": centroid.divergence,
                           "centroid_then_joint": second.divergence}
            best.screen = screen
            return self.finish(best, mom)
        return self._single(mom, init)

    def _subsample(self, rows: int) -> torch.Tensor:
        """``rows`` evenly spaced rows of the data (every stride-th), in the solver's dtype."""
        stride = max(1, self.N // rows)
        parts = []
        for s, X in self.src.blocks(self.d):
            first = (-s) % stride
            parts.append(X[first::stride])
        return torch.cat(parts)[:rows]

    def _screen_held_start(self, mom: Moments, first: FitResult, held_opts: SolverOptions) -> dict | None:
        """Polish the centroid-held start on :data:`_SCREEN_ROWS` evenly spaced rows and compare
        it there, row by row, with the first start's fit. ``beaten``: the held fit's mean
        divergence exceeds the first's by more than :data:`_SCREEN_Z` standard errors of the
        paired differences, in either of two comparisons. None on small data (the held start is
        then always polished on all rows).

        (1) Against the first fit with its coefficients re-projected on those rows: the held fit
        on a subsample is at least as good there as the held fit on all rows would be (it
        minimizes their objective from the same start), and the first fit's divergence there
        estimates its divergence on all rows without that optimism; so a held start that loses
        here loses on all rows too, up to the test's noise. On fit_speed's workload (d) the held
        start took 3.4 of 7.3 s and lost by 10 %.
        (2) Only where (1) cannot tell: against the first fit polished on the same rows from
        where it ended, so that both enjoy the same optimism and the comparison is of their
        basins. With many parameters per row (fit_speed's (a): 512 x 33 of them, on 2,000 rows)
        the optimism alone hid a held start that ended 3.8 % above on all rows (z = -0.1 in
        (1)), and polishing it on all rows took 22 of the fit's 30 s."""
        if self.N < _SCREEN_MIN_FACTOR * _SCREEN_ROWS:
            return None
        X = self.tr.remove_gauge(self._subsample(_SCREEN_ROWS))
        # the subsample is worked on in the blocks of the data it came from: streamed data's
        # blocks are smaller, and one block of all 2,000 rows raised a chunked fit's peak memory
        # (fit_speed's (a): 117 MiB above imports against 83 MiB)
        sub = RowSource(X, device=self.device, block_rows=self.src.block_rows(self._block_width))
        held = BregmanSolver(sub, self.tr, self.k, replace(held_opts, callback=None))
        held_rows = self._screen_rows(held, held._single(mom, None, finish=False))
        first_rows = self._screen_rows(held, first, reproject=True)
        out = {"rows": int(held_rows.numel()), "pca": float(first_rows.mean()), "centroid": float(held_rows.mean()),
               **_paired_z(held_rows, first_rows)}
        if not out["beaten"]:
            polisher = BregmanSolver(sub, self.tr, self.k, replace(self.o, multi_start=False, callback=None))
            polished = self._screen_rows(held, polisher._single(mom, (first.mean, first.V), finish=False))
            z = _paired_z(held_rows, polished)
            out.update({"pca_polished": float(polished.mean()), "z_polished": z["z"], "beaten": z["beaten"]})
        return out

    def _screen_rows(self, sub: "BregmanSolver", fit: FitResult, *, reproject: bool = False) -> torch.Tensor:
        """Per-row divergences of ``fit`` on the screen's rows (``sub``'s source), polished by
        Newton from its own coefficients there (closing its store), or, with ``reproject``,
        from the local-metric projection (a fit of other rows)."""
        tr, lam = self.tr, self.o.ridge
        HV = hessian_at(tr, fit.mean, fit.V) if reproject else None
        rows = []
        try:
            for s, X in sub._blocks():
                Y = tr.f(X)
                C0 = (initial_coefficients(tr, X, fit.mean, fit.V, HV, lam) if reproject
                      else fit.store.get(s, s + X.shape[0]))
                rows.append(solve_coefficients(tr, X, fit.mean, fit.V, lam, C0, max_steps=self.o.polish_steps,
                                               atol=self.atol, Y=Y).divergence.to(torch.float64))
        finally:
            if not reproject:
                fit.store.close()
                fit.store = None
        return torch.cat(rows)

    def finish(self, res: FitResult, mom: Moments) -> FitResult:
        """The per-prefix divergences (:meth:`divergence_by_k`) of a fit whose store is still
        open; closes the store."""
        store, res.store = res.store, None
        try:
            res.mean_only_divergence, res.divergence_by_k = self.divergence_by_k(
                store, res.mean, res.V, dual_centroid(self.tr, mom.mean_output), res.divergence)
        finally:
            store.close()
        return res

    def _single(self, mom: Moments, init: tuple[torch.Tensor, torch.Tensor] | None, *,
                finish: bool = True) -> FitResult:
        tr, o = self.tr, self.o
        k = self.k
        pca_V, _ = top_eigenvectors(mom.scatter, k, tr, o.generator)
        pca_mean = mom.mean
        if init is not None:
            m, V = init
            warm = True
        elif o.joint_mean:
            m, V, warm = pca_mean, pca_V, False
        else:
            m = dual_centroid(tr, mom.mean_output)
            shift = mom.mean - m
            S0 = mom.scatter + mom.n * torch.outer(shift, shift)
            V, _ = top_eigenvectors(S0, k, tr, o.generator)
            warm = False
        # Scale of the data's divergence for absolute tolerances: mean-only model at m.
        store = CoefStore(self.N, k, dtype=self.dtype, device=self.device, on_disk=not self.src.in_memory)
        try:
            res = self._run(store, mom, m, V, warm, pca_mean, pca_V)
        except BaseException:
            store.close()
            raise
        res.store = store
        return self.finish(res, mom) if finish else res

    def _run(self, store, mom, m, V, warm, pca_mean, pca_V) -> FitResult:
        tr, o = self.tr, self.o
        self._polishing = False
        self.atol = 0.0
        B = hessian_at(tr, m, V) if warm else V
        if warm:
            T, _ = normalizer(tr, m, V)
            V = V @ T
            B = hessian_at(tr, m, V)
        start = (m, B, V)
        pca_div = self.initial_pass(store, m, B, V, pca_mean, pca_V, warm)
        self.atol = max(pca_div, torch.finfo(self.dtype).tiny) * 1e-3
        # Normalize the starting basis so the ridge acts in the local metric from the start.
        T, T_inv = normalizer(tr, m, V)
        V = V @ T
        store.change_basis(T_inv)
        damping = torch.zeros(self.d if tr.elementwise else 1, dtype=self.dtype, device=self.device)
        history: list[dict[str, float]] = []
        prev = math.inf
        init_div = init_obj = math.nan
        converged = False
        n_iter = 0
        beta = _EXTRAPOLATION_START
        for it in range(1, o.max_iter + 1):
            C_in = store.copy() if it > 1 and _EXTRAPOLATE else None
            m_in, V_in = m, V
            st = self.coefficient_pass(store, m, V, max_steps=o.newton_steps, stats=True)
            if it == 1:
                init_obj = st["objective"]
                init_div = st["divergence"]
            div, obj = st["divergence"], st["objective"]
            opt = self.optimality(st)
            if opt <= self.gtol and self._reduced_measure:
                # the per-unit measure is met: test the reduced one (a valley?), and from here on
                # polish with steps that can cross it
                opt = max(opt, self.reduced_optimality(store, m, V, st))
                self._polishing = True
            n_iter = it
            info = {"iteration": it, "elapsed_s": time.perf_counter() - self.t0, "divergence": div,
                    "objective": obj, "newton_iterations": st["newton"], "optimality": opt}
            history.append(info)
            logger.debug("bregman pca iteration %d: divergence %.6g objective %.6g", it, div, obj)
            stop = bool(o.callback(dict(info))) if o.callback is not None else False
            rel = (prev - obj) / max(abs(prev), torch.finfo(self.dtype).tiny) if math.isfinite(prev) else math.inf
            # Stop on the optimality measure (r² is the relative decrease a Newton step in (m, V)
            # still promises), or when an iteration gains (almost) nothing: stagnation at the
            # round-off floor. A small decrease alone is not convergence: alternating steps
            # creep through valleys, and a stalled step once read as "converged" at 27x the optimum.
            # The test is made before the direction step, so the point returned is the point
            # measured (a step taken after the test once left the final measure above it).
            if opt <= self.gtol or obj <= torch.finfo(self.dtype).tiny or rel < o.tol * o.tol:
                if C_in is not None:
                    C_in.close()
                break
            prev = obj
            m, V, damping = self.direction_step(store, m, V, st, damping)
            if C_in is not None:
                m, V, beta = self.extrapolate(store, (m_in, V_in, C_in), (m, V), beta)
                C_in.close()
            if stop:
                self._stopped = True
                break
            m, V = self.renormalize(store, m, V)
        V, st = self.finalize_basis(store, m, V)
        final_div = st["divergence"]
        final_opt = self.measure(store, m, V, st)
        # Every step decreases the objective D + R (R the ridge term; a change of basis during
        # the iterations is taken only when it does not raise R), so up to round-off the end's
        # divergence is at most the start's objective D₀ + R₀. With ridge = 0 that is the start's
        # divergence (joint: also PCA's, whose coefficients the first coefficient step starts
        # from). With a ridge, comparing divergences alone (as before) flagged runs as failures
        # whenever the ridge's small cost showed (near-exact fits, e.g. softmax logits), and the
        # final normalization changes R's basis, so objectives at both ends are not comparable.
        # Still, a fit whose divergence ends above the start's is never returned, ridge or not:
        # the start is as good for the user (bounded coefficients, lower divergence), and where
        # the ridge is all that improved, the mean is barely identified and can drift to where
        # ∇²F(m) is near singular (softmax with k = d − 1: the whole space is spanned, PCA is
        # exact, and the normalization Vᵀ∇²F(m)V = I then blows V up by orders of magnitude).
        final_val = final_div
        threshold = min(init_div, pca_div) if o.joint_mean else init_div
        if final_val > threshold * (1 + 64 * torch.finfo(self.dtype).eps):
            logger.info("Bregman fit ended above its start (%.6g > %.6g); returning the start",
                        final_val, threshold)
            # the very starting coefficients (joint: PCA's own projections), polished only
            # with a ridge (whose objective the polish lowers); with ridge = 0 unpolished, so
            # the divergence is the start's exactly (a polish could rise by round-off)
            m, B, V = start
            self.initial_pass(store, m, B, V, pca_mean, pca_V, warm)
            V, st = self.finalize_basis(store, m, V, polish=o.ridge > 0)
            final_div = st["divergence"]
            final_opt = self.measure(store, m, V, st)
        coefficients = store.all().clone() if self.src.in_memory else None
        return FitResult(
            mean=m, V=V, divergence=final_div, pca_divergence=pca_div, init_divergence=init_div,
            mean_only_divergence=math.nan, divergence_by_k=[], n_iter=n_iter,
            converged=final_opt <= self.gtol, history=history, coefficients=coefficients, coef_second_moment=st["S"],
            optimality=final_opt, optimality_tol=self.gtol, stopped=getattr(self, "_stopped", False),
        )
