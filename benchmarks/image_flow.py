"""The image flow end to end: a CIFAR-shaped task, a ResNet-8 teacher, flat against channels.

Task: scikit-learn's digits enlarged to 24x24, coloured, shifted at random inside 32x32 colour
images on random low-frequency backgrounds (uint8, 3x32x32, 10 classes); training images come
from the 1437 training digits, test images from the 360 held-out ones. The teacher (``resnet8``,
16/32/64 channels) is trained here once and cached under ``benchmarks/out/image_flow/``.

Parts (``--part``, several allowed):

- ``speed``: the worker's own code (``workers.representation.fit_representation`` and
  ``workers.distillation.run_distillation``, with a stub job run that records phase times), one
  subprocess per row so that ``peak_rss_mib`` (``ru_maxrss``) is that job's. The data set is a
  uint8 safetensors file with a scale, memory-mapped by the loader. Layer ``layer3.0`` (64x8x8,
  ReLU), k = 16. Flat rows only at ``--flat-n`` (a flat fit of d = 4096 is the slow baseline).
- ``quality``: test accuracy of students trained by labels / kd / hint / bregman (channels) at
  ``--fractions`` of ``--pool`` training images, ``--seeds`` seeds, students ``resnet8`` / ``cnn``;
  bregman flat too for the resnet8 student.
- ``augment``: teacher-labelled crop+flip views at the smallest fraction, cached views against
  views drawn and labelled by the teacher on the fly, at equal optimizer steps.

    python benchmarks/image_flow.py --part speed --sizes 10000 50000
    python benchmarks/image_flow.py --part quality --fractions 0.02 0.1 --seeds 0 1 2
    python benchmarks/image_flow.py --part augment
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._report import DEFAULT_OUT_DIR, report  # noqa: E402

OUT = DEFAULT_OUT_DIR / "image_flow"
LAYER = "layer3.0"
N_TEST = 1000


# ----------------------------------------------------------------------------------- the task
def make_images(n: int, split: str, seed: int):
    """``n`` uint8 images (n, 3, 32, 32) and labels from the digits of ``split`` ("train"/"test")."""
    import torch
    from torch.nn import functional as F

    from bregman.datasets import load_builtin

    ds = load_builtin("digits")
    digits, labels = (ds.x_train, ds.y_train) if split == "train" else (ds.x_test, ds.y_test)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty((n, 3, 32, 32), dtype=torch.uint8)
    ys = torch.empty(n, dtype=torch.int64)
    for s in range(0, n, 2048):
        b = min(2048, n - s)
        pick = torch.randint(0, len(labels), (b,), generator=g)
        glyph = F.interpolate(digits[pick].reshape(b, 1, 8, 8), size=(24, 24), mode="bilinear", align_corners=False)
        glyph = glyph.clamp(0, 1)
        mask = torch.zeros((b, 1, 32, 32))
        oy, ox = torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g)
        for i in range(b):
            mask[i, :, oy[i]:oy[i] + 24, ox[i]:ox[i] + 24] = glyph[i]
        background = F.interpolate(torch.rand((b, 3, 4, 4), generator=g), size=(32, 32), mode="bilinear",
                                   align_corners=False) * 0.6
        colour = 0.4 + 0.6 * torch.rand((b, 3, 1, 1), generator=g)
        img = background * (1 - mask) + colour * mask + 0.05 * torch.randn((b, 3, 32, 32), generator=g)
        out[s:s + b] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        ys[s:s + b] = labels[pick]
    return out, ys


def as_float(x):
    return x.float() / 255.0


def teacher_path(n_train: int, epochs: int) -> Path:
    """Train (once) and cache the resnet8 teacher as a .pt2; returns its path."""
    import torch

    from bregman.models import build_model
    from bregman.training import accuracy, seeded, train_classifier

    path = OUT / f"teacher_resnet8_{n_train}_{epochs}.pt2"
    if path.is_file():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    x, y = make_images(n_train, "train", seed=100)
    xt, yt = make_images(N_TEST, "test", seed=200)
    with seeded(0):
        model = build_model("resnet8")
    t0 = time.perf_counter()
    def said(phase: str, fraction: float, metrics: dict) -> None:
        if "loss" in metrics:  # once per epoch
            print(f"teacher epoch {metrics['epoch']}: loss {metrics['loss']:.3f} at {time.perf_counter() - t0:.0f} s",
                  flush=True)

    train_classifier(model, as_float(x), y, epochs=epochs, batch_size=32, lr=2e-3, weight_decay=5e-4, seed=0,
                     progress=said)
    acc = accuracy(model, as_float(xt), yt)
    ep = torch.export.export(model.eval(), (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(ep, str(path))
    path.with_suffix(".json").write_text(json.dumps({"test_accuracy": acc, "train_s": time.perf_counter() - t0,
                                                     "n_train": n_train, "epochs": epochs}))
    print(f"teacher: test accuracy {acc:.4f}, trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def dataset_file(n: int) -> Path:
    """A uint8 safetensors data set of n training + 2000 test images with scale 1/255."""
    import numpy as np
    from safetensors.numpy import save_file

    path = OUT / f"data_{n}.safetensors"
    if not path.is_file():
        x, y = make_images(n, "train", seed=300)
        xt, yt = make_images(N_TEST, "test", seed=200)
        save_file({"x_train": x.numpy(), "y_train": y.numpy(), "x_test": xt.numpy(), "y_test": yt.numpy(),
                   "scale": np.array([1 / 255], dtype=np.float32)}, str(path))
    return path


# --------------------------------------------------------------------------------- speed rows
class StubRun:
    """What a job module calls on its JobRun, recording when each phase starts."""

    def __init__(self, label: str = "") -> None:
        self.t0 = time.perf_counter()
        self.label = label  # phase starts are also appended to OUT/speed_row_phases.log as they happen
        self.starts: dict[str, tuple[float, float]] = {}  # phase -> (wall, CPU) at its start
        self.metrics: dict[str, Any] = {}

    def progress(self, phase: str, fraction: float, metrics: dict | None = None, span: Any = None) -> None:
        for name, begins in ((phase, True), ("export:curves", phase == "export" and fraction >= 0.5)):
            # (the representation job's projections end at export 0.5, then its curves start)
            if begins and name not in self.starts:
                self.starts[name] = (time.perf_counter() - self.t0, time.process_time())
                with open(OUT / "speed_row_phases.log", "a") as fh:  # to follow a long row while it runs
                    fh.write(f"{self.label} {name} wall {self.starts[name][0]:.1f} cpu {self.starts[name][1]:.1f}\n")
        self.metrics.update(metrics or {})

    def check(self) -> None:
        pass

    def durations(self, cpu: bool = False) -> dict[str, float]:
        """Seconds per phase, wall clock or this process's CPU time (the machine is shared)."""
        end = ("end", (time.perf_counter() - self.t0, time.process_time()))
        marks = sorted(self.starts.items(), key=lambda kv: kv[1][0]) + [end]
        return {a[0]: b[1][int(cpu)] - a[1][int(cpu)] for a, b in zip(marks, marks[1:])}


