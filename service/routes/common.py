"""Helpers shared by the routes: tenant-scoped lookups, blob reference counting, the documented
error answers, pagination bounds and sending inspections."""
from __future__ import annotations

import logging
from typing import Annotated, Callable

from fastapi import Query
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.errors import not_found
from storage.blobs import BlobStore
from api_schemas.common import ErrorResponse, ValidationErrorResponse
from storage.models import Artifact, Dataset, Job, Teacher

logger = logging.getLogger(__name__)

_ERRORS = {
    400: "Malformed body (multipart framing, Content-Length)",
    401: "Missing, invalid or revoked API key (`WWW-Authenticate: Bearer`)",
    404: "Not found (or another tenant's)",
    408: "The request body arrived too slowly (BREGKD_UPLOAD_IDLE_TIMEOUT_S, BREGKD_UPLOAD_MIN_RATE_BYTES_S); "
         "the connection is closed",
    409: "Conflicts with the object's state",
    413: "The body is larger than the limit (BREGKD_MAX_JSON_BYTES for JSON, BREGKD_MAX_UPLOAD_BYTES for files)",
    415: "Not a multipart/form-data body",
    422: "Invalid input; `loc` names the field",
    429: "Too many uploads of this tenant at once (BREGKD_MAX_CONCURRENT_UPLOADS); see `Retry-After`",
    500: "Internal error; the message carries an id (`err_...`) the operator finds in the logs",
    507: "The server's storage is full; retry later (see `Retry-After`)",
}


def error_responses(*codes: int) -> dict[int, dict]:
    """OpenAPI ``responses`` entries for these error statuses, with their body models."""
    return {c: {"model": ValidationErrorResponse if c == 422 else ErrorResponse, "description": _ERRORS[c]} for c in codes}


#: every route behind an API key
AUTHENTICATED = error_responses(401, 500)
#: routes that read a body (JSON or an upload)
WITH_BODY = error_responses(400, 408, 413, 422, 507)

#: the largest ``offset`` of a list (SQLite and PostgreSQL take 64-bit offsets; beyond this no
#: tenant has rows, so a bigger one is a client bug answered 422 rather than an overflow's 500)
MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=500, description="Page size (1..500).")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"Items to skip (0..{MAX_OFFSET}).")]


def send_inspection(send: Callable[..., None], queue, object_id: str) -> bool:
    """Queue an inspection; False when the broker is unreachable (the record stays ``inspecting``
    and a worker's recovery sweep sends it once Redis is back: ``workers/recovery.py``)."""
    try:
        send(queue, object_id)
    except Exception as exc:
        logger.warning("could not queue the inspection of %s now (%s); the recovery sweep will send it", object_id, exc)
        return False
    return True


#: display names are cut to the database column's width (PostgreSQL would refuse longer ones)
NAME_LENGTH = 255

#: ``notice`` of an upload whose inspection could not be queued yet (answered 202)
INSPECTION_PENDING = ("stored; the inspection could not be queued now (the queue is unreachable) and is sent "
                      "automatically once it is back: poll this object until its status is ready or failed, "
                      "do not upload it again")


def page(db: Session, model, conditions: list, order_by: tuple, limit: int, offset: int) -> tuple[list, int]:
    """One page of ``model`` rows matching ``conditions``, and how many match in all."""
    total = db.execute(select(func.count()).select_from(model).where(*conditions)).scalar_one()
    rows = db.execute(select(model).where(*conditions).order_by(*order_by).limit(limit).offset(offset)).scalars()
    return list(rows), total


def get_teacher(db: Session, tenant: str, teacher_id: str) -> Teacher:
    t = db.get(Teacher, teacher_id)
    if t is None or t.tenant != tenant:
        raise not_found("teacher", teacher_id)
    return t


def get_dataset(db: Session, tenant: str, dataset_id: str) -> Dataset:
    d = db.get(Dataset, dataset_id)
    if d is None or (d.tenant is not None and d.tenant != tenant):
        raise not_found("data set", dataset_id)
    return d


def get_job(db: Session, tenant: str, job_id: str) -> Job:
    j = db.get(Job, job_id)
    if j is None or j.tenant != tenant:
        raise not_found("job", job_id)
    return j


def blob_in_use(db: Session, sha256: str) -> bool:
    """Whether any record still refers to the blob (equal content is stored once, shared)."""
    for model in (Teacher, Dataset, Artifact):
        if db.execute(select(func.count()).select_from(model).where(model.sha256 == sha256)).scalar_one():
            return True
    return False


def release_blob(db: Session, blobs: BlobStore, sha256: str | None) -> None:
    if sha256 and not blob_in_use(db, sha256):
        blobs.delete(sha256)


def active_jobs_using(db: Session, *, teacher_id: str | None = None, dataset_id: str | None = None) -> int:
    cond = [Job.state.in_(("queued", "running"))]
    if teacher_id is not None:
        cond.append(Job.teacher_id == teacher_id)
    if dataset_id is not None:
        cond.append(Job.dataset_id == dataset_id)
    return db.execute(select(func.count()).select_from(Job).where(*cond)).scalar_one()


def visible_datasets(tenant: str):
    return or_(Dataset.tenant == tenant, Dataset.tenant.is_(None))
