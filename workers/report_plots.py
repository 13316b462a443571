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
``target_share`` : float, optional
    The share the job asked for (``target_share``): a horizontal line on that plot.
``n_components`` : int, optional
    The job's k: marked on both plots.
``transfer``, ``layer`` : str, optional
    Only used in titles.

All lists must have the same length as ``k`` and hold finite numbers.
Writes ``divergence_vs_k.png`` and (with the ratio) ``explained_divergence.png``.

Distillation report (:func:`write_distillation_plots`)
------------------------------------------------------
``history`` : training history of the student, either a list of per-epoch records
    ``[{"epoch": 1, "loss": 0.9, "test_accuracy": 0.8}, ...]`` or a dict of per-epoch lists
    ``{"loss": [...], "test_accuracy": [...]}`` (what ``bregman.training.train_loop`` returns).
    ``loss`` is required; a per-epoch accuracy (``val_accuracy``, ``validation_accuracy`` or
    ``test_accuracy``, in that order of preference) is drawn when present. Other keys are ignored.
``histories`` : dict of str -> history, optional
    Histories of the baselines (e.g. ``{"labels": ..., "kd": ...}``), in either form above.
    Every method's loss gets a panel of its own (the objectives differ by orders of magnitude);
    the accuracies share one panel.
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


#: per-epoch accuracy columns of a history, the preferred first, and how an axis calls them
ACCURACY_COLUMNS = {"val_accuracy": "validation accuracy", "validation_accuracy": "validation accuracy",
                    "test_accuracy": "test accuracy"}


def _accuracy_key(columns: dict[str, list[float]]) -> str | None:
    return next((name for name in ACCURACY_COLUMNS if columns.get(name)), None)


def _accuracy_column(columns: dict[str, list[float]]) -> list[float] | None:
    key = _accuracy_key(columns)
    return columns[key] if key else None


