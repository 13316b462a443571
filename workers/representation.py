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
      "k": [1, ..., k],                     # for the curves
      "bregman_divergence": [float] * k,    # mean divergence of the fit with the first j directions
      "pca_divergence": [float] * k,        # Euclidean PCA (same geometry) with j directions
      "explained_divergence_ratio": [float] * k,   # cumulative share of the mean-only divergence
      "divergence": float,                  # train, all k directions (= bregman_divergence[-1])
      "pca_divergence_at_k": float,
      "mean_only_divergence": float,
      "test_divergence": float | None,      # mean divergence of held-out rows
      "n_iter": int, "converged": bool, "fit_time_s": float, "ridge": float, "mean": str
    }
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from workers.loading import resolve_device, subsample
from workers.runtime import JobRun

logger = logging.getLogger(__name__)

PHASES = {"load": 0.05, "capture": 0.15, "fit": 0.6, "export": 0.2}
#: above this many pre-activation values (rows × d) the capture is spilled to disk in chunks and
#: the fit, the projections and the scores stream over them (one chunk in memory at a time)
IN_MEMORY_ELEMENTS = 25_000_000
#: rows used for the Euclidean-PCA comparison curve when the activations are chunked
CURVE_ROWS = 20_000


def _pca_curve(A: torch.Tensor, transfer: Any, ks: list[int]) -> list[float]:
    """Mean divergence of Euclidean PCA's reconstruction at each k (same geometry as the fit)."""
    A = A.double()
    mu = A.mean(0)
    X = A - mu
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)
    out = []
    for k in ks:
        V = Vh[:k]
        A_hat = mu + (X @ V.T) @ V
        out.append(float(transfer.divergence(A_hat, A).mean()))
    return out


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
    cut = resolve_cut(teacher, str(spec["layer"]), teacher.example_input().to(device), spec.get("transfer", "auto"))
    transfer = cut.transfer
    x, _ = subsample(dataset.x_train, dataset.y_train, budget.get("max_train_rows"), seed)

    def captured(done: int, total: int | None) -> None:
        run.progress("capture", done / total if total else 0.5)

    d = int(cut.info.d)
    A = _capture(cut.body, x.to(device), d, work_dir, "train", captured)
    A_test = None
    if dataset.x_test is not None and len(dataset.x_test):
        A_test = _capture(cut.body, dataset.x_test.to(device), d, work_dir, "test")
    n_train = int(A.shape[0])
    n_test = int(A_test.shape[0]) if A_test is not None else 0
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
    pca.fit(A)
    run.progress("export", 0.0, {"divergence": float(pca.divergence_)})

    k = int(pca.n_components_)
    ks = list(range(1, k + 1))
    layer = pca.export_layer(teacher_sha256=teacher_sha256, layer=str(spec["layer"]), dataset=str(spec["dataset"]))
    layer.save(out_dir)
    from safetensors.torch import save_file

    def project(acts: Any) -> torch.Tensor:
        return torch.cat([torch.as_tensor(pca.transform(c)).detach().cpu().float() for c in _chunks(acts)]).contiguous()

    coeffs = {"train": project(A)}
    test_div = None
    if A_test is not None and n_test:
        coeffs["test"] = project(A_test)
        test_div = sum(float(pca.score(c)) * c.shape[0] for c in _chunks(A_test)) / n_test
    save_file(coeffs, str(out_dir / "coefficients.safetensors"))
    run.progress("export", 0.5)

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
        "k": ks,
        "bregman_divergence": _floats(pca.divergence_by_component_),
        "pca_divergence": _pca_curve(_head_rows(A, CURVE_ROWS).cpu(), pca.transfer_, ks),
        "explained_divergence_ratio": _floats(pca.explained_divergence_ratio_),
        "divergence": float(pca.divergence_),
        "pca_divergence_at_k": float(pca.pca_divergence_),
        "mean_only_divergence": float(pca.mean_only_divergence_),
        "test_divergence": test_div,
        "n_iter": int(pca.n_iter_),
        "converged": bool(getattr(pca, "converged_", True)),
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
        "explained_divergence_ratio": report["explained_divergence_ratio"][-1] if ks else None,
        "test_divergence": test_div,
        "transfer": report["transfer"],
    }
    return metrics, pca
