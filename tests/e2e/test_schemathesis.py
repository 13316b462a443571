"""schemathesis against the live OpenAPI of the real stack (uvicorn, a worker, Redis).

Every operation of ``/openapi.json`` is exercised, bounded and seeded, with schema-valid and
schema-invalid requests, a valid API key, and real ids half of the time: a teacher, a data set
and a finished job of this test's own tenant, with the job's real artifact names (so a 404 is not
the only answer the routes with ids ever give; the test checks that each such route found a real
id at least once: an answer other than 404 and 422). The checks: no server error (5xx), no status code the schema
does not list for the operation, the response's content type and body as documented. Every
failure is collected (not only each operation's first) and the test fails listing them all.

Operations that delete go last, so the real ids stay valid for the others; the test's own jobs
are cancelled at the end so that the shared worker is free for the other tests.
"""
from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e._helpers import upload_teacher, wait_until

pytestmark = pytest.mark.e2e

SEED = 20261201
#: examples per operation and generation mode (19 operations x 2 modes x this many requests)
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def real_ids(stack, teacher_file: Path) -> Iterator[dict[str, Any]]:
    """A tenant of its own with a ready teacher, a ready data set and a succeeded job on them."""
    key = stack.create_api_key("schemathesis")
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        teacher = upload_teacher(c, teacher_file)
        assert teacher.status_code == 201, teacher.text
        teacher = wait_until(c, f"/v1/teachers/{teacher.json()['id']}", "status", ("ready", "failed"))
        assert teacher["status"] == "ready", teacher
        buf = io.BytesIO()
        rng = np.random.default_rng(0)
        np.savez(buf, x_train=rng.normal(size=(48, 64)).astype(np.float32), y_train=rng.integers(0, 10, 48))
        ds = c.post("/v1/datasets", files={"file": ("st.npz", buf.getvalue())})
        assert ds.status_code == 201, ds.text
        ds = wait_until(c, f"/v1/datasets/{ds.json()['id']}", "status", ("ready", "failed"))
        assert ds["status"] == "ready", ds
        job = c.post("/v1/jobs", json={"kind": "representation", "teacher_id": teacher["id"], "dataset": ds["id"],
                                       "layer": "0", "n_components": 3, "solver": {"max_iter": 5}})
        assert job.status_code == 201, job.text
        job = wait_until(c, f"/v1/jobs/{job.json()['id']}", "state", ("succeeded", "failed", "cancelled"))
        assert job["state"] == "succeeded", job
        names = [a["name"] for a in c.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]]
        assert names
        yield {"key": key, "teacher_id": teacher["id"], "dataset_id": ds["id"], "job_id": job["id"], "names": names}
        # the jobs schemathesis created with real ids must not hold the shared worker
        active = c.get("/v1/jobs", params={"state": "queued", "limit": 100}).json()["items"]
        active += c.get("/v1/jobs", params={"state": "running", "limit": 100}).json()["items"]
        for j in active:
            c.post(f"/v1/jobs/{j['id']}/cancel")


def _real(case: schemathesis.Case, ids: dict[str, Any], names_index: int) -> schemathesis.Case:
    """Put real ids into the case's path parameters and (for a job spec) its body."""
    real = {"teacher_id": ids["teacher_id"], "dataset_id": ids["dataset_id"], "job_id": ids["job_id"],
            "name": ids["names"][names_index % len(ids["names"])]}
    if case.path_parameters:
        case.path_parameters = {k: real.get(k, v) for k, v in case.path_parameters.items()}
    if isinstance(case.body, dict) and case.operation.path == "/v1/jobs":
        body = dict(case.body)
        for field, value in (("teacher_id", ids["teacher_id"]), ("dataset", ids["dataset_id"]),
                             ("representation_job_id", ids["job_id"])):
            if field in body:
                body[field] = value
        case.body = body
    return case


