"""Speed benchmark: epoch time of each method's student training, against labels-only and online kd.

Every method trains the same student (MLP in → 32 → out) with the same loop, batch size and
number of epochs on the digits training split (optionally tiled to ``--rows`` rows). The teacher
is the quality benchmark's MLP 64 → 256 → 128 → 10 (``--teacher-hidden`` to change it), trained
briefly (its speed, not its accuracy, matters here).

- ``labels``, ``kd`` (cached soft labels), ``hint``, ``bregman``: :func:`bregman.distillation.distill`;
  the epoch time is the loop's own measurement (steps only, no evaluation);
- ``kd (online teacher)``: the same kd loss, with the teacher run on every batch (what a
  distillation loop without the target cache pays);
- ``teacher forward``: the teacher alone over one epoch of batches (its share of online kd).

Targets: bregman ≤ 1.1 × labels; online kd − bregman ≥ the teacher's forward time per epoch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import report  # noqa: E402
from bregman.datasets import load_builtin  # noqa: E402
from bregman.distillation import distill  # noqa: E402
from bregman.distillation.losses import kd_loss  # noqa: E402
from bregman.distillation.students import build_student  # noqa: E402
from bregman.models import build_model  # noqa: E402
from bregman.teachers import Teacher  # noqa: E402
from bregman.training import seeded, train_classifier, train_loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="tile the digits training split to this many rows")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per method (the first is dropped)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--teacher-hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--student-hidden", type=int, nargs="+", default=[32])
    parser.add_argument("--k", type=int, default=16, help="bregman's k at the penultimate layer")
    parser.add_argument("--repeats", type=int, default=5, help="runs per method; the median epoch time is kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else torch.device("cpu")

    ds = load_builtin("digits")
    x, y = ds.x_train, ds.y_train
    if args.rows is not None and args.rows > x.shape[0]:
        reps = -(-args.rows // x.shape[0])
        x, y = x.repeat(reps, 1)[: args.rows], y.repeat(reps)[: args.rows]
    with seeded(0):
        module = build_model("mlp", in_features=64, hidden=args.teacher_hidden, num_classes=10)
    train_classifier(module, ds.x_train, ds.y_train, epochs=3, batch_size=64, lr=1e-3)
    module.to(device)
    teacher = Teacher.from_module(module, (64,))
    penultimate = str(2 * (len(args.teacher_hidden) - 1))
    student = {"arch": "mlp", "hidden": args.student_hidden}
    common = {"epochs": args.epochs, "batch_size": args.batch_size, "measure_latency": False, "device": device,
              "student": student}

    def epoch_time(history: dict) -> float:
        times = history["time_s"][1:] or history["time_s"]  # the first epoch warms caches up
        return statistics.median(times)

    runs = {
        "labels": lambda: distill(teacher, (x, y), method="labels", **common),
        "kd (cached targets)": lambda: distill(teacher, (x, y), method="kd", **common),
        "hint@penultimate": lambda: distill(teacher, (x, y), method="hint", layer=penultimate, **common),
        f"bregman@penultimate k={args.k}": lambda: distill(teacher, (x, y), method="bregman", layer=penultimate,
                                                          n_components=args.k, **common),
        "bregman@logits k=9": lambda: distill(teacher, (x, y), method="bregman", layer="4", n_components=9,
                                              **common),
    }
    def online_kd_run() -> dict:
        """kd with the teacher on every batch: the same loop and loss, targets not cached."""
        net, _ = build_student(student, (64,), 10, seed=0, device=device)

        def online_kd(model, batch):
            xb, yb = batch
            with torch.no_grad():
                t_logits = module(xb)
            return kd_loss(model(xb), t_logits, yb, temperature=4.0, alpha=0.9), {}

        return train_loop(net, [x, y], online_kd, epochs=args.epochs, batch_size=args.batch_size, lr=3e-3,
                          device=device)

    def teacher_epoch_run() -> float:
        """The teacher's own share: its forward passes over one epoch of batches."""
        x_dev = x.to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, x_dev.shape[0], args.batch_size):
                module(x_dev[start:start + args.batch_size])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    # round robin over the methods, so that a load change on the machine hits them all alike
    samples: dict[str, list[float]] = {name: [] for name in [*runs, "kd (online teacher)", "teacher forward only"]}
    params: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            result = run()
            samples[name].append(epoch_time(result.history))
            params[name] = int(result.metrics["student_parameters"])
        samples["kd (online teacher)"].append(epoch_time(online_kd_run()))
        samples["teacher forward only"].append(statistics.median(teacher_epoch_run() for _ in range(args.epochs)))
    params["kd (online teacher)"] = params["labels"]
    times = {name: statistics.median(v) for name, v in samples.items()}
    teacher_epoch = times.pop("teacher forward only")
    for name, t in times.items():
        print(f"{name}: {t * 1e3:.1f} ms/epoch", flush=True)

    base = times["labels"]
    online = times["kd (online teacher)"]
    rows = []
    for name, t in times.items():
        rows.append({"method": name, "ms/epoch": 1e3 * t, "× labels": t / base,
                     "saved vs online kd (ms)": 1e3 * (online - t), "student params": params[name]})
    rows.append({"method": "teacher forward only", "ms/epoch": 1e3 * teacher_epoch, "× labels": teacher_epoch / base,
                 "saved vs online kd (ms)": "", "student params": ""})
    report("distill_speed", rows, columns=["method", "ms/epoch", "× labels", "saved vs online kd (ms)", "student params"],
           params={"rows": int(x.shape[0]), "epochs": args.epochs, "batch_size": args.batch_size,
                   "teacher_hidden": args.teacher_hidden, "student_hidden": args.student_hidden, "k": args.k,
                   "repeats": args.repeats, "threads": args.threads, "device": str(device)},
           out_dir=args.out_dir)
    breg = times[f"bregman@penultimate k={args.k}"]
    print(f"\nbregman / labels = {breg / base:.3f} (target <= 1.1)")
    share = online - times["kd (cached targets)"]
    print(f"online kd - bregman = {1e3 * (online - breg):.1f} ms/epoch; the teacher's share of online kd "
          f"(online - cached kd) = {1e3 * share:.1f} ms/epoch; teacher forward alone = {1e3 * teacher_epoch:.1f} "
          f"ms/epoch (target: the saving >= the teacher's share)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
