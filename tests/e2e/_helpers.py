"""Small helpers of the end-to-end tests."""
from __future__ import annotations

import time
from pathlib import Path

import httpx


def upload_teacher(client: httpx.Client, path: Path, manifest: str | None = None, name: str = "teacher.bin") -> httpx.Response:
    data = {"manifest": manifest} if manifest is not None else None
    with open(path, "rb") as fh:
        return client.post("/v1/teachers", files={"file": (name, fh)}, data=data)


def wait_until(client: httpx.Client, path: str, field: str, values: tuple[str, ...], timeout: float = 120) -> dict:
    """Poll ``GET path`` until ``body[field]`` is one of ``values``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(path)
        r.raise_for_status()
        body = r.json()
        if body[field] in values:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {field} still {body[field]!r} after {timeout} s: {body}")
        time.sleep(0.25)


def long_distillation(teacher_id: str, epochs: int = 2000) -> dict:
    """A distillation job that runs long enough to be cancelled or killed mid-way."""
    return {
        "kind": "distillation", "teacher_id": teacher_id, "dataset": "digits", "layer": "2",
        "n_components": 4, "methods": ["bregman"], "budget": {"epochs": epochs, "time_limit_s": 600},
        "onnx": False,
    }
