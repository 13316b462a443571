"""Baseline solvers of the Bregman PCA objective, for the fit speed benchmark.

Both minimize the mean divergence ``(1/N) Σ_n D_F(m + c_n V, a_n)`` (``V`` stored as ``(k, d)``
rows, like ``BregmanPCA.components_``) and take the layer's divergence as a function
``divergence(a_hat, a) -> (N,)`` (``get_transfer(...).divergence``), so every method is scored
by the same function. Gradients come from autograd through that function.

- :func:`fit_lbfgs_joint` -- "the plain approach": ``m``, ``V`` and all coefficients ``C`` are
  free parameters of one objective, minimized by ``torch.optim.LBFGS`` with strong-Wolfe line
  search.
- :func:`fit_sgd_momentum` -- online learning in the shape of the online Bregman PCA layers:
  ``m`` and ``V`` learned by SGD with momentum over shuffled minibatches; each minibatch's
  coefficients come from :func:`project_coefficients` (closed-form Euclidean projection, then a
  few preconditioned gradient steps on the Bregman objective), held fixed for the ``m, V`` step.
- :func:`fit_sklearn_pca` -- ``sklearn.decomposition.PCA`` (identity transfer only).

All three start where ``BregmanPCA`` starts, at Euclidean PCA (:func:`euclidean_pca`), and
the time to compute it counts. The clock (:class:`Stopwatch`) is paused while the benchmark
evaluates the full-data divergence for the trajectory, so evaluation costs no method anything.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Stopwatch:
    """Wall-clock and CPU seconds that can be paused while the benchmark measures, not the method.

    CPU seconds (``time.process_time``: all threads of this process) are kept beside wall
    seconds because on a shared machine other processes stretch wall time, not CPU time.
    """

    def __init__(self) -> None:
        self._start = (time.perf_counter(), time.process_time())
        self._paused_total = [0.0, 0.0]
        self._paused_at: tuple[float, float] | None = None

    def _now(self) -> tuple[float, float]:
        return self._paused_at if self._paused_at is not None else (time.perf_counter(), time.process_time())

    def elapsed(self) -> float:
        """Wall seconds so far, pauses excluded."""
        return self._now()[0] - self._start[0] - self._paused_total[0]

    def cpu(self) -> float:
        """CPU seconds of this process so far, pauses excluded."""
        return self._now()[1] - self._start[1] - self._paused_total[1]

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = (time.perf_counter(), time.process_time())

    def resume(self) -> None:
        if self._paused_at is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            self._paused_total[0] += wall - self._paused_at[0]
            self._paused_total[1] += cpu - self._paused_at[1]
            self._paused_at = None


@dataclass
class FitResult:
    """What a solver learned and how its mean divergence fell over (method) time."""

    method: str
    mean: torch.Tensor  # (d,)
    components: torch.Tensor  # (k, d)
    divergence: float  # final mean divergence with the method's own coefficients
    trajectory: list[tuple[float, float, float]]  # (wall s, mean divergence, cpu s), evaluation excluded
    wall_s: float  # method time, evaluation excluded
    cpu_s: float
    n_iter: int
    info: dict[str, Any] = field(default_factory=dict)
    # (wall s, cpu s, mean, components, own coefficients or None): a few states along the way, kept
    # at geometrically spaced times, for re-scoring with :func:`newton_coefficients` afterwards.
    # Iterative solvers keep no coefficients here (N x k copies would inflate peak memory).
    snapshots: list[tuple[float, float, torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(
        default_factory=list)


class SnapshotSchedule:
    """Decides when to keep a copy of ``m, V`` (and coefficients): at t = first, 2·first, 4·first, ...

    Keeping every state would hold hundreds of ``(k, d)`` copies and inflate peak memory;
    geometric times resolve a time-to-target to within a factor 2 with about ten copies.
    """

    def __init__(self, first_s: float = 2.0, factor: float = 2.0) -> None:
        self.next_s = first_s
        self.factor = factor
        self.snapshots: list[tuple[float, float, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def offer(self, clock: Stopwatch, mean: torch.Tensor, components: torch.Tensor,
              coefficients: torch.Tensor | None, *, force: bool = False) -> None:
        t = clock.elapsed()
        if t < self.next_s and not force:
            return
        while self.next_s <= t:
            self.next_s *= self.factor
        keep = None if coefficients is None else coefficients.detach().clone()
        self.snapshots.append((t, clock.cpu(), mean.detach().clone(), components.detach().clone(), keep))


def point(clock: Stopwatch, value: float) -> tuple[float, float, float]:
    """A trajectory point: (wall seconds, divergence, cpu seconds)."""
    return (clock.elapsed(), value, clock.cpu())


def euclidean_pca(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and top-``k`` orthonormal principal directions ``(k, d)`` of the rows of A.

    Eigen-decomposition of the ``d x d`` covariance in float64: for ``N >> d`` it costs one
    ``N d^2`` product, far less than an SVD of ``A``.
    """
    mean = A.mean(dim=0, dtype=torch.float64)
    cov = torch.zeros(A.shape[1], A.shape[1], dtype=torch.float64, device=A.device)
    for start in range(0, A.shape[0], 8192):  # bounded float64 workspace
        block = A[start:start + 8192].to(torch.float64) - mean
        cov += block.T @ block
    _, vecs = torch.linalg.eigh(cov)
    components = vecs[:, -k:].flip(1).T  # largest first
    return mean.to(A.dtype), components.to(A.dtype).contiguous()


