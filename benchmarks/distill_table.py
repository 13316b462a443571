"""Quality benchmark: accuracy of small students per task, method and labelled fraction.

Protocol (identical for every method; run ``--help`` for the options)
-----------------------------------------------------------------------
- Tasks (``--tasks``):
  ``digits``: the built-in 8×8 digits (1437 training / 360 test rows, fixed split).
  ``classif20``: scikit-learn's ``make_classification`` (6000 rows, 100 features of which 30
  informative and 10 redundant, 20 classes, one cluster per class, class_sep 2.0, 1 % flipped
  labels, ``random_state=0``), standardized on its 4500 training rows; 1500 test rows.
  ``digits-hard``: digits moved by a random affine map per image (rotation ±15°, scale
  0.85–1.15, shift ±1.5 px, bilinear) plus Gaussian noise of 10 % of the pixel range; the
  teacher trains on three such versions of every training image, the pool and the test split
  are one version of each of their images (seeded).
- A validation set of 20 % of the training rows (digits: 287) is drawn once (seed 12345); the
  remaining training rows form the *pool*.
- Teacher (fixed recipe, per task): MLP in → 256 → 128 → classes with ReLU, AdamW lr 1e-3,
  weight decay 1e-4, cosine schedule, batch 64, 30 epochs, seed 0, trained on the whole
  training split (digits-hard: its three versions).
- Transfer set: for a fraction f, ``max(10, round(f · |pool|))`` rows drawn from the pool with the
  run's seed, *with their labels*. Every method sees exactly these inputs: kd, hint and bregman
  use the teacher's targets on these inputs only, and the labels where the method's loss has a
  label term. The same subset is used by every method for a given seed.
- Students: MLP in → 32 → out (ReLU); out = the classes (labels, kd), the layer width d (hint)
  or k coefficients (bregman). Parameter counts are in the JSON.
- Layer: the library's default (the penultimate layer, ReLU, d = 128); ``--all-variants`` adds
  the logits (softmax transfer) and the recipe variants below.
- ``auto``: ``distill(method="auto")``: it holds out 25 % of the transfer set itself, trains
  bregman (default k and 16), hint, kd and labels with equal budgets on the rest, keeps the best
  on that split and retrains it on the whole transfer set; it never sees the harness's
  validation or test rows.
- Budget: the library default (batch ``min(64, max(16, N/4))``, about 1500 AdamW steps, cosine).
- Tuning, the same for every method: a grid of learning rates (``--lrs``, default 3e-3, 1e-2,
  3e-2) × 2 values of the method's own knob (labels: weight decay; kd: temperature; hint,
  bregman and auto: label-loss weight through the teacher's head, 0 or 0.5), each config trained
  with ``--tune-seeds`` seeds on their own subsets, the best mean validation accuracy chosen per
  method and fraction. Then ``--seeds`` evaluation seeds (other subsets) report test accuracy:
  mean ± std. ``--no-tune``: the library's default lr (per method, loss and inputs) and the first knob value.
- Ceiling: for each bregman variant, the test accuracy of the teacher's *own* coefficients
  through the imported layer and head — what a perfect student of that representation gets.
  The verdict also prints the headroom, teacher accuracy − best baseline.
- Verdict per task: the best bregman variant against the best of labels / kd / hint, averaged
  over the fractions <= 10 % and at 100 %; ``auto`` against the best single method per fraction.
- Copies: by default every method gets the library's default (``distill``'s ``augment_copies``:
  teacher-labelled copies of every row: 60 below 100 examples, 30 below 200, 10 below 500);
  ``--augment-copies N`` sets N
  for every method alike (0: none; ``--augment shift``: the harness's one-pixel shifts plus
  noise, 8×8 image tasks only; ``noise`` / ``mixup``: the library's ``distill(augment_copies=N,
  augment=...)``).
- Parallel: ``--jobs`` worker processes (spawned; each rebuilds the teachers from their weights)
  take one (task, fraction, method) cell at a time; each cell's runs are seeded, so the numbers
  do not depend on the number of workers.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
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

TEACHER_RECIPE = {"arch": "mlp", "hidden": [256, 128], "epochs": 30, "batch_size": 64, "lr": 1e-3,
                  "weight_decay": 1e-4, "seed": 0}
STUDENT = {"arch": "mlp", "hidden": [32]}
LRS = (3e-3, 1e-2, 3e-2)
#: ``--no-tune``: the library's own default learning rate (None: distill decides it per method,
#: loss and inputs; before session 12 the harness passed 1e-2 to every method, while distill's
#: default was 3e-3)
UNTUNED_LR = None
# method's own knob: 2 values each, so every method gets the same 6-config search
KNOBS: dict[str, tuple[str, tuple[float, ...]]] = {
    "labels": ("weight_decay", (1e-4, 1e-2)),
    "kd": ("temperature", (2.0, 4.0)),
    "hint": ("label_weight", (0.0, 0.5)),
    "bregman": ("label_weight", (0.0, 0.5)),
    "auto": ("label_weight", (0.0, 0.5)),
}
TASKS = ("digits", "classif20", "digits-hard")
#: bump when a task's data change (the cached teachers are keyed by it)
TASK_VERSION = 2
BASELINES = ("labels", "kd", "hint")


@dataclass
class Task:
    """One benchmark task: its data, and the teacher's training inputs."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    teacher_x: torch.Tensor  # what the teacher trains on (digits-hard: three versions of each image)
    teacher_y: torch.Tensor
    val_rows: int

    @property
    def in_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1


