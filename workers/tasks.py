"""The Celery tasks. Thin: claim the record, call the job module, store artifacts, end the record.

- ``bregkd.inspect_teacher(teacher_id)``: load an uploaded teacher (weights-only, never
  unpickled) in a sandbox child (:mod:`workers.sandbox`: memory and time limits) and list its
  layers into the record (status ``ready`` or ``failed``).
- ``bregkd.inspect_dataset(dataset_id)``: the same for an uploaded data set, recording its shapes.
- ``bregkd.run_job(job_id, expected_attempts)``: run a representation or distillation job
  (see :mod:`workers.representation` and :mod:`workers.distillation` for their artifacts and
  report dicts).

Every error stored on a record is one line a user can act on: the library's input errors and the
sandbox's limits as they are (server paths replaced), anything else as "internal error err_<id>
..." with the traceback in the worker's log under that id (:func:`workers.sandbox.public_error`).

At worker start (``worker_ready``) the built-in data sets and the worker's capabilities
(architectures, transfers) are recorded, and the housekeeping thread (presence key for
``/readyz`` and the recovery sweep, :mod:`workers.recovery`) starts.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from storage import jobs as jobstate
from storage.blobs import BlobStore
from storage.config import Settings, get_settings
from storage.db import session_factory
from storage.models import Dataset, Job, Teacher, utcnow
from workers.artifacts import store_artifacts
from workers.celery_app import TASK_INSPECT_DATASET, TASK_INSPECT_TEACHER, TASK_RUN_JOB, app
from workers.loading import (
    dataset_summary,
    inspect_dataset_record,
    inspect_teacher_record,
    load_dataset_record,
    load_teacher_record,
)
from workers.recovery import CAPABILITIES_KEY, Housekeeper
from workers.runtime import BudgetExceeded, JobCancelled, JobRun, worker_name
from workers.sandbox import public_error

logger = logging.getLogger(__name__)

_housekeeper: Housekeeper | None = None


def _settings() -> Settings:
    return getattr(app.conf, "bregkd_settings", None) or get_settings()


# ---------------------------------------------------------------------------------- start-up
def register_builtins(settings: Settings) -> list[str]:
    """Record the built-in data sets (visible to every tenant, id = name)."""
    from bregman.datasets import BUILTIN_DATASETS, load_builtin

    names = []
    with session_factory(settings.resolved_database_url)() as db:
        for name in BUILTIN_DATASETS:
            row = db.get(Dataset, name)
            if row is not None and row.status == "ready":
                names.append(name)
                continue
            try:
                summary = dataset_summary(load_builtin(name))
                status, error = "ready", None
            except Exception as exc:  # e.g. scikit-learn missing on this worker
                summary, status, error = {}, "failed", public_error(exc, "while loading the built-in data set")
            if row is None:
                row = Dataset(id=name, tenant=None, name=name, builtin=True)
                db.add(row)
            row.status, row.error = status, error
            for key, value in summary.items():
                setattr(row, key, value)
            db.commit()
            names.append(name)
    return names


def capabilities() -> dict[str, Any]:
    from bregman.models import ARCHITECTURES

    return {"architectures": sorted(ARCHITECTURES)}


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _housekeeper
    settings = _settings()
    settings.blob_dir.mkdir(parents=True, exist_ok=True)
    try:
        register_builtins(settings)
    except Exception:
        logger.exception("could not record the built-in data sets")
    hk = Housekeeper(settings, app, getattr(sender, "hostname", None) or worker_name())
    try:
        hk.client.set(CAPABILITIES_KEY, json.dumps(capabilities()))
    except Exception:
        logger.exception("could not publish the worker's capabilities")
    hk.start()
    _housekeeper = hk


@worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    # prefork children must not share the parent's database connections
    from storage.db import dispose_after_fork

    dispose_after_fork()


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()


# -------------------------------------------------------------------------------- inspection
@app.task(name=TASK_INSPECT_TEACHER, acks_late=True)
def inspect_teacher(teacher_id: str) -> str:
    settings = _settings()
    factory = session_factory(settings.resolved_database_url)
    with factory() as db:
        record = db.get(Teacher, teacher_id)
        if record is None or record.status != "inspecting":
            return "skipped"
        record.inspect_attempts += 1  # counted before loading: a file that kills workers stops being retried
        record.inspect_started_at = utcnow()
        db.commit()
        try:
            info = inspect_teacher_record(settings, record)
            record.layers = info["layers"]
            record.parameter_count = int(info["parameter_count"])
            record.input_shape = [int(s) for s in info["input_shape"]]
            record.status, record.error = "ready", None
        except Exception as exc:
            record.status, record.error = "failed", public_error(exc, "while inspecting the teacher")
            logger.info("teacher %s failed inspection: %s", teacher_id, record.error)
        db.commit()
        return record.status


@app.task(name=TASK_INSPECT_DATASET, acks_late=True)
def inspect_dataset(dataset_id: str) -> str:
    settings = _settings()
    with session_factory(settings.resolved_database_url)() as db:
        record = db.get(Dataset, dataset_id)
        if record is None or record.status != "inspecting":
            return "skipped"
        record.inspect_attempts += 1
        record.inspect_started_at = utcnow()
        db.commit()
        try:
            summary = inspect_dataset_record(settings, record)
            for key, value in summary.items():
                setattr(record, key, value)
            record.status, record.error = "ready", None
        except Exception as exc:
            record.status, record.error = "failed", public_error(exc, "while inspecting the data set")
            logger.info("data set %s failed inspection: %s", dataset_id, record.error)
        db.commit()
        return record.status


# ---------------------------------------------------------------------------------------- jobs
@app.task(name=TASK_RUN_JOB, bind=True, acks_late=True)
def run_job(self, job_id: str, expected_attempts: int) -> str:
    settings = _settings()
    factory = session_factory(settings.resolved_database_url)
    with factory() as db:
        job = jobstate.claim(db, job_id, expected_attempts, worker_name())
        if job is None:  # cancelled, finished, or a stale duplicate message
            return "skipped"
        attempt = job.attempts
        spec = dict(job.spec)
        kind = job.kind
    out_dir = settings.scratch_dir / "jobs" / f"{job_id}-a{attempt}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    state, error, metrics = "failed", None, None
    run = JobRun(settings, job_id, attempt, float(spec["budget"]["time_limit_s"]))
    try:
        with run:
            metrics = _execute(run, settings, kind, spec, out_dir)
            with factory() as db:
                store_artifacts(db, BlobStore(settings.blob_dir), job_id, out_dir)
            state = "succeeded"
    except JobCancelled:
        state, metrics = "cancelled", run.metrics or None
    except (BudgetExceeded, SoftTimeLimitExceeded) as exc:
        error = str(exc) if isinstance(exc, BudgetExceeded) else (
            f"the job ran past its time budget of {spec['budget']['time_limit_s']} s; raise budget.time_limit_s "
            "or make the job smaller")
        metrics = run.metrics or None
    except Exception as exc:  # input errors and sandbox limits as they are; anything else by error id
        error = public_error(exc, "while running the job")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    with factory() as db:
        jobstate.finish(db, job_id, attempt, state, error=error, metrics=metrics)
    return state


def _execute(run: JobRun, settings: Settings, kind: str, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    factory = session_factory(settings.resolved_database_url)
    with factory() as db:
        teacher_rec = db.get(Teacher, spec["teacher_id"])
        dataset_rec = db.get(Dataset, spec["dataset"])
        rep_job = db.get(Job, spec["representation_job_id"]) if spec.get("representation_job_id") else None
        rep_artifacts = None
        if rep_job is not None:
            from storage.models import Artifact
            from sqlalchemy import select

            rep_artifacts = {a.name: a.sha256 for a in db.execute(select(Artifact).where(Artifact.job_id == rep_job.id)).scalars()}
            rep_spec = dict(rep_job.spec)
    if teacher_rec is None:
        raise ValueError(f"teacher '{spec['teacher_id']}' was deleted before the job ran")
    if dataset_rec is None:
        raise ValueError(f"data set '{spec['dataset']}' was deleted before the job ran")
    run.progress("load", 0.0)
    teacher = load_teacher_record(settings, teacher_rec)
    dataset = load_dataset_record(settings, dataset_rec)
    run.check()
    if kind == "representation":
        from workers.representation import PHASES, fit_representation

        run.set_phases(PHASES)
        metrics, _ = fit_representation(run, spec, teacher, dataset, teacher_rec.sha256, out_dir)
        return metrics
    from workers.distillation import PHASES as DPHASES
    from workers.distillation import run_distillation

    run.set_phases(DPHASES)
    representation = None
    if rep_job is not None:
        representation = {"spec": rep_spec, "artifacts": rep_artifacts, "blob_dir": settings.blob_dir}
    return run_distillation(run, spec, teacher, dataset, teacher_rec.sha256, out_dir, representation)
