"""Files a job produced."""
from __future__ import annotations

from pydantic import BaseModel, Field

from api_schemas.common import example


class ArtifactOut(BaseModel):
    """One file of a finished job; download it at ``GET /v1/jobs/{id}/artifacts/{name}``."""

    model_config = example(
        name="student.pt2",
        size=48213,
        sha256="9f2c" + "0" * 60,
        media_type="application/octet-stream",
    )

    name: str = Field(description="File name, unique within the job.")
    size: int = Field(description="Size in bytes.")
    sha256: str = Field(description="Hex SHA-256 of the content; also the download's ETag.")
    media_type: str


class ArtifactList(BaseModel):
    model_config = example(
        items=[{"name": "report.json", "size": 812, "sha256": "ab" * 32, "media_type": "application/json"}]
    )

    items: list[ArtifactOut]
