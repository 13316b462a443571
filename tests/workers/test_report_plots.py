"""The report plots: valid PNG files from well-formed reports, clear ValueErrors otherwise."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from workers.report_plots import (
    DISTILLATION_PLOTS,
    REPRESENTATION_PLOTS,
    ReportPlotError,
    write_distillation_plots,
    write_representation_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


REPRESENTATION = {
    "k": [1, 2, 4, 8],
    "bregman_divergence": [0.9, 0.5, 0.2, 0.05],
    "pca_divergence": [1.2, 0.8, 0.4, 0.1],
    "explained_divergence_ratio": [0.4, 0.66, 0.87, 0.97],
    "layer": "2",
    "transfer": "softmax",
}

DISTILLATION = {
    "method": "bregman",
    "history": [
        {"epoch": 1, "loss": 1.0, "test_accuracy": 0.6},
        {"epoch": 2, "loss": 0.6, "test_accuracy": 0.8},
        {"epoch": 3, "loss": 0.4, "test_accuracy": 0.85},
    ],
    "histories": {"labels": {"loss": [1.2, 0.9, 0.7], "test_accuracy": [0.5, 0.7, 0.78]}},
    "accuracy": {"teacher": 0.95, "student": 0.85, "labels": 0.78, "soft_labels": 0.8},
}


def test_representation_plots_are_pngs(tmp_path):
    paths = write_representation_plots(tmp_path / "plots", REPRESENTATION)
    assert [p.name for p in paths] == list(REPRESENTATION_PLOTS)
    for p in paths:
        width, height = png_size(p)
        assert width > 100 and height > 100
        assert p.stat().st_size > 1000


def test_representation_without_ratio_skips_that_plot(tmp_path):
    report = {k: v for k, v in REPRESENTATION.items() if k != "explained_divergence_ratio"}
    paths = write_representation_plots(tmp_path, report)
    assert [p.name for p in paths] == ["divergence_vs_k.png"]
    assert not (tmp_path / "explained_divergence.png").exists()


def test_distillation_plots_are_pngs(tmp_path):
    paths = write_distillation_plots(tmp_path, DISTILLATION)
    assert [p.name for p in paths] == list(DISTILLATION_PLOTS)
    for p in paths:
        png_size(p)
        assert p.stat().st_size > 1000


def test_distillation_accepts_dict_of_lists_history_without_accuracy(tmp_path):
    report = {"history": {"loss": [1.0, 0.5], "lr": [1e-3, 0.0]}, "accuracy": {"student": 0.7}}
    paths = write_distillation_plots(tmp_path, report)
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize(
    "report, message",
    [
        ({k: v for k, v in REPRESENTATION.items() if k != "k"}, "no 'k'"),
        ({**REPRESENTATION, "pca_divergence": [1.0, 2.0]}, "'pca_divergence' has 2 values but 'k' has 4"),
        ({**REPRESENTATION, "bregman_divergence": [0.1, "x", 0.2, 0.3]}, "'bregman_divergence'[1]"),
        ({**REPRESENTATION, "bregman_divergence": [0.1, float("nan"), 0.2, 0.3]}, "finite"),
        ({**REPRESENTATION, "k": []}, "'k' is empty"),
        ([1, 2], "must be a dict"),
    ],
)
def test_representation_bad_reports(tmp_path, report, message):
    with pytest.raises(ValueError, match=None) as info:
        write_representation_plots(tmp_path, report)
    assert isinstance(info.value, ReportPlotError)
    assert message in str(info.value)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "report, message",
    [
        ({"accuracy": {"student": 0.5}}, "no 'history'"),
        ({"history": [{"epoch": 1, "loss": 0.5}]}, "no 'accuracy'"),
        ({"history": [{"epoch": 1}], "accuracy": {"student": 0.5}}, "no 'loss' values"),
        ({"history": "loss", "accuracy": {"student": 0.5}}, "list of per-epoch dicts"),
        ({"history": [{"loss": 1.0}], "accuracy": {"teacher": 0.9}}, "no 'student'"),
        ({"history": [{"loss": 1.0}], "accuracy": {"student": "high"}}, "accuracy['student']"),
        ({"history": [{"loss": 1.0}], "accuracy": {"student": 0.5}, "histories": [1]}, "'histories' must map"),
    ],
)
def test_distillation_bad_reports(tmp_path, report, message):
    with pytest.raises(ReportPlotError) as info:
        write_distillation_plots(tmp_path, report)
    assert message in str(info.value)
    assert not list(tmp_path.glob("*.png"))


def test_import_does_not_load_matplotlib():
    import subprocess
    import sys

    code = "import sys, workers.report_plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- what the plots show
def _long_run(start: float, end: float, n: int = 400) -> dict[str, list[float]]:
    """A 400-epoch history: the loss falls from ``start`` to ``end``, accuracy rises."""
    import math

    loss = [end + (start - end) * math.exp(-e / 12) for e in range(n)]
    return {"loss": loss, "val_accuracy": [0.9 - 0.5 * math.exp(-e / 20) for e in range(n)], "lr": [1e-3] * n}


LONG = {"method": "bregman", "history": _long_run(210.0, 2.0),
        "histories": {"labels": _long_run(2.3, 0.02), "kd": _long_run(17.0, 0.8)},
        "accuracy": {"teacher": 0.97, "student": 0.95, "labels": 0.93, "kd": 0.94}}


def _lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2]


def test_each_methods_loss_has_its_own_axis_and_accuracy_shares_one():
    from workers.report_plots import distillation_figures

    fig = distillation_figures(LONG)["training_curves.png"]
    axes = fig.get_axes()
    assert len(axes) == 4  # bregman, labels, kd losses; one accuracy panel
    for ax, (name, history) in zip(axes, [("bregman", LONG["history"]), *LONG["histories"].items()]):
        (line,) = _lines(ax)
        assert list(line.get_ydata()) == history["loss"] and name in ax.get_title()
        assert ax.get_yscale() == "log"  # a 100x fall: the tail after epoch 30 stays visible
    acc = axes[3]
    drawn = {line.get_label(): list(line.get_ydata()) for line in _lines(acc)}
    assert drawn == {"bregman": LONG["history"]["val_accuracy"], "labels": LONG["histories"]["labels"]["val_accuracy"],
                     "kd": LONG["histories"]["kd"]["val_accuracy"]}
    assert acc.get_ylabel() == "validation accuracy"
    teacher = [line for line in acc.get_lines() if line.get_label().startswith("teacher")]
    assert len(teacher) == 1 and list(teacher[0].get_ydata()) == [0.97, 0.97]
    # the same colour for a method in its loss panel and in the accuracy panel
    assert [_lines(ax)[0].get_color() for ax in axes[:3]] == [line.get_color() for line in _lines(acc)]
    __import__("matplotlib.pyplot").pyplot.close("all")


def test_without_per_epoch_accuracy_the_figure_says_so():
    from workers.report_plots import distillation_figures

    report = {**LONG, "history": {"loss": LONG["history"]["loss"]}}
    fig = distillation_figures(report)["training_curves.png"]
    assert len(fig.get_axes()) == 4  # bregman has none, the baselines still have theirs
    notes = [t.get_text() for t in fig.texts]
    assert any("no per-epoch accuracy recorded for bregman" in t for t in notes)
    small = {"history": {"loss": [1.0, 0.8, 0.7]}, "accuracy": {"student": 0.7}}
    fig = distillation_figures(small)["training_curves.png"]
    assert len(fig.get_axes()) == 1 and fig.get_axes()[0].get_yscale() == "linear"  # a 1.4x fall
    __import__("matplotlib.pyplot").pyplot.close("all")


def test_explained_divergence_marks_the_requested_share_and_the_jobs_k():
    from workers.report_plots import representation_figures

    fig = representation_figures({**REPRESENTATION, "target_share": 0.85, "n_components": 8})["explained_divergence.png"]
    (ax,) = fig.get_axes()
    by_label = {line.get_label(): line for line in ax.get_lines()}
    share = by_label["requested share 0.85"]
    assert list(share.get_ydata()) == [0.85, 0.85]
    assert list(by_label["first k reaching it: 4"].get_xdata()) == [4, 4]  # 0.87 at k = 4
    assert any("k = 8: 97.00%" in t.get_text() for t in ax.texts)
    fig = representation_figures(REPRESENTATION)["explained_divergence.png"]
    assert not any("requested" in line.get_label() for line in fig.get_axes()[0].get_lines())
    __import__("matplotlib.pyplot").pyplot.close("all")


def test_accuracy_plot_orders_models_and_keeps_every_value_in_view():
    from workers.report_plots import distillation_figures

    fig = distillation_figures(LONG)["accuracy.png"]
    (ax,) = fig.get_axes()
    top_down = [t.get_text() for _, t in sorted(zip(ax.get_yticks(), ax.get_yticklabels()), key=lambda p: -p[0])]
    assert top_down == ["teacher", "bregman (student)", "labels", "kd"]
    low, high = ax.get_xlim()
    assert low < 0.93 and high > 0.97 and low > 0.5  # zoomed where the models differ
    __import__("matplotlib.pyplot").pyplot.close("all")
