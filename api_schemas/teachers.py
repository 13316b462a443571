"""Uploaded teacher networks and their layer listing."""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from api_schemas.common import Page, example


class TeacherFormat(str, Enum):
    """How a teacher file is stored, detected from its content (never from its name)."""

    pt2 = "pt2"  # torch.export.save archive: runs without the architecture's code
    safetensors = "safetensors"  # weights only: needs a manifest {"arch": ..., "args": {...}}
    state_dict = "state_dict"  # torch.save zip of a state dict: needs a manifest; loaded weights-only


class TeacherStatus(str, Enum):
    """Teachers are inspected on a worker after upload; jobs need ``ready``."""

    inspecting = "inspecting"
    ready = "ready"
    failed = "failed"


class LayerOut(BaseModel):
    """One layer of a teacher, as a worker's inspection found it."""

    model_config = example(
        path="2",
        op="linear",
        module_type="Linear",
        node="linear_1",
        output_shape=[64],
        d=64,
        transfer="leaky_relu",
        transfer_params={"negative_slope": 0.01},
        tappable=True,
        reason=None,
        representation="flat",
        layouts={"flat": 64},
    )

    path: str = Field(description="Module path; what a job's `layer` names.")
    op: str = Field(description="Kind of operation computing it: linear, conv, batch_norm, add, ...")
    module_type: str | None = Field(None, description="Class name of the module computing it.")
    node: str | None = Field(None, description="Graph node holding the pre-activation.")
    output_shape: list[int] = Field(description="Per-example shape of the pre-activation.")
    d: int = Field(description="Number of units (flattened output_shape).")
    transfer: str | None = Field(None, description="Transfer function applied after this layer.")
    auto_transfer: str | None = Field(None, description=(
        "The transfer a job's `transfer: auto` fits here: softmax at the teacher's output layer (its logits, "
        "listed as identity), else the listed one; None where the layer cannot be tapped."))
    transfer_params: dict[str, Any] = Field(default_factory=dict)
    tappable: bool = Field(description="Whether a Bregman representation can be fitted here.")
    reason: str | None = Field(None, description="Why not, when not tappable.")
    representation: str | None = Field(None, description=(
        "The default layout: channels for a conv map (C, H, W) with an element-wise transfer, else flat."))
    layouts: dict[str, int] | None = Field(None, description=(
        "Row width d of each layout the layer allows, e.g. {\"flat\": 4096, \"channels\": 64}."))


class LayerList(BaseModel):
    model_config = example(teacher_id="tch_3c9d8e7f", items=[LayerOut.model_config["json_schema_extra"]["examples"][0]])

    teacher_id: str
    items: list[LayerOut]


class TeacherOut(BaseModel):
    """A teacher record. ``parameter_count`` and ``input_shape`` are known once ``ready``."""

    model_config = example(
        id="tch_3c9d8e7f",
        name="mlp-digits",
        format="pt2",
        sha256="4e07" + "1" * 60,
        size=130211,
        status="ready",
        parameter_count=6922,
        input_shape=[64],
        manifest=None,
        error=None,
        created_at="2026-11-25T15:00:00Z",
    )

    id: str
    name: str | None = None
    format: TeacherFormat
    sha256: str
    size: int
    status: TeacherStatus
    parameter_count: int | None = None
    input_shape: list[int] | None = None
    manifest: dict[str, Any] | None = Field(None, description="Architecture manifest sent with the upload.")
    error: str | None = Field(None, description="Why inspection failed, when status is failed.")
    created_at: datetime
    notice: str | None = Field(None, description=(
        "Set only in a 202 answer to an upload: the file is stored but its inspection is not queued yet "
        "(the queue is unreachable); it is sent automatically, so poll instead of uploading again."))


class TeacherList(Page[TeacherOut]):
    model_config = example(
        items=[TeacherOut.model_config["json_schema_extra"]["examples"][0]], total=1, limit=50, offset=0
    )
