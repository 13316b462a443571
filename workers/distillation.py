"""The distillation job: train a student through a teacher layer (and the baselines asked for).

The first method's student is the job's main artifact set (at the top level of the job's
artifacts); every further method is trained on the same data and budget for comparison, and its
metrics and training history go into the report. ``auto`` (the default) trains the candidate
methods on a validation split of the transfer set and keeps the best
(:mod:`bregman.distillation.select`); its progress phases are ``auto:<candidate>:<phase>`` and
``auto:final <candidate>:<phase>``, and its selection table is in the report and in the job's
final metrics (``selection``).

Artifacts: ``student.safetensors``, ``student.json`` (manifest: architecture, method, k, layer,
transfer, metrics), ``student.pt2`` (``torch.export`` program of the whole pipeline, inputs →
the teacher's output space; runs with torch alone), ``student.onnx`` (when exported),
``metrics.json``, ``layer/layer.safetensors`` + ``layer/layer.json`` (bregman), ``report.json``,
``training_curves.png``, ``accuracy.png``.

Report dict (``report.json``; also what ``workers.report_plots.write_distillation_plots`` reads)::

    {
      "kind": "distillation", "teacher_sha256": str, "dataset": str, "layer": str | None,
      "method": str,                          # the main student's method (auto: the winner's)
      "methods": [str],                       # all methods asked for, main first (may hold "auto")
      "selection": [{...}] | None,            # auto's table (see bregman.distillation.select)
      "k": int | None, "representation_job_id": str | None,
      "accuracy": {"teacher": float, "student": float, "<other method>": float, ...},  # test set
      "metrics": {"<method>": {...library metrics...}},
      "history": {"loss": [...], ...},        # the main student's per-epoch history
      "histories": {"<other method>": {...}},
      "epochs": int, "n_train": int, "n_test": int, "onnx": {...export status...}
    }
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workers.loading import resolve_device, subsample
from workers.runtime import JobRun

logger = logging.getLogger(__name__)

#: distillation reports its own overall fraction (methods × library phases), so no fixed phases
PHASES: dict[str, float] = {}
_WITHIN = {"targets": (0.0, 0.1), "representation": (0.1, 0.2), "train": (0.3, 0.6), "evaluate": (0.9, 0.1)}


def _load_representation(representation: dict[str, Any]):
    """The exported layer of a finished representation job, from the blob store."""
    from bregman.exported import ExportedLayer
    from storage.blobs import BlobStore

    blobs = BlobStore(representation["blob_dir"])
    arts = representation["artifacts"]
    missing = [n for n in ("layer.safetensors", "layer.json") if n not in arts]
    if missing:
        raise ValueError(f"the representation job has no {', '.join(missing)} artifact; run it again")
    tmp = Path(tempfile.mkdtemp(prefix="bregkd-layer-"))
    try:
        for name in ("layer.safetensors", "layer.json"):
            blobs.copy_to(arts[name], tmp / name)
        return ExportedLayer.load(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def run_distillation(run: JobRun, spec: dict[str, Any], teacher: Any, dataset: Any, teacher_sha256: str,
                     out_dir: Path, representation: dict[str, Any] | None) -> dict[str, Any]:
    from bregman.distillation.api import distill
    from bregman.distillation.settings import TrainSettings
    from bregman.distillation.targets import TargetCache

    device = resolve_device(spec.get("device", "cpu"))
    seed = int(spec.get("seed", 0))
    budget = spec.get("budget") or {}
    x, y = subsample(dataset.x_train, dataset.y_train, budget.get("max_train_rows"), seed)
    test = (dataset.x_test, dataset.y_test) if dataset.x_test is not None and len(dataset.x_test) else None
    teacher.module.to(device)

    layer = spec.get("layer")
    transfer = spec.get("transfer", "auto")
    n_components = spec.get("n_components")
    layout = spec.get("layout", "auto")
    exported = None
    if representation is not None:
        exported = _load_representation(representation)
        layer = str(representation["spec"]["layer"])
        transfer = representation["spec"].get("transfer", "auto")
        n_components = None
        layout = getattr(exported, "layout", "flat")  # the representation job's layout
    settings = TrainSettings.from_options(spec.get("options"), epochs=budget.get("epochs"), layout=layout,
                                          fit_rows=spec.get("fit_rows"))
    student = {k: v for k, v in (spec.get("student") or {"arch": "mlp"}).items() if v is not None}
    methods: list[str] = list(spec.get("methods") or ["auto"])
    cache = TargetCache()
    results: dict[str, Any] = {}

    for i, method in enumerate(methods):
        def progress(phase: str, fraction: float, metrics: dict[str, Any], _i: int = i, _m: str = method) -> None:
            metrics = dict(metrics or {})
            # auto: "<candidate>:<library phase>", one share of the method's progress per candidate
            index, count = metrics.pop("candidate_index", 0), metrics.pop("candidate_count", 1)
            start, width = _WITHIN.get(phase.rsplit(":", 1)[-1], (0.0, 1.0))
            within = (index + start + width * max(0.0, min(1.0, float(fraction)))) / max(1, count)
            # the span of the current phase, so that the time left follows this phase's rate
            span = ((_i + (index + start) / max(1, count)) / len(methods),
                    (_i + (index + start + width) / max(1, count)) / len(methods))
            scalars = {f"{_m}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
            run.progress(f"{_m}:{phase}", (_i + within) / len(methods), scalars, span=span)

        uses_representation = method in ("bregman", "auto")
        results[method] = distill(
            teacher, (x, y), layer, method=method, student=student, n_components=n_components, seed=seed,
            test=test, settings=settings, transfer=transfer,
            representation=exported if uses_representation else None, cache=cache, device=device,
            progress=progress, measure_latency=False,
        )

    main_method = methods[0]
    main = results[main_method]
    run.progress(f"{main_method}:export", 1.0)
    saved = main.save(out_dir, onnx=bool(spec.get("onnx", True)))

    def acc(m: dict[str, Any]) -> float | None:
        for key in ("test_accuracy", "transfer_accuracy"):
            if m.get(key) is not None:
                return float(m[key])
        return None

    accuracy: dict[str, Any] = {"student": acc(main.metrics)}
    teacher_acc = main.metrics.get("test_teacher_accuracy", main.metrics.get("transfer_teacher_accuracy"))
    if teacher_acc is not None:
        accuracy["teacher"] = float(teacher_acc)
    for m in methods[1:]:
        accuracy[m] = acc(results[m].metrics)
    report = _clean({
        "kind": "distillation",
        "teacher_sha256": teacher_sha256,
        "dataset": spec["dataset"],
        "layer": main.layer,
        "method": main.method,
        "methods": methods,
        "selection": main.metrics.get("selection"),
        "k": main.k,
        "layout": main.settings.get("layout"),
        "representation_job_id": spec.get("representation_job_id"),
        "accuracy": accuracy,
        "metrics": {m: r.metrics for m, r in results.items()},
        "history": main.history,
        "histories": {m: results[m].history for m in methods[1:]},
        "epochs": main.settings.get("epochs"),
        "n_train": int(x.shape[0]),
        "n_test": int(test[0].shape[0]) if test is not None else 0,
        "onnx": saved.get("onnx"),
    })
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    try:
        from workers.report_plots import write_distillation_plots

        write_distillation_plots(out_dir, report)
    except Exception as exc:  # plots are a convenience: a plotting failure must not fail the job
        logger.warning("distillation plots failed: %s", exc)

    final = {k: v for k, v in _clean(main.metrics).items() if isinstance(v, (int, float, str, type(None)))}
    final.update(method=main.method, layer=main.layer, k=main.k, accuracy=accuracy)
    if main.metrics.get("selection") is not None:
        final["selection"] = _clean(main.metrics["selection"])
        final["selected_method"] = main.method
    return final
