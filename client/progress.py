"""Following a job in the terminal: a live progress bar fed by the job's events.

Shared by the ``bregkd`` commands (``--wait``, ``jobs wait``) and ``bregkd demo``; it imports
neither, so the two need not import each other.
"""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from api_schemas import JobOut
from client.api import BregkdClient


def duration(seconds: float) -> str:
    """``42s`` or ``3m05s``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def wait_with_progress(api: BregkdClient, job_id: str, *, console: Console | None = None) -> JobOut:
    """Wait for a job showing a live bar: phase, fraction, time elapsed and the service's ETA."""
    console = console or Console(file=sys.stderr, highlight=False, soft_wrap=True)
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[eta]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=1.0, eta="")

        def update(job: JobOut) -> None:
            p = job.progress
            phase = p.phase or job.state.value
            eta = f"~{duration(p.eta_s)} left" if p.eta_s is not None and job.state.value == "running" else ""
            done = 1.0 if job.state.value == "succeeded" else p.fraction
            bar.update(task, completed=done, description=f"{job.id} {phase}", eta=eta)

        return api.wait_job(job_id, on_update=update)