def mean_divergence(divergence: Divergence, A: torch.Tensor, mean: torch.Tensor, components: torch.Tensor,
                    coefficients: torch.Tensor, batch_rows: int = 8192) -> float:
    """``(1/N) Σ_n D_F(m + c_n V, a_n)``, accumulated in float64 over row batches."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, A.shape[0], batch_rows):
            a = A[start:start + batch_rows]
            a_hat = mean + coefficients[start:start + batch_rows] @ components
            total += float(divergence(a_hat, a).sum(dtype=torch.float64))
    return total / A.shape[0]


def fit_lbfgs_joint(A: torch.Tensor, divergence: Divergence, k: int, *, budget_s: float = 120.0,
                    iters_per_step: int = 10, history_size: int = 20, rel_tol: float = 1e-10,
                    max_steps: int | None = None) -> FitResult:
    """Autograd + ``torch.optim.LBFGS`` (strong Wolfe) on ``m``, ``V`` and ``C`` jointly.

    Runs until ``budget_s`` seconds of method time pass, ``max_steps`` steps of
    ``iters_per_step`` L-BFGS iterations are done, or the objective changes by less than
    ``rel_tol`` (relative) over three steps.
    The trajectory records the objective after every step: it is the mean divergence with the
    method's own coefficients ``C``.
    """
    clock = Stopwatch()
    mean0, comp0 = euclidean_pca(A, k)
    m = mean0.clone().requires_grad_(True)
    V = comp0.clone().requires_grad_(True)
    C = ((A - mean0) @ comp0.T).requires_grad_(True)
    opt = torch.optim.LBFGS([m, V, C], lr=1.0, max_iter=iters_per_step, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)

    def objective() -> torch.Tensor:
        return divergence(m + C @ V, A).mean()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    def evaluate() -> float:
        clock.pause()
        value = mean_divergence(divergence, A, m.detach(), V.detach(), C.detach())
        clock.resume()
        return value

    schedule = SnapshotSchedule()
    trajectory = [point(clock, evaluate())]
    schedule.offer(clock, m, V, None, force=True)
    stalls, n_steps = 0, 0
    while clock.elapsed() < budget_s and (max_steps is None or n_steps < max_steps):
        opt.step(closure)
        n_steps += 1
        value = evaluate()
        previous = trajectory[-1][1]
        trajectory.append(point(clock, value))
        schedule.offer(clock, m, V, None)
        if not math.isfinite(value):
            break
        stalls = stalls + 1 if abs(previous - value) <= rel_tol * abs(previous) else 0
        if stalls >= 3:
            break
    if schedule.snapshots[-1][0] != trajectory[-1][0]:
        schedule.offer(clock, m, V, None, force=True)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", n_steps * iters_per_step))
    return FitResult("lbfgs", m.detach(), V.detach(), trajectory[-1][1], trajectory, clock.elapsed(), clock.cpu(),
                     n_iter,
                     {"iters_per_step": iters_per_step, "history_size": history_size, "init": "euclidean_pca",
                      "budget_exhausted": clock.elapsed() >= budget_s}, schedule.snapshots)


def project_coefficients(divergence: Divergence, a: torch.Tensor, mean: torch.Tensor, components: torch.Tensor,
                         inner_steps: int = 5) -> torch.Tensor:
    """Coefficients of rows ``a`` for fixed ``m, V``: Euclidean projection, then gradient steps.

    Start: ``c = (V Vᵀ)⁻¹ V (a − m)``, the closed-form least-squares projection. Then
    ``inner_steps`` steps ``c ← c − (V Vᵀ)⁻¹ V ∇_â D_F(â, a)``: gradient steps preconditioned
    by the Euclidean Gram matrix, with step 1, which never overshoots since
    ``∇²F ⪯ I`` for identity, leaky ReLU and softmax. For identity the start is exact.
    """
    with torch.no_grad():
        gram = components @ components.T
        gram_inv = torch.linalg.inv(gram.to(torch.float64)).to(a.dtype)
        proj = components.T @ gram_inv  # (d, k)
        c = (a - mean) @ proj
    for _ in range(inner_steps):
        a_hat = (mean + c @ components).requires_grad_(True)
        (grad,) = torch.autograd.grad(divergence(a_hat, a).sum(), a_hat)
        with torch.no_grad():
            c = c - grad @ proj
    return c.detach()


def all_coefficients(divergence: Divergence, A: torch.Tensor, mean: torch.Tensor, components: torch.Tensor,
                     inner_steps: int, batch_rows: int = 4096) -> torch.Tensor:
    """:func:`project_coefficients` for every row of A, in row batches."""
    return torch.cat([project_coefficients(divergence, A[s:s + batch_rows], mean, components, inner_steps)
                      for s in range(0, A.shape[0], batch_rows)])


def fit_sgd_momentum(A: torch.Tensor, divergence: Divergence, k: int, *, budget_s: float = 120.0,
                     batch_size: int = 256, lr_scale: float = 0.5, momentum: float = 0.9, inner_steps: int = 5,
                     lr_decay: float = 0.5, max_epochs: int = 1000, seed: int = 0) -> FitResult:
    """Online SGD with momentum on ``m`` and ``V`` over shuffled minibatches.

    Step sizes: the curvature of the objective in ``V`` is about ``E[c cᵀ] ⊗ ∇²F`` with
    ``∇²F ⪯ I``, so ``V`` gets ``lr = lr_scale / λ_max`` with ``λ_max`` the top eigenvalue of the
    Euclidean-PCA coefficients' covariance, and ``m`` gets ``lr = lr_scale``. Both are divided by
    ``1 + lr_decay * epoch`` so that the minibatch noise dies down. After every epoch the clock
    pauses and the full-data divergence is measured with :func:`project_coefficients` (the
    method's own coefficient solver); the result's divergence is the last such value.
    """
    clock = Stopwatch()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    mean0, comp0 = euclidean_pca(A, k)
    with torch.no_grad():
        top_var = float(((A[: min(A.shape[0], 8192)] - mean0) @ comp0[:1].T).pow(2).mean())
    m = mean0.clone().requires_grad_(True)
    V = comp0.clone().requires_grad_(True)
    lr_m, lr_v = lr_scale, lr_scale / max(top_var, 1e-12)
    opt = torch.optim.SGD([{"params": [m], "lr": lr_m}, {"params": [V], "lr": lr_v}], momentum=momentum)

    schedule = SnapshotSchedule()

    def evaluate(force: bool = False) -> float:
        clock.pause()
        coeffs = all_coefficients(divergence, A, m.detach(), V.detach(), inner_steps)
        value = mean_divergence(divergence, A, m.detach(), V.detach(), coeffs)
        schedule.offer(clock, m, V, None, force=force)
        clock.resume()
        return value

    trajectory = [point(clock, evaluate(force=True))]
    n_steps, epoch = 0, 0
    n = A.shape[0]
    while clock.elapsed() < budget_s and epoch < max_epochs:
        for group, base in zip(opt.param_groups, (lr_m, lr_v)):
            group["lr"] = base / (1.0 + lr_decay * epoch)
        order = torch.randperm(n, generator=gen).to(A.device)
        for start in range(0, n, batch_size):
            a = A[order[start:start + batch_size]]
            c = project_coefficients(divergence, a, m.detach(), V.detach(), inner_steps)
            opt.zero_grad()
            divergence(m + c @ V, a).mean().backward()
            opt.step()
            n_steps += 1
            if clock.elapsed() >= budget_s:
                break
        epoch += 1
        done = clock.elapsed() >= budget_s or epoch >= max_epochs
        trajectory.append(point(clock, evaluate(force=done)))
        if not math.isfinite(trajectory[-1][1]):
            break
    return FitResult("sgd", m.detach(), V.detach(), trajectory[-1][1], trajectory, clock.elapsed(), clock.cpu(),
                     n_steps,
                     {"batch_size": batch_size, "lr_m": lr_m, "lr_v": lr_v, "momentum": momentum,
                      "inner_steps": inner_steps, "lr_decay": lr_decay, "epochs": epoch, "init": "euclidean_pca",
                      "budget_exhausted": clock.elapsed() >= budget_s}, schedule.snapshots)


def newton_coefficients(transfer: Any, A: torch.Tensor, mean: torch.Tensor, components: torch.Tensor,
                        start: torch.Tensor | None = None, *, iters: int = 30, batch_rows: int = 1024,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """The best coefficients for fixed ``m, V``: batched damped Newton, the same for every method.

    Solves ``min_c D_F(m + c V, a_n)`` row by row (a convex k-dim problem) from ``start`` (a
    method's own coefficients; Euclidean projection if None), in ``dtype``. Step: gradient
    ``V (f(â) − f(a))``, Hessian ``V ∇²F(â) Vᵀ`` (``transfer.hessian_diag`` / ``transfer.hvp``)
    plus a tiny ridge for the softmax gauge, with per-row backtracking so no row gets worse.
    Used only to score the learned ``m, V`` after the fact; its time counts for no method.
    """
    k = components.shape[0]
    dtype = dtype or A.dtype
    V = components.to(dtype)
    m = mean.to(dtype)
    eye = torch.eye(k, dtype=dtype, device=A.device)
    out = []
    for s in range(0, A.shape[0], batch_rows):
        a = A[s:s + batch_rows].to(dtype)
        if start is not None:
            c = start[s:s + batch_rows].to(dtype).clone()
        else:
            c = torch.linalg.solve(V @ V.T, V @ (a - m).T).T
        y = transfer.f(a)
        value = transfer.divergence(m + c @ V, a)
        for _ in range(iters):
            previous = value
            a_hat = m + c @ V
            grad = (transfer.f(a_hat) - y) @ V.T  # (B, k)
            if transfer.elementwise:
                hv = transfer.hessian_diag(a_hat)[:, None, :] * V  # (B, k, d)
            else:
                hv = transfer.hvp(a_hat[:, None, :].expand(-1, k, -1), V.expand(a.shape[0], -1, -1))
            hess = hv @ V.T  # (B, k, k)
            ridge = 1e-10 * hess.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
            step = torch.linalg.solve(hess + ridge[:, None, None] * eye, grad.unsqueeze(-1)).squeeze(-1)
            t = torch.ones(a.shape[0], 1, dtype=dtype, device=A.device)
            improved = torch.zeros(a.shape[0], dtype=torch.bool, device=A.device)
            for _ in range(20):  # backtrack the rows whose step does not decrease D_F
                trial = c - t * step
                trial_value = transfer.divergence(m + trial @ V, a)
                ok = (trial_value <= value) & ~improved
                c = torch.where(ok[:, None], trial, c)
                value = torch.where(ok, trial_value, value)
                improved |= ok
                if bool(improved.all()):
                    break
                t = torch.where(improved[:, None], t, 0.5 * t)
            # converged: the batch's total objective stopped moving (to round-off of its dtype)
            if float((previous - value).sum()) <= 4 * torch.finfo(dtype).eps * float(value.sum()):
                break
        out.append(c)
    return torch.cat(out).to(A.dtype)


def fit_sklearn_pca(A: torch.Tensor, divergence: Divergence, k: int) -> FitResult:
    """``sklearn.decomposition.PCA(n_components=k)`` with its default solver; only ``fit`` is timed."""
    from sklearn.decomposition import PCA  # optional dependency, imported only here

    X = A.detach().cpu().numpy()
    clock = Stopwatch()
    pca = PCA(n_components=k).fit(X)
    wall, cpu = clock.elapsed(), clock.cpu()
    mean = torch.as_tensor(pca.mean_, dtype=A.dtype, device=A.device)
    components = torch.as_tensor(pca.components_, dtype=A.dtype, device=A.device)
    coeffs = torch.as_tensor(pca.transform(X), dtype=A.dtype, device=A.device)
    value = mean_divergence(divergence, A, mean, components, coeffs)
    return FitResult("sklearn_pca", mean, components, value, [(wall, value, cpu)], wall, cpu, 1,
                     {"svd_solver": pca.svd_solver, "fit_svd_solver": getattr(pca, "_fit_svd_solver", None)},
                     [(wall, cpu, mean, components, coeffs)])
