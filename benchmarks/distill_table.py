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
  own knob (labels: weight decay; kd: temperature; hint: label-loss weight; bregman: weight of
  the layer's divergence term added to the coefficient loss), each
  config trained with ``--tune-seeds`` seeds on their own subsets, the best mean validation
  accuracy chosen per method and fraction. Then ``--seeds`` evaluation seeds (other subsets)
  report test accuracy: mean ± std.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import report  # noqa: E402
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
    "bregman": ("divergence_weight", (0.0, 1.0)),
}


def variants(fixed_k: int, fixed_k_penultimate: int) -> list[dict[str, Any]]:
    """The methods compared: (name, method, layer, n_components).

    bregman runs with the library's default k (the smallest k explaining
    ``DEFAULT_EXPLAINED_DIVERGENCE`` of the divergence on the transfer set), a fixed small k, and
    at the logits also the full k = d − 1 = 9 (softmax has one gauge direction): a 95 % rule
    picked k = 2..5 there.
    """
    from bregman.distillation.api import DEFAULT_EXPLAINED_DIVERGENCE

    share = f"k={DEFAULT_EXPLAINED_DIVERGENCE:.1%}".replace(".0%", "%")
    return [
        {"name": "labels", "method": "labels", "layer": None, "k": None},
        {"name": "kd", "method": "kd", "layer": None, "k": None},
        {"name": "hint@logits", "method": "hint", "layer": "4", "k": None},
        {"name": "hint@penultimate", "method": "hint", "layer": "2", "k": None},
        {"name": f"bregman@logits {share}", "method": "bregman", "layer": "4", "k": None},
        {"name": f"bregman@logits k={fixed_k}", "method": "bregman", "layer": "4", "k": fixed_k},
        {"name": "bregman@logits k=9", "method": "bregman", "layer": "4", "k": 9},
        {"name": f"bregman@penultimate {share}", "method": "bregman", "layer": "2", "k": None},
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


def run_one(teacher, ds, rows, variant, config, seed, eval_x, eval_y, cache) -> dict[str, float]:
    knob, value = config["knob"], config["value"]
    kwargs: dict[str, Any] = {"lr": config["lr"], knob: value}
    result = distill(teacher, (ds.x_train[rows], ds.y_train[rows]), layer=variant["layer"],
                     method=variant["method"], student=STUDENT, n_components=variant["k"], seed=seed,
                     test=(eval_x, eval_y), cache=cache, measure_latency=False, **kwargs)
    m = result.metrics
    return {"accuracy": m["test_accuracy"], "agreement": m["test_agreement"], "k": result.k,
            "student_parameters": m["student_parameters"], "parameters": m["parameters"],
            "train_time_s": m["train_time_s"]}


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
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny nets: 1 is fastest)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    if args.quick:
        args.fractions, args.seeds, args.no_tune = [0.05, 1.0], 2, True

    t_start = time.perf_counter()
    ds = load_builtin("digits")
    teacher, teacher_acc, teacher_time = train_teacher(ds)
    n_train = ds.x_train.shape[0]
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(12345))
    val_rows, pool = perm[: args.val_rows], perm[args.val_rows:]
    x_val, y_val = ds.x_train[val_rows], ds.y_train[val_rows]
    cache = TargetCache()
    all_variants = variants(args.fixed_k, args.fixed_k_penultimate)
    if args.methods:
        unknown = set(args.methods) - {v["name"] for v in all_variants}
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {[v['name'] for v in all_variants]}")
        all_variants = [v for v in all_variants if v["name"] in args.methods]
    print(f"teacher test accuracy {teacher_acc:.4f} (trained in {teacher_time:.1f} s); pool {pool.numel()} rows, "
          f"validation {val_rows.numel()} rows", flush=True)

    raw: list[dict[str, Any]] = []
    chosen: dict[str, dict[str, Any]] = {}
    for fraction in args.fractions:
        for variant in all_variants:
            knob, values = KNOBS[variant["method"]]
            grid = [{"lr": lr, "knob": knob, "value": v} for lr, v in itertools.product(args.lrs, values)]
            if args.no_tune:
                grid = [{"lr": 3e-3, "knob": knob, "value": values[0]}]
            best, best_score, tuning = grid[0], -1.0, []
            if len(grid) > 1:
                for config in grid:
                    scores = [run_one(teacher, ds, subset(pool, fraction, 1000 + s), variant, config, 1000 + s,
                                      x_val, y_val, cache)["accuracy"] for s in range(args.tune_seeds)]
                    score = statistics.mean(scores)
                    tuning.append({**config, "val_accuracy": score})
                    if score > best_score:
                        best, best_score = config, score
            results = []
            for seed in range(args.seeds):
                r = run_one(teacher, ds, subset(pool, fraction, seed), variant, best, seed, ds.x_test, ds.y_test, cache)
                results.append(r)
                raw.append({"variant": variant["name"], "fraction": fraction, "seed": seed, **r})
            accs = [r["accuracy"] for r in results]
            key = f"{variant['name']}|{fraction}"
            chosen[key] = {"config": best, "val_accuracy": best_score, "tuning": tuning,
                           "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                           "k": [r["k"] for r in results], "student_parameters": results[0]["student_parameters"],
                           "parameters": results[0]["parameters"], "n": int(subset(pool, fraction, 0).numel())}
            print(f"[{time.perf_counter() - t_start:7.1f}s] f={fraction:<5} {variant['name']:<28} "
                  f"acc {100 * chosen[key]['mean']:.2f} ± {100 * chosen[key]['std']:.2f}  "
                  f"(lr={best['lr']}, {best['knob']}={best['value']}, k={chosen[key]['k']})", flush=True)

    # markdown: one row per method, one column per fraction
    first = all_variants[0]["name"]
    columns = ["method", "student params"] + [f"{100 * f:g}% (n={chosen[first + '|' + str(f)]['n']})"
                                              for f in args.fractions]
    rows = []
    for variant in all_variants:
        row: dict[str, Any] = {"method": variant["name"],
                               "student params": int(chosen[f"{variant['name']}|{args.fractions[0]}"]["student_parameters"])}
        for f, col in zip(args.fractions, columns[2:]):
            c = chosen[f"{variant['name']}|{f}"]
            row[col] = f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"
        rows.append(row)
    # the target: best bregman variant against the best baseline, per fraction
    verdict = []
    for f in args.fractions:
        base = [(chosen[f"{v['name']}|{f}"]["mean"], v["name"]) for v in all_variants if v["method"] != "bregman"]
        breg = [(chosen[f"{v['name']}|{f}"]["mean"], v["name"]) for v in all_variants if v["method"] == "bregman"]
        if base and breg:
            (b_acc, b_name), (r_acc, r_name) = max(base), max(breg)
            verdict.append({"fraction": f, "best_baseline": b_name, "baseline_acc": b_acc, "best_bregman": r_name,
                            "bregman_acc": r_acc, "gap_points": 100 * (r_acc - b_acc)})
    print(f"\nteacher: MLP 64-256-128-10, test accuracy {100 * teacher_acc:.2f}%, "
          f"{sum(p.numel() for p in teacher.module.parameters())} parameters\n")
    report("distill_table", rows, columns=columns,
           params={"fractions": args.fractions, "seeds": args.seeds, "tune_seeds": args.tune_seeds,
                   "no_tune": args.no_tune, "student": STUDENT, "teacher": TEACHER_RECIPE, "lrs": args.lrs,
                   "knobs": KNOBS, "val_rows": args.val_rows, "pool_rows": int(pool.numel())},
           extra={"teacher_test_accuracy": teacher_acc, "chosen": chosen, "runs": raw, "verdict": verdict,
                  "wall_time_s": time.perf_counter() - t_start},
           out_dir=args.out_dir)
    if verdict:
        print("\nbest bregman vs best baseline (accuracy points):")
        for v in verdict:
            print(f"  {100 * v['fraction']:g}%: {v['best_bregman']} {100 * v['bregman_acc']:.2f} vs "
                  f"{v['best_baseline']} {100 * v['baseline_acc']:.2f} -> {v['gap_points']:+.2f}")
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
