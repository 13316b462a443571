"""Data sets: uploaded files (.npz / .safetensors) and built-ins usable by name."""
from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field

from api_schemas.common import Page, example


class DatasetStatus(str, Enum):
    inspecting = "inspecting"
    ready = "ready"
    failed = "failed"


class DatasetOut(BaseModel):
    """A data set record. Built-ins have ``builtin=true`` and their name as id (e.g. ``digits``)."""

    model_config = example(
        id="ds_8a1b2c3d",
        name="my-digits",
        builtin=False,
        format="npz",
        sha256="77aa" + "2" * 60,
        size=81234,
        status="ready",
        input_shape=[64],
        num_classes=10,
        n_train=1437,
        n_test=360,
        has_labels=True,
        error=None,
        created_at="2026-11-25T15:00:00Z",
    )

    id: str = Field(description="Identifier; for a built-in data set, its name.")
    name: str
    builtin: bool = False
    format: str | None = Field(None, description="npz or safetensors; None for built-ins.")
    sha256: str | None = None
    size: int | None = None
    status: DatasetStatus
    input_shape: list[int] | None = Field(None, description="Per-example input shape.")
    num_classes: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    has_labels: bool | None = None
    error: str | None = None
    created_at: datetime
    notice: str | None = Field(None, description=(
        "Set only in a 202 answer to an upload: the file is stored but its inspection is not queued yet "
        "(the queue is unreachable); it is sent automatically, so poll instead of uploading again."))


class DatasetList(Page[DatasetOut]):
    model_config = example(
        items=[DatasetOut.model_config["json_schema_extra"]["examples"][0]], total=1, limit=50, offset=0
    )
