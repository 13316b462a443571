"""Load on the HTTP front end, over loopback against the embedded stack.

Measures (1) latency percentiles and throughput of ``GET /v1/jobs/{id}`` and ``POST /v1/jobs``
with C concurrent clients, and (2) the API process's peak resident memory while one large file
uploads (target: it grows by less than 64 MiB for a 1 GiB upload: the body is streamed to disk).

The worker of the stack consumes an unused queue, so queued jobs stay queued and the numbers are
the front end's alone. Bounded: a fixed number of requests per endpoint and a wall-clock cap.

    python -m benchmarks.api_load                       # 50 clients, 2000 GETs, 500 POSTs, 1 GiB
    python -m benchmarks.api_load --requests 200 --posts 50 --upload-mib 64   # quick
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks._report import report
from service.stack import EmbeddedStack

LAYERS = [{"path": "0", "op": "linear", "output_shape": [32], "d": 32, "transfer": "leaky_relu",
           "transfer_params": {"negative_slope": 0.01}, "tappable": True, "reason": None, "representation": "flat"}]


def _seed_records(stack: EmbeddedStack, tenant: str) -> str:
    """A ready teacher and the built-in data set record, as a worker's inspection leaves them."""
    from storage.db import session_scope
    from storage.models import Dataset, Teacher

    with session_scope(stack.database_url) as db:
        db.add(Teacher(id="tch_bench", tenant=tenant, name="bench", format="pt2", sha256="ab" * 32, size=1,
                       status="ready", parameter_count=1, input_shape=[64], layers=LAYERS))
        if db.get(Dataset, "digits") is None:
            db.add(Dataset(id="digits", tenant=None, name="digits", builtin=True, status="ready",
                           input_shape=[64], n_train=1437, num_classes=10, has_labels=True))
    return "tch_bench"


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    idx = min(len(values) - 1, max(0, int(round(q / 100 * (len(values) - 1)))))
    return values[idx]


async def _hammer(url: str, headers: dict, n: int, clients: int, make_request, deadline: float) -> dict:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def one_client(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = await make_request(client, i)
            latencies.append(time.perf_counter() - t0)
            if r.status_code >= 400:
                errors += 1

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": 1e3 * _percentile(latencies, 50),
        "p99_ms": 1e3 * _percentile(latencies, 99),
        "mean_ms": 1e3 * statistics.fmean(latencies),
        "throughput_rps": len(latencies) / wall,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _upload_peak(stack: EmbeddedStack, headers: dict, size_mib: int) -> dict:
    """Stream a safetensors file of ``size_mib`` MiB (generated on the fly) and sample the API's RSS."""
    n = size_mib * 1024 * 1024
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    boundary = "benchboundary"
    manifest = json.dumps({"arch": "mlp", "args": {"in_features": 64, "hidden": [8], "num_classes": 10}})
    pre = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.safetensors\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode() + len(header).to_bytes(8, "little") + header
    post = f"\r\n--{boundary}--\r\n".encode()
    chunk = b"\0" * (1024 * 1024)

    def body():
        yield pre
        for _ in range(size_mib):
            yield chunk
        yield post

    pid = stack.api_proc.pid
    baseline = _rss_kib(pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    length = len(pre) + n + len(post)
    r = httpx.post(f"{stack.api_url}/v1/teachers", content=body(), timeout=600,
                   headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}",
                            "Content-Length": str(length)})
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {
        "upload_mib": size_mib,
        "status": r.status_code,
        "rss_before_mib": baseline / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_growth_mib": (peak - baseline) / 1024,
        "upload_mib_per_s": size_mib / wall,
        "target_growth_mib": 64,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=2000, help="GET /v1/jobs/{id} requests")
    p.add_argument("--posts", type=int, default=500, help="POST /v1/jobs requests")
    p.add_argument("--upload-mib", type=int, default=1024, help="size of the upload whose memory is measured (0: skip)")
    p.add_argument("--max-seconds", type=float, default=120, help="wall-clock cap per load phase")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bregkd-bench-") as tmp:
        env = {"BREGKD_MAX_UPLOAD_BYTES": str((args.upload_mib + 16) * 1024 * 1024)}
        # the worker consumes a queue nobody sends to: jobs stay queued, the API is measured alone
        with EmbeddedStack(Path(tmp) / "stack", queues=("bench-idle",), env=env) as stack:
            key = stack.create_api_key("bench")
            headers = {"Authorization": f"Bearer {key}"}
            teacher_id = _seed_records(stack, "bench")
            spec = {"kind": "representation", "teacher_id": teacher_id, "dataset": "digits", "layer": "0",
                    "n_components": 4}
            first = httpx.post(f"{stack.api_url}/v1/jobs", json=spec, headers=headers)
            first.raise_for_status()
            job_id = first.json()["id"]

            async def get_job(client, i):
                return await client.get(f"/v1/jobs/{job_id}")

            async def post_job(client, i):
                return await client.post("/v1/jobs", json=spec)

            rows = []
            for name, n, fn in (("GET /v1/jobs/{id}", args.requests, get_job), ("POST /v1/jobs", args.posts, post_job)):
                deadline = time.monotonic() + args.max_seconds
                cpu0 = _cpu_s(stack.api_proc.pid)
                res = asyncio.run(_hammer(stack.api_url, headers, n, args.clients, fn, deadline))
                # the API's own CPU per request: comparable across machines and load, unlike latency
                res["api_cpu_ms_per_req"] = 1e3 * (_cpu_s(stack.api_proc.pid) - cpu0) / max(1, res["requests"])
                rows.append({"endpoint": name, "clients": args.clients, **res})
            upload = _upload_peak(stack, headers, args.upload_mib) if args.upload_mib > 0 else None
    report("api_load", rows, params=vars(args), extra={"upload": upload}, out_dir=args.out_dir,
           columns=["endpoint", "clients", "requests", "errors", "p50_ms", "p99_ms", "mean_ms", "throughput_rps",
                    "api_cpu_ms_per_req"])
    if upload:
        from benchmarks._report import markdown_table

        print()
        print(markdown_table([upload]))


if __name__ == "__main__":
    main()