# --------------------------------------------------------------------------- drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless workers: never open a window
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plain_log_ticks(ax) -> None:
    """Log-axis ticks as plain numbers (0.2, 5, 100), minor ones labelled at 2 and 5 only."""
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _pos: int) -> str:
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if mantissa in (2.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _save(fig, path: Path) -> Path:
    # the builders lay their figures out themselves (a footnote needs room tight_layout leaves none for)
    fig.savefig(path, dpi=110, format="png")
    _pyplot().close(fig)
    return path


def _representation_inputs(report: Mapping[str, Any]) -> dict[str, Any]:
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
    share = report.get("target_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
        raise ReportPlotError(f"'target_share' must be a number in (0, 1], got {share!r}")
    chosen = report.get("n_components")
    if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 1):
        raise ReportPlotError(f"'n_components' must be a positive integer, got {chosen!r}")
    suffix = ", ".join(f"{label}{report[key]}" for key, label in (("layer", "layer "), ("transfer", ""))
                       if report.get(key) not in (None, ""))
    return {"ks": ks, "bregman": bregman, "pca": pca, "ratio": ratio, "share": share, "chosen": chosen,
            "suffix": f" ({suffix})" if suffix else ""}


def representation_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The representation plots as open matplotlib figures, by file name (for tests and the writer)."""
    data = _representation_inputs(report)
    ks, bregman, pca, ratio, share, chosen = (data[k] for k in ("ks", "bregman", "pca", "ratio", "share", "chosen"))
    plt = _pyplot()
    figures: dict[str, Any] = {}

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(ks, bregman, "o-", label="Bregman PCA")
    ax.plot(ks, pca, "s--", label="Euclidean PCA (same divergence)")
    _integer_ticks(ax)
    ax.set_xlabel("number of components k")
    ax.set_ylabel("mean Bregman divergence per example")
    if all(v > 0 for v in bregman + pca) and max(bregman + pca) / min(bregman + pca) > 50:
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    if chosen is not None:
        ax.axvline(chosen, color="gray", ls=":", lw=1, label=f"the job's k = {chosen}")
    ax.set_title("Divergence against k" + data["suffix"])
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    figures[REPRESENTATION_PLOTS[0]] = fig

    if ratio is not None:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ax.plot(ks, ratio, "o-", label="explained share")
        _integer_ticks(ax)
        ax.set_xlabel("number of components k")
        ax.set_ylabel("share of the mean-only divergence explained")
        ax.set_ylim(min(0.0, min(ratio)), 1.05)
        if share is not None:
            ax.axhline(share, color="tab:red", ls="--", lw=1.2, label=f"requested share {share:.4g}")
            reached = [k for k, r in zip(ks, ratio) if r >= share]
            if reached:  # where the curve first reaches it (the curve's own k values)
                ax.axvline(reached[0], color="tab:red", ls=":", lw=1, label=f"first k reaching it: {reached[0]:g}")
        if chosen is not None and chosen in ks:
            r = ratio[ks.index(chosen)]
            ax.annotate(f"k = {chosen}: {r:.2%}", (chosen, r), xytext=(-10, -28), textcoords="offset points",
                        ha="right", arrowprops={"arrowstyle": "-", "color": "gray"})
        ax.set_title("Explained divergence" + data["suffix"])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        figures[REPRESENTATION_PLOTS[1]] = fig
    return figures


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
    figures = representation_figures(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out / name) for name, fig in figures.items()]


def _distillation_inputs(report: Mapping[str, Any]) -> dict[str, Any]:
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
    runs = {method: student, **{n: c for n, c in baselines.items() if n != method}}
    return {"runs": runs, "acc": {k: float(v) for k, v in acc.items()}, "method": method}


def _epochs(cols: dict[str, list[float]], n: int) -> list[float]:
    epochs = cols.get("epoch") or list(range(1, n + 1))
    return epochs[:n]


#: one colour per method, the same in every panel and in accuracy.png
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def distillation_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The distillation plots as open matplotlib figures, by file name.

    ``training_curves.png``: one panel per method with its own training loss (each method
    minimizes a different objective, at scales 100x apart, so they share no axis; a log axis
    when the loss falls more than 10x, so the slow tail of a long run stays visible), and one
    panel of every method's validation accuracy against epochs on one axis, with the teacher's.
    ``accuracy.png``: the final test accuracy of every model, as dots on a shared axis.
    """
    data = _distillation_inputs(report)
    runs, acc, method = data["runs"], data["acc"], data["method"]
    colors = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(runs)}
    with_acc = {name: _accuracy_column(cols) for name, cols in runs.items() if _accuracy_column(cols)}
    plt = _pyplot()
    figures: dict[str, Any] = {}

    ncols = min(3, len(runs))
    loss_rows = math.ceil(len(runs) / ncols)
    rows = loss_rows + (1 if with_acc else 0)
    fig = plt.figure(figsize=(max(8.0, 4.0 * ncols), 3.3 * rows))
    grid = fig.add_gridspec(rows, ncols)
    for i, (name, cols) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        loss = cols["loss"]
        ax.plot(_epochs(cols, len(loss)), loss, "-", color=colors[name], lw=1.6)
        if min(loss) > 0 and max(loss) / min(loss) > 10:
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        _integer_ticks(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(f"{name}: its training loss" + (" (student)" if name == method else ""), fontsize=10)
        ax.grid(alpha=0.3, which="both")
    if with_acc:
        ax = fig.add_subplot(grid[loss_rows, :])  # the comparison: one axis, the whole width
        for name, values in with_acc.items():
            ax.plot(_epochs(runs[name], len(values)), values, "-", color=colors[name], lw=1.6, label=name)
        if "teacher" in acc:
            ax.axhline(acc["teacher"], color="gray", ls=":", label="teacher (test)")
        # zoom on where the methods differ: the first tenth of the epochs may start below the axis
        settled = [v for values in with_acc.values() for v in values[len(values) // 10:]]
        top = max(settled + [acc.get("teacher", 0.0)])
        ax.set_ylim(max(0.0, min(settled) - 0.25 * (top - min(settled)) - 0.01), min(1.0, top + 0.02) + 0.005)
        kinds = sorted({ACCURACY_COLUMNS[_accuracy_key(runs[name])] for name in with_acc})
        _integer_ticks(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(" / ".join(kinds))
        ax.set_title(f"{kinds[0].capitalize() if len(kinds) == 1 else 'Accuracy'}, every method", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", ncols=min(4, len(with_acc) + 1))
    missing = [name for name in runs if name not in with_acc]
    if missing:
        fig.text(0.5, 0.005, f"no per-epoch accuracy recorded for {', '.join(missing)}; final test accuracies: "
                 "accuracy.png", ha="center", va="bottom", fontsize=8, color="gray")
    fig.suptitle("Training curves (each method's loss on its own axis)", fontsize=11)
    fig.tight_layout(rect=(0, 0.035 if missing else 0, 1, 1))
    figures[DISTILLATION_PLOTS[0]] = fig

    # teacher first, then the student, then the baselines in the order given
    names = [n for n in ("teacher", "student") if n in acc] + [n for n in acc if n not in ("teacher", "student")]
    labels = [f"{method} (student)" if n == "student" else n for n in names]
    values = [acc[n] for n in names]
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(names) + 1.4))
    ys = list(range(len(names)))[::-1]
    for y, n, v in zip(ys, names, values):
        color = "gray" if n == "teacher" else colors.get(method if n == "student" else n, "tab:gray")
        ax.hlines(y, 0, v, color=color, alpha=0.25, lw=2)
        ax.plot([v], [y], "o", color=color, ms=9)
        ax.annotate(f"{v:.3f}", (v, y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=9)
    if "teacher" in acc:
        ax.axvline(acc["teacher"], color="gray", ls=":", lw=1)
    ax.set_yticks(ys, labels)
    low = min(values)
    ax.set_xlim(max(0.0, low - max(0.05, (1 - low) * 0.5)), min(1.0, max(values)) + 0.04)
    ax.set_xlabel("test accuracy (the axis starts near the lowest value)")
    ax.set_title("Test accuracy: teacher, student and baselines", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    figures[DISTILLATION_PLOTS[1]] = fig
    return figures


def write_distillation_plots(out_dir: str | Path, report: Mapping[str, Any]) -> list[Path]:
    """Plot the training curves and the accuracy of every model compared.

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
    figures = distillation_figures(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out / name) for name, fig in figures.items()]
