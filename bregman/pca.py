"""Bregman PCA: a layer's pre-activations as a mean plus k directions in the layer's geometry.

Given pre-activations ``a_1 … a_N`` of one layer (d units) with transfer function ``f = ∇F``,
:class:`BregmanPCA` finds a mean ``m``, directions ``V`` (d×k) and coefficients ``c_n`` that
minimize ``Σ_n D_F(m + V c_n, a_n)`` (method.md §2), normalized so that
``Vᵀ ∇²F(m) V = I`` and ordered by mean squared coefficient.

This module needs only torch and numpy (no scikit-learn, no scipy).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> A = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
>>> est = BregmanPCA("sigmoid", n_components=2, random_state=0).fit(A)
>>> est.transform(A).shape
(200, 2)
>>> bool(est.divergence_ <= est.pca_divergence_)
True
"""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bregman._arrays import RowSource, output_like, to_tensor_2d
from bregman._pca_solver import (
    BregmanSolver,
    Moments,
    PairGram,
    SolverOptions,
    hessian_at,
    initial_coefficients,
    moments,
    off_span,
    solve_coefficients,
    threads_for,
    top_eigenvectors,
)
from bregman.transfers import Transfer, get_transfer

__all__ = ["BregmanPCA", "BregmanPCAError", "NotFittedError", "project_coefficients", "DEFAULT_RIDGE"]

logger = logging.getLogger(__name__)

#: With a float ``n_components``, the candidate fit uses at most this many directions.
MAX_AUTO_COMPONENTS = 64
#: In-memory inputs with more rows search a float ``n_components`` on this many rows first.
SEARCH_ROWS = 4096
#: Default ridge ``λ`` on the coefficients (in the normalized metric ``Vᵀ∇²F(m)V = I``).
DEFAULT_RIDGE = 1e-7


class BregmanPCAError(ValueError):
    """Invalid estimator parameters or data; the message says what to change."""


class NotFittedError(BregmanPCAError, AttributeError):
    """The estimator is used before ``fit``."""


def _check_ridge(ridge: Any) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not math.isfinite(ridge) or ridge < 0:
        raise BregmanPCAError(f"ridge must be a finite number >= 0, got {ridge!r}; the default is {DEFAULT_RIDGE}")
    return float(ridge)


