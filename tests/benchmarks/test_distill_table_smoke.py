"""Smoke test of benchmarks/distill_table.py: a tiny run on two worker processes writes the
table, the per-cell choices, the bregman ceilings and the verdict (no accuracy is asserted
beyond "better than chance": the harness, not the quality, is under test here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_two_workers_write_table_ceilings_and_verdict(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.distill_table", "--no-tune", "--fractions", "0.1", "--seeds", "2",
           "--methods", "kd", "bregman@penultimate k=16", "--jobs", "2", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| method | student params |" in proc.stdout and "headroom" in proc.stdout
    payload = json.loads((tmp_path / "distill_table.json").read_text())
    chosen = payload["chosen"]
    assert set(chosen) == {"kd|0.1", "bregman@penultimate k=16|0.1"}
    breg = chosen["bregman@penultimate k=16|0.1"]
    assert breg["k"] == [16, 16] and 0.3 < breg["mean"] <= 1.0
    assert 0.5 < breg["ceiling"] <= 1.0 and "ceiling" not in chosen["kd|0.1"]
    assert len(payload["runs"]) == 4 and {r["seed"] for r in payload["runs"]} == {0, 1}
    (verdict,) = payload["verdict"]
    assert verdict["best_baseline"] == "kd"
    assert abs(verdict["headroom_points"] - 100 * (payload["teacher_test_accuracy"] - verdict["baseline_acc"])) < 1e-9
