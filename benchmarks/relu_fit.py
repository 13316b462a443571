"""Convergence of the Bregman PCA fit on ReLU layers: the joint step's model with and without
its curvature floor (``bregman._pca_solver._JOINT_CURVATURE_FLOOR``), on the same rows.

ReLU's Hessian ``1[â > 0]`` is singular; the solvers floor it (the transfer's
``hessian_floor``, 1e-6). Rows with few active units then have coefficient problems that are
nearly flat in some directions, and the joint step's linearized coefficient response was far
too large there. This benchmark fits every problem twice — the model floored at
``--floor`` (default: the solver's constant) and at 0 (the transfer's own floor only, as
before session 10) — and prints iterations, seconds, the final divergence and whether the fit
converged, per problem and on average.

Problems: ``synthetic``: the pre-activations of a random ReLU layer on a ReLU feature map, with
a per-row offset so that rows range from mostly dead to mostly active (``--seeds`` seeds at
each ``--sizes`` N:d:k); ``--rows FILE`` adds rows saved with ``torch.save`` (e.g. a conv
map's positions, one row per example and position).

    python benchmarks/relu_fit.py --seeds 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._report import report  # noqa: E402


def relu_layer_rows(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    """(n, d) float64 pre-activations: ReLU features of a rank-``rank`` code, mixed, plus a
    per-row offset in [-2.5, 0.5] (rows from mostly dead to mostly active) and a little noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    w1 = torch.randn(rank, d, generator=g, dtype=torch.float64)
    w2 = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    shift = 3 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 2.5
    return torch.relu(z @ w1) @ w2 + shift + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)


def fit(rows: torch.Tensor, k: int, floor: float, max_iter: int) -> dict:
    from bregman import _pca_solver
    from bregman.pca import BregmanPCA

    before = _pca_solver._JOINT_CURVATURE_FLOOR
    _pca_solver._JOINT_CURVATURE_FLOOR = floor
    try:
        t0 = time.perf_counter()
        est = BregmanPCA("relu", n_components=k, max_iter=max_iter).fit(rows)
        seconds = time.perf_counter() - t0
    finally:
        _pca_solver._JOINT_CURVATURE_FLOOR = before
    return {"seconds": seconds, "iterations": int(est.n_iter_), "divergence": float(est.divergence_),
            "converged": bool(est.converged_), "optimality": float(est.optimality_)}


def _cells(r: dict) -> str:
    """One model's columns of the progress line."""
    return f"{r['iterations']:4d} {r['seconds']:6.1f} {r['divergence']:12.6f} {'yes' if r['converged'] else 'no ':3s}"


def main(argv: list[str] | None = None) -> None:
    from bregman import _pca_solver

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["1200:24:8:6", "2000:32:8:6", "3000:32:12:8"],
                    help="synthetic problems as N:d:rank:k")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", nargs="*", default=[], help="saved (N, d) row tensors, each as FILE:k")
    ap.add_argument("--floor", type=float, default=_pca_solver._JOINT_CURVATURE_FLOOR)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    problems = []
    for size in args.sizes:
        n, d, rank, k = (int(v) for v in size.split(":"))
        problems += [(f"synthetic {n}x{d} k={k} seed {s}", lambda n=n, d=d, r=rank, s=s: relu_layer_rows(n, d, r, s), k)
                     for s in range(args.seeds)]
    for spec in args.rows:
        path, k = spec.rsplit(":", 1)
        problems.append((f"{Path(path).name} k={k}", lambda p=path: torch.load(p, weights_only=True).double(), int(k)))
    rows_out = []
    print(f"{'problem':36s} | {'floored: its   s     divergence  conv':40s} | {'unfloored: its   s     divergence  conv':40s}")
    for name, make, k in problems:
        A = make()
        new, old = fit(A, k, args.floor, args.max_iter), fit(A, k, 0.0, args.max_iter)
        row = {"problem": name, "n": int(A.shape[0]), "d": int(A.shape[1]), "k": k}
        for label, r in (("floored", new), ("unfloored", old)):
            row.update({f"{key}_{label}": value for key, value in r.items()})
        row["divergence_ratio"] = new["divergence"] / old["divergence"]
        rows_out.append(row)
        print(f"{name:36s} | {_cells(new):40s} | {_cells(old):40s}", flush=True)
    ratios = [r["divergence_ratio"] for r in rows_out]
    summary = {
        "floor": args.floor,
        "converged": {"floored": sum(r["converged_floored"] for r in rows_out),
                      "unfloored": sum(r["converged_unfloored"] for r in rows_out), "of": len(rows_out)},
        "seconds_total": {"floored": sum(r["seconds_floored"] for r in rows_out),
                          "unfloored": sum(r["seconds_unfloored"] for r in rows_out)},
        "iterations_total": {"floored": sum(r["iterations_floored"] for r in rows_out),
                             "unfloored": sum(r["iterations_unfloored"] for r in rows_out)},
        "divergence_ratio_median": statistics.median(ratios), "divergence_ratio_max": max(ratios),
        "divergence_ratio_min": min(ratios),
    }
    print(summary)
    report("relu_fit", rows_out, params=vars(args), extra={"summary": summary}, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
