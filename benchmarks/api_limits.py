"""Probe the API's request limits on a live embedded stack, as an attacker would, and print a table.

    python benchmarks/api_limits.py                      # this checkout
    PYTHONPATH=/path/to/older/checkout python benchmarks/api_limits.py --label before

Each probe: the status answered, the seconds until the answer (or until the server closed the
connection), and the API process's resident memory before and after. Writes
``benchmarks/out/api_limits_<label>.json``.
"""
from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

import httpx

from service.stack import EmbeddedStack, stop_process

OUT = Path(__file__).resolve().parent / "out"
GIVE_UP_S = 15.0
ENV = {"BREGKD_HEADER_TIMEOUT_S": "3", "BREGKD_UPLOAD_IDLE_TIMEOUT_S": "3", "BREGKD_QUEUED_GRACE_S": "2",
       "BREGKD_SWEEP_INTERVAL_S": "1"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def until_closed(stack: EmbeddedStack, payload: bytes) -> tuple[str, float]:
    """Send ``payload`` on a raw socket and wait for the server to close it."""
    t0 = time.monotonic()
    with socket.create_connection((stack.api_host, stack.api_port), timeout=GIVE_UP_S) as s:
        s.sendall(payload)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except socket.timeout:
            return "open after 15 s", GIVE_UP_S
        except ConnectionResetError:
            pass
    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
    return status, time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(tmp, env=ENV) as stack:
        key = stack.create_api_key("probe")
        c = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        pid = stack.api_proc.pid

        def probe(name: str, fn) -> None:
            before = rss_mib(pid)
            t0 = time.monotonic()
            try:
                status, extra = fn()
            except httpx.HTTPError as exc:
                status, extra = f"client error {type(exc).__name__}", ""
            rows.append({"probe": name, "status": status, "seconds": round(time.monotonic() - t0, 2),
                         "rss_growth_mib": round(rss_mib(pid) - before, 1), "note": extra})

        big = b'{"kind": "distillation", "teacher_id": "t", "dataset": "digits", "layer": "0", "student": ' \
              b'{"arch": "mlp", "junk": "' + b"x" * (50 * 2**20) + b'"}}'

        def body_50mb():
            r = c.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
            return str(r.status_code), f"{len(r.content)} bytes answered"

        def chunked_50mb():
            r = c.post("/v1/jobs", content=(big[i:i + 2**20] for i in range(0, len(big), 2**20)),
                       headers={"Content-Type": "application/json"})
            return str(r.status_code), f"{len(r.content)} bytes answered"

        def long_teacher_id():
            r = c.post("/v1/jobs", json={"kind": "representation", "teacher_id": "t" * 500_000, "dataset": "digits",
                                         "layer": "0"})
            return str(r.status_code), f"{len(r.content)} bytes answered"

        def offset():
            return ",".join(str(c.get(p, params={"offset": 2**63}).status_code)
                            for p in ("/v1/jobs", "/v1/teachers", "/v1/datasets")), "jobs,teachers,datasets"

        def half_headers():
            return until_closed(stack, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Ty")[0], ""

        def stalled_upload():
            head = (f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                    "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.npz\"\r\n\r\n").encode()
            status, _ = until_closed(stack, head + b"\0" * 1000)
            left = len(list((stack.data_dir / "blobs" / "tmp").glob("upload-*")))
            return status, f"{left} temp file(s) left"

        def redis_down_upload():
            stop_process(stack.redis_proc)
            try:
                import io

                import numpy as np

                buf = io.BytesIO()
                np.savez(buf, x_train=np.zeros((4, 64), np.float32))
                r = c.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())})
                note = r.json().get("status") if r.headers.get("content-type", "").startswith("application/json") \
                    else r.text[:40]
                return str(r.status_code), str(note)
            finally:
                stack.start_redis()

        for name, fn in [("50 MiB JSON body, Content-Length", body_50mb), ("50 MiB JSON body, chunked", chunked_50mb),
                         ("500 kB teacher_id", long_teacher_id), ("offset=2^63 on the 3 lists", offset),
                         ("half-sent headers", half_headers), ("stalled upload (1 kB of 100 kB)", stalled_upload),
                         ("upload while Redis is down", redis_down_upload)]:
            probe(name, fn)
    OUT.mkdir(exist_ok=True)
    (OUT / f"api_limits_{args.label}.json").write_text(json.dumps(rows, indent=2))
    print(f"| probe ({args.label}) | status | s | API RSS growth MiB | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['probe']} | {r['status']} | {r['seconds']} | {r['rss_growth_mib']} | {r['note']} |")


if __name__ == "__main__":
    main()
