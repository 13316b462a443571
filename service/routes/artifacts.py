"""``/v1/jobs/{id}/artifacts``: a job's files, streamed with Content-Length, ETag and Range."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy import select

from api_schemas import ArtifactList
from api_schemas.common import ErrorResponse
from service.deps import BlobsDep, DbDep, TenantDep
from service.errors import not_found
from service.routes.common import AUTHENTICATED, get_job
from service.serialize import artifact_out
from storage.models import Artifact

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"], responses=AUTHENTICATED)

#: what downloads are served as (``workers/artifacts.py`` picks it from the name)
SERVED_MEDIA_TYPES = {
    "application/json": {"schema": {"type": "object"}, "description": "report.json, student.json, layer.json"},
    "image/png": {"schema": {"type": "string", "format": "binary"}, "description": "plots"},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": ".safetensors, .pt2, .onnx and anything else"},
}


@router.get("", response_model=ArtifactList, responses={404: {"model": ErrorResponse}})
def list_artifacts(job_id: str, db: DbDep, tenant: TenantDep):
    job = get_job(db, tenant, job_id)
    rows = db.execute(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)).scalars()
    return ArtifactList(items=[artifact_out(a) for a in rows])


@router.get(
    "/{name:path}",
    response_class=FileResponse,
    responses={
        200: {"content": SERVED_MEDIA_TYPES, "description": "The file, as the media type its listing names"},
        206: {"content": SERVED_MEDIA_TYPES, "description": "The byte range a `Range` header asked for"},
        304: {"description": "If-None-Match matched the ETag"},
        416: {"description": "The `Range` cannot be satisfied"},
        404: {"model": ErrorResponse},
    },
)
def download_artifact(request: Request, job_id: str, name: str, db: DbDep, tenant: TenantDep, blobs: BlobsDep):
    job = get_job(db, tenant, job_id)
    art = db.execute(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)).scalar_one_or_none()
    if art is None:
        raise not_found("artifact", name)
    etag = f'"{art.sha256}"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    path = blobs.path(art.sha256)
    if not path.is_file():
        raise not_found("artifact content", name)
    return FileResponse(
        path,
        media_type=art.media_type,
        filename=name.rsplit("/", 1)[-1],
        headers={"etag": etag, "cache-control": "private, max-age=31536000, immutable"},
    )
