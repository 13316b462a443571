"""The wire contract of the bregkd service: every request and response body, as pydantic models.

Shared by the API (``service/``), the workers (``workers/``) and the client (``client/``). Only
pydantic is imported here, so the client can use these models on a machine without torch.
"""
from __future__ import annotations

from api_schemas.artifacts import ArtifactList, ArtifactOut
from api_schemas.common import ErrorDetail, ErrorResponse, Page, ValidationErrorItem, ValidationErrorResponse
from api_schemas.datasets import DatasetList, DatasetOut, DatasetStatus
from api_schemas.health import Health, Readiness
from api_schemas.jobs import (
    Budget,
    DistillationMethod,
    DistillOptions,
    DistillationSpec,
    JobCreate,
    JobEvent,
    JobKind,
    JobList,
    JobOut,
    JobProgress,
    JobSpec,
    JobState,
    RepresentationSpec,
    SolverOptions,
    StudentSpec,
    TERMINAL_STATES,
    TransferChoice,
)
from api_schemas.keys import ApiKeyCreated, ApiKeyOut
from api_schemas.teachers import LayerList, LayerOut, TeacherFormat, TeacherList, TeacherOut, TeacherStatus

__all__ = [
    "ApiKeyCreated",
    "ApiKeyOut",
    "ArtifactList",
    "ArtifactOut",
    "Budget",
    "DatasetList",
    "DatasetOut",
    "DatasetStatus",
    "DistillationMethod",
    "DistillationSpec",
    "DistillOptions",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "JobCreate",
    "JobEvent",
    "JobKind",
    "JobList",
    "JobOut",
    "JobProgress",
    "JobSpec",
    "JobState",
    "LayerList",
    "LayerOut",
    "Page",
    "Readiness",
    "RepresentationSpec",
    "SolverOptions",
    "StudentSpec",
    "TERMINAL_STATES",
    "TeacherFormat",
    "TeacherList",
    "TeacherOut",
    "TeacherStatus",
    "TransferChoice",
    "ValidationErrorItem",
    "ValidationErrorResponse",
]