def speed_row(args: argparse.Namespace) -> dict:
    import os
    import tempfile

    import torch

    from bregman.datasets import load_dataset_file, validate_for_teacher
    from bregman.teachers import load_teacher

    torch.set_num_threads(args.threads)
    teacher = load_teacher(teacher_path(args.teacher_n, args.teacher_epochs))
    t0 = time.perf_counter()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ds = validate_for_teacher(load_dataset_file(dataset_file(args.n)), teacher)
    load_s = time.perf_counter() - t0
    run = StubRun(f"{args.job} {args.layout} n={args.n} pid={os.getpid()}")
    out = Path(tempfile.mkdtemp(prefix="image-flow-"))
    row: dict[str, Any] = {"job": args.job, "layout": args.layout, "n": args.n, "load_s": load_s}
    if args.job == "representation":
        from workers.representation import fit_representation

        spec = {"layer": LAYER, "dataset": "bench", "n_components": 16, "layout": args.layout,
                "solver": {"max_iter": args.max_iter}, "budget": {}}
        metrics, pca = fit_representation(run, spec, teacher, ds, "0" * 64, out / "job")
        d, c = run.durations(), run.durations(cpu=True)
        # export = the layer's files, the projection of every train and test row (and the test
        # score), then the divergence-against-k curves (export:curves)
        row.update(capture_s=d.get("capture"), fit_s=d.get("fit"), projection_s=d.get("export"),
                   curves_s=d.get("export:curves"), export_s=d.get("export", 0) + d.get("export:curves", 0),
                   capture_cpu_s=c.get("capture"), fit_cpu_s=c.get("fit"), projection_cpu_s=c.get("export"),
                   curves_cpu_s=c.get("export:curves"),
                   export_cpu_s=c.get("export", 0) + c.get("export:curves", 0),
                   fit_rows=json.loads((out / "job" / "report.json").read_text()).get("fit_rows") if (out / "job" / "report.json").exists() else None,
                   n_iter=int(pca.n_iter_), explained=metrics["explained_divergence_ratio"],
                   starts=dict(getattr(pca, "starts_", {}) or {}),  # the multi-start's candidates (one fit each)
                   fit_history_len=len(getattr(pca, "history_", []) or []))
    else:
        from workers.distillation import run_distillation

        spec = {"dataset": "bench", "layer": LAYER, "n_components": 16, "layout": args.layout, "methods": ["bregman"],
                "student": {"arch": "cnn", "channels": [16, 32]}, "budget": {"epochs": 1}, "onnx": False,
                "options": {"batch_size": 128, "fit_rows": args.fit_rows}}  # no solver options in a job spec
        (out / "job").mkdir()
        final = run_distillation(run, spec, teacher, ds, "0" * 64, out / "job", None)
        d, c = run.durations(), run.durations(cpu=True)
        row.update(targets_cpu_s=c.get("bregman:targets"), representation_cpu_s=c.get("bregman:representation"),
                   epoch_cpu_s=c.get("bregman:train"), targets_s=d.get("bregman:targets"), representation_s=d.get("bregman:representation"),
                   epoch_s=d.get("bregman:train"), evaluate_s=d.get("bregman:evaluate"),
                   test_accuracy=final.get("test_accuracy"))
    row["total_s"] = time.perf_counter() - t0
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["rss_before_mib"] = rss0
    row["data_float_mib"] = (args.n + N_TEST) * 3 * 32 * 32 * 4 / 2**20
    return row