@torch.no_grad()
def project_coefficients(transfer: Transfer | str, mean: torch.Tensor, components: torch.Tensor, a: torch.Tensor,
                         *, ridge: float = DEFAULT_RIDGE, max_steps: int = 50) -> torch.Tensor:
    """Coefficients of pre-activations under a representation ``(mean, components)``.

    Solves ``min_c D_F(m + V c, a) + (λ/2)‖c‖²`` for every row (batched damped Newton with a
    line search), exactly what :meth:`BregmanPCA.transform` does; use it with an exported
    layer whose estimator is not at hand: ``project_coefficients(layer.transfer, layer.mean,
    layer.components, a, ridge=layer.manifest["ridge"])``.

    Parameters
    ----------
    transfer : Transfer or str
    mean : Tensor (d,)
    components : Tensor (k, d)
        Directions as rows.
    a : Tensor (N, d)
        Pre-activations, on the device and in the dtype to compute with.
    ridge : float
        λ (the ``ridge_`` of the fit, recorded in the layer manifest as ``"ridge"``).
    max_steps : int
        Newton steps per row at most (rows stop earlier once converged).

    Returns
    -------
    Tensor (N, k), same device and dtype as ``a``.
    """
    tr = get_transfer(transfer)
    X = tr.remove_gauge(a)
    m = mean.to(device=X.device, dtype=X.dtype)
    V = components.to(device=X.device, dtype=X.dtype).T
    if tr.name == "identity":
        return (X - m) @ V
    HV = hessian_at(tr, m, V)
    gram = PairGram(V)
    rows = max(64, (1 << 23) // (X.shape[1] + V.shape[1] ** 2))
    out = []
    with threads_for(min(rows, X.shape[0]) * X.shape[1], X.device):
        for s in range(0, X.shape[0], rows):
            Xb = X[s : s + rows]
            C0 = initial_coefficients(tr, Xb, m, V, HV, ridge)
            out.append(solve_coefficients(tr, Xb, m, V, ridge, C0, max_steps=max_steps, gram=gram).C)
    return torch.cat(out) if out else X.new_zeros(0, V.shape[1])


class BregmanPCA:
    """Bregman PCA of a layer's pre-activations (scikit-learn style estimator).

    Parameters
    ----------
    transfer : str or Transfer, default "identity"
        The layer's transfer function: ``"identity"``, ``"leaky_relu"``, ``"relu"``,
        ``"sigmoid"``, ``"tanh"``, ``"softmax"``, or a configured object such as
        ``get_transfer("leaky_relu", negative_slope=0.2)``. Non-monotone activations (GELU,
        SiLU, ...) raise :class:`bregman.transfers.NonMonotoneTransferError`.
    n_components : int or float, default 2
        Number of directions k (``1 <= k < d`` and ``k < N``), or a float in (0, 1): the
        smallest k whose own fit removes at least that share of the mean-only model's
        divergence, found with actual fits (k = 1, 2, 4, … then bisection, each warm-started
        from the nearest fit; searched up to ``min(d - 1, N - 1, 64, max_components)``; see
        ``n_components_search_``).
    max_components : int or None, default None
        With a float ``n_components``: the most directions the search may choose. Where
        ``max_components`` directions explain less than the share, their fit is returned
        (``n_components_search_`` shows the shares reached). Ignored for an integer k.
    mean : {"joint", "centroid"}, default "joint"
        ``"joint"`` optimizes the mean with the directions (the fit then never ends above
        Euclidean PCA's divergence: by construction with ``ridge=0``, and up to the ridge's
        tiny cost otherwise, which shows only where PCA is nearly exact, e.g. softmax with
        k = d − 1); ``"centroid"`` holds it at the dual-space centroid
        ``f⁻¹(mean f(a))`` (the paper's choice; needs an invertible transfer, so not ReLU).
    ridge : float, default 1e-7
        ``λ`` of the penalty ``(λ/2)‖c‖²`` on the coefficients, in the normalized metric
        (where ``D_F ≈ ½‖Δc‖²`` near the mean, so λ is dimensionless). It keeps every
        projection unique and bounded (near one-hot softmax rows, whose unpenalized optimal
        coefficients run off; the bound grows only like ``log(1/λ)``). Measured rise of the
        divergence against λ = 1e-12: 3e-5 relative on peaked 6-class logits, 5e-4 on logits
        with temperatures up to 40 (rows one-hot to 1e-50), 1e-11 on sigmoid units. Not used
        by the identity transfer, whose projections are always bounded (``ridge_ = 0``).
    max_iter : int, default 100
        Maximum number of outer iterations (each: a coefficient step and a direction step).
    tol : float, default 1e-5
        Convergence: the fit stops, converged, once the relative gradient norm in (m, V) at
        the current coefficients (``optimality_``) is at most ``sqrt(tol)``, i.e. once a Newton
        step in (m, V) would lower the objective by less than about ``tol/2`` relative. It also
        stops, then not converged, when an iteration lowers the objective by less than
        ``tol²`` relative (stagnation at round-off), or at ``max_iter``.
    newton_steps : int, default 5
        Newton steps per row and outer iteration in the coefficient step during the fit.
    polish_steps : int, default 50
        Newton steps per row for ``transform`` and for the fit's final coefficients (rows stop
        earlier once converged).
    batch_size : int or None
        Rows per processing block (default: about 8 million elements per work array).
    device : str, torch.device or None
        Where to compute (default: the data's device; numpy input: CPU).
    random_state : int or None
        Seed for the only random choice: completing directions the data leave undetermined.
    callback : callable or None
        Called after every outer iteration with a dict ``{"iteration", "elapsed_s",
        "divergence", "objective", "newton_iterations"}``; returning True stops the fit; an
        exception raised in it aborts the fit.
    transfer_params : dict or None
        Parameters for a transfer given by name, e.g. ``{"negative_slope": 0.2}``.

    Attributes
    ----------
    transfer_ : Transfer
        The resolved transfer function.
    mean_ : ndarray or Tensor of shape (d,)
        The mean ``m`` (softmax: the sum-zero representative). Same type/device as the fit input.
    components_ : ndarray or Tensor of shape (k, d)
        Directions as rows (``Vᵀ``), with ``V ᵀ∇²F(m) V = I`` and decreasing mean squared coefficient.
    n_components_ : int
        k.
    n_features_in_ : int
        d.
    n_samples_seen_ : int
        N.
    divergence_ : float
        Mean divergence ``(1/N) Σ D_F(m + V c_n, a_n)`` on the training data at the end of the
        fit (ridge excluded).
    pca_divergence_ : float
        Mean divergence of Euclidean PCA with the same k on the same data (its mean and
        directions, orthogonal projection of the pre-activations).
    mean_only_divergence_ : float
        Mean divergence of the best mean-only model: every row at the dual-space centroid
        ``f⁻¹(mean f(a))`` (ReLU: the mean output), the optimal mean when k = 0.
    init_divergence_ : float
        Mean divergence after the first coefficient step from the starting point (Euclidean
        PCA for ``mean="joint"``, PCA around the centroid for ``mean="centroid"``); the fit
        never ends above it.
    divergence_by_component_ : ndarray of shape (k,)
        ``D_j``, j = 1..k: mean divergence of the best model with at most j directions at
        hand: the centroid alone (``mean_only_divergence_``), or this fit's mean with its
        first j directions and coefficients **re-projected** onto them (each prefix re-scored
        with optimal coefficients, warm-started from the previous prefix's). Non-increasing;
        ``D_k = divergence_`` (unless the centroid alone were lower).
    explained_divergence_ratio_ : ndarray of shape (k,)
        **Cumulative**: entry j-1 is the share ``(D0 − D_j) / D0`` of the best mean-only
        model's divergence ``D0`` that the first j directions remove; always in [0, 1] and
        non-decreasing (a prefix whose joint mean is worse than the centroid alone scores 0:
        the joint mean is chosen for all k directions). ``[-1]`` is the share explained by the
        whole fit. It is the prefixes of this fit, not separate fits for each j (those may do
        better: Bregman PCA solutions are not nested). For the identity transfer it equals
        the cumsum of scikit-learn's ``explained_variance_ratio_``.
    n_components_search_ : dict of int to float
        Only with a float ``n_components``: the share explained by the own fit of every k the
        search fitted (the chosen k reaches the target; k − 1, when fitted, does not). On
        in-memory inputs of more than ``SEARCH_ROWS`` (4096) rows the search runs on that
        many evenly spaced rows; the chosen k is then fitted on all rows and raised until that
        fit reaches the share too.
    n_components_search_rows_ : int
        Rows the search fitted its candidates on.
    ridge_ : float
        The ridge actually used.
    hessian_floor_ : float
        Floor applied to the Hessian diagonal (ReLU), else 0.
    n_iter_ : int
        Outer iterations of the kept start (both phases for ``"centroid_then_joint"``; 0 for
        the identity transfer, which is solved in closed form).
    converged_ : bool
        ``optimality_ <= optimality_tol_``: exactly whether the first-order optimality test was
        met at the end (False after ``max_iter`` or a stagnation stop short of it).
    optimality_ : float
        The relative gradient norm at the returned (m, V, C): ``sqrt(gᵀH⁻¹g / 2L)`` with g the
        gradient of the objective L in (V, m) at the (polished) coefficients and H, the larger
        of two: its per-unit Hessian blocks, and the reduced Hessian of ``(m, V) ↦ min_C L``
        (the coefficients following; directions inside span(V), which the coefficients
        compensate, left out; not for ReLU, whose Hessian is floored). ``optimality_²`` is the
        relative decrease a Newton step in (m, V) would still promise. Independent of the
        data's units, N and the basis of V. 0 for the identity transfer (closed form).
    optimality_tol_ : float
        Its tolerance, ``sqrt(tol)``.
    starts_ : dict of str to float
        Joint mean, integer k, invertible transfer: the final divergence of each start that
        was polished (``"pca"``; ``"centroid"``, the centroid-held fit; ``"centroid_then_joint"``,
        that fit freed into a joint fit); the lowest is kept. Empty otherwise. On 8,000 rows or
        more the centroid-held start is screened first (``start_screen_``): where it loses
        clearly, only ``"pca"`` is polished on all rows.
    start_screen_ : dict
        The centroid-held start's screen (8,000 rows or more, else empty): ``rows`` (2,000
        evenly spaced rows), ``pca`` (the first start's fit re-projected there), ``centroid``
        (the held start polished on those rows alone), ``z`` (their mean difference in standard
        errors of the per-row differences) and ``beaten`` (the held start was not polished on
        all rows: z > 3, safe since a subsample's own optimum is optimistic for it; or, where
        z ≤ 3, ``z_polished`` > 3, the same test against ``pca_polished``, the first start's fit
        polished on those rows too, so that both sides share that optimism).
    history_ : list of dict
        One entry per outer iteration: ``iteration``, ``elapsed_s`` (since ``fit`` started),
        ``divergence``, ``objective``, ``newton_iterations``.
    fit_time_s_ : float
        Wall-clock seconds of the fit.

    Notes
    -----
    Solver (method.md §2): for the joint mean, two starts are polished and the lower
    divergence kept — Euclidean PCA, and the centroid-held fit (centroid, directions from the
    scatter around it) freed into a joint fit — so the default never ends above PCA nor above
    ``mean="centroid"`` (on 8,000 rows or more the held start is first polished on 2,000 of
    them and skipped where it loses there by more than 3 standard errors:
    ``start_screen_``; that guarantee then holds up to the screen's noise); a warm start (the float ``n_components`` search, continuation in k)
    is polished alone. From a start, alternate (i) the coefficient step, per row a damped
    Newton iteration on ``D_F(m + V c, a) + (λ/2)‖c‖²`` with k×k Cholesky systems and an
    Armijo line search (never NaN/inf), warm-started from the previous pass, and (ii) the
    direction step: Newton-CG on the reduced objective ``(m, V) ↦ min_C L`` (variable
    projection: Hessian-vector products of the Schur complement of the joint Hessian, a few
    GEMMs per pass, preconditioned by the per-unit blocks; the coefficients move along to
    first order), with Levenberg damping and a backtracking line search on the joint
    objective; where it finds no decrease, a Newton step on (m, V) with C fixed (element-wise:
    d independent (k+1)-dim problems; softmax: Newton-CG with the exact coupled Hessian
    ``Σ z zᵀ ⊗ (diag q − q qᵀ)``, gauge projected out), line-searched in stages down to
    2⁻¹⁴. Both steps decrease the objective. A safeguarded extrapolation
    ``θ + β (θ − θ_prev)`` for ``θ = (m, V, C)`` is kept only if the objective drops (β
    adapts). Then it re-normalizes ``Vᵀ∇²F(m)V = I`` unless that would raise the ridge term.
    Once the per-unit measure is met, the reduced one is tested too, and until it is met the
    joint steps are projected off span(V) and first try the full step with the coefficients
    re-solved (two Newton steps) rather than moved to first order.
    It stops on the optimality measure (see ``tol``); then it normalizes, polishes the
    coefficients to convergence, rotates to the eigenvectors of ``(1/N) Σ c cᵀ`` (descending)
    and fixes signs (largest entry of each direction positive). If the end's divergence were
    above the start's objective (with ``ridge=0``: above the start's divergence, and for
    ``mean="joint"`` above Euclidean PCA's), the start is returned (joint: PCA's own
    coefficients). The identity transfer is solved in closed form (eigendecomposition of the
    scatter matrix).

    Data are processed in row blocks (``batch_size``); no (N, d, k) tensor is built. Chunked
    input keeps the coefficients between passes in a temporary memory-mapped file. Every
    computation runs on the data's device in its dtype (float32 or float64; float16/bfloat16
    are computed in float32); softmax line searches in float32 use the cross-entropy form of
    the objective, whose round-off is relative to the divergence itself. On CPU the fit uses
    at most one intra-op thread per 2¹⁹ elements of a work block (restored afterwards): the
    solver runs many small kernels, for which OpenMP fork/join cost 10–30× the work on small
    layers (e.g. 1437×10 logits).

    Examples
    --------
    >>> import torch
    >>> logits = torch.randn(500, 10, dtype=torch.float64) * 3
    >>> est = BregmanPCA("softmax", n_components=3).fit(logits)
    >>> C = est.transform(logits)                     # (500, 3) tensor
    >>> probs = est.reconstruct(C)                     # softmax(m + V c)
    >>> layer = est.export_layer()                     # nn.Module: c -> f(m + V c)
    """

    def __init__(
        self,
        transfer: str | Transfer = "identity",
        n_components: int | float = 2,
        *,
        mean: str = "joint",
        ridge: float = DEFAULT_RIDGE,
        max_iter: int = 100,
        tol: float = 1e-5,
        newton_steps: int = 5,
        polish_steps: int = 50,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        random_state: int | None = None,
        callback: Callable[[dict[str, float]], Any] | None = None,
        transfer_params: dict[str, Any] | None = None,
        max_components: int | None = None,
    ) -> None:
        self.transfer = transfer
        self.n_components = n_components
        self.mean = mean
        self.ridge = ridge
        self.max_iter = max_iter
        self.tol = tol
        self.newton_steps = newton_steps
        self.polish_steps = polish_steps
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.callback = callback
        self.transfer_params = transfer_params
        self.max_components = max_components

    # --- scikit-learn protocol ----------------------------------------------------------------
    _PARAMS = ("transfer", "n_components", "mean", "ridge", "max_iter", "tol", "newton_steps",
               "polish_steps", "batch_size", "device", "random_state", "callback", "transfer_params",
               "max_components")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params: Any) -> "BregmanPCA":
        """Set constructor parameters (scikit-learn protocol)."""
        for name, value in params.items():
            if name not in self._PARAMS:
                raise BregmanPCAError(f"unknown parameter {name!r}; valid: {', '.join(self._PARAMS)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        t = self.transfer if isinstance(self.transfer, str) else repr(self.transfer)
        return f"BregmanPCA(transfer={t!r}, n_components={self.n_components!r}, mean={self.mean!r})"

    # --- validation -------------------------------------------------------------------------
    def _resolve_transfer(self) -> Transfer:
        return get_transfer(self.transfer, **(self.transfer_params or {}))

    def _check_params(self, transfer: Transfer) -> None:
        if self.mean not in ("joint", "centroid"):
            raise BregmanPCAError(f"mean must be 'joint' or 'centroid', got {self.mean!r}")
        if self.mean == "centroid" and not transfer.invertible:
            raise BregmanPCAError(
                f"mean='centroid' needs f⁻¹ to map the output-space average back, and {transfer.name} "
                "is not invertible; use mean='joint' (the default)"
            )
        _check_ridge(self.ridge)
        for name in ("max_iter", "newton_steps", "polish_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise BregmanPCAError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise BregmanPCAError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1
        ):
            raise BregmanPCAError(f"batch_size must be a positive integer or None, got {self.batch_size!r}")
        mc = self.max_components
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, numbers.Integral) or mc < 1):
            raise BregmanPCAError(f"max_components must be a positive integer or None, got {mc!r}")
        if self.callback is not None and not callable(self.callback):
            raise BregmanPCAError("callback must be callable (it receives one dict per iteration)")

    def _check_n_components(self, n: int, d: int, transfer: Transfer) -> tuple[int | None, float | None]:
        """(k, None) for an integer, (None, share) for a float."""
        nc = self.n_components
        if transfer.name == "softmax" and d < 2:
            raise BregmanPCAError(
                f"softmax over d={d} unit is constant (always 1): tap a layer with at least 2 units"
            )
        if isinstance(nc, bool) or not isinstance(nc, numbers.Real):
            raise BregmanPCAError(f"n_components must be an int >= 1 or a float in (0, 1), got {nc!r}")
        if isinstance(nc, numbers.Integral):
            k = int(nc)
            if k < 1:
                raise BregmanPCAError(f"n_components must be >= 1, got {k}")
            if k >= d:
                raise BregmanPCAError(
                    f"n_components={k} must be smaller than the number of features d={d}: with k >= d the "
                    "representation is not a compression; choose k < d"
                )
            if k >= n:
                raise BregmanPCAError(
                    f"n_components={k} needs more samples than components, got N={n}; pass at least "
                    f"{k + 1} rows or lower n_components"
                )
            return k, None
        share = float(nc)
        if not 0 < share < 1:
            raise BregmanPCAError(
                f"a float n_components is a share of divergence to explain and must lie in (0, 1), got "
                f"{nc!r}; pass an int for a fixed number of components"
            )
        if min(d - 1, n - 1) < 1:
            raise BregmanPCAError(f"cannot fit any component with N={n} samples and d={d} features")
        return None, share

    def _check_fitted(self) -> None:
        if not hasattr(self, "_V"):
            raise NotFittedError("this BregmanPCA is not fitted yet; call fit(A) first")

    # --- fitting ------------------------------------------------------------------------------
    def fit(self, A: Any, y: Any = None) -> "BregmanPCA":
        """Fit on pre-activations.

        Parameters
        ----------
        A : (N, d) Tensor or ndarray, numpy memmap, or re-iterable of (rows, d) chunks
            Pre-activations of the layer. A list of chunks, a memmap or any object whose
            ``__iter__`` returns a fresh iterator is read block by block (memory then grows with
            the chunk size, not with N; coefficients between passes go to a temporary file).
            One-shot generators are refused (the fit reads the data several times).
        y : ignored

        Returns
        -------
        self
        """
        self._fit(A)
        return self

    def fit_transform(self, A: Any, y: Any = None) -> Any:
        """Fit, then return the fit's own coefficients of the training rows (N, k).

        For chunked input the coefficients are recomputed with :meth:`transform` per chunk and
        concatenated (so they must fit in memory).
        """
        self._fit(A)
        if self._train_coefficients is not None:
            C = self._train_coefficients
            self._train_coefficients = None
            return output_like(C, self._output_kind)
        src = RowSource(A, device=self.device, block_rows=self.batch_size)
        parts = [self._transform_tensor(X) for _, X in src.blocks()]
        return output_like(torch.cat(parts), self._output_kind)

    def _fit(self, A: Any) -> None:
        import time

        t0 = time.perf_counter()
        transfer = self._resolve_transfer()
        self._check_params(transfer)
        src = RowSource(A, device=self.device, block_rows=self.batch_size)
        input_dtype = src.dtype
        k, share = self._check_n_components(src.n_rows, src.d, transfer)
        generator = torch.Generator().manual_seed(0 if self.random_state is None else int(self.random_state))
        if transfer.name == "softmax" and input_dtype != torch.float64:
            # In float32 the softmax fit stalls above its optimum: its steps' decreases fall
            # below the round-off of the objective (fit_speed (b) on 5000 rows: 56 iterations,
            # stuck at 0.0077597 with optimality 0.017, against 0.0076959, converged, in 12
            # iterations in float64). The blocks are converted one at a time.
            src.compute_in(torch.float64)
        with threads_for(min(src.n_rows, src.block_rows(src.d)) * src.d, src.device):
            self._fit_source(src, transfer, k, share, generator)
        if self._m.dtype != input_dtype:  # the learned attributes in the input's dtype
            self._m, self._V = self._m.to(input_dtype), self._V.to(input_dtype)
            if self._train_coefficients is not None:
                self._train_coefficients = self._train_coefficients.to(input_dtype)
        self.transfer_ = transfer
        self.n_components_ = int(self._V.shape[1])
        self.n_features_in_ = src.d
        self.n_samples_seen_ = src.n_rows
        self.ridge_ = 0.0 if transfer.name == "identity" else float(self.ridge)
        self.hessian_floor_ = float(transfer.hessian_floor)
        self._output_kind = src.output_kind
        self._dtype = input_dtype
        self._device = src.device
        self.fit_time_s_ = time.perf_counter() - t0

    def _fit_source(self, src: RowSource, transfer: Transfer, k: int | None, share: float | None,
                    generator: torch.Generator) -> None:
        self.__dict__.pop("n_components_search_", None)
        self.__dict__.pop("n_components_search_rows_", None)
        mom = moments(src, transfer)
        ridge = 0.0 if transfer.name == "identity" else _check_ridge(self.ridge)
        opts = SolverOptions(
            ridge=ridge, max_iter=int(self.max_iter), tol=float(self.tol), newton_steps=int(self.newton_steps),
            polish_steps=int(self.polish_steps), joint_mean=self.mean == "joint", callback=self.callback,
            generator=generator,
        )
        if transfer.name == "identity":
            self._fit_identity(mom, k, share, generator, transfer)
            self._train_coefficients = None
        else:
            if k is None:
                res = self._search_k(src, transfer, opts, mom, share)
            else:
                res = BregmanSolver(src, transfer, k, opts).run(mom)
            self._store_result(res, transfer, ridge)

    def _search_k(self, src: RowSource, transfer: Transfer, opts: SolverOptions, mom: Moments,
                  share: float) -> Any:
        """The fit with the smallest k whose **own** fit explains ``share``.

        Doubling k = 1, 2, 4, … (from k = 8 on, a geometric extrapolation of the missed fit's
        prefix curve, never more than doubling) until a fit reaches the share, then the smallest prefix of that
        fit that reaches it bounds k from above, then bisection between the last k that did not
        and the first that did; every candidate is an actual fit (warm-started
        from the nearest fit already made), so the chosen k reaches the share and k − 1 does
        not (explained share assumed non-decreasing in k). The candidates' shares are kept in
        ``n_components_search_``.
        """
        limit = min(src.d - 1, src.n_rows - 1, MAX_AUTO_COMPONENTS)
        capped = self.max_components is not None and int(self.max_components) < limit
        k_max = int(self.max_components) if capped else limit
        if src.in_memory and src.n_rows > SEARCH_ROWS:
            return self._search_k_on_subsample(src, transfer, opts, mom, share, k_max)
        fits: dict[int, Any] = {}

        def explained(k: int) -> float:
            if k not in fits:
                fits[k] = BregmanSolver(src, transfer, k, opts).run(mom, init=self._warm_start(fits, k, mom, transfer))
            r = fits[k]
            return float(self._ratios(r.mean_only_divergence, [r.divergence])[0])

        def prefix_bound(k: int) -> int:
            # the smallest j whose prefix of the k fit (its mean, first j directions, re-projected
            # coefficients) already explains the share: j's own fit, warm-started from that
            # prefix and never rising above its start, explains at least as much
            r = fits[k]
            hits = np.nonzero(self._ratios(r.mean_only_divergence, r.divergence_by_k) >= share - 1e-12)[0]
            return int(hits[0]) + 1 if hits.size else k

        def next_candidate(k: int) -> int:
            # Doubling overshoots by up to 2x, and the overshooting fit, the largest, dominated the
            # search (3960 ReLU rows: the k = 64 fit took 108 of 175 s where k = 36 was needed).
            # From k >= 8 on, the residual shares of the missed fit's prefixes (halfway to k)
            # extrapolate geometrically to the k that leaves 1 - share, plus half again as margin;
            # never more than doubling. A guess that misses only costs one more step.
            doubled = 2 * k
            if k < 8:
                return doubled
            r = fits[k]
            residual = 1.0 - self._ratios(r.mean_only_divergence, r.divergence_by_k)
            r0, r1, target = float(residual[k // 2 - 1]), float(residual[k - 1]), 1.0 - share
            if not (r0 > r1 > target > 0):
                return doubled
            more = math.log(target / r1) / (math.log(r1 / r0) / (k - k // 2))
            return int(min(doubled, k + max(1, math.ceil(1.5 * more))))

        lo, hi = 0, 1  # lo: largest k known not to reach the share (0: none); hi: candidate
        while explained(hi) < share - 1e-12:
            lo = hi
            if hi == k_max:
                (logger.info if capped else logger.warning)(
                    "n_components=%s: %d components explain only %.4f; using %d%s", share, k_max,
                    explained(k_max), k_max, " (max_components)" if capped else "")
                break
            hi = min(next_candidate(hi), k_max)
        else:
            # the first fit that reached the share bounds k by its own prefix curve, which the
            # bisection would otherwise find one fit at a time (3960 ReLU rows: 32 missed, 64
            # reached, then 48, 40, 36, 34, 35 were fitted, the largest fits of the search)
            bound = prefix_bound(hi)
            if lo < bound < hi:
                if explained(bound) >= share - 1e-12:
                    hi = bound
                else:
                    lo = bound
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if explained(mid) >= share - 1e-12:
                    hi = mid
                else:
                    lo = mid
        self.n_components_search_ = {k: explained(k) for k in sorted(fits)}
        self.n_components_search_rows_ = src.n_rows
        return fits[hi]

    def _search_k_on_subsample(self, src: RowSource, transfer: Transfer, opts: SolverOptions, mom: Moments,
                               share: float, k_max: int) -> Any:
        """The share search on ``SEARCH_ROWS`` evenly spaced rows, then fits on all rows.

        Every candidate of the search is a whole fit, so on large inputs the search dominated
        (24,150 × 128 ReLU rows: 150 s for 10 fits against 14 s for one). Here the candidates
        are fitted on a subsample; the chosen k is then fitted on all rows, warm-started from
        its subsample fit, and raised one direction at a time (each fit warm-started from the
        last) until a fit on all rows reaches the share. So the returned fit reaches the share
        on all rows; "k − 1 does not" holds on the subsample. ``n_components_search_`` holds
        the subsample's shares, ``n_components_search_rows_`` its size.
        """
        rows = torch.linspace(0, src.n_rows - 1, SEARCH_ROWS).round().long()
        sub_src = RowSource(src.take_rows(rows), device=src.device, block_rows=self.batch_size)
        sub = self._search_k(sub_src, transfer, opts, moments(sub_src, transfer), share)
        k = int(sub.V.shape[1])
        init = (sub.mean, sub.V)
        while True:
            res = BregmanSolver(src, transfer, k, opts).run(mom, init=init)
            reached = float(self._ratios(res.mean_only_divergence, [res.divergence])[0])
            if reached >= share - 1e-12 or k >= k_max:
                break
            logger.info("n_components=%s: k=%d explains %.6f on all %d rows (the subsample said enough); "
                        "trying k=%d", share, k, reached, src.n_rows, k + 1)
            init, k = self._warm_start({k: res}, k + 1, mom, transfer), k + 1
        self.n_components_search_rows_ = SEARCH_ROWS
        return res

    @staticmethod
    def _warm_start(fits: dict[int, Any], k: int, mom: Moments, transfer: Transfer) -> tuple | None:
        """(mean, V) for a k-direction fit: the first k directions of the nearest larger fit,
        else the nearest smaller fit's directions completed by the next Euclidean PCA
        directions (made orthogonal to them); None (the default start) if nothing is fitted."""
        larger = [j for j in fits if j > k]
        if larger:
            r = fits[min(larger)]
            return r.mean, r.V[:, :k]
        smaller = [j for j in fits if j < k]
        if not smaller:
            return None
        r = fits[max(smaller)]
        V = r.V
        ev, U = torch.linalg.eigh(mom.scatter)
        E = transfer.remove_gauge(U.flip(1)[:, : k].T).T.to(V)
        # drop what V already spans, through V's QR (off_span): torch.linalg.lstsq (MKL's gelsy)
        # gave answers that differ in the last bits with where its inputs lie in memory (86
        # variants over 1,000 placements), so the same share search ended at other fits
        E = off_span(V)(E)
        norms = E.norm(dim=0)
        E = E[:, norms.argsort(descending=True)[: k - V.shape[1]]]
        E = E / E.norm(dim=0).clamp_min(torch.finfo(E.dtype).tiny)
        return r.mean, torch.cat([V, E], 1)

    @staticmethod
    def _ratios(d0: float, by_k: list[float]) -> np.ndarray:
        if d0 <= 0:
            return np.ones(len(by_k))
        return np.array([(d0 - dj) / d0 for dj in by_k], dtype=np.float64)

    def _store_result(self, res: Any, transfer: Transfer, ridge: float) -> None:
        self._m, self._V = res.mean, res.V
        self.divergence_ = float(res.divergence)
        self.pca_divergence_ = float(res.pca_divergence)
        self.init_divergence_ = float(res.init_divergence)
        self.mean_only_divergence_ = float(res.mean_only_divergence)
        self.divergence_by_component_ = np.asarray(res.divergence_by_k, dtype=np.float64)
        self.explained_divergence_ratio_ = self._ratios(res.mean_only_divergence, res.divergence_by_k)
        self.n_iter_ = int(res.n_iter)
        self.converged_ = bool(res.converged)
        self.optimality_ = float(res.optimality)
        self.optimality_tol_ = float(res.optimality_tol)
        self.starts_ = dict(res.starts) if res.starts else {}
        self.start_screen_ = dict(res.screen) if res.screen else {}
        self.history_ = res.history
        self._train_coefficients = res.coefficients

    def _fit_identity(self, mom: Moments, k: int | None, share: float | None, generator: torch.Generator,
                      transfer: Transfer) -> None:
        """Closed form: Euclidean PCA by an eigendecomposition of the scatter matrix."""
        n = mom.n
        ev_all = torch.linalg.eigvalsh(mom.scatter).flip(0).clamp_min(0) if k is None else None
        if k is None:
            cum = torch.cumsum(ev_all, 0) / ev_all.sum().clamp_min(torch.finfo(ev_all.dtype).tiny)
            k_max = min(mom.scatter.shape[0] - 1, n - 1)
            hits = torch.nonzero(cum[:k_max] >= share - 1e-12)
            k = int(hits[0]) + 1 if hits.numel() else k_max
        V, ev = top_eigenvectors(mom.scatter, k, transfer, generator)
        ev = ev.clamp_min(0)
        total = float(ev.sum())
        tail = torch.flip(torch.cumsum(torch.flip(ev, [0]), 0), [0])  # tail[j] = Σ_{i >= j} ev_i
        by_k = [0.5 * float(tail[j]) / n if j < ev.numel() else 0.0 for j in range(1, k + 1)]
        self._m, self._V = mom.mean, V
        self.divergence_ = by_k[-1]
        self.pca_divergence_ = by_k[-1]
        self.init_divergence_ = by_k[-1]
        self.mean_only_divergence_ = 0.5 * total / n
        self.divergence_by_component_ = np.asarray(by_k)
        self.explained_divergence_ratio_ = self._ratios(self.mean_only_divergence_, by_k)
        self.n_iter_ = 0
        self.converged_ = True
        self.optimality_ = 0.0
        self.optimality_tol_ = math.sqrt(float(self.tol))
        self.starts_ = {}
        self.start_screen_ = {}
        self.history_ = []

    # --- projection and reconstruction --------------------------------------------------------
    def _params_on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self._m.to(device=device, dtype=dtype), self._V.to(device=device, dtype=dtype)

    def _transform_tensor(self, X: torch.Tensor) -> torch.Tensor:
        m, V = self._params_on(X.device, X.dtype)
        return project_coefficients(self.transfer_, m, V.T, X, ridge=self.ridge_, max_steps=int(self.polish_steps))

    def _input(self, A: Any, name: str = "A") -> torch.Tensor:
        t = to_tensor_2d(A, name=name, columns=self.n_features_in_)
        target_device = t.device if isinstance(A, torch.Tensor) else self._device
        return t.to(target_device)

    def transform(self, A: Any) -> Any:
        """Coefficients (N, k) of pre-activations A: the coefficient step with ``m, V`` fixed.

        Each row solves ``min_c D_F(m + V c, a) + (λ/2)‖c‖²`` (a strictly convex problem, so the
        answer does not depend on where the solver starts). Output type follows A (numpy in,
        numpy out; a tensor stays on its device).
        """
        self._check_fitted()
        X = self._input(A)
        return output_like(self._transform_tensor(X), A)

    def inverse_transform(self, C: Any) -> Any:
        """Reconstructed pre-activations ``m + V c`` (N, d) for coefficients C (N, k)."""
        self._check_fitted()
        Ct = to_tensor_2d(C, name="C", columns=self.n_components_)
        Ct = Ct.to(Ct.device if isinstance(C, torch.Tensor) else self._device)
        m, V = self._params_on(Ct.device, Ct.dtype)
        return output_like(m + Ct @ V.T, C)

    def reconstruct(self, C: Any) -> Any:
        """Reconstructed layer outputs ``f(m + V c)`` (N, d) for coefficients C (N, k)."""
        self._check_fitted()
        Ct = to_tensor_2d(C, name="C", columns=self.n_components_)
        Ct = Ct.to(Ct.device if isinstance(C, torch.Tensor) else self._device)
        m, V = self._params_on(Ct.device, Ct.dtype)
        return output_like(self.transfer_.f(m + Ct @ V.T), C)

    def score(self, A: Any, y: Any = None) -> float:
        """Mean divergence ``(1/N) Σ D_F(m + V c_n, a_n)`` of A's own projections.

        Lower is better (unlike scikit-learn's score convention, this is a loss).
        """
        self._check_fitted()
        X = self.transfer_.remove_gauge(self._input(A))
        C = self._transform_tensor(X)
        m, V = self._params_on(X.device, X.dtype)
        return float(self.transfer_.divergence(m + C @ V.T, X).mean())

    def divergence(self, A: Any, C: Any) -> Any:
        """Per-row divergence ``D_F(m + V c_n, a_n)`` of given coefficients (N,)."""
        self._check_fitted()
        X = self.transfer_.remove_gauge(self._input(A))
        Ct = to_tensor_2d(C, name="C", columns=self.n_components_).to(X.device, X.dtype)
        m, V = self._params_on(X.device, X.dtype)
        return output_like(self.transfer_.divergence(m + Ct @ V.T, X), A)

    # --- learned attributes in the input's type -------------------------------------------------
    @property
    def mean_(self) -> Any:
        self._check_fitted()
        return output_like(self._m, self._output_kind)

    @property
    def components_(self) -> Any:
        self._check_fitted()
        return output_like(self._V.T.contiguous(), self._output_kind)

    # --- export -------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """JSON-able description of the fitted representation (used by :meth:`export_layer`)."""
        self._check_fitted()
        return {
            "transfer": self.transfer_.to_dict(),
            "k": self.n_components_,
            "d": self.n_features_in_,
            "n_samples": self.n_samples_seen_,
            "mean_mode": self.mean,
            "ridge": self.ridge_,
            "hessian_floor": self.hessian_floor_,
            "dtype": str(self._dtype).replace("torch.", ""),
            "divergence": {
                "fit": self.divergence_,
                "euclidean_pca": self.pca_divergence_,
                "mean_only": self.mean_only_divergence_,
                "by_component": [float(v) for v in self.divergence_by_component_],
                "explained_divergence_ratio": [float(v) for v in self.explained_divergence_ratio_],
            },
            "n_iter": self.n_iter_,
            "converged": self.converged_,
        }

    def export_layer(self, **metadata: Any) -> "Any":
        """The fitted representation as a frozen :class:`bregman.exported.ExportedLayer`.

        Keyword arguments (JSON-able, e.g. ``teacher_sha256=...``, ``layer="2"``) are added to
        the layer's manifest under ``"metadata"``.
        """
        from bregman.exported import ExportedLayer

        self._check_fitted()
        manifest = self.manifest()
        if metadata:
            manifest["metadata"] = dict(metadata)
        return ExportedLayer(self._m.detach().clone(), self._V.T.detach().clone().contiguous(), self.transfer_,
                             manifest=manifest)