def _perturb_digits(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Every 8×8 image through its own random affine map (rotation ±15°, scale 0.85–1.15, shift
    ±1.5 px; bilinear, zeros outside) plus Gaussian noise of 10 % of the pixel range."""
    from torch.nn import functional as F

    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    scale = 0.85 + 0.3 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (1.5 / 4)  # 1.5 px in [-1, 1] units of 8 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    images = x.reshape(n, 1, 8, 8)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (moved.reshape(n, 64) + 0.1 * float(x.max()) * torch.randn(n, 64, generator=g)).float()


def load_task(name: str) -> Task:
    if name == "digits":
        ds = load_builtin("digits")
        return Task(name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.x_train, ds.y_train, 287)
    if name == "digits-hard":
        ds = load_builtin("digits")
        teacher_x = torch.cat([_perturb_digits(ds.x_train, 100 + i) for i in range(3)])
        return Task(name, _perturb_digits(ds.x_train, 200), ds.y_train, _perturb_digits(ds.x_test, 300), ds.y_test,
                    teacher_x, ds.y_train.repeat(3), 287)
    if name == "classif20":
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=6000, n_features=100, n_informative=30, n_redundant=10, n_classes=20,
                                   n_clusters_per_class=1, class_sep=2.0, flip_y=0.01, random_state=0)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        x_train, y_train, x_test, y_test = x[:4500], y[:4500], x[4500:], y[4500:]
        mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        return Task(name, x_train, y_train, x_test, y_test, x_train, y_train, 900)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


def variants(all_variants: bool = False) -> list[dict[str, Any]]:
    """The methods compared: name, method, layer (None: the library's default), k and settings.

    The foreground: labels, kd, hint and bregman at the default layer (the default k and k = 16),
    and auto. ``all_variants`` adds the logits and the recipe variants of the bregman loss.
    """
    rows = [
        {"name": "labels", "method": "labels", "layer": None, "k": None},
        {"name": "kd", "method": "kd", "layer": None, "k": None},
        {"name": "hint", "method": "hint", "layer": None, "k": None},
        {"name": "bregman", "method": "bregman", "layer": None, "k": None},
        {"name": "bregman k=16", "method": "bregman", "layer": None, "k": 16},
        {"name": "auto", "method": "auto", "layer": None, "k": None},
    ]
    if all_variants:
        rows += [
            {"name": "hint@logits", "method": "hint", "layer": "4", "k": None},
            {"name": "bregman@logits", "method": "bregman", "layer": "4", "k": None},
        ] + [{"name": f"bregman {name}", "method": "bregman", "layer": None, "k": None, "settings": settings}
             for name, settings in RECIPES.items()] + [
            {"name": "bregman k=16 squared", "method": "bregman", "layer": None, "k": 16,
             "settings": RECIPES["squared"]},
        ] + [{"name": f"{method} lr {lr}", "method": method, "layer": None, "k": None, "settings": {"lr": float(lr)}}
             for method in ("bregman",) + BASELINES for lr in ("3e-3", "1e-2", "3e-2")] + [
            {"name": f"bregman k={k}", "method": "bregman", "layer": None, "k": k} for k in (24, 32)
        ] + [{"name": f"{method} copies {n}", "method": method, "layer": None, "k": None,
              "settings": {"augment_copies": n}} for method in ("bregman",) + BASELINES for n in (20, 30)] + [
            # the default k's cap max(floor, n / 4) with another floor (the library's: DEFAULT_K_FLOOR)
            {"name": f"{method} k floor {floor}", "method": method, "layer": None, "k": None,
             "settings": {"k_floor": floor}} for method in ("bregman", "auto") for floor in (24, 32)]
    return rows


#: the recipe candidates of the bregman loss (``--all-variants``), each on top of the default
RECIPES: dict[str, dict[str, Any]] = {
    "+divergence": {"divergence_weight": 1.0},
    "divergence only": {"divergence_weight": 1.0, "coefficient_weight": 0.0},
    "whiten": {"coefficient_scaling": "whiten"},
    "head": {"coefficient_scaling": "head"},
    # the coefficient loss; the default ("auto") is huber with copies, squared without
    "squared": {"coefficient_loss": "squared"},
    "huber": {"coefficient_loss": "huber"},
    "huber 0.3": {"coefficient_loss": "huber", "huber_delta": 0.3},
    "huber 3": {"coefficient_loss": "huber", "huber_delta": 3.0},
    "3000 steps": {"epochs_factor": 2.0},
    "mixup x10": {"augment_copies": 10, "augment": "mixup"},
    "student 64": {"student": {"arch": "mlp", "hidden": [64]}},
    "+soft 1": {"soft_label_weight": 1.0},
    "+soft 10": {"soft_label_weight": 10.0},
    # the label loss through the imported layer and the head (image maps won with 100)
    "+labels 0.3": {"label_weight": 0.3},
    "+labels 1": {"label_weight": 1.0},
    "+labels 3": {"label_weight": 3.0},
}


TEACHER_CACHE = Path(__file__).resolve().parent / "out" / "distill_table_teachers"


def train_teacher(task: Task) -> tuple[Teacher, float, float]:
    """The task's teacher, trained with :data:`TEACHER_RECIPE` (its weights are kept under
    ``benchmarks/out/``, keyed by the task and the recipe, so reruns skip the training)."""
    import hashlib
    import json

    t0 = time.perf_counter()
    with seeded(TEACHER_RECIPE["seed"]):
        module = build_model(TEACHER_RECIPE["arch"], in_features=task.in_features, hidden=TEACHER_RECIPE["hidden"],
                             num_classes=task.classes)
    digest = hashlib.sha256(json.dumps([task.name, TEACHER_RECIPE, TASK_VERSION], sort_keys=True).encode())
    path = TEACHER_CACHE / f"{task.name}-{digest.hexdigest()[:12]}.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(path)))
        module.eval()
        return (Teacher.from_module(module, (task.in_features,)), accuracy(module, task.x_test, task.y_test),
                time.perf_counter() - t0)
    train_classifier(module, task.teacher_x, task.teacher_y, epochs=TEACHER_RECIPE["epochs"],
                     batch_size=TEACHER_RECIPE["batch_size"], lr=TEACHER_RECIPE["lr"],
                     weight_decay=TEACHER_RECIPE["weight_decay"], seed=TEACHER_RECIPE["seed"])
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
    return (Teacher.from_module(module, (task.in_features,)), accuracy(module, task.x_test, task.y_test),
            time.perf_counter() - t0)


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


def run_one(task_name, rows, variant, config, seed, eval_x, eval_y) -> dict[str, float]:
    w = _WORKER
    task, teacher, cache = w["tasks"][task_name], w["teachers"][task_name], w["caches"][task_name]
    knob, value = config["knob"], config["value"]
    extra = dict(variant.get("settings") or {})
    student = extra.pop("student", STUDENT)
    factor = extra.pop("epochs_factor", None)
    k_floor = extra.pop("k_floor", None)
    kwargs: dict[str, Any] = {knob: value, **({"lr": config["lr"]} if config["lr"] is not None else {}), **extra}
    copies, kind = w.get("augment_copies"), w.get("augment", "shift")
    x, y = task.x_train[rows], task.y_train[rows]
    if copies and kind == "shift":  # the harness's copies, and none of the library's
        x, y = augmented(x, y, copies, seed)
        kwargs.setdefault("augment_copies", 0)
    elif copies is not None:  # the library's own copies, this many (0: none)
        kwargs.setdefault("augment_copies", copies)
        if copies:
            kwargs.setdefault("augment", kind)
    # else: the library's default (copies for small flat transfer sets)
    if factor is not None:  # a longer schedule: the default budget's epochs times the factor
        from bregman.distillation import default_budget
        from bregman.distillation.settings import TrainSettings

        resolved = TrainSettings(augment_copies=kwargs.get("augment_copies")).with_copies(int(x.shape[0]))
        n = x.shape[0] * (resolved.augment_copies + 1)
        batch, epochs = default_budget(n)
        kwargs.update(batch_size=batch, epochs=int(round(epochs * factor)))
    from bregman.distillation import api

    floor = api.DEFAULT_K_FLOOR
    if k_floor is not None:  # the cache keys fits by their cap, so another floor refits
        api.DEFAULT_K_FLOOR = int(k_floor)
    try:
        result = distill(teacher, (x, y), layer=variant["layer"], method=variant["method"], student=student,
                         n_components=variant["k"], seed=seed, test=(eval_x, eval_y), cache=cache,
                         measure_latency=False, **kwargs)
    finally:
        api.DEFAULT_K_FLOOR = floor
    m = result.metrics
    out = {"accuracy": m["test_accuracy"], "agreement": m["test_agreement"], "k": result.k,
           "student_parameters": m["student_parameters"], "parameters": m["parameters"],
           "train_time_s": m["train_time_s"], "method": result.method}
    if "test_representation_accuracy" in m:
        out["representation_accuracy"] = m["test_representation_accuracy"]
    if "selection" in m:  # auto: every candidate's validation scores, to study selection rules offline
        out["selection"] = [{key: row.get(key) for key in ("candidate", "method", "k", "n_components",
                                                             "validation_score", "validation_agreement",
                                                             "validation_kl_to_teacher", "test_accuracy", "chosen")}
                            for row in m["selection"]]
        out["selection_validation_rows"] = m.get("selection_validation_rows")
    return out


# --- one (task, fraction, variant): tuning then evaluation; runs in a worker process ---------
_WORKER: dict[str, Any] = {}


def _setup(task_names: list[str], teacher_states: dict[str, dict[str, torch.Tensor]] | None, threads: int,
           augment_copies: int | None = None, augment: str = "shift") -> None:
    """Per process: the tasks, their teachers (rebuilt from their weights, or trained), splits, caches."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.ERROR)
    tasks, teachers, accs, seconds, vals, pools = {}, {}, {}, {}, {}, {}
    for name in task_names:
        task = load_task(name)
        if teacher_states is None:
            teachers[name], accs[name], seconds[name] = train_teacher(task)
        else:
            module = build_model(TEACHER_RECIPE["arch"], in_features=task.in_features,
                                 hidden=TEACHER_RECIPE["hidden"], num_classes=task.classes)
            module.load_state_dict(teacher_states[name])
            teachers[name], accs[name], seconds[name] = Teacher.from_module(module.eval(), (task.in_features,)), \
                float("nan"), 0.0
        perm = torch.randperm(task.x_train.shape[0], generator=torch.Generator().manual_seed(12345))
        tasks[name], vals[name], pools[name] = task, perm[:task.val_rows], perm[task.val_rows:]
    _WORKER.update(tasks=tasks, teachers=teachers, teacher_acc=accs, teacher_time=seconds, val=vals, pool=pools,
                   caches={name: TargetCache() for name in task_names}, augment_copies=augment_copies,
                   augment=augment)


def _run_cell(task_name: str, fraction: float, variant: dict[str, Any], grid: list[dict[str, Any]], seeds: int,
              tune_seeds: int) -> dict[str, Any]:
    w = _WORKER
    task, pool, val = w["tasks"][task_name], w["pool"][task_name], w["val"][task_name]
    x_val, y_val = task.x_train[val], task.y_train[val]
    n = int(subset(pool, fraction, 0).numel())
    if isinstance(variant.get("k"), int) and variant["k"] >= n:  # a fit needs more rows than directions
        return {"skipped": f"k={variant['k']} needs more than {n} rows", "n": n, "runs": [], "k": [],
                "config": grid[0], "mean": None, "std": None, "student_parameters": None}
    t0 = time.perf_counter()
    best, best_score, tuning = grid[0], -1.0, []
    if len(grid) > 1:
        for config in grid:
            scores = [run_one(task_name, subset(pool, fraction, 1000 + s), variant, config, 1000 + s,
                              x_val, y_val)["accuracy"] for s in range(tune_seeds)]
            score = statistics.mean(scores)
            tuning.append({**config, "val_accuracy": score})
            if score > best_score:
                best, best_score = config, score
    results = [run_one(task_name, subset(pool, fraction, seed), variant, best, seed, task.x_test, task.y_test)
               for seed in range(seeds)]
    accs = [r["accuracy"] for r in results]
    cell = {"config": best, "val_accuracy": best_score, "tuning": tuning,
            "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "agreement": statistics.mean(r["agreement"] for r in results),
            "k": [r["k"] for r in results], "chosen_methods": [r["method"] for r in results],
            "student_parameters": results[0]["student_parameters"],
            "parameters": results[0]["parameters"], "n": int(subset(pool, fraction, 0).numel()),
            "seconds": time.perf_counter() - t0, "runs": results}
    if all("representation_accuracy" in r for r in results):
        cell["ceiling"] = statistics.mean(r["representation_accuracy"] for r in results)
    return cell


def _cells(executor: Any, jobs: list[tuple[str, float, dict[str, Any]]], args: argparse.Namespace,
           grid_of: Any) -> Iterator[tuple[str, float, dict[str, Any], dict[str, Any]]]:
    """(task, fraction, variant, cell) as cells finish: in this process, or on the worker pool."""
    if executor is None:
        for t, f, v in jobs:
            yield t, f, v, _run_cell(t, f, v, grid_of(v), args.seeds, args.tune_seeds)
        return
    futures = {executor.submit(_run_cell, t, f, v, grid_of(v), args.seeds, args.tune_seeds): (t, f, v)
               for t, f, v in jobs}
    for fut in as_completed(futures):
        t, f, v = futures[fut]
        yield t, f, v, fut.result()


def verdict_of(chosen: dict[str, dict[str, Any]], task: str, fractions: list[float], names: list[dict[str, Any]],
               teacher_acc: float) -> dict[str, Any]:
    """The task's verdict: best bregman vs the best of labels/kd/hint; auto vs the best single method."""
    def mean(name: str, f: float) -> float | None:
        return chosen[f"{task}|{name}|{f}"]["mean"]  # None: the cell was skipped

    def best(group: list[str], f: float) -> tuple[float, str] | None:
        done = [(mean(n, f), n) for n in group if mean(n, f) is not None]
        return max(done) if done else None

    base = [v["name"] for v in names if v["method"] in BASELINES]
    breg = [v["name"] for v in names if v["method"] == "bregman"]
    single = [v["name"] for v in names if v["method"] != "auto"]
    per_fraction = []
    for f in fractions:
        row: dict[str, Any] = {"fraction": f}
        b, r, s1 = best(base, f), best(breg, f), best(single, f)
        if b:
            b_acc, b_name = b
            row.update(best_baseline=b_name, baseline_acc=b_acc, headroom_points=100 * (teacher_acc - b_acc))
        if r:
            r_acc, r_name = r
            row.update(best_bregman=r_name, bregman_acc=r_acc,
                       bregman_ceiling=chosen[f"{task}|{r_name}|{f}"].get("ceiling"))
            if b:
                row["gap_points"] = 100 * (r_acc - b_acc)
        if any(v["method"] == "auto" for v in names) and s1 and mean("auto", f) is not None:
            s_acc, s_name = s1
            row.update(best_single=s_name, single_acc=s_acc, auto_acc=mean("auto", f),
                       auto_gap_points=100 * (mean("auto", f) - s_acc))
        per_fraction.append(row)
    small = [r for r in per_fraction if r["fraction"] <= 0.10 and "gap_points" in r]
    full = [r for r in per_fraction if r["fraction"] == 1.0 and "gap_points" in r]
    autos = [r["auto_gap_points"] for r in per_fraction if "auto_gap_points" in r]
    out: dict[str, Any] = {"task": task, "teacher_accuracy": teacher_acc, "per_fraction": per_fraction}
    if small:
        out["small_fraction_gap_points"] = statistics.mean(r["gap_points"] for r in small)
    if full:
        out["full_gap_points"] = full[0]["gap_points"]
    if autos:
        out["auto_worst_gap_points"] = min(autos)
    return out


def verdict_line(v: dict[str, Any]) -> str:
    parts = [f"{v['task']}:"]
    if "small_fraction_gap_points" in v:
        g = v["small_fraction_gap_points"]
        parts.append(f"bregman vs best of labels/kd/hint at <= 10 %: {g:+.2f} points on average "
                     f"({'met' if g >= 1.0 else 'NOT met'}: >= +1, aim +2);")
    if "full_gap_points" in v:
        g = v["full_gap_points"]
        parts.append(f"at 100 %: {g:+.2f} ({'met' if g >= -0.5 else 'NOT met'}: >= -0.5);")
    if "auto_worst_gap_points" in v:
        g = v["auto_worst_gap_points"]
        parts.append(f"auto vs best single method, worst fraction: {g:+.2f} ({'met' if g >= -0.5 else 'NOT met'}: "
                     ">= -0.5)")
    return " ".join(parts)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.10, 1.0])
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds (default 5)")
    parser.add_argument("--tune-seeds", type=int, default=1, help="seeds per tuning config (default 1)")
    parser.add_argument("--methods", nargs="+", default=None, help="variant names to run (default: the foreground)")
    parser.add_argument("--all-variants", action="store_true", help="also the logits and the recipe variants")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="learning-rate grid")
    parser.add_argument("--quick", action="store_true",
                        help="digits, 2 fractions, 2 seeds, no tuning: a smoke run")
    parser.add_argument("--no-tune", action="store_true", help="use the library's default lr and the first knob value")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (tiny nets: 1 is fastest)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes, one (task, fraction, method) cell each at a time (default: CPU count)")
    parser.add_argument("--augment-copies", type=int, default=None,
                        help="add this many teacher-labelled copies of the transfer rows (0: none; default: the "
                             "library's default, 60 copies below 100 examples, 30 below 200, 10 below 500)")
    parser.add_argument("--augment", choices=["shift", "noise", "mixup"], default="shift",
                        help="shift: the harness's one-pixel shifts plus noise (8x8 images); noise / mixup: the "
                             "library's distill(augment_copies=..., augment=...)")
    parser.add_argument("--student-hidden", type=int, nargs="+", default=None,
                        help=f"hidden widths of every method's student (default {STUDENT['hidden']}; a variant "
                             "with a student of its own keeps it)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.fractions, args.seeds, args.no_tune = ["digits"], [0.05, 1.0], 2, True
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.augment_copies and args.augment == "shift" and "classif20" in args.tasks:
        parser.error("--augment shift moves 8x8 images; classif20 has none: use --augment noise or mixup")

    t_start = time.perf_counter()
    _setup(args.tasks, None, args.threads, args.augment_copies, args.augment)
    all_variants = variants(args.all_variants or bool(args.methods))
    if args.methods:
        unknown = set(args.methods) - {v["name"] for v in all_variants}
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {[v['name'] for v in all_variants]}")
        all_variants = [v for v in all_variants if v["name"] in args.methods]
    student = STUDENT
    if args.student_hidden:  # the same student for every method: a fair comparison at another width
        student = dict(STUDENT, hidden=list(args.student_hidden))
        all_variants = [{**v, "settings": {"student": student, **(v.get("settings") or {})}} for v in all_variants]
    for name in args.tasks:
        print(f"{name}: teacher test accuracy {_WORKER['teacher_acc'][name]:.4f} (trained in "
              f"{_WORKER['teacher_time'][name]:.1f} s); pool {_WORKER['pool'][name].numel()} rows, validation "
              f"{_WORKER['val'][name].numel()} rows", flush=True)
    print(f"{args.jobs} worker process(es)", flush=True)

    def grid_of(variant: dict[str, Any]) -> list[dict[str, Any]]:
        knob, values = KNOBS[variant["method"]]
        if args.no_tune:
            return [{"lr": UNTUNED_LR, "knob": knob, "value": values[0]}]
        return [{"lr": lr, "knob": knob, "value": v} for lr, v in itertools.product(args.lrs, values)]

    # the slow cells (auto, 100 %) first, so the pool's last minutes are not one long cell
    jobs = sorted(((t, f, v) for t in args.tasks for f in args.fractions for v in all_variants),
                  key=lambda j: (j[2]["method"] != "auto", -j[1]))
    chosen: dict[str, dict[str, Any]] = {}
    raw: list[dict[str, Any]] = []
    executor = None
    if args.jobs > 1:
        # spawn, not fork: the parent has run OpenMP kernels (teacher training); workers rebuild
        # the teachers from their weights instead of retraining them
        states = {n: {k: v.detach().clone() for k, v in t.module.state_dict().items()}
                  for n, t in _WORKER["teachers"].items()}
        executor = ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"),
                                       initializer=_setup,
                                       initargs=(args.tasks, states, args.threads, args.augment_copies, args.augment))
    try:
        for task, fraction, variant, cell in _cells(executor, jobs, args, grid_of):
            key = f"{task}|{variant['name']}|{fraction}"
            for seed, r in enumerate(cell.pop("runs")):
                raw.append({"task": task, "variant": variant["name"], "fraction": fraction, "seed": seed, **r})
            chosen[key] = cell
            if cell.get("skipped"):
                print(f"[{time.perf_counter() - t_start:7.1f}s] {task:<11} f={fraction:<5} {variant['name']:<24} "
                      f"skipped: {cell['skipped']}", flush=True)
                continue
            ceiling = f", ceiling {100 * cell['ceiling']:.2f}" if "ceiling" in cell else ""
            best = cell["config"]
            print(f"[{time.perf_counter() - t_start:7.1f}s] {task:<11} f={fraction:<5} {variant['name']:<24} "
                  f"acc {100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}{ceiling}  "
                  f"(lr={best['lr'] or 'default'}, {best['knob']}={best['value']}, k={cell['k']})", flush=True)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    tables, verdicts, ceilings_all = {}, [], {}
    for task in args.tasks:
        teacher_acc = _WORKER["teacher_acc"][task]
        first = all_variants[0]["name"]
        columns = ["method", "student params"] + [f"{100 * f:g}% (n={chosen[f'{task}|{first}|{f}']['n']})"
                                                  for f in args.fractions]
        rows, ceilings = [], []
        for variant in all_variants:
            done = [c for c in (chosen[f"{task}|{variant['name']}|{f}"] for f in args.fractions) if not c.get("skipped")]
            params = int(done[0]["student_parameters"]) if done else "-"
            row: dict[str, Any] = {"method": variant["name"], "student params": params}
            ceiling_row: dict[str, Any] = {"method": variant["name"], "student params": row["student params"]}
            for f, col in zip(args.fractions, columns[2:]):
                c = chosen[f"{task}|{variant['name']}|{f}"]
                row[col] = "-" if c.get("skipped") else f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"
                if "ceiling" in c:
                    ceiling_row[col] = f"{100 * c['ceiling']:.2f}"
            rows.append(row)
            if len(ceiling_row) > 2:
                ceilings.append(ceiling_row)
        v = verdict_of(chosen, task, args.fractions, all_variants, teacher_acc)
        verdicts.append(v)
        tables[task], ceilings_all[task] = rows, ceilings
        n_params = sum(p.numel() for p in _WORKER["teachers"][task].module.parameters())
        print(f"\n## {task}: teacher test accuracy {100 * teacher_acc:.2f}%, {n_params} parameters\n")
        print(markdown_table(rows, columns))
        if ceilings:
            print("\nceiling (teacher's own coefficients through the imported layer and head):\n")
            print(markdown_table(ceilings, columns))
        for r in v["per_fraction"]:
            line = f"  {100 * r['fraction']:g}%:"
            if "gap_points" in r:
                line += (f" {r['best_bregman']} {100 * r['bregman_acc']:.2f} vs {r['best_baseline']} "
                         f"{100 * r['baseline_acc']:.2f} -> {r['gap_points']:+.2f} (headroom {r['headroom_points']:+.2f})")
            if "auto_gap_points" in r:
                line += f"; auto {100 * r['auto_acc']:.2f} vs {r['best_single']} -> {r['auto_gap_points']:+.2f}"
            print(line)
        print("verdict " + verdict_line(v))
    print("\nsummary (accuracy points; targets: bregman >= +1 on average at <= 10 %, >= -0.5 at 100 %; "
          "auto >= -0.5 at every fraction)\n")
    summary = [{"task": v["task"], "teacher %": f"{100 * v['teacher_accuracy']:.2f}",
                "bregman - best baseline, <= 10 %": _signed(v.get("small_fraction_gap_points")),
                "bregman - best baseline, 100 %": _signed(v.get("full_gap_points")),
                "auto - best single, worst fraction": _signed(v.get("auto_worst_gap_points"))} for v in verdicts]
    report("distill_table", summary,
           params={"tasks": args.tasks, "fractions": args.fractions, "seeds": args.seeds,
                   "tune_seeds": args.tune_seeds, "no_tune": args.no_tune, "student": student,
                   "teacher": TEACHER_RECIPE, "lrs": args.lrs, "knobs": KNOBS, "jobs": args.jobs,
                   "augment_copies": args.augment_copies, "augment": args.augment,
                   "pool_rows": {t: int(_WORKER["pool"][t].numel()) for t in args.tasks}},
           extra={"teacher_test_accuracy": _WORKER["teacher_acc"], "chosen": chosen, "runs": raw,
                  "tables": tables,
                  "verdicts": verdicts, "ceilings": ceilings_all, "wall_time_s": time.perf_counter() - t_start},
           out_dir=args.out_dir)
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
