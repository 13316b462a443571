"""Smoke test of benchmarks/distill_table.py: a tiny run on two worker processes writes the
table, the per-cell choices, the bregman ceilings, auto's row and the verdict (no accuracy is asserted
beyond "better than chance": the harness, not the quality, is under test here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_two_workers_write_table_ceilings_and_verdict(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.distill_table", "--tasks", "digits", "--no-tune", "--fractions", "0.1",
           "--seeds", "2", "--methods", "kd", "bregman k=16", "auto", "--jobs", "2", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| method | student params |" in proc.stdout and "headroom" in proc.stdout
    assert "verdict digits:" in proc.stdout and "auto vs best single method" in proc.stdout
    payload = json.loads((tmp_path / "distill_table.json").read_text())
    chosen = payload["chosen"]
    assert set(chosen) == {"digits|kd|0.1", "digits|bregman k=16|0.1", "digits|auto|0.1"}
    breg = chosen["digits|bregman k=16|0.1"]
    assert breg["k"] == [16, 16] and 0.3 < breg["mean"] <= 1.0
    assert 0.5 < breg["ceiling"] <= 1.0 and "ceiling" not in chosen["digits|kd|0.1"]
    assert set(chosen["digits|auto|0.1"]["chosen_methods"]) <= {"bregman", "kd", "hint", "labels"}
    assert len(payload["runs"]) == 6 and {r["seed"] for r in payload["runs"]} == {0, 1}
    for run in (r for r in payload["runs"] if r["variant"] == "auto"):  # kept for offline study of the rule
        table = run["selection"]
        assert len(table) >= 4 and sum(row["chosen"] for row in table) == 1
        assert run["selection_validation_rows"] >= 20 and all(0 <= row["validation_score"] <= 1 for row in table)
        assert next(row["method"] for row in table if row["chosen"]) == run["method"]
    (verdict,) = payload["verdicts"]
    (row,) = verdict["per_fraction"]
    assert row["best_baseline"] == "kd" and row["best_bregman"] == "bregman k=16"
    teacher = payload["teacher_test_accuracy"]["digits"]
    assert abs(row["headroom_points"] - 100 * (teacher - row["baseline_acc"])) < 1e-9
    best_single = max(chosen["digits|kd|0.1"]["mean"], breg["mean"])
    assert abs(row["auto_gap_points"] - 100 * (chosen["digits|auto|0.1"]["mean"] - best_single)) < 1e-9
    assert verdict["small_fraction_gap_points"] == row["gap_points"]


def test_augmented_copies_are_shifted_noisy_images_with_their_labels() -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks.distill_table import augmented

    x = torch.rand(5, 64) * 16
    y = torch.arange(5)
    same_x, same_y = augmented(x, y, 0, seed=0)
    assert same_x is x and same_y is y
    xa, ya = augmented(x, y, 4, seed=3)
    assert xa.shape == (25, 64) and torch.equal(ya, y.repeat(5)) and torch.equal(xa[:5], x)
    for c in range(1, 5):
        copy = xa[5 * c: 5 * (c + 1)].reshape(5, 8, 8)
        # each copy is one of the 9 one-pixel shifts of the originals, up to noise of 5 % of the range
        errors = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                moved = torch.zeros(5, 8, 8)
                src = x.reshape(5, 8, 8)
                moved[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
                    src[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
                errors.append(float((copy - moved).std()))
        assert min(errors) < 0.06 * 16 < max(errors)
    assert torch.equal(augmented(x, y, 4, seed=3)[0], xa)  # deterministic per seed


def test_a_cell_whose_k_exceeds_its_rows_is_skipped_and_left_out_of_the_verdict() -> None:
    """digits-hard at 1 % has 12 rows: "bregman k=16" cannot be fitted there (it crashed the
    whole table once); the cell is skipped and the verdict compares what was run."""
    from benchmarks.distill_table import verdict_of

    names = [{"name": "kd", "method": "kd"}, {"name": "bregman", "method": "bregman"},
             {"name": "bregman k=16", "method": "bregman"}]
    chosen = {"t|kd|0.01": {"mean": 0.30}, "t|bregman|0.01": {"mean": 0.32},
              "t|bregman k=16|0.01": {"skipped": "k=16 needs more than 12 rows", "mean": None}}
    v = verdict_of(chosen, "t", [0.01], names, teacher_acc=0.8)
    (row,) = v["per_fraction"]
    assert row["best_bregman"] == "bregman" and abs(row["gap_points"] - 2.0) < 1e-9
    chosen["t|bregman|0.01"] = {"skipped": "k=16 needs more than 12 rows", "mean": None}
    (row,) = verdict_of(chosen, "t", [0.01], names, teacher_acc=0.8)["per_fraction"]
    assert "gap_points" not in row and row["best_baseline"] == "kd"
