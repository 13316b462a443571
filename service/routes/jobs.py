"""``/v1/jobs``: create (validated fully, idempotent), list, read, cancel, stream events."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api_schemas import DistillationSpec, JobKind, JobList, JobOut, JobSpec, JobState, RepresentationSpec
from api_schemas.common import ErrorResponse, ValidationErrorResponse
from service.deps import DbDep, SettingsDep, TenantDep, get_queue
from service.errors import not_found
from service.routes.common import AUTHENTICATED, WITH_BODY, Limit, Offset, get_job, page
from service.serialize import job_out
from service.validation import validate_distillation, validate_representation
from storage import jobs as jobstate
from storage.db import session_factory
from storage.models import Job, new_id
from workers.dispatch import queue_for, send_job, task_id_for

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTHENTICATED)

CAPABILITIES_KEY = "bregkd:capabilities"


def _capabilities(request: Request) -> dict | None:
    try:
        if request.app.state.redis is None:
            return None
        raw = request.app.state.redis.get(CAPABILITIES_KEY)
        return json.loads(raw) if raw else None
    except Exception:  # readiness reports Redis trouble; validation goes on without it
        return None


def dispatch(request: Request, settings, job: Job) -> None:
    """Send the job's message; if Redis is down the job stays queued and a worker's sweep resends it."""
    try:
        send_job(get_queue(request), job.id, job.attempts, job.queue, int(job.spec["budget"]["time_limit_s"]))
    except Exception as exc:
        logger.warning("could not queue job %s now (%s); the recovery sweep will send it", job.id, exc)
        return
    with session_factory(settings.resolved_database_url)() as db:
        jobstate.mark_sent(db, job.id)


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "A job with this Idempotency-Key and spec exists: that job"},
        409: {"model": ErrorResponse, "description": "The Idempotency-Key was used with another spec"},
        **WITH_BODY,
        422: {"model": ValidationErrorResponse, "description": "The spec is invalid; `loc` names the field"},
    },
)
def create_job(
    request: Request,
    response: Response,
    db: DbDep,
    tenant: TenantDep,
    settings: SettingsDep,
    spec: Annotated[JobSpec, Body(openapi_examples={
        "representation": {"value": RepresentationSpec.model_config["json_schema_extra"]["examples"][0]},
        "distillation": {"value": DistillationSpec.model_config["json_schema_extra"]["examples"][0]},
    })],
    idempotency_key: Annotated[str | None, Header(max_length=255, description="Same key and spec, same job; same key, other spec: 409.")] = None,
):
    """Validate a job spec against the records and queue it (cpu or gpu queue, by ``device``)."""
    existing = _job_with_key(db, tenant, idempotency_key) if idempotency_key else None
    if existing is not None and existing.spec == spec.model_dump(mode="json"):
        return _replay(existing, existing.spec, idempotency_key, response)  # a retry: no validation needed
    if isinstance(spec, RepresentationSpec):
        v = validate_representation(db, tenant, spec)
    else:
        v = validate_distillation(db, tenant, spec, _capabilities(request), settings.max_student_parameters)
    spec_json = spec.model_dump(mode="json")  # normalized by the validation (e.g. the transfer's name)
    if existing is not None:
        return _replay(existing, spec_json, idempotency_key, response)
    job = Job(
        id=new_id("job"),
        tenant=tenant,
        kind=spec.kind,
        state="queued",
        spec=spec_json,
        queue=queue_for(spec.device),
        teacher_id=v.teacher.id,
        dataset_id=v.dataset.id,
        idempotency_key=idempotency_key or None,
        metrics={},
    )
    db.add(job)
    try:
        db.commit()
    except IntegrityError:  # a concurrent request with the same key won
        db.rollback()
        return _replay(_job_with_key(db, tenant, idempotency_key), spec_json, idempotency_key, response)
    dispatch(request, settings, job)
    return job_out(job)


def _job_with_key(db, tenant: str, key: str) -> Job | None:
    return db.execute(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)).scalar_one_or_none()


def _replay(existing: Job, spec_json: dict, key: str, response: Response) -> JobOut:
    """The job an Idempotency-Key already names (200), if the request asks for the same job.

    A key reused with another spec is a client bug (a retry must resend the same body);
    answering with the old job would silently drop the new request, so it is refused.
    """
    if existing.spec != spec_json:
        raise HTTPException(409, f"Idempotency-Key '{key}' was used for job {existing.id} with another spec; "
                                 "resend that job's spec to get it back, or use a new key for a new job")
    response.status_code = 200
    return job_out(existing)


@router.get("", response_model=JobList)
def list_jobs(
    db: DbDep,
    tenant: TenantDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
):
    cond = [Job.tenant == tenant]
    if state:
        cond.append(Job.state == state.value)
    if kind:
        cond.append(Job.kind == kind.value)
    rows, total = page(db, Job, cond, (Job.created_at.desc(), Job.id), limit, offset)
    return JobList(items=[job_out(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorResponse}})
def read_job(job_id: str, db: DbDep, tenant: TenantDep):
    return job_out(get_job(db, tenant, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse, "description": "The job already ended"}},
)
def cancel_job(request: Request, job_id: str, db: DbDep, tenant: TenantDep):
    """Cancel: a queued job ends ``cancelled`` now, a running one within seconds."""
    job = get_job(db, tenant, job_id)
    if job.state in jobstate.TERMINAL:
        raise HTTPException(409, f"job '{job.id}' already {job.state}; nothing to cancel")
    job = jobstate.request_cancel(db, job)
    try:  # a message still in the queue is dropped by the worker that receives it
        get_queue(request).control.revoke(task_id_for(job.id, job.attempts if job.state == "queued" else job.attempts - 1))
    except Exception as exc:
        logger.info("revoke of %s not sent: %s", job.id, exc)
    return job_out(job)


@router.get(
    "/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}, "description": "`event: progress` per change, `event: end` at the end"}, 404: {"model": ErrorResponse}},
)
async def job_events(request: Request, job_id: str, tenant: TenantDep, settings: SettingsDep):
    """Server-sent events of a job's progress; the stream ends after the job does."""
    factory = session_factory(settings.resolved_database_url)

    def load() -> Job | None:
        with factory() as db:
            return db.get(Job, job_id)

    job = await run_in_threadpool(load)
    if job is None or job.tenant != tenant:
        raise not_found("job", job_id)

    async def stream():
        last = None
        last_sent = time.monotonic()
        while True:
            current = await run_in_threadpool(load)
            if current is None:
                return
            body = job_out(current).model_dump_json()
            terminal = current.state in jobstate.TERMINAL
            if body != last:
                yield f"event: progress\ndata: {body}\n\n"
                last, last_sent = body, time.monotonic()
            if terminal:
                yield f"event: end\ndata: {body}\n\n"
                return
            if time.monotonic() - last_sent > 15:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
