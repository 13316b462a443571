"""The representation job: tap a teacher layer, fit its Bregman PCA, export the layer.

Artifacts (in ``out_dir``):

- ``layer.safetensors`` + ``layer.json``: the exported layer ``g(c) = f(m + V c)``
  (:class:`bregman.exported.ExportedLayer`; its manifest's ``metadata`` names the teacher's
  sha256, the layer path and the data set);
- ``coefficients.safetensors``: the teacher's coefficients, tensors ``train`` (N, k) and
  ``test`` (N_test, k);
- ``report.json``: the report dict below; ``divergence_vs_k.png`` / ``explained_divergence.png``.

Report dict (``report.json``; also what ``workers.report_plots.write_representation_plots`` reads)::

    {
      "kind": "representation", "teacher_sha256": str, "layer": str, "dataset": str,
      "transfer": str, "transfer_params": dict, "d": int, "n_train": int, "n_test": int,
      "n_components": int,                  # k
      "target_share": float | None,         # the share the spec asked for, if it did
      "k": [int, ...],                      # the k values of the curves (all of 1..k when k <= 8)
      "bregman_divergence": [float, ...],   # a Bregman PCA fit of its own at each curve k
      "pca_divergence": [float, ...],       # Euclidean PCA (same geometry) at each curve k
      "explained_divergence_ratio": [float, ...],  # share of the best mean-only divergence, per curve k
      "curve_rows": int,                    # the curves are fitted on the first curve_rows rows
      "explained_divergence_ratio_by_component": [float] * k,  # the job's fit, first j directions
      "divergence": float,                  # train, all k directions (= bregman_divergence[-1])
      "pca_divergence_at_k": float,
      "mean_only_divergence": float,
      "test_divergence": float | None,      # mean divergence of held-out rows
      "n_iter": int, "converged": bool, "fit_time_s": float, "ridge": float, "mean": str,
      "optimality": float, "optimality_tol": float,  # relative gradient norm at the end, its tolerance
      "warnings": [str, ...]                # e.g. the fit did not converge; also metrics["warnings"]
    }
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from bregman.distillation.targets import exact_coefficients
from bregman.layouts import map_of_rows
from workers.loading import resolve_device, subsample
from workers.runtime import JobRun

logger = logging.getLogger(__name__)

PHASES = {"load": 0.05, "capture": 0.15, "fit": 0.6, "export": 0.2}
#: above this many pre-activation values (rows × d) the capture is spilled to disk in chunks and
#: the fit, the projections and the scores stream over them (one chunk in memory at a time)
IN_MEMORY_ELEMENTS = 25_000_000
#: rows and number of k values of the divergence-against-k curves. Each k gets a fit of its own:
#: Bregman PCA solutions are not nested, so the first j directions of the job's k-direction fit
#: would understate what j directions can do, and the comparison with PCA would be unfair.
CURVE_ROWS = 2_000
CURVE_POINTS = 8


def _curve_ks(k: int) -> list[int]:
    """All of 1..k when k is small, else CURVE_POINTS roughly log-spaced values from 1 to k."""
    if k <= CURVE_POINTS:
        return list(range(1, k + 1))
    grid = torch.logspace(0, float(torch.log10(torch.tensor(float(k)))), CURVE_POINTS).round().int().tolist()
    return sorted(set(grid) | {1, k})


def _divergence_curves(run: JobRun, A: torch.Tensor, transfer: Any, ks: list[int], kwargs: dict[str, Any]
                       ) -> dict[str, list[float]]:
    """Bregman PCA and Euclidean PCA (same geometry) at each k, each k its own fit on ``A``."""
    from bregman.pca import BregmanPCA

    out: dict[str, list[float]] = {"bregman_divergence": [], "pca_divergence": [], "explained_divergence_ratio": []}
    for i, j in enumerate(ks):
        run.progress("export", 0.5 + 0.4 * i / len(ks))  # also the cancellation check between fits
        est = BregmanPCA(transfer, n_components=j, **kwargs).fit(A)
        out["bregman_divergence"].append(float(est.divergence_))
        out["pca_divergence"].append(float(est.pca_divergence_))
        out["explained_divergence_ratio"].append(float(est.explained_divergence_ratio_[-1]))
    return out


def convergence_warnings(est: Any, max_iter: int) -> list[str]:
    """The job's warnings about its fit (the ``metrics["warnings"]`` contract: a list of
    strings, empty when there is nothing to say): a fit that stopped before its optimality
    measure (the relative gradient norm in m and V) met its tolerance."""
    if bool(getattr(est, "converged_", True)):
        return []
    opt, tol = float(getattr(est, "optimality_", float("nan"))), float(getattr(est, "optimality_tol_", float("nan")))
    n_iter = int(getattr(est, "n_iter_", 0))
    return [
        f"the fit did not converge in {n_iter} iterations (relative gradient norm {opt:.3g} > tol {tol:.3g}); "
        f"try solver.max_iter={max(2 * max_iter, 200)}, or a looser solver.tol={min(1e-3, 10 * tol * tol):.0e}, "
        "or fewer n_components (near-exact fits of peaked softmax rows converge slowly); the representation "
        "is usable, its divergence is what the report says"
    ]


def _chunks(A: Any) -> list[torch.Tensor] | Any:
    return [A] if isinstance(A, torch.Tensor) else A


def _head_rows(A: Any, n: int) -> torch.Tensor:
    """The first ``n`` rows of a tensor or of chunked activations."""
    if isinstance(A, torch.Tensor):
        return A[:n]
    out, have = [], 0
    for chunk in A:
        out.append(chunk[: n - have])
        have += out[-1].shape[0]
        if have >= n:
            break
    return torch.cat(out)


def _capture(body: Any, x: torch.Tensor, d: int, work_dir: Path, name: str, progress: Any = None) -> Any:
    from bregman.capture import capture_preactivations

    if x.shape[0] * d <= IN_MEMORY_ELEMENTS:
        return capture_preactivations(body, x, batch_size=512, progress=progress)
    chunk_rows = max(256, IN_MEMORY_ELEMENTS // (8 * d))
    return capture_preactivations(body, x, batch_size=512, chunk_rows=chunk_rows, spill_dir=work_dir / name,
                                  progress=progress)


def _floats(values: Any) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def fit_representation(run: JobRun, spec: dict[str, Any], teacher: Any, dataset: Any, teacher_sha256: str,
                       out_dir: Path) -> tuple[dict[str, Any], Any]:
    """Run the job; returns (final metrics, the fitted estimator)."""
    work_dir = out_dir.parent / f"{out_dir.name}-work"
    try:
        return _fit(run, spec, teacher, dataset, teacher_sha256, out_dir, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _fit(run: JobRun, spec: dict[str, Any], teacher: Any, dataset: Any, teacher_sha256: str, out_dir: Path,
         work_dir: Path) -> tuple[dict[str, Any], Any]:
    from bregman.distillation.cut import resolve_cut
    from bregman.pca import BregmanPCA

    device = resolve_device(spec.get("device", "cpu"))
    seed = int(spec.get("seed", 0))
    budget = spec.get("budget") or {}
    run.progress("load", 1.0)
    teacher.module.to(device)
    # the same cut as a distillation job's: under "auto" the logits get the softmax transfer
    cut = resolve_cut(teacher, str(spec["layer"]), teacher.example_input().to(device), spec.get("transfer", "auto"),
                      spec.get("layout", "auto"))
    transfer = cut.transfer
    x, _ = subsample(dataset.x_train, dataset.y_train, budget.get("max_train_rows"), seed)
    n_test_inputs = int(dataset.x_test.shape[0]) if dataset.x_test is not None else 0

    def captured(done: int, total: int | None, _offset: int = 0) -> None:  # the test rows are captured too
        run.progress("capture", (_offset + done) / (int(x.shape[0]) + n_test_inputs))

    flat_d = int(cut.info.d)
    A = _capture(cut.body, x, flat_d, work_dir, "train", captured)
    A_test = None
    if n_test_inputs:
        A_test = _capture(cut.body, dataset.x_test, flat_d, work_dir, "test",
                          lambda done, total: captured(done, total, int(x.shape[0])))
    n_train = int(A.shape[0])
    n_test = int(A_test.shape[0]) if A_test is not None else 0
    d = cut.d
    A_fit = A
    if cut.map_shape is not None:  # channels: rows are (example, position) pairs, d = C
        from bregman.layouts import DEFAULT_FIT_ROWS, ChannelRows, sample_rows

        fit_rows = spec.get("fit_rows") or DEFAULT_FIT_ROWS
        A_fit = sample_rows(A, cut.map_shape, int(fit_rows), seed)
        A = ChannelRows(A, cut.map_shape)
        A_test = ChannelRows(A_test, cut.map_shape) if A_test is not None else None
    if spec.get("n_components") is not None:
        n_components: int | float = int(spec["n_components"])
    elif spec.get("target_share") is not None:
        n_components = float(spec["target_share"])
    else:
        n_components = max(1, min(8, d - 1))
    solver = spec.get("solver") or {}
    max_iter = int(solver.get("max_iter") or 100)
    kwargs: dict[str, Any] = {"mean": solver.get("mean", "joint"), "max_iter": max_iter, "random_state": seed}
    if solver.get("tol") is not None:
        kwargs["tol"] = float(solver["tol"])
    if solver.get("ridge") is not None:
        kwargs["ridge"] = float(solver["ridge"])

    def fit_callback(info: dict[str, Any]) -> None:
        run.progress("fit", info.get("iteration", 0) / max_iter, {"divergence": info.get("divergence")})

    pca = BregmanPCA(transfer, n_components=n_components, device=device, callback=fit_callback, **kwargs)
    run.progress("fit", 0.0)
    pca.fit(A_fit)
    run.progress("export", 0.0, {"divergence": float(pca.divergence_)})

    k = int(pca.n_components_)
    layer = pca.export_layer(teacher_sha256=teacher_sha256, layer=str(spec["layer"]), dataset=str(spec["dataset"]))
    if cut.map_shape is not None:
        layer = layer.with_layout("channels", cut.map_shape[1:])
    layer.save(out_dir)
    from safetensors.torch import save_file

    def project(acts: Any, start: float, width: float) -> torch.Tensor:
        # every position is projected (never subsampled); channels coefficients are saved as maps
        parts, done, total = [], 0, max(1, int(acts.shape[0]))
        for c in _chunks(acts):
            coef = exact_coefficients(pca, torch.as_tensor(c)).detach().cpu().float()
            parts.append(map_of_rows(coef, cut.map_shape[1:]) if cut.map_shape is not None else coef)
            done += int(c.shape[0])
            run.progress("export", start + width * done / total)
        return torch.cat(parts).contiguous()

    coeffs = {"train": project(A, 0.0, 0.35 if A_test is not None else 0.5)}
    test_div = None
    if A_test is not None and n_test:
        coeffs["test"] = project(A_test, 0.35, 0.15)
        rows_test = int(A_test.shape[0])
        test_div = sum(float(pca.score(c)) * c.shape[0] for c in _chunks(A_test)) / rows_test
    save_file(coeffs, str(out_dir / "coefficients.safetensors"))
    run.progress("export", 0.5)

    ks = _curve_ks(k)
    A_curve = _head_rows(A_fit, CURVE_ROWS)
    curve_rows = int(A_curve.shape[0])
    curves = _divergence_curves(run, A_curve, pca.transfer_, ks, {**kwargs, "device": device})
    report = {
        "kind": "representation",
        "teacher_sha256": teacher_sha256,
        "layer": str(spec["layer"]),
        "dataset": str(spec["dataset"]),
        "transfer": pca.transfer_.name,
        "transfer_params": dict(getattr(pca.transfer_, "params", {}) or {}),
        "d": d,
        "n_train": n_train,
        "n_test": n_test,
        "n_components": k,
        "target_share": spec.get("target_share"),  # marked on explained_divergence.png
        "layout": cut.layout,
        "fit_rows": int(A_fit.shape[0]),
        "k": ks,
        **curves,
        "curve_rows": curve_rows,
        "explained_divergence_ratio_by_component": _floats(pca.explained_divergence_ratio_),
        "divergence": float(pca.divergence_),
        "pca_divergence_at_k": float(pca.pca_divergence_),
        "mean_only_divergence": float(pca.mean_only_divergence_),
        "test_divergence": test_div,
        "n_iter": int(pca.n_iter_),
        "converged": bool(getattr(pca, "converged_", True)),
        "optimality": float(getattr(pca, "optimality_", 0.0)),
        "optimality_tol": float(getattr(pca, "optimality_tol_", 0.0)),
        "warnings": convergence_warnings(pca, max_iter),
        "fit_time_s": float(getattr(pca, "fit_time_s_", 0.0)),
        "ridge": float(getattr(pca, "ridge_", 0.0)),
        "mean": kwargs["mean"],
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    try:
        from workers.report_plots import write_representation_plots

        write_representation_plots(out_dir, report)
    except Exception as exc:  # plots are a convenience: a plotting failure must not fail the job
        logger.warning("representation plots failed: %s", exc)
    metrics = {
        "n_components": k,
        "d": d,
        "divergence": report["divergence"],
        "pca_divergence": report["pca_divergence_at_k"],
        "explained_divergence_ratio": float(pca.explained_divergence_ratio_[-1]),
        "test_divergence": test_div,
        "transfer": report["transfer"],
        "converged": report["converged"],
        "warnings": report["warnings"],
        "layout": cut.layout,
    }
    return metrics, pca
