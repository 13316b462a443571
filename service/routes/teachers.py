"""``/v1/teachers``: streamed upload, listing, layer listing, deletion."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api_schemas import LayerList, TeacherList, TeacherOut, TeacherStatus
from api_schemas.common import ErrorResponse, ValidationErrorResponse
from service.deps import BlobsDep, DbDep, SettingsDep, TenantDep, get_queue
from service.errors import unprocessable
from service.routes.common import (
    AUTHENTICATED, INSPECTION_PENDING, NAME_LENGTH, WITH_BODY, Limit, Offset, active_jobs_using, error_responses, get_teacher, page,
    release_blob, send_inspection,
)
from service.serialize import layer_outs, teacher_out
from service.sniff import SniffError, manifest_required, sniff_teacher
from service.uploads import receive_upload
from storage.db import session_factory
from storage.models import Teacher, new_id
from workers.dispatch import send_inspect_teacher

router = APIRouter(prefix="/v1/teachers", tags=["teachers"], responses=AUTHENTICATED)

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The teacher: .pt2, safetensors or torch.save state_dict (zip)."},
                        "manifest": {"type": "string", "description": 'JSON architecture manifest, e.g. {"arch": "mlp", "args": {...}}; required for safetensors and state_dict.'},
                        "name": {"type": "string", "description": "A display name (default: the file name)."},
                    },
                }
            }
        },
    }
}


def _parse_manifest(raw: str | None) -> dict | None:
    if raw is None or not raw.strip():
        return None
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise unprocessable("manifest", f"the manifest is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(manifest, dict) or "arch" not in manifest:
        raise unprocessable("manifest", 'the manifest must be a JSON object like {"arch": "mlp", "args": {...}}')
    return manifest


@router.post(
    "",
    status_code=201,
    response_model=TeacherOut,
    openapi_extra=_UPLOAD_DOC,
    responses={
        200: {"model": TeacherOut, "description": "The same file and manifest were uploaded before: that teacher"},
        202: {"model": TeacherOut, "description": "Stored, but the inspection is not queued yet (the queue is "
                                                   "unreachable); it is sent automatically: poll, do not upload again"},
        **WITH_BODY,
        **error_responses(415, 429),
        413: {"model": ErrorResponse, "description": "The file exceeds the upload limit (BREGKD_MAX_UPLOAD_BYTES)"},
        422: {"model": ValidationErrorResponse, "description": "Unrecognized format, a pickle, or a bad manifest"},
    },
)
async def upload_teacher(request: Request, response: Response, tenant: TenantDep, settings: SettingsDep, blobs: BlobsDep):
    """Upload a teacher (streamed to disk; its format is read from the content).

    The teacher starts ``inspecting``: a worker loads it and lists its layers; poll until ``ready``.
    """
    async with request.app.state.upload_slots.hold(tenant), receive_upload(
        request, blobs, max_bytes=settings.max_upload_bytes, max_field_bytes=settings.max_field_bytes,
        chunk_bytes=settings.upload_chunk_bytes, idle_timeout_s=settings.upload_idle_timeout_s,
        min_rate_bytes_s=settings.upload_min_rate_bytes_s,
    ) as upload:
        try:
            fmt = await run_in_threadpool(sniff_teacher, upload.tmp_path)
        except SniffError as exc:
            raise unprocessable("file", str(exc)) from None
        manifest = _parse_manifest(upload.fields.get("manifest"))
        if manifest_required(fmt) and manifest is None:
            raise unprocessable(
                "manifest",
                f"a {fmt} file holds weights only: send a manifest naming the architecture, "
                'e.g. {"arch": "mlp", "args": {"in_features": 64, "hidden": [64], "num_classes": 10}}',
            )
    name = (upload.fields.get("name") or upload.filename or "")[:NAME_LENGTH] or None

    def record() -> tuple[Teacher, bool]:
        with session_factory(settings.resolved_database_url)() as db:
            existing = db.execute(
                select(Teacher).where(Teacher.tenant == tenant, Teacher.sha256 == upload.sha256, Teacher.status != "failed")
            ).scalars().all()
            for t in existing:
                if (t.manifest or None) == manifest:
                    return t, False
            t = Teacher(id=new_id("tch"), tenant=tenant, name=name, format=fmt, sha256=upload.sha256,
                        size=upload.size, status="inspecting", manifest=manifest)
            db.add(t)
            db.commit()
            return t, True

    teacher, created = await run_in_threadpool(record)
    if not created:
        response.status_code = 200
    elif not await run_in_threadpool(send_inspection, send_inspect_teacher, get_queue(request), teacher.id):
        response.status_code = 202
        return teacher_out(teacher, notice=INSPECTION_PENDING)
    return teacher_out(teacher)


@router.get("", response_model=TeacherList)
def list_teachers(
    db: DbDep,
    tenant: TenantDep,
    status: Annotated[TeacherStatus | None, Query(description="Only teachers in this status.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
):
    cond = [Teacher.tenant == tenant]
    if status:
        cond.append(Teacher.status == status.value)
    rows, total = page(db, Teacher, cond, (Teacher.created_at.desc(), Teacher.id), limit, offset)
    return TeacherList(items=[teacher_out(t) for t in rows], total=total, limit=limit, offset=offset)


@router.get("/{teacher_id}", response_model=TeacherOut, responses={404: {"model": ErrorResponse}})
def read_teacher(teacher_id: str, db: DbDep, tenant: TenantDep):
    return teacher_out(get_teacher(db, tenant, teacher_id))


@router.get(
    "/{teacher_id}/layers",
    response_model=LayerList,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse, "description": "Not inspected (yet)"}},
)
def read_layers(teacher_id: str, db: DbDep, tenant: TenantDep):
    """The teacher's layers: path, pre-activation shape, transfer, whether it can be tapped and why not."""
    t = get_teacher(db, tenant, teacher_id)
    if t.status == "inspecting":
        raise HTTPException(409, f"teacher '{t.id}' is still being inspected; retry when its status is ready")
    if t.status == "failed":
        raise HTTPException(409, f"teacher '{t.id}' could not be inspected: {t.error}")
    return LayerList(teacher_id=t.id, items=layer_outs(t))


@router.delete("/{teacher_id}", status_code=204, responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def delete_teacher(teacher_id: str, db: DbDep, tenant: TenantDep, blobs: BlobsDep):
    t = get_teacher(db, tenant, teacher_id)
    if active_jobs_using(db, teacher_id=t.id):
        raise HTTPException(409, f"teacher '{t.id}' has queued or running jobs; cancel them first")
    sha = t.sha256
    db.delete(t)
    db.commit()
    release_blob(db, blobs, sha)
    return Response(status_code=204)
