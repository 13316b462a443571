"""``bregkd``: the command line of the bregkd service (typer + rich).

Every command talks to the API at ``--api-url`` / ``BREGKD_API_URL`` with the key in
``--api-key`` / ``BREGKD_API_KEY``; ``serve`` and ``demo`` run the service locally.
``--json`` may come anywhere on the line.

Exit codes: 0 success; 1 the API refused (the line printed says why) or a job failed;
2 bad command-line usage; 3 no service at the URL; 130 interrupted.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, get_args

import typer
from rich.console import Console

from api_schemas import TERMINAL_STATES, DistillationMethod, DistillOptions, JobOut
from client import render
from client.api import BregkdClient, BregkdError, ServiceUnreachable
from client.cli_help import Typer
from client.progress import wait_with_progress
from client.settings import DEFAULT_API_URL, ENV_API_KEY, ENV_API_URL

EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

app = Typer(
    name="bregkd",
    help="Layerwise Bregman representations and distillation, as a service: upload a teacher, "
         "fit a layer's representation, distill a student, download the artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" and "<name>" print as written
)
teachers_app = Typer(help="Upload and inspect teacher networks.", no_args_is_help=True, rich_markup_mode=None)
datasets_app = Typer(help="Upload and list data sets (built-in: digits).", no_args_is_help=True,
                     rich_markup_mode=None)
jobs_app = Typer(help="List, show, wait for and cancel jobs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(teachers_app, name="teachers")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")

F = TypeVar("F", bound=Callable[..., Any])

#: The API's field names and the command-line words a user typed for them, so that a refusal
#: names what to change on the command line (``n_components`` is ``--k`` here).
CLI_WORDS = {
    "n_components": "--k",
    "target_share": "--share",
    "representation_job_id": "--representation",
    "teacher_id": "TEACHER_ID",
    "layer": "--layer",
    "dataset": "--dataset",
    "transfer": "--transfer",
    "methods": "--method",
    "device": "--device",
    "seed": "--seed",
    "onnx": "--onnx",
    "student.arch": "--arch",
    "student.hidden": "--hidden",
    "solver.mean": "--mean",
    "budget.epochs": "--epochs",
    "budget.time_limit_s": "--time-limit",
    "budget.max_train_rows": "--max-train-rows",
    "time_limit_s": "--time-limit",
    "max_train_rows": "--max-train-rows",
}
#: the words replaced inside messages (field names a sentence may use), longest first
_MESSAGE_WORDS = sorted((k for k in CLI_WORDS if "." not in k and k not in ("layer", "dataset", "transfer", "device",
                                                                             "seed", "onnx", "methods")),
                        key=len, reverse=True)


def cli_flag(loc: tuple[str, ...]) -> str:
    """The command-line spelling of a spec field: ``("options", "lr")`` -> ``-o lr``."""
    dotted = ".".join(loc)
    if dotted in CLI_WORDS:
        return CLI_WORDS[dotted]
    if loc and loc[0] == "options":
        return "-o " + ".".join(loc[1:])
    return dotted


def cli_words(text: str) -> str:
    """A message with the API's field names replaced by the flags (``n_components=40`` -> ``--k 40``)."""
    for word in _MESSAGE_WORDS:
        text = re.sub(rf"\b{word}\b(=)?", lambda m, w=word: CLI_WORDS[w] + (" " if m.group(1) else ""), text)
    return text.replace("--representation or a layer", "--representation or a --layer")


def cli_message(exc: BregkdError) -> str:
    """A client error in the words of the command line."""
    text = str(exc)
    if exc.problems:
        head = text.split(": ", 1)[0]  # "422 Unprocessable Entity", "invalid distillation job"
        parts = [f"{cli_flag(p.loc)}: {cli_words(p.msg)}" if p.loc else cli_words(p.msg) for p in exc.problems]
        return f"{head}: {'; '.join(parts)}"
    return cli_words(text)


