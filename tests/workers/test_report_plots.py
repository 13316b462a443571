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
