"""``/v1/datasets``: uploaded data sets (.npz / safetensors) and built-ins usable by name."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from api_schemas import DatasetList, DatasetOut
from api_schemas.common import ErrorResponse, ValidationErrorResponse
from service.deps import BlobsDep, DbDep, SettingsDep, TenantDep, get_queue
from service.errors import unprocessable
from service.routes.common import (
    AUTHENTICATED, INSPECTION_PENDING, NAME_LENGTH, WITH_BODY, Limit, Offset, active_jobs_using, error_responses, get_dataset, page,
    release_blob, send_inspection, visible_datasets,
)
from service.serialize import dataset_out
from service.sniff import SniffError, sniff_dataset
from service.uploads import receive_upload
from storage.db import session_factory
from storage.models import Dataset, new_id
from workers.dispatch import send_inspect_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTHENTICATED)

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".npz (numpy.savez) or safetensors with x_train, y_train, x_test, y_test."},
                        "name": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=_UPLOAD_DOC,
    responses={
        202: {"model": DatasetOut, "description": "Stored, but the inspection is not queued yet (the queue is "
                                                   "unreachable); it is sent automatically: poll, do not upload again"},
        **WITH_BODY,
        **error_responses(415, 429),
        413: {"model": ErrorResponse, "description": "The file exceeds the upload limit (BREGKD_MAX_UPLOAD_BYTES)"},
        422: {"model": ValidationErrorResponse, "description": "Unrecognized format, a pickle, or no 'file' part"},
    },
)
async def upload_dataset(request: Request, response: Response, tenant: TenantDep, settings: SettingsDep, blobs: BlobsDep):
    """Upload a data set; a worker checks its arrays (status ``inspecting`` → ``ready``/``failed``)."""
    async with request.app.state.upload_slots.hold(tenant), receive_upload(
        request, blobs, max_bytes=settings.max_upload_bytes, max_field_bytes=settings.max_field_bytes,
        chunk_bytes=settings.upload_chunk_bytes, idle_timeout_s=settings.upload_idle_timeout_s,
        min_rate_bytes_s=settings.upload_min_rate_bytes_s,
    ) as upload:
        try:
            fmt = await run_in_threadpool(sniff_dataset, upload.tmp_path)
        except SniffError as exc:
            raise unprocessable("file", str(exc)) from None
    name = (upload.fields.get("name") or upload.filename or "dataset")[:NAME_LENGTH]

    def record() -> Dataset:
        with session_factory(settings.resolved_database_url)() as db:
            d = Dataset(id=new_id("ds"), tenant=tenant, name=name, builtin=False, format=fmt,
                        sha256=upload.sha256, size=upload.size, status="inspecting")
            db.add(d)
            db.commit()
            return d

    d = await run_in_threadpool(record)
    if not await run_in_threadpool(send_inspection, send_inspect_dataset, get_queue(request), d.id):
        response.status_code = 202
        return dataset_out(d, notice=INSPECTION_PENDING)
    return dataset_out(d)


@router.get("", response_model=DatasetList)
def list_datasets(
    db: DbDep,
    tenant: TenantDep,
    limit: Limit = 50,
    offset: Offset = 0,
):
    """Built-in data sets (``builtin=true``, id = name) and this tenant's uploads."""
    cond = visible_datasets(tenant)
    rows, total = page(db, Dataset, [cond], (Dataset.builtin.desc(), Dataset.created_at.desc(), Dataset.id),
                       limit, offset)
    return DatasetList(items=[dataset_out(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses={404: {"model": ErrorResponse}})
def read_dataset(dataset_id: str, db: DbDep, tenant: TenantDep):
    return dataset_out(get_dataset(db, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def delete_dataset(dataset_id: str, db: DbDep, tenant: TenantDep, blobs: BlobsDep):
    d = get_dataset(db, tenant, dataset_id)
    if d.builtin:
        raise HTTPException(409, f"'{d.id}' is a built-in data set and cannot be deleted")
    if active_jobs_using(db, dataset_id=d.id):
        raise HTTPException(409, f"data set '{d.id}' has queued or running jobs; cancel them first")
    sha = d.sha256
    db.delete(d)
    db.commit()
    release_blob(db, blobs, sha)
    return Response(status_code=204)
