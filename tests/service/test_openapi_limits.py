"""The OpenAPI document lists the error answers each route gives and the media types it serves."""
from __future__ import annotations

import pytest

from tests.service._app import make_client


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    client, _ = make_client(tmp_path_factory.mktemp("openapi"))
    with client:
        return client.get("/openapi.json").json()


def _operations(schema):
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _error_schema(op, code: str) -> str:
    ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


def test_every_authenticated_route_documents_401_and_500(schema):
    v1 = [(p, m, op) for p, m, op in _operations(schema) if p.startswith("/v1/")]
    assert len(v1) >= 15
    for path, method, op in v1:
        for code in ("401", "500"):
            assert code in op["responses"], (method, path, code)
            assert _error_schema(op, code) == "ErrorResponse", (method, path, code)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "401" not in schema["paths"][path]["get"]["responses"]  # no key needed


@pytest.mark.parametrize("path, codes", [
    ("/v1/jobs", {"400", "408", "413", "422", "507"}),
    ("/v1/teachers", {"202", "400", "408", "413", "415", "422", "429", "507"}),
    ("/v1/datasets", {"202", "400", "408", "413", "415", "422", "429", "507"}),
])
def test_routes_with_a_body_document_their_limits(schema, path, codes):
    op = schema["paths"][path]["post"]
    assert codes <= set(op["responses"]), set(op["responses"])
    assert _error_schema(op, "422") == "ValidationErrorResponse"
    for code in codes - {"202", "422"}:
        assert _error_schema(op, code) == "ErrorResponse", code


def test_list_routes_document_their_bounds(schema):
    for path in ("/v1/jobs", "/v1/teachers", "/v1/datasets"):
        params = {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}
        assert params["offset"]["maximum"] < 2**63 and params["offset"]["minimum"] == 0
        assert params["limit"]["maximum"] == 500
        assert "422" in schema["paths"][path]["get"]["responses"]


def test_artifact_downloads_document_the_media_types_served(schema):
    from workers.artifacts import _MEDIA

    op = schema["paths"]["/v1/jobs/{job_id}/artifacts/{name}"]["get"]
    for code in ("200", "206"):
        served = set(op["responses"][code]["content"])
        assert set(_MEDIA.values()) <= served, served
    assert {"304", "404", "416"} <= set(op["responses"])


def test_spec_bounds_are_in_the_schema(schema):
    comps = schema["components"]["schemas"]
    assert comps["StudentSpec"]["additionalProperties"] is False
    assert comps["DistillationSpec"]["properties"]["seed"]["maximum"] == 2**32 - 1
    assert comps["DistillationSpec"]["properties"]["teacher_id"]["maxLength"] == 64
    for name, model in comps.items():
        if name.endswith("Spec") or name in ("Budget", "SolverOptions", "DistillOptions", "StudentArgs"):
            assert model.get("additionalProperties") is False, name


def test_the_stack_runs_uvicorn_with_the_timed_protocol():
    """The flags of ``service.stack`` (and of the deployment files) parse in uvicorn's command line
    and name the protocol class with the header and drain timeouts."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string
    from uvicorn.main import main as uvicorn_cli

    from service.http_protocol import TimedH11Protocol
    from service.stack import UVICORN_LIMIT_FLAGS

    params = uvicorn_cli.make_context("uvicorn", ["--factory", "service.app:create_app", *UVICORN_LIMIT_FLAGS]).params
    assert import_from_string(HTTP_PROTOCOLS.get(params["http"], params["http"])) is TimedH11Protocol
    assert params["timeout_keep_alive"] == 5 and params["h11_max_incomplete_event_size"] == 16384
