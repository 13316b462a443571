"""Sending job and inspection messages (used by the API and by the workers' recovery sweep)."""
from __future__ import annotations

from celery import Celery

from workers.celery_app import CPU_QUEUE, GPU_QUEUE, TASK_INSPECT_DATASET, TASK_INSPECT_TEACHER, TASK_RUN_JOB

# grace between the soft limit (the job is told to stop) and the hard kill (prefork pools)
HARD_LIMIT_GRACE_S = 30


def queue_for(device: str) -> str:
    """Jobs asking for a GPU go to the gpu queue; everything else to the cpu queue."""
    return GPU_QUEUE if device.startswith("cuda") else CPU_QUEUE


def task_id_for(job_id: str, attempts: int) -> str:
    """A job attempt's message id (re-sending the same attempt reuses it)."""
    return f"{job_id}-a{attempts}"


def send_job(app: Celery, job_id: str, attempts: int, queue: str, time_limit_s: int) -> str:
    """Queue a job for the attempt after ``attempts``; the task claims it only in that state."""
    task_id = task_id_for(job_id, attempts)
    app.send_task(
        TASK_RUN_JOB,
        args=[job_id, attempts],
        queue=queue,
        task_id=task_id,
        soft_time_limit=time_limit_s,
        time_limit=time_limit_s + HARD_LIMIT_GRACE_S,
    )
    return task_id


def inspect_task_id(kind: str, object_id: str, attempts: int) -> str:
    return f"inspect-{kind}-{object_id}-a{attempts}"


#: hard limit of an inspection on pools that enforce limits (prefork); the sweep uses the setting
INSPECT_TIME_LIMIT_S = 300


def send_inspect_teacher(app: Celery, teacher_id: str, attempts: int = 0) -> None:
    app.send_task(TASK_INSPECT_TEACHER, args=[teacher_id], queue=CPU_QUEUE, time_limit=INSPECT_TIME_LIMIT_S,
                  task_id=inspect_task_id("teacher", teacher_id, attempts))


def send_inspect_dataset(app: Celery, dataset_id: str, attempts: int = 0) -> None:
    app.send_task(TASK_INSPECT_DATASET, args=[dataset_id], queue=CPU_QUEUE, time_limit=INSPECT_TIME_LIMIT_S,
                  task_id=inspect_task_id("dataset", dataset_id, attempts))
