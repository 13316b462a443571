"""Records → wire models."""
from __future__ import annotations

import re

from api_schemas import ArtifactOut, DatasetOut, JobOut, JobProgress, LayerOut, TeacherOut
from storage.jobs import as_utc
from storage.models import Artifact, Dataset, Job, Teacher

_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*?(?=^\S|\Z)", re.S | re.M)
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+.*$', re.M)
# absolute paths on the server (not the API's own /v1/... routes in messages)
_SERVER_PATH = re.compile(r"(?<![\w.:/])/(?!v1/)(?:[\w.@+-]+/)+[\w.@+-]*")


def public_error(text: str | None) -> str | None:
    """A record's error as a client may see it: no traceback frames, no server file paths
    (a worker's message is written for users, but a stray traceback must not leak the layout)."""
    if not text:
        return text
    text = _TRACEBACK.sub("", text)
    text = _FRAME.sub("", text)
    text = _SERVER_PATH.sub("<server path>", text)
    return "\n".join(line for line in text.splitlines() if line.strip()).strip() or "the worker failed (no details)"


def teacher_out(t: Teacher, notice: str | None = None) -> TeacherOut:
    return TeacherOut(
        id=t.id,
        name=t.name,
        format=t.format,
        sha256=t.sha256,
        size=t.size,
        status=t.status,
        parameter_count=t.parameter_count,
        input_shape=t.input_shape,
        manifest=t.manifest,
        error=public_error(t.error),
        created_at=as_utc(t.created_at),
        notice=notice,
    )


def layer_outs(t: Teacher) -> list[LayerOut]:
    return [LayerOut.model_validate(layer) for layer in (t.layers or [])]


def dataset_out(d: Dataset, notice: str | None = None) -> DatasetOut:
    return DatasetOut(
        id=d.id,
        name=d.name,
        builtin=d.builtin,
        format=d.format,
        sha256=d.sha256,
        size=d.size,
        status=d.status,
        input_shape=d.input_shape,
        num_classes=d.num_classes,
        n_train=d.n_train,
        n_test=d.n_test,
        has_labels=d.has_labels,
        error=public_error(d.error),
        created_at=as_utc(d.created_at),
        notice=notice,
    )


def job_out(j: Job) -> JobOut:
    return JobOut(
        id=j.id,
        kind=j.kind,
        state=j.state,
        spec=j.spec,
        progress=JobProgress(fraction=j.progress_fraction or 0.0, phase=j.progress_phase, eta_s=j.eta_s),
        metrics=j.metrics or {},
        error=public_error(j.error),
        attempts=j.attempts,
        created_at=as_utc(j.created_at),
        started_at=as_utc(j.started_at),
        finished_at=as_utc(j.finished_at),
        cancel_requested=j.cancel_requested,
    )


def artifact_out(a: Artifact) -> ArtifactOut:
    return ArtifactOut(name=a.name, size=a.size, sha256=a.sha256, media_type=a.media_type)
