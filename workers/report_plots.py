"""PNG plots for the reports of representation and distillation jobs.

The workers call these after a job has written its JSON report; each function reads a plain
dict (the JSON-able report, or the subset of it described below), draws with matplotlib's
non-interactive Agg backend (imported lazily, so importing this module costs nothing) and
returns the paths of the PNG files it wrote.

Representation report (:func:`write_representation_plots`)
-----------------------------------------------------------
``k`` : list of int
    The numbers of components evaluated, increasing, at least one.
``bregman_divergence`` : list of float
    Mean Bregman divergence (per example) of the Bregman PCA fit at each ``k``.
``pca_divergence`` : list of float
    Mean Bregman divergence of Euclidean PCA's reconstruction at each ``k`` (same geometry,
    so the two curves are comparable).
``explained_divergence_ratio`` : list of float, optional
    Share in [0, 1] of the divergence at k = 0 (the mean alone) explained at each ``k``.
    When absent, the explained-divergence plot is skipped.
``transfer``, ``layer`` : str, optional
    Only used in titles.

All lists must have the same length as ``k`` and hold finite numbers.
Writes ``divergence_vs_k.png`` and (with the ratio) ``explained_divergence.png``.

Distillation report (:func:`write_distillation_plots`)
------------------------------------------------------
``history`` : training history of the student, either a list of per-epoch records
    ``[{"epoch": 1, "loss": 0.9, "test_accuracy": 0.8}, ...]`` or a dict of per-epoch lists
    ``{"loss": [...], "test_accuracy": [...]}`` (what ``bregman.training.train_loop`` returns).
    ``loss`` is required; ``test_accuracy`` (or ``val_accuracy``) and ``accuracy`` are drawn
    when present. Other keys are ignored.
``histories`` : dict of str -> history, optional
    Histories of the baselines (e.g. ``{"labels": ..., "soft_labels": ...}``), in either form
    above; drawn on the same axes, dashed.
``accuracy`` : dict of str -> float
    Test accuracy in [0, 1] of each model compared, e.g. ``{"teacher": 0.97, "student": 0.94,
    "labels": 0.91}``. ``student`` is required; ``teacher`` and any baselines are optional.
``method`` : str, optional
    The student's method name, used in legends.

Writes ``training_curves.png`` and ``accuracy.png``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "ReportPlotError",
    "write_representation_plots",
    "write_distillation_plots",
    "REPRESENTATION_PLOTS",
    "DISTILLATION_PLOTS",
]

#: File names written by each function (in this order, the optional ones when their data exist).
REPRESENTATION_PLOTS = ("divergence_vs_k.png", "explained_divergence.png")
DISTILLATION_PLOTS = ("training_curves.png", "accuracy.png")


class ReportPlotError(ValueError):
    """The report dict lacks a key the plots need, or holds a value of the wrong kind."""


# --------------------------------------------------------------------------- validation
def _require(report: Mapping[str, Any], key: str, what: str) -> Any:
    if not isinstance(report, Mapping):
        raise ReportPlotError(f"the {what} report must be a dict, got {type(report).__name__}")
    if key not in report or report[key] is None:
        raise ReportPlotError(
            f"the {what} report has no {key!r}: add it (keys present: {sorted(report)})")
    return report[key]


def _numbers(value: Any, key: str, *, ints: bool = False) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ReportPlotError(f"{key!r} must be a list of numbers, got {type(value).__name__}")
    out: list[float] = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ReportPlotError(f"{key!r}[{i}] must be a number, got {v!r}")
        if not math.isfinite(float(v)):
            raise ReportPlotError(f"{key!r}[{i}] must be finite, got {v!r}")
        if ints and int(v) != v:
            raise ReportPlotError(f"{key!r}[{i}] must be an integer, got {v!r}")
        out.append(float(v))
    return out


def _history_columns(history: Any, key: str) -> dict[str, list[float]]:
    """Normalize a history (list of records or dict of lists) to a dict of numeric columns."""
    columns: dict[str, list[float]] = {}
    if isinstance(history, Mapping):
        for name, values in history.items():
            if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
                try:
                    columns[str(name)] = _numbers(values, f"{key}.{name}")
                except ReportPlotError:
                    continue  # non-numeric columns (e.g. phase names) are not plotted
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        for i, record in enumerate(history):
            if not isinstance(record, Mapping):
                raise ReportPlotError(
                    f"{key}[{i}] must be a dict like {{'epoch': 1, 'loss': 0.5}}, got {record!r}")
            for name, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                    columns.setdefault(str(name), []).append(float(v))
    else:
        raise ReportPlotError(
            f"{key!r} must be a list of per-epoch dicts or a dict of per-epoch lists, "
            f"got {type(history).__name__}")
    if not columns.get("loss"):
        raise ReportPlotError(f"{key!r} has no 'loss' values: every epoch record needs a 'loss'")
    return columns


def _accuracy_column(columns: dict[str, list[float]]) -> list[float] | None:
    for name in ("test_accuracy", "val_accuracy"):
        if columns.get(name):
            return columns[name]
    return None


# --------------------------------------------------------------------------- drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless workers: never open a window
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    _pyplot().close(fig)
    return path


def write_representation_plots(out_dir: str | Path, report: Mapping[str, Any]) -> list[Path]:
    """Plot divergence against k (Bregman PCA vs Euclidean PCA) and the explained-divergence curve.

    Parameters
    ----------
    out_dir : path
        Directory to write into (created if missing).
    report : dict
        See the module docstring for the keys read.

    Returns
    -------
    list of Path
        The PNG files written.

    Raises
    ------
    ReportPlotError (a ValueError)
        A required key is missing, or the lists are not numbers of equal length.
    """
    ks = _numbers(_require(report, "k", "representation"), "k", ints=True)
    if not ks:
        raise ReportPlotError("'k' is empty: the report needs at least one number of components")
    bregman = _numbers(_require(report, "bregman_divergence", "representation"), "bregman_divergence")
    pca = _numbers(_require(report, "pca_divergence", "representation"), "pca_divergence")
    ratio_raw = report.get("explained_divergence_ratio")
    ratio = _numbers(ratio_raw, "explained_divergence_ratio") if ratio_raw is not None else None
    for name, values in (("bregman_divergence", bregman), ("pca_divergence", pca),
                         ("explained_divergence_ratio", ratio)):
        if values is not None and len(values) != len(ks):
            raise ReportPlotError(
                f"{name!r} has {len(values)} values but 'k' has {len(ks)}: give one value per k")
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ", ".join(f"{label}{report[key]}" for key, label in (("layer", "layer "), ("transfer", ""))
                       if report.get(key) not in (None, ""))
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(ks, bregman, "o-", label="Bregman PCA")
    ax.plot(ks, pca, "s--", label="Euclidean PCA")
    _integer_ticks(ax)
    ax.set_xlabel("number of components k")
    ax.set_ylabel("mean Bregman divergence")
    if all(v > 0 for v in bregman + pca) and max(bregman + pca) / min(bregman + pca) > 50:
        ax.set_yscale("log")
    ax.set_title("Divergence against k" + (f" ({suffix})" if suffix else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / REPRESENTATION_PLOTS[0]))

    if ratio is not None:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(ks, ratio, "o-")
        _integer_ticks(ax)
        ax.set_xlabel("number of components k")
        ax.set_ylabel("share of divergence explained")
        ax.set_ylim(min(0.0, min(ratio)), max(1.0, max(ratio)) * 1.02)
        ax.set_title("Explained divergence" + (f" ({suffix})" if suffix else ""))
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / REPRESENTATION_PLOTS[1]))
    return written


def write_distillation_plots(out_dir: str | Path, report: Mapping[str, Any]) -> list[Path]:
    """Plot the training curves (loss, test accuracy) and the accuracy of every model compared.

    Parameters
    ----------
    out_dir : path
        Directory to write into (created if missing).
    report : dict
        See the module docstring for the keys read.

    Returns
    -------
    list of Path
        ``training_curves.png`` and ``accuracy.png``.

    Raises
    ------
    ReportPlotError (a ValueError)
        ``history`` or ``accuracy`` is missing or malformed.
    """
    student = _history_columns(_require(report, "history", "distillation"), "history")
    baselines_raw = report.get("histories") or {}
    if not isinstance(baselines_raw, Mapping):
        raise ReportPlotError(
            f"'histories' must map a method name to a history, got {type(baselines_raw).__name__}")
    baselines = {str(name): _history_columns(h, f"histories.{name}") for name, h in baselines_raw.items()}
    accuracy = _require(report, "accuracy", "distillation")
    if not isinstance(accuracy, Mapping):
        raise ReportPlotError(
            f"'accuracy' must be a dict like {{'teacher': 0.97, 'student': 0.94}}, got {accuracy!r}")
    if accuracy.get("student") is None:
        raise ReportPlotError(f"'accuracy' has no 'student' value (keys present: {sorted(accuracy)})")
    acc = {str(k): v for k, v in accuracy.items() if v is not None}
    for name, v in acc.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ReportPlotError(f"accuracy[{name!r}] must be a finite number, got {v!r}")
    method = str(report.get("method") or "student")

    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    any_acc = _accuracy_column(student) is not None or any(
        _accuracy_column(c) is not None for c in baselines.values())
    fig, axes = plt.subplots(1, 2 if any_acc else 1, figsize=(10 if any_acc else 5.5, 4), squeeze=False)
    ax_loss = axes[0][0]
    runs = [(method, student, "-")] + [(name, cols, "--") for name, cols in baselines.items()]
    for name, cols, style in runs:
        epochs = cols.get("epoch") or list(range(1, len(cols["loss"]) + 1))
        ax_loss.plot(epochs[: len(cols["loss"])], cols["loss"], style, marker="o", ms=3, label=name)
    _integer_ticks(ax_loss)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if any_acc:
        ax_acc = axes[0][1]
        for name, cols, style in runs:
            values = _accuracy_column(cols)
            if values is None:
                continue
            epochs = cols.get("epoch") or list(range(1, len(values) + 1))
            ax_acc.plot(epochs[: len(values)], values, style, marker="o", ms=3, label=name)
        if "teacher" in acc:
            ax_acc.axhline(float(acc["teacher"]), color="gray", ls=":", label="teacher")
        _integer_ticks(ax_acc)
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("test accuracy")
        ax_acc.set_title("Test accuracy")
        ax_acc.grid(alpha=0.3)
        ax_acc.legend()
    written.append(_save(fig, out / DISTILLATION_PLOTS[0]))

    # teacher first, then the student, then the baselines in the order given
    names = [n for n in ("teacher", "student") if n in acc] + [
        n for n in acc if n not in ("teacher", "student")]
    values = [float(acc[n]) for n in names]
    labels = [method if n == "student" and method != "student" else n for n in names]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2), 4))
    colors = ["#7f7f7f" if n == "teacher" else "#1f77b4" if n == "student" else "#ff7f0e" for n in names]
    bars = ax.bar(range(len(names)), values, color=colors)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)), labels, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, max(1.0, max(values)) * 1.08)
    ax.set_title("Accuracy: teacher, student and baselines")
    ax.grid(axis="y", alpha=0.3)
    written.append(_save(fig, out / DISTILLATION_PLOTS[1]))
    return written
