"""What the CLI prints, rendered at 80 columns from records built here (no service)."""
from __future__ import annotations

import re

from rich.console import Console

from api_schemas import DatasetList, DatasetOut, JobList, LayerList, LayerOut
from client import render
from tests.client import fakes

WIDTH = 80


def _render(*renderables, width: int = WIDTH) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    for r in renderables:
        console.print(r)
    return console.export_text().splitlines()


def _assert_whole(lines: list[str], ids: list[str]) -> None:
    for i in ids:
        assert any(i in line for line in lines), f"{i} is broken across lines:\n" + "\n".join(lines)
    assert max(len(line.rstrip()) for line in lines) <= WIDTH


def test_ids_never_wrap_in_listings_at_80_columns():
    teachers = fakes.teachers(3)
    jobs = JobList(items=[fakes.job(f"job_bbc0d9a7eb{i:02d}", kind=k, state=s, phase="representation:capture-train")
                          for i, (k, s) in enumerate([("representation", "running"), ("distillation", "succeeded")])],
                   total=2, limit=50, offset=0)
    datasets = DatasetList(items=[DatasetOut(id="ds_0123456789abcdef", name="a-data-set-with-a-long-name-" * 2,
                                             status="ready", input_shape=[3, 32, 32], num_classes=100, n_train=50000,
                                             n_test=10000, created_at=fakes.CREATED)], total=1, limit=50, offset=0)
    lines = _render(render.teachers_table(teachers), render.jobs_table(jobs), render.datasets_table(datasets))
    _assert_whole(lines, [t.id for t in teachers.items] + [j.id for j in jobs.items] + ["tch_219ae745368c",
                                                                                      "ds_0123456789abcdef"])
    # the short columns the ids leave room for stay whole too
    _assert_whole(lines, ["representation", "distillation", "succeeded", "running 40%"])


def test_layer_listing_explains_flat_maps_and_the_output_layer():
    layers = LayerList(teacher_id="tch_1", items=[
        LayerOut(path="layer3.2.conv2", op="conv", output_shape=[64, 8, 8], d=4096, transfer="relu", tappable=True,
                 representation="flat"),
        LayerOut(path="layer1.0", op="conv", output_shape=[16, 32, 32], d=16384, transfer="relu", tappable=True,
                 representation="channels"),
        LayerOut(path="fc", op="linear", output_shape=[10], d=10, transfer="identity", auto_transfer="softmax",
                 tappable=True, representation="flat"),
        LayerOut(path="act", op="linear", output_shape=[10], d=10, transfer="gelu", tappable=False,
                 reason="GELU is not monotone"),
    ])
    _assert_whole(_render(render.layers_table(layers)), ["layer3.2.conv2"])
    rows = {line.split()[0]: line for line in _render(render.layers_table(layers), width=200)[4:] if line.strip()}
    assert "flat" not in "".join(rows.values())  # the bare word explained nothing
    assert "64x8x8 map fitted as one vector of 4096" in rows["layer3.2.conv2"]
    assert "16x32x32 map fitted as 16-channel rows at each position" in rows["layer1.0"]
    assert "identity (auto: softmax)" in rows["fc"] and "output layer" in rows["fc"]
    assert "GELU is not monotone" in rows["act"]


def test_jobs_show_prints_warnings_first_and_the_selection_table():
    metrics = {
        "warnings": ["the fit did not converge in 40 rounds: raise solver.max_iter", "k was capped at 63"],
        "selection": [
            {"method": "bregman", "k": 8, "validation_accuracy": 0.95, "test_accuracy": 0.94, "selected": True},
            {"method": "bregman", "k": 16, "validation_accuracy": 0.93, "test_accuracy": 0.951, "selected": False,
             "label_weight": 0.5},
        ],
        "accuracy": {"teacher": 0.969, "student": 0.942},
    }
    console = Console(width=WIDTH, record=True, color_system=None, file=open("/dev/null", "w"))
    render.show_job(console, fakes.job(metrics=metrics), fakes.artifacts(),
                    "http://127.0.0.1:8000/v1/jobs/job_bbc0d9a7eb17/artifacts/<name>")
    lines = console.export_text().splitlines()
    warn = [i for i, l in enumerate(lines) if l.startswith("warning: ")]
    assert [lines[i] for i in warn] == ["warning: the fit did not converge in 40 rounds: raise solver.max_iter",
                                        "warning: k was capped at 63"]
    metrics_at = next(i for i, l in enumerate(lines) if l.startswith("metrics"))
    assert max(warn) < metrics_at  # before the tables, not lost below them
    assert not any("warnings" in l or "selection." in l for l in lines[metrics_at:])  # not flattened as metrics

    sel_at = next(i for i, l in enumerate(lines) if l.startswith("selection"))
    header = lines[sel_at + 2]
    # every key of every row is a column, in the order first seen
    assert re.findall(r"[a-z_]+", header) == ["method", "k", "validation_accuracy", "test_accuracy", "selected",
                                              "label_weight"]
    rows = [l for l in lines[sel_at + 3:sel_at + 8] if "bregman" in l]
    assert len(rows) == 2
    assert re.findall(r"[\w.]+|-", rows[0].replace("│", " ")) == ["bregman", "8", "0.95", "0.94", "yes", "-"]
    assert re.findall(r"[\w.]+|-", rows[1].replace("│", " ")) == ["bregman", "16", "0.93", "0.951", "no", "0.5"]


def test_jobs_show_names_the_artifact_url_once_on_one_line():
    console = Console(width=WIDTH, record=True, color_system=None, file=open("/dev/null", "w"))
    url = "http://bregkd.internal.example.org:8000/v1/jobs/job_bbc0d9a7eb17/artifacts/<name>"
    render.show_job(console, fakes.job(), fakes.artifacts(), url)
    lines = console.export_text().splitlines()
    assert [l.strip() for l in lines if "http" in l] == [f"URL of each: {url}"]
    _assert_whole([l for l in lines if "http" not in l], [a.name for a in fakes.artifacts()])


def test_a_job_without_warnings_or_selection_prints_neither():
    console = Console(width=WIDTH, record=True, color_system=None, file=open("/dev/null", "w"))
    render.show_job(console, fakes.job(metrics={"divergence": 0.03}, state="running"))
    text = console.export_text()
    assert "warning" not in text and "selection" not in text and "divergence" in text
