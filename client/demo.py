"""``bregkd demo``: from a fresh clone to a distilled student, with one command.

1. start the embedded stack (local ``redis-server``, one Celery worker, the API) in a data dir;
2. train a small MLP teacher on the built-in ``digits`` and save it as a ``torch.export``
   program (``.pt2``);
3. drive the whole HTTP flow with :class:`client.api.BregkdClient`: upload the teacher, list its
   layers, fit the Bregman representation of the last hidden layer, and distill a smaller
   student with ``method="auto"`` on a small labelled transfer set (120 of the 1437 training
   digits: the regime distillation is for): the job trains the student through the
   representation and the baselines (hint, kd, labels) on a validation split of those rows,
   keeps the best and retrains it on all of them; download every artifact;
4. run the downloaded student (``student.pt2``, with plain ``torch.export.load``: no code of
   this project) on the digits test set;
5. print the selection table (every candidate's validation and test accuracy), which won and
   by how much, and where the artifacts are; stop the stack.

Needs torch, the worker extras and redis-server (``scripts/setup.sh`` installs them).
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from api_schemas import JobOut
from client.api import BregkdClient

TEACHER_HIDDEN = [128, 64]
STUDENT_HIDDEN = [16]
#: labelled digits the distillation job sees: with all 1437 every method reaches the teacher
#: (labels alone 0.950 against the teacher's 0.969), so the demo would show nothing to choose
TRANSFER_ROWS = 120


class DemoError(RuntimeError):
    """A step of the demo did not succeed; the message says which and why."""


@dataclass
class DemoPlan:
    """Sizes of the demo run (``quick`` is for tests: about a minute on 2 CPU cores)."""

    teacher_epochs: int
    student_epochs: int | None  # None: the library's default budget (about 1500 steps)
    n_components: int
    max_train_rows: int | None = TRANSFER_ROWS  # rows the service's jobs use (None: all 1437)
    solver_max_iter: int = 40  # alternating-minimization rounds of the Bregman PCA fit

    @classmethod
    def make(cls, quick: bool) -> "DemoPlan":
        if quick:
            return cls(teacher_epochs=8, student_epochs=100, n_components=16, solver_max_iter=15)
        return cls(teacher_epochs=30, student_epochs=None, n_components=16)

    def budget(self) -> dict[str, Any]:
        # auto trains five students: a generous time limit, so a busy machine does not fail the demo
        budget: dict[str, Any] = {"time_limit_s": 3600}
        if self.max_train_rows is not None:
            budget["max_train_rows"] = self.max_train_rows
        return {"budget": budget}


@dataclass
class DemoResult:
    """What the demo produced (returned for tests and scripts)."""

    data_dir: Path
    teacher_id: str
    layer: str
    representation_job: JobOut
    distillation_job: JobOut
    artifact_dir: Path
    accuracy: dict[str, float]
    student_accuracy_local: float
    student_agreement: float
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    selection: list[dict[str, Any]] = field(default_factory=list)  # the job's metrics.selection
    method: str = ""  # the method of the returned student (auto's winner)


def train_teacher(out_path: Path, *, epochs: int, seed: int,
                  hidden: list[int] | None = None) -> tuple[Any, float, int]:
    """Train the demo teacher on digits and save it as ``.pt2``; returns (model, test acc, params)."""
    import torch

    from bregman.datasets import load_builtin
    from bregman.models import build_model, count_parameters
    from bregman.teachers import save_pt2
    from bregman.training import accuracy, train_classifier

    digits = load_builtin("digits")
    torch.manual_seed(seed)
    model = build_model("mlp", in_features=64, hidden=list(hidden or TEACHER_HIDDEN), num_classes=digits.num_classes,
                        activation="leaky_relu")
    train_classifier(model, digits.x_train, digits.y_train, epochs=epochs, batch_size=64, lr=3e-3, seed=seed)
    acc = accuracy(model, digits.x_test, digits.y_test)
    save_pt2(model, out_path, input_shape=(64,))
    return model, acc, count_parameters(model)


def run_student(pt2_path: Path, teacher: Any) -> tuple[float, float]:
    """Load the downloaded student with plain torch; (test accuracy, agreement with the teacher)."""
    import torch

    from bregman.datasets import load_builtin

    digits = load_builtin("digits")
    program = torch.export.load(str(pt2_path))
    student = program.module()
    with torch.no_grad():
        pred = student(digits.x_test).argmax(1)
        teacher_pred = teacher(digits.x_test).argmax(1)
    acc = float((pred == digits.y_test).float().mean())
    agreement = float((pred == teacher_pred).float().mean())
    return acc, agreement


def pick_layer(layers: list[Any]) -> Any:
    """The last hidden layer: the last tappable one below the output layer (whose listed
    transfer is the identity), else the output layer itself. The library's default layer for
    the same reason: students through it measured better (``benchmarks/distill_table.py``)."""
    tappable = [l for l in layers if l.tappable]
    if not tappable:
        raise DemoError("the teacher has no tappable layer: " + "; ".join(f"{l.path}: {l.reason}" for l in layers))
    if len(tappable) > 1 and tappable[-1].transfer == "identity":
        return tappable[-2]
    return tappable[-1]


def accuracies_from_metrics(metrics: dict[str, Any], methods: list[str]) -> dict[str, float]:
    """Test accuracy per model from a distillation job's metrics, whichever layout they use.

    Understands ``{"accuracy": {"teacher": .., "student": .., "labels": ..}}``,
    ``{"methods": {"bregman": {"test_accuracy": ..}}}``, ``{"bregman": {"accuracy": ..}}`` and
    ``{"bregman_accuracy": ..}``; the first method is reported as ``student``.
    """
    found: dict[str, float] = {}
    acc = metrics.get("accuracy")
    if isinstance(acc, dict):
        found.update({str(k): float(v) for k, v in acc.items() if isinstance(v, (int, float))})
    per_method = metrics.get("methods") if isinstance(metrics.get("methods"), dict) else metrics
    for m in methods:
        entry = per_method.get(m) if isinstance(per_method, dict) else None
        value = None
        if isinstance(entry, dict):
            value = next((entry[k] for k in ("test_accuracy", "accuracy") if isinstance(entry.get(k), (int, float))), None)
        if value is None:
            value = next((metrics[k] for k in (f"{m}_test_accuracy", f"{m}_accuracy")
                          if isinstance(metrics.get(k), (int, float))), None)
        if value is not None:
            found.setdefault(m, float(value))
    for key in ("teacher_test_accuracy", "teacher_accuracy"):
        if "teacher" not in found and isinstance(metrics.get(key), (int, float)):
            found["teacher"] = float(metrics[key])
    if methods and methods[0] in found:
        found.setdefault("student", found[methods[0]])
    return found


def run_demo(*, data_dir: Path | None = None, quick: bool = False, seed: int = 0,
             console: Console | None = None, database_url: str | None = None) -> DemoResult:
    """Run the whole demo; see the module docstring. Returns what it produced."""
    from client.progress import wait_with_progress
    from client.local import local_stack

    console = console or Console()
    plan = DemoPlan.make(quick)
    started = time.monotonic()
    if data_dir is None:
        data_dir = Path("var") / "demo" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    say = lambda text: console.print(text, markup=False)  # noqa: E731 - one-line helper

    say(f"[1/6] training a teacher MLP 64-{'-'.join(map(str, TEACHER_HIDDEN))}-10 on digits "
        f"({plan.teacher_epochs} epochs) ...")
    teacher_path = data_dir / "teacher.pt2"
    teacher_model, teacher_acc, teacher_params = train_teacher(teacher_path, epochs=plan.teacher_epochs, seed=seed)
    say(f"      teacher test accuracy {teacher_acc:.3f}, {teacher_params} parameters -> {teacher_path}")

    say("[2/6] starting redis-server, a Celery worker and the API ...")
    with local_stack(data_dir / "service", tenant="demo", database_url=database_url) as (stack, key):
        say(f"      API at {stack.api_url} (logs in {stack.log_dir})")
        with BregkdClient(stack.api_url, key) as api:
            say("[3/6] uploading the teacher; a worker lists its layers ...")
            teacher = api.upload_teacher(teacher_path, name="demo-teacher", wait=True)
            if teacher.status.value != "ready":
                raise DemoError(f"the teacher could not be inspected: {teacher.error}")
            layers = api.teacher_layers(teacher.id).items
            layer = pick_layer(layers)
            say(f"      {teacher.id}: {len(layers)} layers; tapping the last hidden layer {layer.path} "
                f"({layer.op}, d={layer.d}) with the {layer.transfer} Bregman divergence")

            say(f"[4/6] fitting the Bregman representation of layer {layer.path} (k={plan.n_components}) ...")
            rep = api.fit_representation(teacher.id, layer.path, dataset="digits", n_components=plan.n_components,
                                         solver={"max_iter": plan.solver_max_iter}, seed=seed, **plan.budget())
            rep = wait_with_progress(api, rep.id, console=console)
            _require_success(rep, "representation")
            m = rep.metrics
            say(f"      divergence {_num(m.get('divergence'))} (Euclidean PCA {_num(m.get('pca_divergence'))}), "
                f"explained {_num(m.get('explained_divergence_ratio'))}")

            methods = ["auto"]
            rows = f"{plan.max_train_rows} labelled digits" if plan.max_train_rows else "every training digit"
            say(f"[5/6] distilling a student MLP 64-{'-'.join(map(str, STUDENT_HIDDEN))}-(out) on {rows}: "
                "method auto trains it through the representation and as the baselines hint, kd and labels "
                "on a validation split, keeps the best and retrains it on every row ...")
            dist = api.distill(teacher.id, dataset="digits", representation_job_id=rep.id,
                               student={"arch": "mlp", "hidden": STUDENT_HIDDEN}, methods=methods,
                               epochs=plan.student_epochs, seed=seed, **plan.budget())
            dist = wait_with_progress(api, dist.id, console=console)
            _require_success(dist, "distillation")

            say("[6/6] downloading the artifacts and running the student ...")
            artifact_dir = data_dir / "artifacts"
            files = api.download_artifacts(rep.id, artifact_dir / "representation")
            files += api.download_artifacts(dist.id, artifact_dir / "distillation")
    student_pt2 = artifact_dir / "distillation" / "student.pt2"
    if not student_pt2.is_file():
        raise DemoError(f"the distillation job wrote no student.pt2; it wrote: {', '.join(p.name for p in files)}")
    student_acc, agreement = run_student(student_pt2, teacher_model)

    accuracy = accuracies_from_metrics(dist.metrics, methods)
    accuracy.setdefault("teacher", teacher_acc)
    result = DemoResult(data_dir=data_dir, teacher_id=teacher.id, layer=layer.path, representation_job=rep,
                        distillation_job=dist, artifact_dir=artifact_dir, accuracy=accuracy,
                        student_accuracy_local=student_acc, student_agreement=agreement, files=files,
                        seconds=time.monotonic() - started,
                        selection=list(dist.metrics.get("selection") or []),
                        method=str(dist.metrics.get("method", "")))
    _print_summary(console, result, teacher_acc, teacher_params)
    return result


def _require_success(job: JobOut, what: str) -> None:
    if job.state.value != "succeeded":
        raise DemoError(f"the {what} job {job.id} ended {job.state.value}: {job.error or 'no message'}")


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _describe(row: dict[str, Any], layer: str) -> str:
    return {"bregman": f"Bregman coefficients of layer {layer} (k={row.get('k')})",
            "hint": f"baseline: regress layer {layer} (hint)", "kd": "baseline: soft labels (Hinton KD)",
            "labels": "baseline: labels only"}.get(str(row.get("method")), str(row.get("method")))


def _pct(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _print_summary(console: Console, r: DemoResult, teacher_acc: float, teacher_params: int) -> None:
    n = int(r.distillation_job.metrics.get("n_transfer") or 0) or None
    table = Table(title="method auto: every candidate trained on the same rows and budget, chosen on validation",
                  title_justify="left")
    table.add_column("candidate")
    table.add_column("how it was trained")
    table.add_column("validation acc.", justify="right")
    table.add_column("test acc.", justify="right")
    for row in r.selection:
        table.add_row(str(row.get("candidate")) + ("  <- chosen" if row.get("chosen") else ""),
                      _describe(row, r.layer), _pct(row.get("validation_accuracy")), _pct(row.get("test_accuracy")))
    if r.selection:
        console.print(table)
    summary = Table(title="digits test accuracy", title_justify="left")
    summary.add_column("model")
    summary.add_column("how it was trained")
    summary.add_column("accuracy", justify="right")
    summary.add_row("teacher", f"labels, MLP 64-{'-'.join(map(str, TEACHER_HIDDEN))}-10, {teacher_params} params, "
                    "all 1437 training digits", f"{teacher_acc:.3f}")
    reported = r.accuracy.get("student")
    winner = next((row for row in r.selection if row.get("chosen")), None)
    how = _describe(winner, r.layer) if winner else r.method
    summary.add_row("student (downloaded student.pt2)",
                    f"{how}, retrained on all {n or ''} transfer rows; agrees with the teacher on "
                    f"{r.student_agreement:.1%}" + (f"; the service measured {reported:.3f}" if reported is not None else ""),
                    f"{r.student_accuracy_local:.3f}")
    console.print(summary)
    others = [row for row in r.selection if not row.get("chosen") and isinstance(row.get("test_accuracy"), (int, float))]
    if winner and others:
        best_other = max(others, key=lambda row: row["test_accuracy"])
        margin = r.student_accuracy_local - float(best_other["test_accuracy"])
        console.print(f"{winner['candidate']} won on validation; the returned student is "
                      f"{abs(100 * margin):.1f} points {'above' if margin >= 0 else 'below'} the best other candidate "
                      f"({best_other['candidate']}, {best_other['test_accuracy']:.3f} on test)", markup=False)
    console.print(f"artifacts of the representation job: {r.artifact_dir / 'representation'}", markup=False)
    console.print(f"artifacts of the distillation job:   {r.artifact_dir / 'distillation'}", markup=False)
    plots = sorted(p for p in r.files if p.suffix == ".png")
    if plots:
        console.print("plots: " + ", ".join(str(p) for p in plots), markup=False)
    console.print(f"done in {r.seconds:.0f} s; the local stack is stopped (its data stays in {r.data_dir})",
                  markup=False)
