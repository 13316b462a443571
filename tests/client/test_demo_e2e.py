"""``bregkd demo --quick``: the one-command path from nothing to a distilled student."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from client.cli import app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_quick_end_to_end(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "digits test accuracy" in out and "student (downloaded student.pt2)" in out

    dist = tmp_path / "artifacts" / "distillation"
    rep = tmp_path / "artifacts" / "representation"
    for path in (dist / "student.pt2", dist / "student.safetensors", dist / "report.json",
                 dist / "training_curves.png", dist / "accuracy.png", rep / "layer.safetensors",
                 rep / "layer.json", rep / "divergence_vs_k.png"):
        assert path.is_file() and path.stat().st_size > 0, path

    report = json.loads((dist / "report.json").read_text())
    assert {"teacher", "student", "labels", "kd"} <= set(report["accuracy"])
    # the student really learned something (10 classes: chance is 0.1), measured on the
    # downloaded program and printed in the table
    row = next(line for line in out.splitlines() if "student (downloaded" in line)
    local_acc = float(row.rstrip(" │").split()[-1])
    assert local_acc > 0.3
    assert abs(local_acc - report["accuracy"]["student"]) < 0.02
    # the stack was stopped: nothing listens at the API address any more
    api_line = next(line for line in out.splitlines() if "API at http://" in line)
    url = api_line.split("API at ")[1].split()[0]
    import httpx

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