def part_speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    plan = []
    if "representation" in args.speed_jobs:
        plan += [("representation", "channels", n) for n in args.sizes]
        plan += [("representation", "flat", args.flat_n)] if args.flat_n else []
    if "distillation" in args.speed_jobs:
        plan += [("distillation", "channels", n) for n in args.distill_sizes]
        plan += [("distillation", "flat", args.flat_n)] if args.flat_n else []
    for job, layout, n in plan:
        dataset_file(n)
        cmd = [sys.executable, __file__, "--speed-row", "--job", job, "--layout", layout, "--n", str(n),
               "--threads", str(args.threads), "--max-iter", str(args.max_iter),
               *(["--fit-rows", str(args.fit_rows)] if args.fit_rows else []),
               "--teacher-n", str(args.teacher_n), "--teacher-epochs", str(args.teacher_epochs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], flush=True)
            rows.append({"job": job, "layout": layout, "n": n, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- quality rows
#: The quality part's rows: a name, the method and the training settings it changes (recipe
#: variants of bregman beside the defaults, compared on the same seeds and budgets).
QUALITY_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "labels": ("labels", {}),
    "kd": ("kd", {}),
    "hint": ("hint", {}),
    "bregman": ("bregman", {}),
    "bregman huber": ("bregman", {"coefficient_loss": "huber"}),
    # the default before the label term on maps (label_weight 0.1 per map value, session 10)
    "bregman huber, no labels": ("bregman", {"coefficient_loss": "huber", "label_weight": 0.0}),
    "bregman huber 3": ("bregman", {"coefficient_loss": "huber", "huber_delta": 3.0}),
    "bregman huber 0.3": ("bregman", {"coefficient_loss": "huber", "huber_delta": 0.3}),
    "bregman +div": ("bregman", {"divergence_weight": 1.0}),
    "bregman +soft 1": ("bregman", {"soft_label_weight": 1.0}),
    "bregman huber +soft 10": ("bregman", {"coefficient_loss": "huber", "soft_label_weight": 10.0}),
    "bregman huber +soft 100": ("bregman", {"coefficient_loss": "huber", "soft_label_weight": 100.0}),
    "bregman huber +labels 10": ("bregman", {"coefficient_loss": "huber", "label_weight": 10.0}),
    "bregman huber +labels 100": ("bregman", {"coefficient_loss": "huber", "label_weight": 100.0}),
    "bregman huber +labels 50": ("bregman", {"coefficient_loss": "huber", "label_weight": 50.0}),
    "bregman huber +labels 200": ("bregman", {"coefficient_loss": "huber", "label_weight": 200.0}),
    "bregman k=32": ("bregman", {"n_components": 32}),
    "bregman k=8": ("bregman", {"n_components": 8}),
}


def part_quality(args: argparse.Namespace) -> list[dict]:
    import torch

    from bregman.distillation.api import distill
    from bregman.distillation.targets import TargetCache
    from bregman.teachers import load_teacher

    torch.set_num_threads(args.threads)
    teacher = load_teacher(teacher_path(args.teacher_n, args.teacher_epochs))
    x_pool, y_pool = make_images(args.pool, "train", seed=300)
    xt, yt = make_images(N_TEST, "test", seed=200)
    xt = as_float(xt)
    students = {"resnet8": {"arch": "resnet8"},
                "cnn": {"arch": "cnn", "channels": list(args.cnn_channels), "batch_norm": bool(args.cnn_batch_norm)}}
    rows = []
    for fraction in args.fractions:
        n = int(round(fraction * args.pool))
        epochs = max(5, math.ceil(args.steps * 64 / n))
        for seed in args.seeds:
            g = torch.Generator().manual_seed(1000 + seed)
            idx = torch.randperm(args.pool, generator=g)[:n]
            x, y = as_float(x_pool[idx]), y_pool[idx]
            cache = TargetCache()
            for sname in args.students:
                runs = [(name, "channels" if QUALITY_VARIANTS[name][0] in ("hint", "bregman") else "flat")
                        for name in args.methods]
                if sname == "resnet8" and args.with_flat:
                    runs.append(("bregman", "flat"))
                for name, layout in runs:
                    method, extra = QUALITY_VARIANTS[name]
                    extra = dict(extra)
                    k = extra.pop("n_components", args.k)
                    t0 = time.perf_counter()
                    r = distill(teacher, (x, y), layer=LAYER, method=method, student=students[sname],
                                n_components=k, seed=seed, test=(xt, yt), epochs=epochs, batch_size=64,
                                layout=layout, cache=cache, measure_latency=False,
                                pca_options={"max_iter": args.max_iter}, **extra)
                    row = {"fraction": fraction, "n": n, "seed": seed, "student": sname, "method": name,
                           "layout": layout if method in ("bregman", "hint") else "", "epochs": epochs,
                           "test_accuracy": r.metrics["test_accuracy"], "teacher": r.metrics["test_teacher_accuracy"],
                           "time_s": time.perf_counter() - t0,
                           # the training loss at half and at the end of the budget: converged when they are close
                           "loss_half": r.history["loss"][len(r.history["loss"]) // 2 - 1],
                           "loss_end": r.history["loss"][-1]}
                    if method == "bregman":
                        row["ceiling"] = r.metrics.get("test_representation_accuracy")
                    print(row, flush=True)
                    rows.append(row)
    return rows


def merge(paths: list[str]) -> None:
    """One quality table from the runs of several files (``--tag`` runs)."""
    runs = [r for p in paths for r in json.loads(Path(p).read_text())["runs"]]
    report("image_flow_quality", summarize(runs), extra={"runs": runs, "merged_from": paths})


def summarize(rows: list[dict]) -> list[dict]:
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["fraction"], r["student"], r["method"], r["layout"]), []).append(r)
    out = []
    for (fraction, student, method, layout), rs in sorted(groups.items()):
        accs = [r["test_accuracy"] for r in rs]
        out.append({"fraction": fraction, "n": rs[0]["n"], "student": student, "method": method, "layout": layout,
                    "seeds": len(rs), "mean": statistics.mean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "teacher": rs[0]["teacher"], "time_s": statistics.mean(r["time_s"] for r in rs),
                    **({"loss_half": statistics.mean(r["loss_half"] for r in rs),
                        "loss_end": statistics.mean(r["loss_end"] for r in rs)} if "loss_end" in rs[0] else {})})
    return out


