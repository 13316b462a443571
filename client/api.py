"""A small Python client of the bregkd REST API (httpx + the pydantic models of ``api_schemas``).

Every method maps to one route (or a short loop over one, for the ``wait_*`` helpers) and
returns the API's own response model. Errors:

- :class:`ApiError` — the API answered 4xx/5xx; ``str(err)`` is one line: status and message.
- :class:`ServiceUnreachable` — nothing listens at the URL; the message says how to start it.
- :class:`WaitTimeout` — a ``wait_*`` helper ran out of time.

All derive from :class:`BregkdError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from api_schemas import (
    TERMINAL_STATES,
    ArtifactList,
    ArtifactOut,
    DatasetList,
    DatasetOut,
    DistillationSpec,
    Health,
    JobEvent,
    JobList,
    JobOut,
    JobSpec,
    LayerList,
    Readiness,
    RepresentationSpec,
    TeacherList,
    TeacherOut,
)
from client.settings import ENV_API_KEY, ClientSettings

__all__ = ["BregkdClient", "BregkdError", "ApiError", "Problem", "ServiceUnreachable", "WaitTimeout",
           "error_message"]

_JOB_SPEC = TypeAdapter(JobSpec)
_CHUNK = 1 << 20


class Problem(NamedTuple):
    """One thing wrong with a request: where (``("options", "lr")``; empty when it is the whole
    request), what (one line) and pydantic's / the API's error type (e.g. ``extra_forbidden``)."""

    loc: tuple[str, ...]
    msg: str
    type: str = ""


class BregkdError(Exception):
    """Anything that stops a client call; ``str()`` is a one-line message for a user.

    ``problems`` lists the fields at fault when the call was refused as invalid (a spec that
    failed validation here, or the API's 422), so that a front end can name them in its own
    words (the CLI says ``--k`` where the API says ``n_components``).
    """

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems: list[Problem] = list(problems or [])


class ApiError(BregkdError):
    """The API answered with an error status.

    Attributes
    ----------
    status_code : the HTTP status.
    message : the API's message (``detail``), flattened to one line.
    body : the decoded JSON body, or the text when it is not JSON.
    """

    def __init__(self, status_code: int, message: str, body: Any = None, method: str = "", url: str = ""):
        self.status_code = status_code
        self.message = message
        self.body = body
        self.method = method
        self.url = url
        super().__init__(f"{status_code} {_reason(status_code)}: {message}", _detail_problems(body))


class ServiceUnreachable(BregkdError):
    """No service answered at the configured URL."""


class WaitTimeout(BregkdError):
    """A ``wait_*`` helper gave up before the object reached a final state."""


def _reason(status_code: int) -> str:
    return httpx.codes.get_reason_phrase(status_code) or "Error"


def _one_line(text: Any) -> str:
    """A message as one line, without pydantic's ``Value error, `` prefix (it says nothing to a user)."""
    line = " ".join(str(text).split())
    return line.removeprefix("Value error, ")


_LOC_NOISE = ("body", "query", "path", "header", "representation", "distillation")


def _detail_problems(body: Any) -> list[Problem]:
    """The field problems of a FastAPI-shaped 422 body (``{"detail": [{"loc", "msg", "type"}]}``)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, list):
        return []
    return [Problem(tuple(str(p) for p in item.get("loc", []) if p not in _LOC_NOISE), _one_line(item.get("msg", "")),
                    str(item.get("type", ""))) for item in detail if isinstance(item, dict)]


def error_message(response: httpx.Response) -> str:
    """The API's message in an error answer, as one line.

    Understands FastAPI's shapes: ``{"detail": "text"}`` and ``{"detail": [{"loc": [...],
    "msg": "..."}]}`` (validation errors, shown as ``field: msg``); any other body is shown as
    its first line of text (cut to 300 characters).
    """
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail.strip():
        return _one_line(detail)
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in _LOC_NOISE]
                msg = _one_line(item.get("msg", item))
                parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
            else:
                parts.append(_one_line(item))
        return "; ".join(parts)
    if isinstance(body, dict) and body:
        return json.dumps(body)[:300]
    text = (response.text or "").strip().splitlines()
    return text[0][:300] if text else (response.reason_phrase or "no message")


class BregkdClient:
    """Client of one bregkd service.

    Parameters
    ----------
    api_url : str, optional
        Base URL (default: ``BREGKD_API_URL``, else ``http://127.0.0.1:8000``).
    api_key : str, optional
        API key (default: ``BREGKD_API_KEY``).
    timeout_s : float, optional
        Connect/read timeout of each request (default 60 s).
    transport : httpx.BaseTransport, optional
        For tests (e.g. ``httpx.MockTransport``).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, api_url: str | None = None, api_key: str | None = None, *,
                 timeout_s: float | None = None, transport: httpx.BaseTransport | None = None):
        try:
            self.settings = ClientSettings.resolve(api_url, api_key, timeout_s)
        except ValueError as exc:
            raise BregkdError(str(exc)) from None
        headers = {"User-Agent": "bregkd-client/0.1"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        self._http = httpx.Client(base_url=self.settings.api_url, headers=headers,
                                  timeout=self.settings.timeout_s, transport=transport)

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "BregkdClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: Exception) -> ServiceUnreachable:
        return ServiceUnreachable(
            f"cannot reach the bregkd API at {self.api_url} ({type(exc).__name__}): start it with "
            f"`bregkd serve`, or point BREGKD_API_URL / --api-url at a running service")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from None
        except httpx.TimeoutException as exc:
            raise BregkdError(f"{method} {path} timed out after {self.settings.timeout_s:g} s "
                              f"({type(exc).__name__}); raise the timeout or check the service") from None
        except httpx.TransportError as exc:
            raise BregkdError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from None
        self._raise_for_status(response, method, path)
        return response

    def _raise_for_status(self, response: httpx.Response, method: str, path: str) -> None:
        if response.status_code >= 400:
            if not response.is_closed:
                response.read()
            try:
                body: Any = response.json()
            except (ValueError, UnicodeDecodeError):
                body = response.text
            message = error_message(response)
            if response.status_code == 401:
                message = self._key_hint(message)
            elif response.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
                # the router's own answer, not an object's: the URL does not lead to this API
                message = (f"{message}: no bregkd route {method} {path} at {self.api_url}; set BREGKD_API_URL / "
                           "--api-url to the service's base URL (what `bregkd serve` prints)")
            raise ApiError(response.status_code, message, body, method, path)

    def _key_hint(self, message: str) -> str:
        """A 401 says where the key comes from: it is the one thing a user can change."""
        if not self.settings.api_key:
            return (f"no API key given: set {ENV_API_KEY} or pass --api-key (api_key= in Python); "
                    "`bregkd serve` prints one, an operator creates one with "
                    "`python -m service.admin keys create --tenant NAME`")
        return f"{message}: check {ENV_API_KEY} / --api-key (the key is sent as a Bearer token)"

    def _get(self, path: str, model: type[BaseModel], **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return model.model_validate(self._request("GET", path, params=params).json())

    # ------------------------------------------------------------------ health
    def health(self) -> Health:
        """``GET /healthz``."""
        return self._get("/healthz", Health)

    def ready(self) -> Readiness:
        """``GET /readyz``; a 503 (not ready) is returned as a Readiness too, not raised."""
        try:
            response = self._http.get("/readyz")
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from None
        if response.status_code in (200, 503):
            try:
                return Readiness.model_validate(response.json())
            except ValueError:
                pass
        self._raise_for_status(response, "GET", "/readyz")
        return Readiness.model_validate(response.json())

    # ------------------------------------------------------------------ teachers
    def upload_teacher(self, path: str | os.PathLike, *, manifest: Mapping[str, Any] | str | os.PathLike | None = None,
                       name: str | None = None, wait: bool = False, timeout_s: float = 300.0) -> TeacherOut:
        """``POST /v1/teachers``: upload a teacher file (streamed).

        Parameters
        ----------
        path : the teacher (``.pt2``, safetensors, or a torch.save zip of a state dict).
        manifest : architecture manifest (dict, JSON text, or a path to a JSON file); needed for
            weights-only formats.
        name : display name (default: the file name).
        wait : wait until the worker's inspection finished (status ``ready`` or ``failed``).
        """
        path = Path(path)
        if not path.is_file():
            raise BregkdError(f"teacher file {str(path)!r} does not exist")
        data = {}
        if manifest is not None:
            data["manifest"] = _manifest_text(manifest)
        if name:
            data["name"] = name
        with path.open("rb") as fh:
            response = self._request("POST", "/v1/teachers", data=data,
                                     files={"file": (path.name, fh, "application/octet-stream")})
        teacher = TeacherOut.model_validate(response.json())
        return self.wait_teacher(teacher.id, timeout_s=timeout_s) if wait else teacher

    def list_teachers(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> TeacherList:
        """``GET /v1/teachers``."""
        return self._get("/v1/teachers", TeacherList, status=status, limit=limit, offset=offset)

    def get_teacher(self, teacher_id: str) -> TeacherOut:
        """``GET /v1/teachers/{id}``."""
        return self._get(f"/v1/teachers/{_seg(teacher_id)}", TeacherOut)

    def teacher_layers(self, teacher_id: str) -> LayerList:
        """``GET /v1/teachers/{id}/layers`` (409 while the teacher is still being inspected)."""
        return self._get(f"/v1/teachers/{_seg(teacher_id)}/layers", LayerList)

    def delete_teacher(self, teacher_id: str) -> None:
        """``DELETE /v1/teachers/{id}``."""
        self._request("DELETE", f"/v1/teachers/{_seg(teacher_id)}")

    def wait_teacher(self, teacher_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.3) -> TeacherOut:
        """Poll until the teacher's inspection is over; returns it (``ready`` or ``failed``)."""
        return self._wait_status(lambda: self.get_teacher(teacher_id), f"teacher {teacher_id}", timeout_s, poll_s)

    # ------------------------------------------------------------------ data sets
    def upload_dataset(self, path: str | os.PathLike, *, name: str | None = None, wait: bool = False,
                       timeout_s: float = 300.0) -> DatasetOut:
        """``POST /v1/datasets``: upload a ``.npz`` or ``.safetensors`` data set (streamed)."""
        path = Path(path)
        if not path.is_file():
            raise BregkdError(f"data set file {str(path)!r} does not exist")
        data = {"name": name} if name else {}
        with path.open("rb") as fh:
            response = self._request("POST", "/v1/datasets", data=data,
                                     files={"file": (path.name, fh, "application/octet-stream")})
        dataset = DatasetOut.model_validate(response.json())
        return self.wait_dataset(dataset.id, timeout_s=timeout_s) if wait else dataset

    def list_datasets(self, *, limit: int = 50, offset: int = 0) -> DatasetList:
        """``GET /v1/datasets`` (uploaded ones and the built-ins)."""
        return self._get("/v1/datasets", DatasetList, limit=limit, offset=offset)

    def get_dataset(self, dataset_id: str) -> DatasetOut:
        """``GET /v1/datasets/{id}`` (a built-in's id is its name, e.g. ``digits``)."""
        return self._get(f"/v1/datasets/{_seg(dataset_id)}", DatasetOut)

    def resolve_dataset(self, ref: str) -> str:
        """The id of the data set ``ref`` names: an id, a built-in's name, or the ``name`` given at
        upload (when exactly one of yours has it). An unknown ``ref`` is returned as it is, for the
        API to refuse with its own message; a name several data sets share raises BregkdError."""
        try:
            return self.get_dataset(ref).id
        except ApiError as exc:
            if exc.status_code != 404:
                raise
        matches: list[str] = []
        offset = 0
        while True:
            page = self.list_datasets(limit=500, offset=offset)
            matches += [d.id for d in page.items if d.name == ref]
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
        if len(matches) > 1:
            raise BregkdError(f"{len(matches)} data sets are named {ref!r} ({', '.join(matches)}): name one by its id")
        return matches[0] if matches else ref

    def delete_dataset(self, dataset_id: str) -> None:
        """``DELETE /v1/datasets/{id}``."""
        self._request("DELETE", f"/v1/datasets/{_seg(dataset_id)}")

    def wait_dataset(self, dataset_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.3) -> DatasetOut:
        """Poll until the data set's inspection is over; returns it (``ready`` or ``failed``)."""
        return self._wait_status(lambda: self.get_dataset(dataset_id), f"data set {dataset_id}", timeout_s, poll_s)

    @staticmethod
    def _wait_status(fetch: Callable[[], Any], what: str, timeout_s: float, poll_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            obj = fetch()
            if getattr(obj.status, "value", obj.status) != "inspecting":
                return obj
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"{what} is still being inspected after {timeout_s:g} s: is a worker running?")
            time.sleep(poll_s)

    # ------------------------------------------------------------------ jobs
    def create_job(self, spec: RepresentationSpec | DistillationSpec | Mapping[str, Any], *,
                   idempotency_key: str | None = None) -> JobOut:
        """``POST /v1/jobs``; the spec is validated here first, so mistakes fail before the request.

        ``idempotency_key`` (default: a fresh UUID) makes a retried request return the same job.
        """
        if isinstance(spec, BaseModel):
            body = spec.model_dump(mode="json", exclude_none=True)
        else:
            try:
                body = _JOB_SPEC.validate_python(dict(spec)).model_dump(mode="json", exclude_none=True)
            except ValueError as exc:
                raise _spec_error("invalid job spec", exc, None) from None
        key = idempotency_key or uuid.uuid4().hex
        response = self._request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return JobOut.model_validate(response.json())

    def fit_representation(self, teacher_id: str, layer: str, *, dataset: str = "digits",
                           n_components: int | None = None, target_share: float | None = None,
                           transfer: str = "auto", idempotency_key: str | None = None, dataset_by_name: bool = False,
                           **spec: Any) -> JobOut:
        """Create a ``representation`` job (other :class:`RepresentationSpec` fields as keywords).

        ``dataset_by_name``: ``dataset`` may also be an uploaded data set's name (see
        :meth:`resolve_dataset`); looked up after the spec is validated here.
        """
        try:
            model = RepresentationSpec(teacher_id=teacher_id, dataset=dataset, layer=str(layer),
                                       n_components=n_components, target_share=target_share,
                                       transfer=transfer, **spec)
        except ValueError as exc:
            raise _spec_error("invalid representation job", exc, RepresentationSpec) from None
        if dataset_by_name:
            model.dataset = self.resolve_dataset(model.dataset)
        return self.create_job(model, idempotency_key=idempotency_key)

    def distill(self, teacher_id: str, *, dataset: str = "digits", representation_job_id: str | None = None,
                layer: str | None = None, student: Mapping[str, Any] | None = None,
                methods: list[str] | None = None, epochs: int | None = None,
                idempotency_key: str | None = None, dataset_by_name: bool = False, **spec: Any) -> JobOut:
        """Create a ``distillation`` job (other :class:`DistillationSpec` fields as keywords;
        ``dataset_by_name`` as in :meth:`fit_representation`)."""
        fields: dict[str, Any] = dict(spec)
        if epochs is not None:
            fields["budget"] = {**dict(fields.get("budget") or {}), "epochs": epochs}
        if student is not None:
            fields["student"] = dict(student)
        if methods is not None:
            fields["methods"] = list(methods)
        try:
            model = DistillationSpec(teacher_id=teacher_id, dataset=dataset,
                                     representation_job_id=representation_job_id,
                                     layer=None if layer is None else str(layer), **fields)
        except ValueError as exc:
            raise _spec_error("invalid distillation job", exc, DistillationSpec) from None
        if dataset_by_name:
            model.dataset = self.resolve_dataset(model.dataset)
        return self.create_job(model, idempotency_key=idempotency_key)

    def list_jobs(self, *, state: str | None = None, kind: str | None = None,
                  limit: int = 50, offset: int = 0) -> JobList:
        """``GET /v1/jobs`` filtered by state and kind, newest first."""
        return self._get("/v1/jobs", JobList, state=state, kind=kind, limit=limit, offset=offset)

    def get_job(self, job_id: str) -> JobOut:
        """``GET /v1/jobs/{id}``."""
        return self._get(f"/v1/jobs/{_seg(job_id)}", JobOut)

    def cancel_job(self, job_id: str) -> JobOut:
        """``POST /v1/jobs/{id}/cancel``: a queued job is cancelled at once, a running one soon."""
        return JobOut.model_validate(self._request("POST", f"/v1/jobs/{_seg(job_id)}/cancel").json())

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        """``GET /v1/jobs/{id}/events``: server-sent events until the job ends."""
        path = f"/v1/jobs/{_seg(job_id)}/events"
        try:
            with self._http.stream("GET", path, headers={"Accept": "text/event-stream"},
                                   timeout=httpx.Timeout(self.settings.timeout_s, read=None)) as response:
                self._raise_for_status(response, "GET", path)
                for event, data in _parse_sse(response.iter_lines()):
                    yield _job_event(event, data)
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from None

    def wait_job(self, job_id: str, *, on_update: Callable[[JobOut], None] | None = None,
                 timeout_s: float | None = None, poll_s: float = 0.5, stream: bool = True) -> JobOut:
        """Wait until the job is ``succeeded``, ``failed`` or ``cancelled``; return it.

        Reads the event stream when ``stream`` (falling back to polling if the stream breaks or
        is not offered), else polls every ``poll_s`` seconds. ``on_update(job)`` is called on
        every state seen. A failed job is returned, not raised: check ``job.state``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if stream and deadline is None:
            try:
                last = None
                for event in self.job_events(job_id):
                    last = event.job
                    if on_update is not None:
                        on_update(last)
                    if last.state in TERMINAL_STATES:
                        return last
            except ApiError as exc:
                if exc.status_code not in (404, 405, 501):
                    raise
            except (httpx.TransportError, ValueError):
                pass  # stream broken or not parseable: poll instead
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.state in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job.state.value} after {timeout_s:g} s")
            time.sleep(poll_s)

    # ------------------------------------------------------------------ artifacts
    def list_artifacts(self, job_id: str) -> ArtifactList:
        """``GET /v1/jobs/{id}/artifacts``."""
        return self._get(f"/v1/jobs/{_seg(job_id)}/artifacts", ArtifactList)

    def artifact_url(self, job_id: str, name: str) -> str:
        """The absolute download URL of one artifact."""
        return f"{self.api_url}/v1/jobs/{_seg(job_id)}/artifacts/{quote(name, safe='/')}"

    def download_artifact(self, job_id: str, name: str, dest: str | os.PathLike = ".", *,
                          expected: ArtifactOut | None = None) -> Path:
        """Download one artifact to ``dest`` (a directory, or a file path); returns the file.

        Streams to ``<file>.part`` and resumes an interrupted download with a Range request
        (guarded by ``If-Range`` on the ETag); checks the SHA-256 against the ETag before the
        file is renamed into place.
        """
        dest = Path(dest)
        target = dest / Path(name) if dest.is_dir() or str(dest).endswith(os.sep) else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        path = f"/v1/jobs/{_seg(job_id)}/artifacts/{quote(name, safe='/')}"
        etag = expected.sha256 if expected is not None else None
        headers = {}
        offset = part.stat().st_size if part.exists() else 0
        if offset and etag:
            headers = {"Range": f"bytes={offset}-", "If-Range": f'"{etag}"'}
        else:
            offset = 0
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                self._raise_for_status(response, "GET", path)
                if response.status_code == 206:
                    with part.open("rb") as fh:
                        for block in iter(lambda: fh.read(_CHUNK), b""):
                            digest.update(block)
                    mode = "ab"
                else:
                    mode = "wb"
                etag = _strip_etag(response.headers.get("ETag")) or etag
                with part.open(mode) as fh:
                    for block in response.iter_bytes(_CHUNK):
                        digest.update(block)
                        fh.write(block)
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from None
        except httpx.TransportError as exc:
            raise BregkdError(f"download of {name} broke off ({type(exc).__name__}); run it again to "
                              f"resume from {part}") from None
        if etag and len(etag) == 64 and digest.hexdigest() != etag:
            part.unlink(missing_ok=True)
            raise BregkdError(f"download of {name} is corrupt (sha256 {digest.hexdigest()[:12]}... "
                              f"!= {etag[:12]}...); run it again")
        part.replace(target)
        return target

    def download_artifacts(self, job_id: str, dest_dir: str | os.PathLike, *,
                           names: list[str] | None = None) -> list[Path]:
        """Download every artifact of a job (or only ``names``) into ``dest_dir``."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        listing = {a.name: a for a in self.list_artifacts(job_id).items}
        if names is not None:
            missing = [n for n in names if n not in listing]
            if missing:
                raise BregkdError(f"job {job_id} has no artifact {', '.join(missing)}; it has: "
                                  f"{', '.join(sorted(listing)) or 'none'}")
        chosen = [listing[n] for n in (names if names is not None else sorted(listing))]
        return [self.download_artifact(job_id, a.name, dest_dir / a.name, expected=a) for a in chosen]


# ---------------------------------------------------------------------- helpers
def _seg(value: str) -> str:
    """One URL path segment (ids never contain '/', but a typo must not change the route)."""
    return quote(str(value), safe="")


def _strip_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def _manifest_text(manifest: Mapping[str, Any] | str | os.PathLike) -> str:
    if isinstance(manifest, Mapping):
        return json.dumps(dict(manifest))
    text = str(manifest)
    if not text.lstrip().startswith("{"):
        p = Path(text)
        if not p.is_file():
            raise BregkdError(f"manifest {text!r} is neither JSON text nor an existing file")
        text = p.read_text()
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise BregkdError(f"the manifest is not valid JSON ({exc.msg} at position {exc.pos})") from None
    return text


def valid_keys(model: type[BaseModel] | None, loc: tuple[str, ...]) -> list[str]:
    """The field names allowed next to ``loc[-1]``: the fields of the model that holds it
    (``valid_keys(DistillationSpec, ("options", "learning_rate"))`` lists DistillOptions' fields)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model is not None else None
        annotation = field.annotation if field is not None else None
        candidates = [a for a in (annotation, *getattr(annotation, "__args__", ()))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return sorted(model.model_fields) if model is not None else []


def _spec_problems(exc: Exception, model: type[BaseModel] | None) -> list[Problem]:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return [Problem((), _one_line(exc))]
    problems = []
    for err in errors():
        loc = tuple(str(p) for p in err.get("loc", ()) if p not in _LOC_NOISE)
        if model is None and err.get("loc", ("",))[0] in ("representation", "distillation"):
            model_of = {"representation": RepresentationSpec, "distillation": DistillationSpec}
            model = model_of[err["loc"][0]]
        msg = _one_line(err.get("msg", ""))
        if err.get("type") == "extra_forbidden":
            keys = valid_keys(model, loc)
            msg = "unknown key" + (f"; valid keys: {', '.join(keys)}" if keys else "")
        problems.append(Problem(loc, msg, str(err.get("type", ""))))
    return problems


def _spec_error(what: str, exc: Exception, model: type[BaseModel] | None) -> BregkdError:
    problems = _spec_problems(exc, model)
    text = "; ".join(f"{'.'.join(p.loc)}: {p.msg}" if p.loc else p.msg for p in problems)
    return BregkdError(f"{what}: {text}", problems)


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs from the lines of a text/event-stream (comments skipped)."""
    event, data = "message", []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


def _job_event(event: str, data: str) -> JobEvent:
    payload = json.loads(data)
    if isinstance(payload, dict) and "job" in payload:
        return JobEvent.model_validate({"event": payload.get("event", event if event in ("progress", "end") else "progress"),
                                        "job": payload["job"]})
    job = JobOut.model_validate(payload)
    kind = event if event in ("progress", "end") else ("end" if job.state in TERMINAL_STATES else "progress")
    return JobEvent(event=kind, job=job)
