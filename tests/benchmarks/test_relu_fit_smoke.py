"""Smoke test of benchmarks/relu_fit.py: both models run on the same rows at a tiny size, the
solver's floor is restored afterwards, and the JSON holds what the README's table reads."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import relu_fit  # noqa: E402
from bregman import _pca_solver  # noqa: E402


def test_relu_fit_runs_both_models_and_restores_the_floor(tmp_path):
    floor = _pca_solver._JOINT_CURVATURE_FLOOR
    rows = tmp_path / "rows.pt"
    torch.save(relu_fit.relu_layer_rows(200, 8, 3, seed=5), rows)
    relu_fit.main(["--sizes", "150:6:3:2", "--seeds", "1", "--rows", f"{rows}:2", "--max-iter", "4",
                   "--out-dir", str(tmp_path)])
    assert _pca_solver._JOINT_CURVATURE_FLOOR == floor
    out = json.loads((tmp_path / "relu_fit.json").read_text())
    assert [r["problem"] for r in out["rows"]] == ["synthetic 150x6 k=2 seed 0", "rows.pt k=2"]
    for r in out["rows"]:
        for model in ("floored", "unfloored"):
            assert 1 <= r[f"iterations_{model}"] <= 4 and r[f"divergence_{model}"] > 0
        assert r["divergence_ratio"] == r["divergence_floored"] / r["divergence_unfloored"]
    assert out["summary"]["converged"]["of"] == 2 and out["summary"]["floor"] == floor


def test_relu_layer_rows_range_from_mostly_dead_to_mostly_active():
    A = relu_fit.relu_layer_rows(2000, 16, 4, seed=0)
    active = (A > 0).double().mean(1)
    assert A.dtype == torch.float64 and A.shape == (2000, 16)
    assert float(active.min()) <= 0.1 and float(active.max()) >= 0.7
