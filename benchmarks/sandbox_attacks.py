"""What each crafted attack on the file loaders gets now: outcome, message and the peak memory of
the sandbox child that handled it (its ``VmHWM``), next to a child that loads a
tiny clean file. Issue 11's note, measured.

    PYTHONPATH=. python3 benchmarks/sandbox_attacks.py     # about 10 children, 1-2 minutes

Writes ``benchmarks/out/sandbox_attacks.json``.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file as np_save  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from benchmarks._report import report  # noqa: E402
from bregman.models import build_model  # noqa: E402
from workers.sandbox import SandboxFailure, SandboxLimits, run_in_sandbox  # noqa: E402

MiB = 1024**2
ARGS = {"in_features": 64, "hidden": [32], "num_classes": 10}


def run(name: str, target: str, kwargs: dict, limits: SandboxLimits, what: str) -> dict:
    try:
        res = run_in_sandbox(target, kwargs, what=what, limits=limits)
        return {"attack": name, "outcome": "loaded", "message": "", "peak_mib": round(res.peak_rss_bytes / MiB),
                "wall_s": round(res.wall_s, 1)}
    except SandboxFailure as exc:
        return {"attack": name, "outcome": exc.kind, "message": str(exc)[:160], "peak_mib": round(exc.peak_rss_bytes / MiB),
                "wall_s": None}


def main() -> None:
    os.environ["BREGKD_SANDBOX_PRELOAD"] = "tests.security._sandbox_faults"
    roomy = SandboxLimits(2048 * MiB, 120)
    tmp = Path(tempfile.mkdtemp(prefix="bregkd-attacks-"))
    torch.manual_seed(0)
    weights = tmp / "w.safetensors"
    save_file(build_model("mlp", **ARGS).state_dict(), str(weights))
    small = tmp / "small.safetensors"
    np_save({"x": np.zeros((40, 1000), np.float32)}, str(small))
    big = tmp / "big.safetensors"
    np_save({"x": np.zeros((20_000, 1000), np.float16)}, str(big))
    liar = tmp / "liar.safetensors"
    raw = json.dumps({"0.weight": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 16]}}).encode()
    liar.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    kill = tmp / "kill.safetensors"
    np_save({"x": np.zeros((4, 4), np.float32)}, str(kill), metadata={"note": "BREGKD-FAULT:kill"})
    boom = tmp / "boom.safetensors"
    np_save({"x": np.zeros((4, 4), np.float32)}, str(boom), metadata={"note": "BREGKD-FAULT:boom"})

    T, D = "workers.sandbox:inspect_teacher_file", "workers.sandbox:inspect_dataset_file"
    rows = [
        run("clean 10 KB teacher (baseline)", T, {"path": str(weights), "manifest": {"arch": "mlp", "args": ARGS}}, roomy,
            "loading the teacher"),
        run("clean 160 KB data set (baseline)", D, {"path": str(small)}, roomy, "loading the data set"),
        run("10 KB weights, manifest hidden [8000000]", T,
            {"path": str(weights), "manifest": {"arch": "mlp", "args": {**ARGS, "hidden": [8_000_000]}}}, roomy,
            "loading the teacher"),
        run("10 KB weights, manifest hidden [1000000] (under the limit)", T,
            {"path": str(weights), "manifest": {"arch": "mlp", "args": {**ARGS, "hidden": [1_000_000]}}}, roomy,
            "loading the teacher"),
        run("safetensors header declaring 40 GB in 100 bytes", T,
            {"path": str(liar), "manifest": {"arch": "mlp", "args": ARGS}}, roomy, "loading the teacher"),
    ]
    base = rows[1]["peak_mib"]
    rows += [
        run(f"legal 40 MB float16 data set, memory limit baseline+96 MiB", D, {"path": str(big)},
            SandboxLimits((base + 96) * MiB, 120), "loading the data set"),
        run("same file, time limit 0.5 s", D, {"path": str(big)}, SandboxLimits(2048 * MiB, 0.5), "loading the data set"),
        run("same file, default-like limits", D, {"path": str(big)}, roomy, "loading the data set"),
        run("loader SIGKILLed (fault hook)", D, {"path": str(kill)}, roomy, "loading the data set"),
        run("unexpected error with server paths (fault hook)", D, {"path": str(boom)}, roomy, "loading the data set"),
    ]
    report("sandbox_attacks", rows, columns=["attack", "outcome", "peak_mib", "message"])


if __name__ == "__main__":
    main()
