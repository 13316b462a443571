"""Smoke test of benchmarks/fit_speed.py: it runs end to end at a tiny size, and its baseline
solvers really minimize the objective they are compared on (no timings are asserted)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import fit_speed  # noqa: E402
from benchmarks._fit_baselines import (  # noqa: E402
    euclidean_pca,
    fit_lbfgs_joint,
    fit_sgd_momentum,
    mean_divergence,
    newton_coefficients,
)
from benchmarks._fit_workloads import ChunkedRows, get_spec, make_data  # noqa: E402
from bregman.transfers import get_transfer  # noqa: E402


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_script_runs_end_to_end_and_writes_every_row(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "fit_speed.py"), "--quick", "--n", "160", "--budget-s", "0.3",
           "--in-process", "--newton-iters", "5", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| workload | method |" in proc.stdout  # the markdown table was printed
    payload = json.loads((tmp_path / "fit_speed.json").read_text())
    rows = {(r["workload"], r["method"]): r for r in payload["rows"]}
    for workload, methods in fit_speed.DEFAULT_METHODS.items():
        for method in methods:
            row = rows[(workload, method)]
            for key in ("final_divergence", "own_divergence", "reprojected_divergence", "wall_s", "peak_rss_mib"):
                assert _finite(row[key]), (workload, method, key, row[key])
            assert row["final_divergence"] >= 0
            reach = row["time_to_target_s"]
            assert reach == "not reached" or _finite(reach)
    # at least one method reaches the best divergence on each workload, by definition
    for workload in fit_speed.DEFAULT_METHODS:
        assert any(_finite(r["time_to_target_s"]) for (w, _), r in rows.items() if w == workload)
    targets = {t["target"][:3] for t in payload["targets"]}
    assert targets == {"(a)", "(b)", "(c)", "(d)"}
    (d_target,) = [t for t in payload["targets"] if t["target"].startswith("(d)")]
    assert "scikit-learn PCA" in d_target["detail"] and d_target["measured"].endswith("x")
    verdicts = {"PASS", "FAIL", "wall PASS, cpu FAIL", "wall FAIL, cpu PASS"}
    assert all(t["result"] in verdicts for t in payload["targets"]), payload["targets"]


def test_child_process_reports_peak_memory() -> None:
    args = fit_speed.parse_args(["--quick", "--n", "160"])
    result = fit_speed.run_child("a", "imports", args)
    assert result["method"] == "imports" and result["peak_rss_mib"] > 10


@pytest.mark.parametrize("workload", ["a", "b"])
def test_baseline_solvers_decrease_the_objective(workload: str) -> None:
    spec = get_spec(workload, n=300, quick=True)
    A = make_data(spec)
    transfer = get_transfer(spec.transfer, **spec.transfer_params)
    m0, V0 = euclidean_pca(A, spec.k)
    start = mean_divergence(transfer.divergence, A, m0, V0, (A - m0) @ V0.T)

    # Step counts, not the clock, bound these runs, so a loaded machine changes nothing.
    lbfgs = fit_lbfgs_joint(A, transfer.divergence, spec.k, budget_s=600, max_steps=3)
    assert lbfgs.trajectory[0][1] == pytest.approx(start, rel=1e-5)
    assert lbfgs.divergence < 0.99 * start
    assert lbfgs.n_iter > 0 and len(lbfgs.snapshots) >= 1

    sgd = fit_sgd_momentum(A, transfer.divergence, spec.k, budget_s=600, max_epochs=2)
    assert sgd.divergence < sgd.trajectory[0][1]
    assert sgd.info["epochs"] == 2

    # The common re-projection only improves on a method's own coefficients.
    C = newton_coefficients(transfer, A, lbfgs.mean, lbfgs.components, iters=10)
    assert mean_divergence(transfer.divergence, A, lbfgs.mean, lbfgs.components, C) <= lbfgs.divergence * (1 + 1e-5)


def test_chunks_reproduce_the_in_memory_rows() -> None:
    spec = get_spec("b", n=1234, quick=True)
    chunks = ChunkedRows(spec, chunk_rows=300)
    assert len(chunks) == 5
    assert torch.equal(torch.cat(list(chunks)), make_data(spec))
    assert torch.equal(torch.cat(list(chunks)), torch.cat(list(chunks)))  # re-iterable


def test_short_fits_are_timed_by_the_median_of_repeats() -> None:
    from benchmarks._fit_baselines import FitResult

    mean, comps = torch.zeros(3), torch.zeros(1, 3)
    first = FitResult("x", mean, comps, 1.0, [(2.0, 1.0, 4.0)], 2.0, 4.0, 1, {}, [(2.0, 4.0, mean, comps, None)])
    walls = iter([5.0, 1.0, 3.0, 0.5])  # with the first (2.0): median of 5 runs is 2.0 -> pick 2.0
    again = lambda: FitResult("x", mean, comps, 1.0, [], (w := next(walls)), 2 * w, 1, {}, [])  # noqa: E731
    res = fit_speed._median_of_repeats(first, again, 5)
    assert res.wall_s == 2.0 and res.cpu_s == 4.0
    assert res.info["repeat_wall_s"] == [2.0, 5.0, 1.0, 3.0, 0.5]
    walls = iter([0.5, 0.4])
    first = FitResult("x", mean, comps, 1.0, [(2.0, 1.0, 4.0)], 2.0, 4.0, 1, {}, [(2.0, 4.0, mean, comps, None)])
    res = fit_speed._median_of_repeats(first, again, 3)
    assert res.wall_s == 0.5  # the first run (2.0 s) was the outlier
    assert res.trajectory == [(0.5, 1.0, 1.0)]  # times scaled to the median clock
    assert res.snapshots[0][:2] == (0.5, 1.0)
