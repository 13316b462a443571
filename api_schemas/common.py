"""Shapes shared by every resource: error bodies and paginated lists."""
from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ErrorResponse(BaseModel):
    """Body of every 4xx answer other than 422: what went wrong and what to change."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "teacher 'tch_0f3a' not found"}]})

    detail: str = Field(description="A message a user can act on.")


class ValidationErrorItem(BaseModel):
    """One invalid field of a request (FastAPI's own 422 item shape, reused for spec checks)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"loc": ["body", "n_components"], "msg": "n_components=40 is too large for layer '0' with d=32 units; choose k between 1 and 31", "type": "value_error"}]}
    )

    loc: list[str | int] = Field(description="Where the bad value is, e.g. ['body', 'layer'].")
    msg: str = Field(description="What is wrong and what to change.")
    type: str = Field(description="A machine-readable error kind, e.g. 'value_error'.")
    input: Any = Field(None, description="The offending value where the schema refused it, cut to 100 characters.")


class ValidationErrorResponse(BaseModel):
    """Body of a 422 answer: the fields that failed validation."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": [
                        {
                            "loc": ["body", "layer"],
                            "msg": "layer '7' does not exist; valid layers: 0, 2, 4",
                            "type": "value_error",
                        }
                    ]
                }
            ]
        }
    )

    detail: list[ValidationErrorItem]


# Kept for symmetry with FastAPI's naming in OpenAPI documents.
ErrorDetail = ValidationErrorItem


class Page(BaseModel, Generic[T]):
    """A page of a list: ``items`` plus what is needed to fetch the next page."""

    items: list[T]
    total: int = Field(description="Number of objects matching the filter, over all pages.", examples=[42])
    limit: int = Field(description="Page size asked for.", examples=[50])
    offset: int = Field(description="Index of the first item of this page.", examples=[0])


def example(**fields: Any) -> ConfigDict:
    """A ``model_config`` carrying one example (keeps the model definitions short)."""
    return ConfigDict(json_schema_extra={"examples": [fields]})
