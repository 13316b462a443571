"""The API's limits on the real stack (redis-server, a Celery worker, uvicorn with the flags of
``service.stack.UVICORN_LIMIT_FLAGS``): a 50 MB body, pagination bounds, slow and half-sent
requests, the per-tenant upload cap, a full disk (a 2 MiB tmpfs) and Redis down during an upload.

This module runs its own stack with short timeouts, so each slow-client case ends in seconds.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from service.errors import STORAGE_FULL
from service.stack import EmbeddedStack, stop_process
from tests.e2e._helpers import upload_teacher, wait_until
from tests.e2e.conftest import own_database

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 2
IDLE_TIMEOUT_S = 3
DRAIN_TIMEOUT_S = 3
MAX_UPLOADS = 2
LIMITS_ENV = {
    "BREGKD_HEARTBEAT_INTERVAL_S": "1",
    "BREGKD_HEARTBEAT_TIMEOUT_S": "6",
    "BREGKD_SWEEP_INTERVAL_S": "1",
    "BREGKD_QUEUED_GRACE_S": "2",
    "BREGKD_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
    "BREGKD_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "BREGKD_UPLOAD_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
    "BREGKD_BODY_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    "BREGKD_MAX_CONCURRENT_UPLOADS": str(MAX_UPLOADS),
}
#: a socket that the server should have closed by now has failed the test
GIVE_UP_S = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, e2e_database_url: str | None) -> Iterator[EmbeddedStack]:
    # records of its own, never the main stack's (see own_database)
    with EmbeddedStack(tmp_path_factory.mktemp("limits"), database_url=own_database(e2e_database_url, "limits"),
                       env=LIMITS_ENV) as st:
        yield st


@pytest.fixture(scope="module")
def key(stack: EmbeddedStack) -> str:
    return stack.create_api_key("acme")


@pytest.fixture(scope="module")
def client(stack: EmbeddedStack, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


def _tmp_files(stack: EmbeddedStack) -> list[Path]:
    return sorted((stack.data_dir / "blobs" / "tmp").glob("upload-*"))


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _connect(stack: EmbeddedStack) -> socket.socket:
    s = socket.create_connection((stack.api_host, stack.api_port), timeout=GIVE_UP_S)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise AssertionError(f"the server kept the connection open for {GIVE_UP_S} s; got {data[:200]!r}") from None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _upload_head(stack: EmbeddedStack, key: str, length: int, boundary: str = "bkdslow") -> bytes:
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.pt2\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    head = (f"POST /v1/teachers HTTP/1.1\r\nHost: {stack.api_host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n").encode()
    return head + part


# -- body size and pagination ------------------------------------------------------------------
def test_a_50_mb_json_body_is_413_and_the_api_does_not_grow(stack, client):
    pid = stack.api_proc.pid
    before = _rss_bytes(pid)
    jobs_before = client.get("/v1/jobs").json()["total"]
    body = b'{"kind": "distillation", "student": {"arch": "mlp", "junk": "' + b"x" * (50 * 1024 * 1024) + b'"}}'
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "1048576 bytes" in r.json()["detail"], r.text

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        for _ in range(50):
            yield b" " * (1024 * 1024)

    r = client.post("/v1/jobs", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "BREGKD_MAX_JSON_BYTES" in r.json()["detail"], r.text
    grown = _rss_bytes(pid) - before
    assert grown < 20 * 1024 * 1024, f"the API grew by {grown / 2**20:.1f} MiB reading a refused body"
    assert client.get("/v1/jobs").json()["total"] == jobs_before
    assert client.get("/healthz").status_code == 200  # the connection pool still works


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/teachers", "/v1/datasets"])
def test_offsets_beyond_64_bits_are_422(client, path):
    for offset in (2**63, 2**63 - 1, 2**80):
        r = client.get(path, params={"offset": offset})
        assert r.status_code == 422, (offset, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "offset"]


# -- slow clients ------------------------------------------------------------------------------
def test_half_sent_headers_are_answered_408_and_closed(stack):
    with _connect(stack) as s:
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Ty")
        t0 = time.monotonic()
        data = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408") and b"BREGKD_HEADER_TIMEOUT_S" in data, data
    assert time.monotonic() - t0 >= HEADER_TIMEOUT_S * 0.9
    with _connect(stack) as s:  # a connection that sends nothing at all
        assert _read_until_closed(s).startswith(b"HTTP/1.1 408")


def test_a_stalled_upload_is_408_and_its_temp_file_removed(stack, key):
    assert not _tmp_files(stack)
    with _connect(stack) as s:
        s.sendall(_upload_head(stack, key, 1_000_000) + b"\0" * 1000)
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while not _tmp_files(stack) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _tmp_files(stack), "the upload never started"
        data = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408") and b"BREGKD_UPLOAD_IDLE_TIMEOUT_S" in data, data
    assert not _tmp_files(stack)


def test_a_trickled_json_body_is_408(stack, key):
    with _connect(stack) as s:
        s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode())
        s.settimeout(0.4)
        data = b""
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:  # a byte every 0.4 s: never idle, but far too slow
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                try:
                    s.sendall(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    break
        else:
            raise AssertionError("the trickle was never cut off")
    assert data.startswith(b"HTTP/1.1 408") and b"BREGKD_UPLOAD_MIN_RATE_BYTES_S" in data, data


def test_the_unread_rest_of_a_refused_body_is_drained_for_a_bounded_time(stack, key):
    with _connect(stack) as s:
        s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {50 * 2**20}\r\n\r\n".encode())
        s.settimeout(GIVE_UP_S)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < GIVE_UP_S:  # keep sending, slowly, as a slowloris would
            try:
                s.sendall(b"x" * 100)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
        assert closed, "the server kept draining a trickled body"
    assert time.monotonic() - t0 >= DRAIN_TIMEOUT_S * 0.9


def test_a_tenant_gets_429_beyond_its_concurrent_uploads(stack, key, client, tmp_path):
    stop = threading.Event()
    socks = [_connect(stack) for _ in range(MAX_UPLOADS)]

    def feed() -> None:  # keep both uploads alive (above the minimum rate) until told to stop
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"\0" * 16384)
                except OSError:
                    pass
            stop.wait(0.3)

    for s in socks:
        s.sendall(_upload_head(stack, key, 4_000_000))
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 10
        while len(_tmp_files(stack)) < MAX_UPLOADS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_tmp_files(stack)) == MAX_UPLOADS
        path = tmp_path / "small.npz"
        path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
        with open(path, "rb") as fh:
            r = client.post("/v1/datasets", files={"file": ("d.npz", fh)})
        assert r.status_code == 429 and r.headers["retry-after"], r.text
        assert f"BREGKD_MAX_CONCURRENT_UPLOADS={MAX_UPLOADS}" in r.json()["detail"]
    finally:
        stop.set()
        feeder.join()
    for s in socks:  # stalled now: each is cut off and its slot freed
        with s:
            assert _read_until_closed(s).startswith(b"HTTP/1.1 408")
    assert not _tmp_files(stack)
    with open(path, "rb") as fh:
        r = client.post("/v1/datasets", files={"file": ("d.npz", fh)})
    assert r.status_code != 429, r.text


# -- a full disk -------------------------------------------------------------------------------
def test_a_full_disk_is_507_and_leaves_no_temp_file(stack, client, tmp_path):
    tmp_dir = stack.data_dir / "blobs" / "tmp"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(tmp_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a 2 MiB tmpfs is not permitted here ({mounted.stderr.strip()})")
    try:
        big = tmp_path / "big.pt2"
        big.write_bytes(os.urandom(3 * 1024 * 1024))  # under the upload limit, over the free space
        r = upload_teacher(client, big)
        assert r.status_code == 507, r.text
        assert r.json()["detail"] == STORAGE_FULL and r.headers["retry-after"]
        assert not list(tmp_dir.iterdir())
        assert client.get("/healthz").status_code == 200
    finally:
        if subprocess.run(["umount", str(tmp_dir)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(tmp_dir)], check=True)


# -- Redis down during an upload and a job submission ------------------------------------------
def test_upload_and_job_while_redis_is_down_are_sent_when_it_is_back(stack, client, teacher_file, tmp_path):
    from tests.e2e._teachers import save_pt2, train_digits_mlp

    ready = upload_teacher(client, teacher_file)
    assert ready.status_code in (200, 201), ready.text
    ready = wait_until(client, f"/v1/teachers/{ready.json()['id']}", "status", ("ready", "failed"))
    assert ready["status"] == "ready", ready
    second = save_pt2(train_digits_mlp(hidden=(16,), epochs=1), tmp_path / "second.pt2")

    stop_process(stack.redis_proc)
    stack.redis_proc = None
    try:
        r = upload_teacher(client, second)
        assert r.status_code == 202, r.text
        pending = r.json()
        assert pending["status"] == "inspecting" and "sent automatically" in pending["notice"]
        again = upload_teacher(client, second)  # a client that retries anyway gets the same record
        assert again.status_code == 200 and again.json()["id"] == pending["id"]
        job = client.post("/v1/jobs", json={"kind": "representation", "teacher_id": ready["id"], "dataset": "digits",
                                            "layer": "0", "n_components": 2, "solver": {"max_iter": 5}})
        assert job.status_code == 201 and job.json()["state"] == "queued", job.text
        time.sleep(1)
        assert client.get(f"/v1/teachers/{pending['id']}").json()["status"] == "inspecting"
    finally:
        stack.start_redis()
    teacher = wait_until(client, f"/v1/teachers/{pending['id']}", "status", ("ready", "failed"), timeout=90)
    assert teacher["status"] == "ready", teacher
    assert teacher["input_shape"] == [64]
    done = wait_until(client, f"/v1/jobs/{job.json()['id']}", "state", ("succeeded", "failed", "cancelled"), timeout=90)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    listed = [t["id"] for t in client.get("/v1/teachers").json()["items"]]
    assert listed.count(pending["id"]) == 1 and len(listed) == 2