def _strategy(operation, ids: dict[str, Any]):
    generated = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    return st.tuples(generated, st.booleans(), st.integers(0, 7)).map(
        lambda t: (_real(t[0], ids, t[2]) if t[1] else t[0], t[1])
    )


def _explicit_cases(operation, ids: dict[str, Any]) -> list[schemathesis.Case]:
    """Cases hypothesis may not reach: every real id (each artifact name) and 64-bit page bounds."""
    names = re.findall(r"{(\w+)}", operation.path)
    cases = []
    if names:
        real = {"teacher_id": ids["teacher_id"], "dataset_id": ids["dataset_id"], "job_id": ids["job_id"]}
        for artifact in ids["names"] if "name" in names else [None]:
            cases.append(operation.Case(path_parameters={n: real.get(n, artifact) for n in names}))
    query = {p["name"] for p in operation.definition.raw.get("parameters", []) if p.get("in") == "query"}
    for param in ("limit", "offset") if operation.method.lower() == "get" else ():
        if param in query:
            cases += [operation.Case(query={param: 2**63}), operation.Case(query={param: 2**63 - 1})]
    return cases


def _describe(case: schemathesis.Case, response, failure: Failure) -> str:
    request = case.as_curl_command(headers={"Authorization": "Bearer <key>"})
    if len(request) > 400:
        request = request[:400] + " ..."
    first_line = (failure.message or "").strip().splitlines()[:3]
    return f"{case.operation.label}: {failure.title} (status {getattr(response, 'status_code', '?')})\n" \
           f"    request: {request}\n    why: {' / '.join(first_line)}"


def test_every_operation_holds_its_openapi(stack, real_ids):
    t0 = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    loaded = [result.ok() for result in schema.get_all_operations()]  # a schema error raises here
    raw = httpx.get(f"{stack.api_url}/openapi.json").json()["paths"]
    documented = {f"{m.upper()} {p}" for p, ops in raw.items() for m in ops}
    assert {op.label for op in loaded} == documented  # nothing left out
    operations = sorted(loaded, key=lambda op: op.method.lower() == "delete")  # deletes last
    headers = {"Authorization": f"Bearer {real_ids['key']}"}
    failures: dict[tuple[str, str, int | None], str] = {}
    statuses: dict[str, dict[int, int]] = {}
    real_found: dict[str, int] = {}

    def send(case: schemathesis.Case, used_real: bool) -> None:
        label = case.operation.label
        response = case.call(base_url=stack.api_url, headers=headers, timeout=30)
        statuses[label][response.status_code] = statuses[label].get(response.status_code, 0) + 1
        if used_real and response.status_code not in (404, 422):
            real_found[label] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                failures.setdefault((label, failure.title, response.status_code), _describe(case, response, failure))
        except Failure as failure:
            failures.setdefault((label, failure.title, response.status_code), _describe(case, response, failure))

    for operation in operations:
        label = operation.label
        statuses[label] = {}
        real_found[label] = 0
        for case in _explicit_cases(operation, real_ids):
            send(case, used_real=bool(case.path_parameters))

        @seed(SEED)
        @settings(max_examples=2 * MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(_strategy(operation, real_ids))
        def run(drawn) -> None:
            send(*drawn)

        run()

    table = "\n".join(f"  {label}: {dict(sorted(s.items()))}" for label, s in statuses.items())
    print(f"\nstatus codes per operation (seed {SEED}, "
          f"{sum(sum(s.values()) for s in statuses.values())} requests in {time.monotonic() - t0:.0f} s):\n{table}")
    report = "\n".join(failures.values())
    print(f"{len(failures)} distinct failures (operation, check, status):\n{report}")  # in full: pytest clips asserts
    # the real ids reached the routes: each route with an id found a real one at least once
    with_ids = [op.label for op in operations if "{" in op.path]
    assert all(real_found[label] > 0 for label in with_ids), {label: real_found[label] for label in with_ids}
    assert not failures, f"{len(failures)} distinct failures (the full list is in the captured stdout):\n{report}"
