"""``/v1/datasets``: uploaded data sets (.npz / safetensors) and built-ins usable by name."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api_schemas import DatasetList, DatasetOut
from api_schemas.common import ErrorResponse, ValidationErrorResponse
from service.deps import BlobsDep, DbDep, SettingsDep, TenantDep, get_queue
from service.errors import unprocessable
from service.routes.common import active_jobs_using, get_dataset, page, release_blob, visible_datasets
from service.serialize import dataset_out
from service.sniff import SniffError, sniff_dataset
from service.uploads import receive_upload
from storage.db import session_factory
from storage.models import Dataset, new_id
from workers.dispatch import send_inspect_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

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
    responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ValidationErrorResponse}},
)
async def upload_dataset(request: Request, tenant: TenantDep, settings: SettingsDep, blobs: BlobsDep):
    """Upload a data set; a worker checks its arrays (status ``inspecting`` → ``ready``/``failed``)."""
    async with receive_upload(
        request, blobs, max_bytes=settings.max_upload_bytes, max_field_bytes=settings.max_field_bytes,
        chunk_bytes=settings.upload_chunk_bytes,
    ) as upload:
        try:
            fmt = await run_in_threadpool(sniff_dataset, upload.tmp_path)
        except SniffError as exc:
            raise unprocessable("file", str(exc)) from None
    name = upload.fields.get("name") or upload.filename or "dataset"

    def record() -> Dataset:
        with session_factory(settings.resolved_database_url)() as db:
            d = Dataset(id=new_id("ds"), tenant=tenant, name=name, builtin=False, format=fmt,
                        sha256=upload.sha256, size=upload.size, status="inspecting")
            db.add(d)
            db.commit()
            return d

    d = await run_in_threadpool(record)
    await run_in_threadpool(send_inspect_dataset, get_queue(request), d.id)
    return dataset_out(d)


@router.get("", response_model=DatasetList)
def list_datasets(
    db: DbDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
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
