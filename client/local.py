"""Run the service on this machine for ``bregkd serve`` and ``bregkd demo``.

Imports ``service.stack`` lazily: the rest of the client never needs the service's code.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
from rich.console import Console

#: The key of the local tenant is kept here (mode 600) so that restarts of ``bregkd serve``
#: keep working with the key a user exported before.
KEY_FILE = "local-api-key"


def _key_works(api_url: str, key: str) -> bool:
    try:
        r = httpx.get(f"{api_url}/v1/jobs", params={"limit": 1},
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def local_api_key(stack: Any, tenant: str) -> str:
    """The key stored in the stack's data directory if it still works, else a new one (stored)."""
    path = Path(stack.data_dir) / KEY_FILE
    if path.is_file():
        stored = path.read_text().strip()
        if stored and _key_works(stack.api_url, stored):
            return stored
    key = stack.create_api_key(tenant)
    path.write_text(key + "\n")
    os.chmod(path, 0o600)
    return key


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and a SIGINT ignored by a non-interactive parent shell) into KeyboardInterrupt,
    so the stack's processes are stopped however this process is asked to end."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for sig in previous:
            signal.signal(sig, interrupt)
    except ValueError:  # not the main thread: leave the handlers alone
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def local_stack(data_dir: str | os.PathLike, *, api_port: int | None = None, redis_port: int | None = None,
                concurrency: int = 1, tenant: str = "local", database_url: str | None = None) -> Iterator[tuple[Any, str]]:
    """Start the embedded stack (Redis, one Celery worker, the API); yield ``(stack, api_key)``."""
    from service.stack import EmbeddedStack

    with signals_interrupt(), EmbeddedStack(data_dir, api_port=api_port, redis_port=redis_port, worker_concurrency=concurrency,
                       database_url=database_url) as stack:
        yield stack, local_api_key(stack, tenant)


def run_until_interrupted(*, data_dir: Path, api_port: int | None, redis_port: int | None, concurrency: int,
                          tenant: str, console: Console) -> None:
    """``bregkd serve``: start the stack, print how to use it, keep it up until Ctrl-C."""
    console.print(f"starting redis-server, a Celery worker and the API (data in {Path(data_dir).resolve()}) ...",
                  markup=False)
    with local_stack(data_dir, api_port=api_port, redis_port=redis_port, concurrency=concurrency,
                     tenant=tenant) as (stack, key):
        console.print(f"bregkd is serving at {stack.api_url} (tenant {tenant!r}); in another terminal:", markup=False)
        console.print(f"  export BREGKD_API_URL={stack.api_url}", markup=False)
        console.print(f"  export BREGKD_API_KEY={key}", markup=False)
        console.print(f"  bregkd datasets list    # API docs: {stack.api_url}/docs", markup=False)
        console.print(f"logs: {stack.log_dir}; press Ctrl-C to stop", markup=False)
        try:
            while True:
                for name in ("redis_proc", "worker_proc", "api_proc"):
                    proc = getattr(stack, name)
                    if proc is None or proc.poll() is not None:
                        part = name.removesuffix("_proc")
                        raise RuntimeError(f"{part} exited (code {None if proc is None else proc.returncode}); "
                                           f"see {stack.log_dir / (part + '.log')}")
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping ...", markup=False)
    console.print("stopped", markup=False)
