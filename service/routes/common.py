"""Helpers shared by the routes: tenant-scoped lookups and blob reference counting."""
from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.errors import not_found
from storage.blobs import BlobStore
from storage.models import Artifact, Dataset, Job, Teacher

ERROR_RESPONSES = {
    401: {"description": "Missing or invalid API key"},
    404: {"description": "Not found (or another tenant's)"},
}


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
