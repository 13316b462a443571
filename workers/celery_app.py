"""The Celery application. Importing this module does not import torch or the task code, so the
API process uses it to send messages; ``celery -A workers.celery_app worker`` loads the tasks.

Reliability settings: messages are acknowledged after the task ends (``acks_late``) and put
back if the worker process dies (``task_reject_on_worker_lost``); each worker process takes one
message at a time (prefetch 1). The Redis visibility timeout exceeds the longest job budget, or
Redis would hand a long job's message to a second worker while the first still runs it.

Worker processes (CUDA cannot be initialized before a fork, and one GPU runs one job at a time):

    celery -A workers.celery_app worker -Q cpu --pool prefork --concurrency 4     # CPU jobs
    CUDA_VISIBLE_DEVICES=0 celery -A workers.celery_app worker -Q gpu --pool solo  # one per GPU

With ``--pool solo`` Celery enforces no time limits itself: the job's budget is enforced by the
job runner (:mod:`workers.runtime`), which stops the job between steps once it is spent.
"""
from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from storage.config import Settings, get_settings

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"

TASK_INSPECT_TEACHER = "bregkd.inspect_teacher"
TASK_INSPECT_DATASET = "bregkd.inspect_dataset"
TASK_RUN_JOB = "bregkd.run_job"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("bregkd", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=CPU_QUEUE,
        task_queues=(
            Queue(CPU_QUEUE, Exchange(CPU_QUEUE), routing_key=CPU_QUEUE),
            Queue(GPU_QUEUE, Exchange(GPU_QUEUE), routing_key=GPU_QUEUE),
        ),
        task_default_exchange=CPU_QUEUE,
        task_default_routing_key=CPU_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # the API must answer fast when Redis is down: the job stays queued and a worker's
        # recovery sweep sends it once Redis is back
        broker_connection_timeout=2,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=True,
    )
    app.conf.bregkd_settings = settings
    return app


app = make_celery()
