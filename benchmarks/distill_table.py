"""Quality benchmark: accuracy of small students on digits, per method and labelled fraction.

Protocol (identical for every method; run ``--help`` for the options)
-----------------------------------------------------------------------
- Data: the built-in ``digits`` (1437 training / 360 test rows, fixed split). A validation set of
  ``--val-rows`` rows (default 287, 20 %) is drawn once from the training split (seed 12345);
  the remaining training rows form the *pool*.
- Teacher (fixed recipe): MLP 64 → 256 → 128 → 10 with ReLU, AdamW lr 1e-3, weight decay 1e-4,
  cosine schedule, batch 64, 30 epochs, seed 0, trained on the whole training split.
- Transfer set: for a fraction f, ``round(f · |pool|)`` rows drawn from the pool with the run's
  seed, *with their labels*. Every method sees exactly these inputs: kd, hint and bregman use the
  teacher's targets on these inputs only (no extra unlabelled inputs), and the labels where the
  method's loss has a label term. The same subset is used by every method for a given seed.
- Students: MLP 64 → 32 → out (ReLU); out = 10 logits (labels, kd), the layer width d (hint) or
  k coefficients (bregman). Parameter counts are in the JSON.
- Layers: the logits (path "4", softmax transfer: the paper's choice) and the penultimate layer
  (path "2", ReLU transfer).
- Budget: the library default (batch ``min(64, max(16, N/4))``, about 1500 AdamW steps, cosine).
- Tuning, the same for every method: a grid of 3 learning rates (3e-3, 1e-2, 3e-2; a first run
  with 1e-3, 3e-3, 1e-2 chose the top value almost everywhere) × 2 values of the method's
  own knob (labels: weight decay; kd: temperature; hint and bregman: label-loss weight through
  the teacher's head, 0 or 0.5), each
  config trained with ``--tune-seeds`` seeds on their own subsets, the best mean validation
  accuracy chosen per method and fraction. Then ``--seeds`` evaluation seeds (other subsets)
  report test accuracy: mean ± std.
- Ceiling: for each bregman variant, the test accuracy of the teacher's *own* coefficients
  through the imported layer and head — what a perfect student of that representation gets.
  The verdict also prints the headroom, teacher accuracy − best baseline: a student that does
  not beat its teacher cannot lead the best baseline by more than that.
- ``--augment-copies N`` (default 0): the transfer set becomes the rows plus N shifted, noisy
  copies of them (see :func:`augmented`; ``--augment noise``: the library's
  ``distill(augment_copies=N)``, Gaussian noise only), for every method alike; the teacher
  labels the copies once. Without it the teacher is queried only on the labelled rows.
- Parallel: ``--jobs`` worker processes (spawned; each rebuilds the teacher from its weights)
  take one (fraction, method) cell at a time; each cell's runs are seeded, so the numbers do
  not depend on the number of workers.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import markdown_table, report  # noqa: E402
from bregman.datasets import load_builtin  # noqa: E402
from bregman.distillation import TargetCache, distill  # noqa: E402
from bregman.models import build_model  # noqa: E402
from bregman.teachers import Teacher  # noqa: E402
from bregman.training import accuracy, seeded, train_classifier  # noqa: E402

TEACHER_RECIPE = {"arch": "mlp", "args": {"in_features": 64, "hidden": [256, 128], "num_classes": 10},
                  "epochs": 30, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "seed": 0}
STUDENT = {"arch": "mlp", "hidden": [32]}
LRS = (3e-3, 1e-2, 3e-2)
# method's own knob: 2 values each, so every method gets the same 6-config search
KNOBS: dict[str, tuple[str, tuple[float, ...]]] = {
    "labels": ("weight_decay", (1e-4, 1e-2)),
    "kd": ("temperature", (2.0, 4.0)),
    "hint": ("label_weight", (0.0, 0.5)),
    # the same label knob as hint (a first run tuned the divergence weight {0, 1} instead:
    # within 0.3 points of each other at 2 %, untuned)
    "bregman": ("label_weight", (0.0, 0.5)),
}


def variants(fixed_k: int, fixed_k_penultimate: int) -> list[dict[str, Any]]:
    """The methods compared: (name, method, layer, n_components).

    bregman runs with the library's default k at each layer (``n_components=None``: every
    direction, k = d − 1 = 9, at the softmax logits; the smallest k explaining
    ``DEFAULT_EXPLAINED_DIVERGENCE`` elsewhere), with a fixed small k, and at the logits also
    with the share rule (what the default was there before it measured worse).
    """
    from bregman.distillation.api import DEFAULT_EXPLAINED_DIVERGENCE

    share = f"k={DEFAULT_EXPLAINED_DIVERGENCE:.1%}".replace(".0%", "%")
    return [
        {"name": "labels", "method": "labels", "layer": None, "k": None},
        {"name": "kd", "method": "kd", "layer": None, "k": None},
        {"name": "hint@logits", "method": "hint", "layer": "4", "k": None},
        {"name": "hint@penultimate", "method": "hint", "layer": "2", "k": None},
        {"name": f"bregman@logits {share}", "method": "bregman", "layer": "4", "k": DEFAULT_EXPLAINED_DIVERGENCE},
        {"name": f"bregman@logits k={fixed_k}", "method": "bregman", "layer": "4", "k": fixed_k},
        {"name": "bregman@logits default (k=9)", "method": "bregman", "layer": "4", "k": None},
        {"name": f"bregman@penultimate default ({share})", "method": "bregman", "layer": "2", "k": None},
        {"name": f"bregman@penultimate k={fixed_k_penultimate}", "method": "bregman", "layer": "2",
         "k": fixed_k_penultimate},
    ]


def train_teacher(ds) -> tuple[Teacher, float, float]:
    t0 = time.perf_counter()
    with seeded(TEACHER_RECIPE["seed"]):
        module = build_model(TEACHER_RECIPE["arch"], **TEACHER_RECIPE["args"])
    train_classifier(module, ds.x_train, ds.y_train, epochs=TEACHER_RECIPE["epochs"],
                     batch_size=TEACHER_RECIPE["batch_size"], lr=TEACHER_RECIPE["lr"],
                     weight_decay=TEACHER_RECIPE["weight_decay"], seed=TEACHER_RECIPE["seed"])
    return Teacher.from_module(module, (64,)), accuracy(module, ds.x_test, ds.y_test), time.perf_counter() - t0


def subset(pool: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    n = max(10, round(fraction * pool.numel()))
    perm = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(10_000 + seed))
    return pool[perm[:n]]


def augmented(x: torch.Tensor, y: torch.Tensor, copies: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows plus ``copies`` shifted, noisy copies (digits are 8×8 images): each copy moves
    every image by one random offset in {−1, 0, 1}² (vacated pixels 0) and adds Gaussian
    noise of 5 % of the pixel range. Labels are copied; teacher targets are computed on the
    copies once, like on the rows (no teacher pass during the student's epochs)."""
    if copies <= 0:
        return x, y
    g = torch.Generator().manual_seed(50_000 + seed)
    images, scale = x.reshape(-1, 8, 8), float(x.abs().max())
    parts = [x]
    for _ in range(copies):
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        moved = torch.zeros_like(images)
        moved[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
            images[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
        parts.append((moved + 0.05 * scale * torch.randn(moved.shape, generator=g)).reshape(-1, 64))
    return torch.cat(parts), y.repeat(copies + 1)


def run_one(teacher, ds, rows, variant, config, seed, eval_x, eval_y, cache) -> dict[str, float]:
    knob, value = config["knob"], config["value"]
    kwargs: dict[str, Any] = {"lr": config["lr"], knob: value}
    copies, kind = _WORKER.get("augment_copies", 0), _WORKER.get("augment", "shift")
    x, y = ds.x_train[rows], ds.y_train[rows]
    if kind == "shift":
        x, y = augmented(x, y, copies, seed)
    else:  # the library's own noisy copies
        kwargs.update(augment_copies=copies)
    result = distill(teacher, (x, y), layer=variant["layer"],
                     method=variant["method"], student=STUDENT, n_components=variant["k"], seed=seed,
                     test=(eval_x, eval_y), cache=cache, measure_latency=False, **kwargs)
    m = result.metrics
    out = {"accuracy": m["test_accuracy"], "agreement": m["test_agreement"], "k": result.k,
           "student_parameters": m["student_parameters"], "parameters": m["parameters"],
           "train_time_s": m["train_time_s"]}
    if "test_representation_accuracy" in m:
        out["representation_accuracy"] = m["test_representation_accuracy"]
    return out


# --- one (fraction, variant): tuning then evaluation; runs in a worker process ---------------
_WORKER: dict[str, Any] = {}


def _setup(teacher_state: dict[str, torch.Tensor] | None, val_rows: int, threads: int,
           augment_copies: int = 0, augment: str = "shift") -> None:
    """Per process: the teacher (rebuilt from its weights, or trained), data, split and cache."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.ERROR)
    ds = load_builtin("digits")
    if teacher_state is None:
        teacher, acc, seconds = train_teacher(ds)
    else:
        module = build_model(TEACHER_RECIPE["arch"], **TEACHER_RECIPE["args"])
        module.load_state_dict(teacher_state)
        teacher, acc, seconds = Teacher.from_module(module.eval(), (64,)), float("nan"), 0.0
    perm = torch.randperm(ds.x_train.shape[0], generator=torch.Generator().manual_seed(12345))
    _WORKER.update(ds=ds, teacher=teacher, teacher_acc=acc, teacher_time=seconds, val=perm[:val_rows],
                   pool=perm[val_rows:], cache=TargetCache(), augment_copies=augment_copies,
                   augment=augment)


def _run_cell(fraction: float, variant: dict[str, Any], grid: list[dict[str, Any]], seeds: int,
              tune_seeds: int) -> dict[str, Any]:
    w = _WORKER
    ds, teacher, pool, cache = w["ds"], w["teacher"], w["pool"], w["cache"]
    x_val, y_val = ds.x_train[w["val"]], ds.y_train[w["val"]]
    t0 = time.perf_counter()
    best, best_score, tuning = grid[0], -1.0, []
    if len(grid) > 1:
        for config in grid:
            scores = [run_one(teacher, ds, subset(pool, fraction, 1000 + s), variant, config, 1000 + s,
                              x_val, y_val, cache)["accuracy"] for s in range(tune_seeds)]
            score = statistics.mean(scores)
            tuning.append({**config, "val_accuracy": score})
            if score > best_score:
                best, best_score = config, score
    results = [run_one(teacher, ds, subset(pool, fraction, seed), variant, best, seed, ds.x_test, ds.y_test, cache)
               for seed in range(seeds)]
    accs = [r["accuracy"] for r in results]
    cell = {"config": best, "val_accuracy": best_score, "tuning": tuning,
            "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "agreement": statistics.mean(r["agreement"] for r in results),
            "k": [r["k"] for r in results], "student_parameters": results[0]["student_parameters"],
            "parameters": results[0]["parameters"], "n": int(subset(pool, fraction, 0).numel()),
            "seconds": time.perf_counter() - t0, "runs": results}
    if "representation_accuracy" in results[0]:
        cell["ceiling"] = statistics.mean(r["representation_accuracy"] for r in results)
    return cell


def _cells(executor: Any, jobs: list[tuple[float, dict[str, Any]]], args: argparse.Namespace,
           grid_of: Any) -> Iterator[tuple[float, dict[str, Any], dict[str, Any]]]:
    """(fraction, variant, cell) as cells finish: in this process, or on the worker pool."""
    if executor is None:
        for fraction, variant in jobs:
            yield fraction, variant, _run_cell(fraction, variant, grid_of(variant), args.seeds, args.tune_seeds)
        return
    futures = {executor.submit(_run_cell, f, v, grid_of(v), args.seeds, args.tune_seeds): (f, v) for f, v in jobs}
    for fut in as_completed(futures):
        f, v = futures[fut]
        yield f, v, fut.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.10, 0.25, 1.0])
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds (default 5)")
    parser.add_argument("--tune-seeds", type=int, default=1, help="seeds per tuning config (default 1)")
    parser.add_argument("--methods", nargs="+", default=None, help="variant names to run (default: all)")
    parser.add_argument("--fixed-k", type=int, default=4, help="the fixed small k at the logits (default 4)")
    parser.add_argument("--fixed-k-penultimate", type=int, default=16, help="fixed k at the penultimate layer")
    parser.add_argument("--val-rows", type=int, default=287)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="learning-rate grid")
    parser.add_argument("--quick", action="store_true",
                        help="2 fractions, 2 seeds, no tuning (lr 3e-3, first knob value): a smoke run")
    parser.add_argument("--no-tune", action="store_true", help="use lr 3e-3 and the first knob value")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (tiny nets: 1 is fastest)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes, one (fraction, method) cell each at a time (default: CPU count)")
    parser.add_argument("--augment-copies", type=int, default=0,
                        help="add this many shifted, noisy copies of the transfer rows (teacher-labelled once)")
    parser.add_argument("--augment", choices=["shift", "noise"], default="shift",
                        help="shift: the harness's one-pixel shifts plus noise (digits images); noise: the "
                             "library's distill(augment_copies=...), Gaussian noise only")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.fractions, args.seeds, args.no_tune = [0.05, 1.0], 2, True
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    t_start = time.perf_counter()
    _setup(None, args.val_rows, args.threads, args.augment_copies, args.augment)
    teacher, teacher_acc = _WORKER["teacher"], _WORKER["teacher_acc"]
    pool = _WORKER["pool"]
    all_variants = variants(args.fixed_k, args.fixed_k_penultimate)
    if args.methods:
        unknown = set(args.methods) - {v["name"] for v in all_variants}
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {[v['name'] for v in all_variants]}")
        all_variants = [v for v in all_variants if v["name"] in args.methods]
    print(f"teacher test accuracy {teacher_acc:.4f} (trained in {_WORKER['teacher_time']:.1f} s); pool "
          f"{pool.numel()} rows, validation {_WORKER['val'].numel()} rows; {args.jobs} worker process(es)", flush=True)

    def grid_of(variant: dict[str, Any]) -> list[dict[str, Any]]:
        knob, values = KNOBS[variant["method"]]
        if args.no_tune:
            return [{"lr": 3e-3, "knob": knob, "value": values[0]}]
        return [{"lr": lr, "knob": knob, "value": v} for lr, v in itertools.product(args.lrs, values)]

    jobs = [(f, v) for f in args.fractions for v in all_variants]
    chosen: dict[str, dict[str, Any]] = {}
    raw: list[dict[str, Any]] = []
    executor = None
    if args.jobs > 1:
        # spawn, not fork: the parent has run OpenMP kernels (teacher training); workers rebuild
        # the teacher from its weights instead of retraining it
        state = {k: v.detach().clone() for k, v in teacher.module.state_dict().items()}
        executor = ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"),
                                       initializer=_setup,
                                       initargs=(state, args.val_rows, args.threads, args.augment_copies,
                                                 args.augment))
    try:
        for fraction, variant, cell in _cells(executor, jobs, args, grid_of):
            key = f"{variant['name']}|{fraction}"
            for seed, r in enumerate(cell.pop("runs")):
                raw.append({"variant": variant["name"], "fraction": fraction, "seed": seed, **r})
            chosen[key] = cell
            ceiling = f", ceiling {100 * cell['ceiling']:.2f}" if "ceiling" in cell else ""
            best = cell["config"]
            print(f"[{time.perf_counter() - t_start:7.1f}s] f={fraction:<5} {variant['name']:<28} "
                  f"acc {100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}{ceiling}  "
                  f"(lr={best['lr']}, {best['knob']}={best['value']}, k={cell['k']})", flush=True)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    # markdown: one row per method, one column per fraction
    first = all_variants[0]["name"]
    columns = ["method", "student params"] + [f"{100 * f:g}% (n={chosen[first + '|' + str(f)]['n']})"
                                              for f in args.fractions]
    rows, ceilings = [], []
    for variant in all_variants:
        row: dict[str, Any] = {"method": variant["name"],
                               "student params": int(chosen[f"{variant['name']}|{args.fractions[0]}"]["student_parameters"])}
        ceiling_row: dict[str, Any] = {"method": variant["name"], "student params": row["student params"]}
        for f, col in zip(args.fractions, columns[2:]):
            c = chosen[f"{variant['name']}|{f}"]
            row[col] = f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"
            if "ceiling" in c:
                ceiling_row[col] = f"{100 * c['ceiling']:.2f}"
        rows.append(row)
        if len(ceiling_row) > 2:
            ceilings.append(ceiling_row)
    # the target: best bregman variant against the best baseline, per fraction; the
    # headroom (teacher − best baseline) bounds what any student that does not beat its teacher
    # can gain over the baseline
    verdict = []
    for f in args.fractions:
        base = [(chosen[f"{v['name']}|{f}"]["mean"], v["name"]) for v in all_variants if v["method"] != "bregman"]
        breg = [(chosen[f"{v['name']}|{f}"]["mean"], v["name"]) for v in all_variants if v["method"] == "bregman"]
        if base and breg:
            (b_acc, b_name), (r_acc, r_name) = max(base), max(breg)
            verdict.append({"fraction": f, "best_baseline": b_name, "baseline_acc": b_acc, "best_bregman": r_name,
                            "bregman_acc": r_acc, "gap_points": 100 * (r_acc - b_acc),
                            "headroom_points": 100 * (teacher_acc - b_acc),
                            "bregman_ceiling": chosen[f"{r_name}|{f}"].get("ceiling")})
    print(f"\nteacher: MLP 64-256-128-10, test accuracy {100 * teacher_acc:.2f}%, "
          f"{sum(p.numel() for p in teacher.module.parameters())} parameters\n")
    report("distill_table", rows, columns=columns,
           params={"fractions": args.fractions, "seeds": args.seeds, "tune_seeds": args.tune_seeds,
                   "no_tune": args.no_tune, "student": STUDENT, "teacher": TEACHER_RECIPE, "lrs": args.lrs,
                   "knobs": KNOBS, "val_rows": args.val_rows, "pool_rows": int(pool.numel()), "jobs": args.jobs,
                   "augment_copies": args.augment_copies, "augment": args.augment},
           extra={"teacher_test_accuracy": teacher_acc, "chosen": chosen, "runs": raw, "verdict": verdict,
                  "ceilings": ceilings, "wall_time_s": time.perf_counter() - t_start},
           out_dir=args.out_dir)
    if ceilings:
        print("\nceiling of each bregman variant: test accuracy of the teacher's own coefficients through "
              "the imported layer and head (mean over seeds)\n")
        print(markdown_table(ceilings, columns))
    if verdict:
        print("\nbest bregman vs best baseline (accuracy points; headroom = teacher − best baseline):")
        for v in verdict:
            print(f"  {100 * v['fraction']:g}%: {v['best_bregman']} {100 * v['bregman_acc']:.2f} vs "
                  f"{v['best_baseline']} {100 * v['baseline_acc']:.2f} -> {v['gap_points']:+.2f} "
                  f"(headroom {v['headroom_points']:+.2f})")
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
