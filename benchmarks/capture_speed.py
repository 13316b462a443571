"""Capture throughput and peak memory: a ResNet-20 layer over N inputs, in memory vs chunked to disk.

Each variant runs in its own subprocess (this script re-invoked with ``--variant``) so that its
peak resident memory (``ru_maxrss``) is its own. Inputs are CIFAR-shaped (3x32x32) random batches
generated on the fly from a fixed seed, identical for both variants, so neither holds the N inputs;
the difference is where the (N, d) pre-activations go.

    python benchmarks/capture_speed.py                       # N=100000, layer3.2 (d=4096)
    python benchmarks/capture_speed.py --n 2000 --batch-size 256 --chunk-rows 500   # quick
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._report import peak_rss_mib, report  # noqa: E402

VARIANTS = ("in_memory", "chunked")


def _batches(n: int, batch_size: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        yield torch.randn((min(batch_size, n - start), 3, 32, 32), generator=gen)


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from bregman.capture import capture_preactivations
    from bregman.layers import split_at
    from bregman.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet20")
    split = split_at(model, args.layer, torch.randn(2, 3, 32, 32))
    body = split.body
    if args.device:
        body = body.to(args.device)
    capture_preactivations(body, torch.randn(args.batch_size, 3, 32, 32))  # warm-up
    rss_before = peak_rss_mib()
    spill = Path(tempfile.mkdtemp(prefix="capture-bench-", dir=args.spill_parent)) if args.variant == "chunked" else None
    start = time.perf_counter()
    result = capture_preactivations(
        body,
        _batches(args.n, args.batch_size, seed=1),
        n_rows=args.n,
        chunk_rows=args.chunk_rows if args.variant == "chunked" else None,
        spill_dir=spill,
        device=args.device or None,
    )
    seconds = time.perf_counter() - start
    row = {
        "variant": args.variant,
        "n": args.n,
        "d": split.info.d,
        "batch_size": args.batch_size,
        "chunk_rows": args.chunk_rows if args.variant == "chunked" else "",
        "seconds": seconds,
        "samples_per_s": args.n / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_capture_mib": rss_before,
        "result_mib": args.n * split.info.d * 4 / 2**20,
        "threads": torch.get_num_threads(),
    }
    if spill is not None:
        row["disk_mib"] = sum(f.stat().st_size for f in spill.iterdir()) / 2**20
        # one full re-read, as BregmanPCA.fit does per pass; the sum touches every value
        # (safetensors maps files lazily, so reading shapes alone would measure nothing)
        start = time.perf_counter()
        rows, total = 0, 0.0
        for chunk in result:
            rows += chunk.shape[0]
            total += float(chunk.sum())
        row["reread_s"] = time.perf_counter() - start
        row["peak_rss_after_reread_mib"] = peak_rss_mib()
        assert rows == args.n
        shutil.rmtree(spill)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="number of inputs")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--layer", default="layer3.2", help="resnet20 layer path (layer3.2: d = 64*8*8 = 4096)")
    parser.add_argument("--device", default="", help="e.g. cuda; default: CPU")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--spill-parent", default=None, help="folder for the chunk files (default: system temp)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)

    if args.variant:  # child process: measure one variant, print one JSON line
        print(json.dumps(run_variant(args)))
        return

    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--n", str(args.n), "--batch-size", str(args.batch_size),
               "--chunk-rows", str(args.chunk_rows), "--layer", args.layer]
        if args.device:
            cmd += ["--device", args.device]
        if args.spill_parent:
            cmd += ["--spill-parent", args.spill_parent]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report(
        "capture_speed",
        rows,
        columns=["variant", "n", "d", "batch_size", "chunk_rows", "seconds", "samples_per_s", "peak_rss_mib",
                 "rss_before_capture_mib", "result_mib", "disk_mib", "reread_s", "peak_rss_after_reread_mib", "threads"],
        params=vars(args),
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
