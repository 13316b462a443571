"""Move a job's output files into the blob store and index them as the job's artifacts."""
from __future__ import annotations

import mimetypes
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.orm import Session

from storage.blobs import BlobStore
from storage.models import Artifact

_MEDIA = {
    ".json": "application/json",
    ".png": "image/png",
    ".safetensors": "application/octet-stream",
    ".pt2": "application/octet-stream",
    ".onnx": "application/octet-stream",
}


def media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _MEDIA.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def store_artifacts(db: Session, blobs: BlobStore, job_id: str, out_dir: Path) -> list[Artifact]:
    """Every file under ``out_dir`` becomes an artifact named by its relative path."""
    db.execute(delete(Artifact).where(Artifact.job_id == job_id))  # a retried attempt replaces them
    rows = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        name = path.relative_to(out_dir).as_posix()
        sha, size = blobs.put_file(path)
        row = Artifact(job_id=job_id, name=name, sha256=sha, size=size, media_type=media_type(name))
        db.add(row)
        rows.append(row)
    db.commit()
    return rows
