"""The embedded stack: a local ``redis-server``, one Celery worker and the API under uvicorn.

The one way to run everything on one machine (``bregkd serve``, the demo, the end-to-end tests)::

    with EmbeddedStack("var/") as stack:
        key = stack.create_api_key("acme")
        httpx.get(f"{stack.api_url}/v1/jobs", headers={"Authorization": f"Bearer {key}"})

Every process is started in its own process group and stopped (SIGTERM, then SIGKILL) on exit,
also when the body raises. Logs go to ``<data_dir>/logs``.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: the API's connection limits (the Dockerfile and docker-compose.yml run the same flags):
#: header and drain timeouts (service/http_protocol.py), idle keep-alive, header size
UVICORN_LIMIT_FLAGS = ("--http", "service.http_protocol:TimedH11Protocol", "--timeout-keep-alive", "5",
                       "--h11-max-incomplete-event-size", "16384")


class StackError(RuntimeError):
    """A part of the embedded stack did not start; the message points at its log."""


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port that is free now, for a server we are about to start.

    Asking the kernel for port 0 and closing the socket hands out a port from the ephemeral
    range, which any outgoing connection may take before our server binds it. So the port is
    drawn at random below that range (where the kernel never assigns ports by itself), checked
    by binding it, and never handed out twice by this process.
    """
    low, high = _ephemeral_range()
    top = low - 1 if low > 11000 else 65535
    bottom = 10000 if low > 11000 else high + 1
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(bottom, top)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StackError("no free loopback port found")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop a process and its group: ``sig`` first, SIGKILL if it outlives ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    # children that outlived the leader (e.g. prefork pool processes) share its group
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class EmbeddedStack:
    """Start Redis, migrations, a Celery worker and uvicorn; wait until ``/readyz`` is green.

    Parameters
    ----------
    data_dir : where the blobs, the SQLite file, Redis's append-only file and the logs live.
    api_port, redis_port : fixed ports, or None for free ones.
    database_url : SQLAlchemy URL; None means a SQLite file in ``data_dir``.
    worker_concurrency : processes of the worker; 1 uses the ``solo`` pool (one job at a time,
        safe for CUDA), more the ``prefork`` pool.
    queues : the queues the worker consumes.
    env : extra ``BREGKD_*`` (or other) environment variables for the worker and the API.
    ready_timeout : seconds to wait for ``/readyz``.
    extra_workers : ``(pool, concurrency)`` of more worker processes started beside the main one
        (scale-out); see :meth:`add_worker`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        api_port: int | None = None,
        redis_port: int | None = None,
        database_url: str | None = None,
        worker_concurrency: int = 1,
        worker_pool: str | None = None,
        queues: tuple[str, ...] = ("cpu", "gpu"),
        env: dict[str, str] | None = None,
        ready_timeout: float = 90.0,
        api_host: str = "127.0.0.1",
        extra_workers: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.api_host = api_host
        self.api_port = api_port or free_port()
        self.redis_port = redis_port or free_port()
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'bregkd.db'}"
        self.worker_concurrency = worker_concurrency
        self.worker_pool = worker_pool or ("solo" if worker_concurrency == 1 else "prefork")
        self.queues = queues
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.log_dir = self.data_dir / "logs"
        self.redis_proc: subprocess.Popen | None = None
        self.worker_proc: subprocess.Popen | None = None
        self.api_proc: subprocess.Popen | None = None
        self._worker_n = 0
        self.worker_name: str | None = None
        #: workers started by :meth:`add_worker`, by name (same queues, database and blob directory)
        self.extra_workers: dict[str, subprocess.Popen] = {}
        self._extra_worker_specs = tuple(extra_workers)

    # -- addresses -------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BREGKD_DATA_DIR=str(self.data_dir),
            BREGKD_DATABASE_URL=self.database_url,
            BREGKD_REDIS_URL=self.redis_url,
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "EmbeddedStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        from storage.migrate import upgrade

        upgrade(self.database_url)
        self.start_worker()
        for pool, concurrency in self._extra_worker_specs:
            self.add_worker(pool, concurrency)
        self.start_api()
        self.wait_ready()

    def stop(self) -> None:
        for proc in (self.api_proc, *self.extra_workers.values(), self.worker_proc, self.redis_proc):
            stop_process(proc)
        self.api_proc = self.worker_proc = self.redis_proc = None
        self.extra_workers = {}

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                cmd, cwd=str(REPO_ROOT), env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- redis -----------------------------------------------------------------------------
    def start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError("redis-server is not installed (apt-get install redis-server)")
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_proc = self._spawn(
            "redis",
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no"],
        )
        import redis

        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.RedisError:
                pass
            if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"redis-server did not start:\n{self.log_tail('redis')}")
            time.sleep(0.05)
        client.close()

    def restart_redis(self) -> None:
        """Stop Redis (SIGTERM: it flushes its append-only file) and start it on the same port."""
        stop_process(self.redis_proc)
        self.start_redis()

    # -- worker ----------------------------------------------------------------------------
    def _worker_cmd(self, name: str, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "--pool", pool, "--concurrency", str(concurrency),
            "-Q", ",".join(self.queues), "--hostname", f"{name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]

    def _new_worker_name(self) -> str:
        self._worker_n += 1
        return f"bregkd{self._worker_n}-{uuid.uuid4().hex[:6]}"

    def start_worker(self) -> None:
        self.worker_name = self._new_worker_name()
        self.worker_proc = self._spawn("worker", self._worker_cmd(self.worker_name, self.worker_pool, self.worker_concurrency))

    def add_worker(self, pool: str = "solo", concurrency: int = 1) -> str:
        """Start one more worker process beside the main one (scale-out): its own Celery hostname
        and log (``logs/worker-<name>.log``), the same queues, database and blob directory.
        Returns its name; :meth:`kill_worker`, :meth:`worker_pids` and :meth:`wait_ready` take it."""
        name = self._new_worker_name()
        self.extra_workers[name] = self._spawn(f"worker-{name}", self._worker_cmd(name, pool, concurrency))
        return name

    def kill_worker(self, sig: int = signal.SIGKILL, name: str | None = None) -> None:
        """Kill a worker's whole process group (default SIGKILL: no clean-up runs); ``name``
        picks a worker of :meth:`add_worker`, None the main one."""
        proc = self.worker_proc if name is None else self.extra_workers.pop(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
        if name is None:
            self.worker_proc = None

    def restart_worker(self, wait: bool = True) -> None:
        self.kill_worker(signal.SIGTERM)
        self.start_worker()
        if wait:
            self.wait_ready()

    def worker_pids(self, name: str | None = None) -> list[int]:
        """A worker's main process and its pool children (for tests that kill one); ``name`` as
        in :meth:`kill_worker`."""
        proc = self.worker_proc if name is None else self.extra_workers.get(name)
        if proc is None:
            return []
        pids = [proc.pid]
        try:
            out = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split() if int(p) != proc.pid]
        except FileNotFoundError:
            pass
        return pids

    # -- api -------------------------------------------------------------------------------
    def start_api(self) -> None:
        self.api_proc = self._spawn(
            "api",
            [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", self.api_host,
             "--port", str(self.api_port), "--log-level", "warning", "--timeout-graceful-shutdown", "3",
             *UVICORN_LIMIT_FLAGS],
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``/readyz`` is green and lists every current worker (not a killed one's
        leftover presence key)."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        last = "no answer"
        names = [self.worker_name, *self.extra_workers]
        while time.monotonic() < deadline:
            procs = [("api", self.api_proc), ("worker", self.worker_proc), ("redis", self.redis_proc)]
            procs += [(f"worker-{n}", p) for n, p in self.extra_workers.items()]
            for name, proc in procs:
                if proc is None or proc.poll() is not None:
                    raise StackError(f"{name} exited during start-up:\n{self.log_tail(name)}")
            try:
                r = httpx.get(f"{self.api_url}/readyz", timeout=2)
                workers = r.json().get("workers", []) if r.status_code == 200 else []
                if r.status_code == 200 and all(any(w.startswith(f"{n}@") for w in workers) for n in names):
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise StackError(
            f"the stack was not ready within the timeout ({last});\nworker log:\n{self.log_tail('worker')}\n"
            f"api log:\n{self.log_tail('api')}"
        )

    # -- keys ------------------------------------------------------------------------------
    def create_api_key(self, tenant: str) -> str:
        """A new API key for ``tenant`` (created if new)."""
        from service.auth import create_key
        from storage.db import session_scope

        with session_scope(self.database_url) as session:
            return create_key(session, tenant).key