@dataclass
class State:
    api_url: Optional[str]
    api_key: Optional[str]
    json_output: bool

    def client(self) -> BregkdClient:
        return BregkdClient(self.api_url, self.api_key)


def _out() -> Console:
    # created per call: typer's CliRunner swaps sys.stdout for every invocation
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def _tables() -> Console:
    # tables fit the terminal's width (soft wrap would let their rows run past the border)
    return Console(file=sys.stdout, highlight=False)


def _err() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


class JobInterrupted(Exception):
    """Ctrl-C while following a job: the job itself goes on in the service."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


def handle_errors(fn: F) -> F:
    """Turn client errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServiceUnreachable as exc:
            _err().print(f"error: {exc}", markup=False)
            raise typer.Exit(EXIT_UNREACHABLE) from None
        except BregkdError as exc:
            _err().print(f"error: {cli_message(exc)}", markup=False)
            raise typer.Exit(EXIT_API_ERROR) from None
        except JobInterrupted as exc:
            _err().print(f"interrupted: job {exc.job_id} goes on in the service; follow it again with "
                         f"`bregkd jobs wait {exc.job_id}`, stop it with `bregkd jobs cancel {exc.job_id}`",
                         markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            _err().print("interrupted", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State(None, None, False)


def _print_json(data: Any) -> None:
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.callback()
def _main(
    ctx: typer.Context,
    api_url: Optional[str] = typer.Option(None, "--api-url", envvar=ENV_API_URL, metavar="URL",
                                          help=f"Service URL [default: {DEFAULT_API_URL}]"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar=ENV_API_KEY, metavar="KEY",
                                          help="API key, sent as a Bearer token."),
    json_output: bool = typer.Option(False, "--json", help="Print the API's JSON instead of tables "
                                                           "(anywhere on the line)."),
) -> None:
    ctx.obj = State(api_url, api_key, json_output)


# ---------------------------------------------------------------------------- serve / demo
@app.command()
def serve(
    data_dir: Path = typer.Option(Path("var"), "--data-dir", metavar="DIR", help="Records (SQLite), blobs and artifacts."),
    port: int = typer.Option(8000, "--port", metavar="PORT", help="API port on 127.0.0.1."),
    redis_port: Optional[int] = typer.Option(None, "--redis-port", metavar="PORT",
                                             help="Port of the local redis-server [default: a free one]."),
    concurrency: int = typer.Option(1, "--concurrency", metavar="N", help="Worker processes."),
    tenant: str = typer.Option("local", "--tenant", metavar="NAME", help="Tenant of the API key printed at start."),
) -> None:
    """Run the service on this machine (redis-server, one Celery worker, the API) until Ctrl-C."""
    from client.local import run_until_interrupted  # imports the service: only for this command

    try:
        run_until_interrupted(data_dir=data_dir, api_port=port, redis_port=redis_port,
                              concurrency=concurrency, tenant=tenant, console=_out())
    except (OSError, RuntimeError) as exc:
        _err().print(f"error: could not start the service: {exc}", markup=False)
        raise typer.Exit(EXIT_API_ERROR) from None


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Fewer epochs and components (for tests; ~1 minute)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", metavar="DIR", help="Where the stack and artifacts "
                                            "live [default: a new directory var/demo/<timestamp>]."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the teacher and the jobs."),
) -> None:
    """The main job, end to end: local stack, teacher on digits, representation, distillation, student."""
    from client.demo import DemoError, run_demo  # needs torch and the service: imported here only

    try:
        run_demo(data_dir=data_dir, quick=quick, seed=seed, console=_out())
    except (BregkdError, DemoError) as exc:
        _err().print(f"error: {exc}", markup=False)
        raise typer.Exit(EXIT_API_ERROR) from None
    except KeyboardInterrupt:
        _err().print("interrupted: the local stack is stopped", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None


# ---------------------------------------------------------------------------- teachers
@teachers_app.command("upload")
@handle_errors
def teachers_upload(
    ctx: typer.Context,
    path: Path = typer.Argument(..., metavar="FILE",
                                help="Teacher file: .pt2 (torch.export), safetensors or a state_dict zip."),
    manifest: Optional[str] = typer.Option(None, "--manifest", metavar="JSON|FILE", help='Architecture JSON or a file '
                                           'holding it, e.g. {"arch": "mlp", "args": {...}} (weights-only formats).'),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Display name [default: the file name]."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the worker's inspection."),
) -> None:
    """Upload a teacher; by default waits until its layers are listed."""
    st = _state(ctx)
    with st.client() as api:
        teacher = api.upload_teacher(path, manifest=manifest, name=name, wait=wait)
    if st.json_output:
        return _print_json(teacher)
    out = _out()
    out.print(f"teacher {teacher.id}  status={teacher.status.value}  format={teacher.format.value}  "
              f"params={render.value_text(teacher.parameter_count)}  input={render.value_text(teacher.input_shape)}",
              markup=False)
    if teacher.status.value == "failed":
        _err().print(f"error: inspection failed: {teacher.error}", markup=False)
        raise typer.Exit(EXIT_API_ERROR)
    if teacher.status.value == "ready":
        out.print(f"next: bregkd teachers layers {teacher.id}", markup=False)


@teachers_app.command("list")
@handle_errors
def teachers_list(ctx: typer.Context, limit: int = typer.Option(50, "--limit", metavar="N", help="Rows per page."),
                  offset: int = typer.Option(0, "--offset", metavar="N", help="Rows to skip.")) -> None:
    """List your teachers, newest first."""
    st = _state(ctx)
    with st.client() as api:
        page = api.list_teachers(limit=limit, offset=offset)
    if st.json_output:
        return _print_json(page)
    _tables().print(render.teachers_table(page))


@teachers_app.command("show")
@handle_errors
def teachers_show(ctx: typer.Context, teacher_id: str = typer.Argument(..., metavar="TEACHER_ID")) -> None:
    """Show one teacher."""
    st = _state(ctx)
    with st.client() as api:
        teacher = api.get_teacher(teacher_id)
    if st.json_output:
        return _print_json(teacher)
    for key, value in teacher.model_dump().items():
        _out().print(f"{key:16} {render.value_text(value)}", markup=False)


@teachers_app.command("layers")
@handle_errors
def teachers_layers(ctx: typer.Context, teacher_id: str = typer.Argument(..., metavar="TEACHER_ID")) -> None:
    """List a teacher's layers: path, shape, transfer function, whether it can be tapped."""
    st = _state(ctx)
    with st.client() as api:
        layers = api.teacher_layers(teacher_id)
    if st.json_output:
        return _print_json(layers)
    _tables().print(render.layers_table(layers))


@teachers_app.command("delete")
@handle_errors
def teachers_delete(ctx: typer.Context, teacher_id: str = typer.Argument(..., metavar="TEACHER_ID")) -> None:
    """Delete a teacher (refused while jobs use it)."""
    with _state(ctx).client() as api:
        api.delete_teacher(teacher_id)
    _out().print(f"deleted {teacher_id}", markup=False)


# ---------------------------------------------------------------------------- data sets
@datasets_app.command("upload")
@handle_errors
def datasets_upload(
    ctx: typer.Context,
    path: Path = typer.Argument(..., metavar="FILE", help=".npz or .safetensors with x_train, y_train, x_test, y_test."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                       help="A name to use for it in --dataset [default: the file name]."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the worker's check."),
) -> None:
    """Upload a data set; by default waits until it is checked."""
    st = _state(ctx)
    with st.client() as api:
        ds = api.upload_dataset(path, name=name, wait=wait)
    if st.json_output:
        return _print_json(ds)
    v = render.value_text
    _out().print(f"data set {ds.id}  name={ds.name}  status={ds.status.value}  input={v(ds.input_shape)}  "
                 f"classes={v(ds.num_classes)}  train={v(ds.n_train)}  test={v(ds.n_test)}", markup=False)
    if ds.status.value == "failed":
        _err().print(f"error: data set check failed: {ds.error}", markup=False)
        raise typer.Exit(EXIT_API_ERROR)


@datasets_app.command("list")
@handle_errors
def datasets_list(ctx: typer.Context, limit: int = typer.Option(50, "--limit", metavar="N", help="Rows per page."),
                  offset: int = typer.Option(0, "--offset", metavar="N", help="Rows to skip.")) -> None:
    """List the built-in data sets and yours."""
    st = _state(ctx)
    with st.client() as api:
        page = api.list_datasets(limit=limit, offset=offset)
    if st.json_output:
        return _print_json(page)
    _tables().print(render.datasets_table(page))


@datasets_app.command("delete")
@handle_errors
def datasets_delete(ctx: typer.Context, dataset: str = typer.Argument(..., metavar="DATASET",
                                                                      help="Its id or its name.")) -> None:
    """Delete an uploaded data set."""
    with _state(ctx).client() as api:
        dataset_id = api.resolve_dataset(dataset)
        api.delete_dataset(dataset_id)
    _out().print(f"deleted {dataset_id}", markup=False)


# ---------------------------------------------------------------------------- jobs
OPTION_KEYS = sorted(DistillOptions.model_fields)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they are JSON (numbers, lists, true)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value; keys: {', '.join(OPTION_KEYS)}",
                                     param_hint="-o/--option")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _parse_hidden(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of widths, e.g. 64,32",
                                 param_hint="--hidden") from None
    return widths


DATASET_HELP = "Data set: its id, the --name it was uploaded with, or a built-in (digits)."


@app.command()
@handle_errors
def fit(
    ctx: typer.Context,
    teacher_id: str = typer.Argument(..., metavar="TEACHER_ID", help="A ready teacher's id."),
    layer: str = typer.Option(..., "--layer", "-l", metavar="PATH", help="Layer path from `bregkd teachers layers`."),
    dataset: str = typer.Option("digits", "--dataset", "-d", metavar="DATASET", help=DATASET_HELP),
    k: Optional[int] = typer.Option(None, "--k", "-k", metavar="K",
                                    help="Number of components [default: min(8, d) unless --share]."),
    share: Optional[float] = typer.Option(None, "--share", metavar="SHARE",
                                          help="Instead of --k: the smallest k explaining this share of the "
                                               "divergence, e.g. 0.95."),
    transfer: str = typer.Option("auto", "--transfer", metavar="NAME", help="auto (softmax at the output layer, else "
                                 "the listed transfer) | listed (always the listed one) | softmax."),
    mean: str = typer.Option("joint", "--mean", metavar="joint|centroid",
                             help="Optimize the mean with the directions, or hold the Bregman centroid."),
    device: str = typer.Option("cpu", "--device", metavar="cpu|cuda", help="cuda routes the job to the gpu queue."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the fit."),
    time_limit: int = typer.Option(600, "--time-limit", metavar="SECONDS", help="Wall-clock limit of the job."),
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", metavar="N",
                                                 help="Fit on at most N training rows [default: all]."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Show progress until the job ends."),
) -> None:
    """Create a representation job: fit the Bregman PCA of one teacher layer."""
    st = _state(ctx)
    budget: dict[str, Any] = {"time_limit_s": time_limit}
    if max_train_rows is not None:
        budget["max_train_rows"] = max_train_rows
    with st.client() as api:
        job = api.fit_representation(teacher_id, layer, dataset=dataset, dataset_by_name=True, n_components=k,
                                     target_share=share, transfer=transfer, solver={"mean": mean}, device=device,
                                     seed=seed, budget=budget)
        _after_create(api, st, job, wait)


@app.command()
@handle_errors
def distill(
    ctx: typer.Context,
    teacher_id: str = typer.Argument(..., metavar="TEACHER_ID", help="A ready teacher's id."),
    representation: Optional[str] = typer.Option(None, "--representation", "-r", metavar="JOB_ID",
                                                 help="A succeeded representation job (its layer and k are used)."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", metavar="PATH",
                                        help="Or: distill through this layer directly."),
    k: Optional[int] = typer.Option(None, "--k", "-k", metavar="K", help="Components (with --layer) [default: every "
                                    "direction at a softmax layer, else the 99.9% rule]."),
    dataset: str = typer.Option("digits", "--dataset", "-d", metavar="DATASET", help=DATASET_HELP),
    arch: str = typer.Option("mlp", "--arch", metavar="NAME", help="Student architecture (model registry name)."),
    hidden: Optional[str] = typer.Option(None, "--hidden", metavar="WIDTHS", help="Student hidden widths, e.g. 64,32."),
    method: list[str] = typer.Option(["auto"], "--method", "-m", metavar="METHOD",
                                     help=f"{' | '.join(get_args(DistillationMethod))}; repeat to compare; "
                                          "the first is the student. auto trains bregman (two k), hint, kd "
                                          "and labels on a validation split and returns the best."),
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N",
                                         help="Training epochs of every method [default: enough for about 1500 "
                                              "optimizer steps, 10 to 300]."),
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", metavar="N",
                                                 help="Train on at most N rows [default: all]."),
    option: list[str] = typer.Option([], "--option", "-o", metavar="KEY=VALUE",
                                     help=f"Training option; keys: {', '.join(OPTION_KEYS)}."),
    transfer: str = typer.Option("auto", "--transfer", metavar="NAME", help="auto | listed | softmax (with --layer)."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Also export the student as ONNX."),
    device: str = typer.Option("cpu", "--device", metavar="cpu|cuda", help="cuda routes the job to the gpu queue."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the students' training."),
    time_limit: int = typer.Option(600, "--time-limit", metavar="SECONDS", help="Wall-clock limit of the job."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Show progress until the job ends."),
) -> None:
    """Create a distillation job: train a student through the layer's representation."""
    st = _state(ctx)
    student: dict[str, Any] = {"arch": arch}
    widths = _parse_hidden(hidden)
    if widths is not None:
        student["hidden"] = widths
    budget: dict[str, Any] = {"time_limit_s": time_limit}
    if max_train_rows is not None:
        budget["max_train_rows"] = max_train_rows
    with st.client() as api:
        job = api.distill(teacher_id, dataset=dataset, dataset_by_name=True, representation_job_id=representation,
                          layer=layer, n_components=k, student=student, methods=list(method), epochs=epochs,
                          options=_parse_options(option), device=device, seed=seed, budget=budget,
                          transfer=transfer, onnx=onnx)
        _after_create(api, st, job, wait)


def _after_create(api: BregkdClient, st: State, job: JobOut, wait: bool) -> None:
    if not wait:
        if st.json_output:
            return _print_json(job)
        _out().print(f"job {job.id}  kind={job.kind.value}  state={job.state.value}", markup=False)
        _out().print(f"follow it: bregkd jobs wait {job.id}", markup=False)
        return
    _err().print(f"job {job.id} ({job.kind.value}) created", markup=False)
    _finish(api, st, _follow(api, job.id))


def _follow(api: BregkdClient, job_id: str) -> JobOut:
    """Wait for the job with a progress bar; Ctrl-C stops the waiting, not the job."""
    try:
        return wait_with_progress(api, job_id, console=_err())
    except KeyboardInterrupt:
        raise JobInterrupted(job_id) from None


def _finish(api: BregkdClient, st: State, job: JobOut) -> None:
    """Print a finished job (and its artifacts); exit non-zero if it did not succeed."""
    if st.json_output:
        _print_json(job)
    else:
        _show_job(api, job)
    if job.state.value == "failed":
        _err().print(f"error: job {job.id} failed: {job.error}", markup=False)
        raise typer.Exit(EXIT_API_ERROR)
    if job.state.value == "cancelled":
        _err().print(f"error: job {job.id} was cancelled", markup=False)
        raise typer.Exit(EXIT_API_ERROR)


def _show_job(api: BregkdClient, job: JobOut) -> None:
    artifacts = api.list_artifacts(job.id).items if job.state.value == "succeeded" else None
    render.show_job(_tables(), job, artifacts, api.artifact_url(job.id, "") + "<name>")


@jobs_app.command("list")
@handle_errors
def jobs_list(
    ctx: typer.Context,
    state: Optional[str] = typer.Option(None, "--state", metavar="STATE",
                                        help="queued | running | succeeded | failed | cancelled"),
    kind: Optional[str] = typer.Option(None, "--kind", metavar="KIND", help="representation | distillation"),
    limit: int = typer.Option(50, "--limit", metavar="N", help="Rows per page."),
    offset: int = typer.Option(0, "--offset", metavar="N", help="Rows to skip."),
) -> None:
    """List jobs, newest first."""
    st = _state(ctx)
    with st.client() as api:
        page = api.list_jobs(state=state, kind=kind, limit=limit, offset=offset)
    if st.json_output:
        return _print_json(page)
    _tables().print(render.jobs_table(page))


@jobs_app.command("show")
@handle_errors
def jobs_show(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB_ID")) -> None:
    """Show a job: state, progress, warnings, metrics, and its artifacts (plots, student) with URLs."""
    st = _state(ctx)
    with st.client() as api:
        job = api.get_job(job_id)
        if st.json_output:
            data = job.model_dump(mode="json")
            if job.state.value == "succeeded":
                data["artifacts"] = [{**a.model_dump(mode="json"), "url": api.artifact_url(job.id, a.name)}
                                     for a in api.list_artifacts(job.id).items]
            return _print_json(data)
        _show_job(api, job)


@jobs_app.command("wait")
@handle_errors
def jobs_wait(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB_ID")) -> None:
    """Follow a job with a progress bar until it ends; non-zero exit unless it succeeded.

    Ctrl-C stops the waiting; the job goes on (bregkd jobs cancel stops it).
    """
    st = _state(ctx)
    with st.client() as api:
        job = api.get_job(job_id)
        if job.state not in TERMINAL_STATES:
            job = _follow(api, job_id)
        _finish(api, st, job)


@jobs_app.command("cancel")
@handle_errors
def jobs_cancel(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB_ID")) -> None:
    """Cancel a queued or running job."""
    st = _state(ctx)
    with st.client() as api:
        job = api.cancel_job(job_id)
    if st.json_output:
        return _print_json(job)
    _out().print(f"job {job.id}  state={job.state.value}  cancel_requested={job.cancel_requested}", markup=False)


# ---------------------------------------------------------------------------- download
@app.command()
@handle_errors
def download(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME", help="Artifact names [default: all]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Directory [default: ./<job id>]."),
) -> None:
    """Download a job's artifacts (resumes interrupted downloads, checks SHA-256)."""
    st = _state(ctx)
    dest = out or Path(job_id)
    with st.client() as api:
        paths = api.download_artifacts(job_id, dest, names=names or None)
    if st.json_output:
        return _print_json([str(p) for p in paths])
    rows = [[p.name, p.stat().st_size, str(p)] for p in paths]
    _tables().print(render.table(f"downloaded {len(paths)} file(s) to {dest}", ["name", "bytes", "path"], rows,
                                 ids=["name"]))


def main() -> None:
    """Console-script entry point (``bregkd``)."""
    app()


if __name__ == "__main__":  # python -m client.cli
    main()