# ------------------------------------------------------------------------------ augment rows
def part_augment(args: argparse.Namespace) -> list[dict]:
    import torch

    from bregman.distillation.api import distill
    from bregman.distillation.image_augment import crop_flip
    from bregman.distillation.losses import coefficient_loss
    from bregman.distillation.targets import coefficients, compute_targets
    from bregman.layouts import map_of_rows, rows_of_map
    from bregman.teachers import load_teacher
    from bregman.training import accuracy, train_loop

    torch.set_num_threads(args.threads)
    teacher = load_teacher(teacher_path(args.teacher_n, args.teacher_epochs))
    x_pool, y_pool = make_images(args.pool, "train", seed=300)
    xt, yt = make_images(N_TEST, "test", seed=200)
    xt = as_float(xt)
    n = int(round(min(args.fractions) * args.pool))
    views = args.views
    epochs_online = max(5, math.ceil(args.steps * 64 / n))
    rows = []
    for seed in args.seeds:
        idx = torch.randperm(args.pool, generator=torch.Generator().manual_seed(1000 + seed))[:n]
        x, y = as_float(x_pool[idx]), y_pool[idx]
        common = dict(layer=LAYER, method="bregman", student={"arch": "cnn", "channels": [16, 32]}, n_components=args.k,
                      seed=seed, test=(xt, yt), batch_size=64, layout="channels", measure_latency=False,
                      pca_options={"max_iter": args.max_iter})
        for v in (0, views):  # the same optimizer steps: epochs scaled by the views
            t0 = time.perf_counter()
            r = distill(teacher, (x, y), epochs=max(1, round(epochs_online / (v + 1))), augment_views=v, **common)
            rows.append({"seed": seed, "n": n, "augmentation": f"cached {v} views" if v else "none",
                         "test_accuracy": r.metrics["test_accuracy"], "time_s": time.perf_counter() - t0})
            print(rows[-1], flush=True)
            if v == 0:
                base = r
        # on the fly: every step draws fresh views and the teacher labels them (coefficients per batch)
        t0 = time.perf_counter()
        from bregman.distillation.cut import resolve_cut

        cut = resolve_cut(teacher, LAYER, x[:2], "auto", "channels")
        est_layer = base.representation
        from bregman.distillation.students import build_student

        s, _ = build_student(common["student"], (3, 32, 32), est_layer.k, seed=seed,
                             map_head={"channels": est_layer.k, "size": [8, 8], "flatten": False})
        g = torch.Generator().manual_seed(5000 + seed)
        model = torch.nn.Sequential(s)

        def online_loss(m, batch):
            xb = crop_flip(batch[0], 4, True, g)
            with torch.no_grad():
                t = compute_targets(xb, cut=cut, hold_preactivations=True)  # one body pass per batch
                c = coefficients(t, est_layer, cut.map_shape)
            return coefficient_loss(m(xb), c), {}

        train_loop(model, [x], online_loss, epochs=epochs_online, batch_size=64, lr=3e-3, weight_decay=1e-4, seed=seed)
        from bregman.distillation.methods import DistilledModel, frozen_copy

        pipe = DistilledModel(s, frozen_copy(est_layer).float(), torch.nn.Sequential(torch.nn.Flatten(), frozen_copy(cut.head)))
        rows.append({"seed": seed, "n": n, "augmentation": "on the fly", "test_accuracy": accuracy(pipe, xt, yt),
                     "time_s": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["speed", "quality", "augment"], choices=["speed", "quality", "augment"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10000, 50000])
    ap.add_argument("--distill-sizes", nargs="+", type=int, default=[10000])
    ap.add_argument("--flat-n", type=int, default=500, help="images of the flat speed rows (0: no flat rows)")
    ap.add_argument("--speed-jobs", nargs="+", default=["representation", "distillation"],
                    choices=["representation", "distillation"], help="which speed rows to run")
    ap.add_argument("--pool", type=int, default=10000, help="training images the fractions are taken of")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.02, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--students", nargs="+", default=["cnn", "resnet8"])
    ap.add_argument("--methods", nargs="+", default=["labels", "kd", "hint", "bregman"], choices=list(QUALITY_VARIANTS),
                    help="quality rows: methods and bregman's recipe variants")
    ap.add_argument("--with-flat", action="store_true", help="also bregman through the flat layout (slow fit)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of 64 images per student (sets epochs)")
    # [16, 32] without batch norm learned nothing at this budget (labels alone 20 % at 10 % of
    # the data, session 8); [32, 64, 64] with batch norm: 77.7 % (session 9, seed 0)
    ap.add_argument("--cnn-channels", type=int, nargs="+", default=[32, 64, 64], help="the cnn student's convolutions")
    ap.add_argument("--cnn-batch-norm", action=argparse.BooleanOptionalAction, default=True,
                    help="batch norm after each of the cnn student's convolutions")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--fit-rows", type=int, default=None, help="distillation speed rows: the channels fit's rows")
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teacher-n", type=int, default=4000)
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--tag", default="", help="suffix of the JSON files (runs in parallel, e.g. one per seed)")
    ap.add_argument("--speed-row", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", default="representation", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="channels", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=10000, help=argparse.SUPPRESS)
    ap.add_argument("--merge", nargs="+", help="merge the quality JSON files given into one table")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge)
        return
    if args.speed_row:
        print(json.dumps(speed_row(args)))
        return
    teacher_path(args.teacher_n, args.teacher_epochs)
    teacher_info = json.loads(teacher_path(args.teacher_n, args.teacher_epochs).with_suffix(".json").read_text())
    import os

    load = os.getloadavg()
    params = {k: v for k, v in vars(args).items() if k not in ("speed_row", "job", "layout", "n")}
    if "speed" in args.part:
        rows = part_speed(args)
        report(f"image_flow_speed{args.tag}", rows, params=params, extra={"teacher": teacher_info, "load": load})
    if "quality" in args.part:
        rows = part_quality(args)
        report(f"image_flow_quality{args.tag}", summarize(rows), params=params,
               extra={"teacher": teacher_info, "runs": rows, "load": load})
    if "augment" in args.part:
        rows = part_augment(args)
        report(f"image_flow_augment{args.tag}", rows, params=params, extra={"teacher": teacher_info, "load": load})
    print(f"load average at start: {load}")


if __name__ == "__main__":
    main()
