"""``bregkd``: the command line of the bregkd service (typer + rich).

Every command talks to the API at ``--api-url`` / ``BREGKD_API_URL`` with the key in
``--api-key`` / ``BREGKD_API_KEY``; ``serve`` and ``demo`` run the service locally.

Exit codes: 0 success; 1 the API refused (the line printed says why) or a job failed;
2 bad command-line usage; 3 no service at the URL; 130 interrupted.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, get_args

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from api_schemas import TERMINAL_STATES, DistillationMethod, JobOut
from client.api import BregkdClient, BregkdError, ServiceUnreachable
from client.settings import DEFAULT_API_URL, ENV_API_KEY, ENV_API_URL

EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="bregkd",
    help="Layerwise Bregman representations and distillation, as a service: upload a teacher, "
         "fit a layer's representation, distill a student, download the artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
teachers_app = typer.Typer(help="Upload and inspect teacher networks.", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload and list data sets (built-in: digits).", no_args_is_help=True)
jobs_app = typer.Typer(help="List, show, wait for and cancel jobs.", no_args_is_help=True)
app.add_typer(teachers_app, name="teachers")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")

F = TypeVar("F", bound=Callable[..., Any])


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


def _err() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


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
            _err().print(f"error: {exc}", markup=False)
            raise typer.Exit(EXIT_API_ERROR) from None
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


def _value(v: Any) -> str:
    v = getattr(v, "value", v)
    if v is None:
        return "-"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(i) for i in v) if all(isinstance(i, int) for i in v) else json.dumps(v)
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_value(v) for v in r])
    return table


@app.callback()
def _main(
    ctx: typer.Context,
    api_url: Optional[str] = typer.Option(None, "--api-url", envvar=ENV_API_URL,
                                          help=f"Service URL [default: {DEFAULT_API_URL}]"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar=ENV_API_KEY, help="API key (Bearer)."),
    json_output: bool = typer.Option(False, "--json", help="Print the API's JSON instead of tables."),
) -> None:
    ctx.obj = State(api_url, api_key, json_output)


# ---------------------------------------------------------------------------- serve / demo
@app.command()
def serve(
    data_dir: Path = typer.Option(Path("var"), "--data-dir", help="Records (SQLite), blobs and artifacts."),
    port: int = typer.Option(8000, "--port", help="API port on 127.0.0.1."),
    redis_port: Optional[int] = typer.Option(None, "--redis-port", help="Port of the local redis-server (default: a free one)."),
    concurrency: int = typer.Option(1, "--concurrency", help="Worker processes."),
    tenant: str = typer.Option("local", "--tenant", help="Tenant of the API key printed at start."),
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
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the stack and artifacts live "
                                             "[default: a new directory var/demo/<timestamp>]."),
    seed: int = typer.Option(0, "--seed"),
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
    path: Path = typer.Argument(..., help="Teacher file: .pt2 (torch.export), safetensors or a state_dict zip."),
    manifest: Optional[str] = typer.Option(None, "--manifest", help='Architecture JSON or a file holding it, '
                                           'e.g. {"arch": "mlp", "args": {...}} (weights-only formats).'),
    name: Optional[str] = typer.Option(None, "--name"),
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
              f"params={_value(teacher.parameter_count)}  input={_value(teacher.input_shape)}", markup=False)
    if teacher.status.value == "failed":
        _err().print(f"error: inspection failed: {teacher.error}", markup=False)
        raise typer.Exit(EXIT_API_ERROR)
    if teacher.status.value == "ready":
        out.print(f"next: bregkd teachers layers {teacher.id}", markup=False)


@teachers_app.command("list")
@handle_errors
def teachers_list(ctx: typer.Context, limit: int = typer.Option(50, "--limit"),
                  offset: int = typer.Option(0, "--offset")) -> None:
    """List your teachers, newest first."""
    st = _state(ctx)
    with st.client() as api:
        page = api.list_teachers(limit=limit, offset=offset)
    if st.json_output:
        return _print_json(page)
    rows = [[t.id, t.name, t.format, t.status, t.parameter_count, t.input_shape, t.created_at.strftime("%Y-%m-%d %H:%M")]
            for t in page.items]
    _out().print(_table(f"teachers ({page.total})", ["id", "name", "format", "status", "params", "input", "created"], rows))


@teachers_app.command("show")
@handle_errors
def teachers_show(ctx: typer.Context, teacher_id: str) -> None:
    """Show one teacher."""
    st = _state(ctx)
    with st.client() as api:
        teacher = api.get_teacher(teacher_id)
    if st.json_output:
        return _print_json(teacher)
    for key, value in teacher.model_dump().items():
        _out().print(f"{key:16} {_value(value)}", markup=False)


@teachers_app.command("layers")
@handle_errors
def teachers_layers(ctx: typer.Context, teacher_id: str) -> None:
    """List a teacher's layers: path, shape, transfer function, whether it can be tapped."""
    st = _state(ctx)
    with st.client() as api:
        layers = api.teacher_layers(teacher_id)
    if st.json_output:
        return _print_json(layers)
    rows = [[l.path, l.op, l.output_shape, l.d, l.transfer, "yes" if l.tappable else "no", l.reason or l.representation]
            for l in layers.items]
    _out().print(_table(f"layers of {layers.teacher_id}", ["layer", "op", "shape", "d", "transfer", "tappable", "note"], rows))


@teachers_app.command("delete")
@handle_errors
def teachers_delete(ctx: typer.Context, teacher_id: str) -> None:
    """Delete a teacher (refused while jobs use it)."""
    with _state(ctx).client() as api:
        api.delete_teacher(teacher_id)
    _out().print(f"deleted {teacher_id}", markup=False)


# ---------------------------------------------------------------------------- data sets
@datasets_app.command("upload")
@handle_errors
def datasets_upload(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help=".npz or .safetensors with x_train, y_train, x_test, y_test."),
    name: Optional[str] = typer.Option(None, "--name"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the worker's check."),
) -> None:
    """Upload a data set; by default waits until it is checked."""
    st = _state(ctx)
    with st.client() as api:
        ds = api.upload_dataset(path, name=name, wait=wait)
    if st.json_output:
        return _print_json(ds)
    _out().print(f"data set {ds.id}  status={ds.status.value}  input={_value(ds.input_shape)}  "
                 f"classes={_value(ds.num_classes)}  train={_value(ds.n_train)}  test={_value(ds.n_test)}", markup=False)
    if ds.status.value == "failed":
        _err().print(f"error: data set check failed: {ds.error}", markup=False)
        raise typer.Exit(EXIT_API_ERROR)


@datasets_app.command("list")
@handle_errors
def datasets_list(ctx: typer.Context, limit: int = typer.Option(50, "--limit"),
                  offset: int = typer.Option(0, "--offset")) -> None:
    """List the built-in data sets and yours."""
    st = _state(ctx)
    with st.client() as api:
        page = api.list_datasets(limit=limit, offset=offset)
    if st.json_output:
        return _print_json(page)
    rows = [[d.id, d.name, "yes" if d.builtin else "no", d.status, d.input_shape, d.num_classes, d.n_train, d.n_test]
            for d in page.items]
    _out().print(_table(f"data sets ({page.total})", ["id", "name", "builtin", "status", "input", "classes", "train", "test"], rows))


@datasets_app.command("delete")
@handle_errors
def datasets_delete(ctx: typer.Context, dataset_id: str) -> None:
    """Delete an uploaded data set."""
    with _state(ctx).client() as api:
        api.delete_dataset(dataset_id)
    _out().print(f"deleted {dataset_id}", markup=False)


# ---------------------------------------------------------------------------- jobs
def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they are JSON (numbers, lists, true)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--option")
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


@app.command()
@handle_errors
def fit(
    ctx: typer.Context,
    teacher_id: str = typer.Argument(..., help="A ready teacher's id."),
    layer: str = typer.Option(..., "--layer", "-l", help="Layer path from `bregkd teachers layers`."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Data set id or built-in name."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Number of components."),
    share: Optional[float] = typer.Option(None, "--share", help="Smallest k explaining this share of the divergence."),
    transfer: str = typer.Option("auto", "--transfer", help="auto (softmax at the output layer, else the "
                                 "detected transfer) | listed (always the detected one) | softmax."),
    mean: str = typer.Option("joint", "--mean", help="joint | centroid."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (routes to the gpu queue)."),
    seed: int = typer.Option(0, "--seed"),
    time_limit: int = typer.Option(600, "--time-limit", help="Seconds."),
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", help="Fit on fewer rows."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Show progress until the job ends."),
) -> None:
    """Create a representation job: fit the Bregman PCA of one teacher layer."""
    st = _state(ctx)
    budget: dict[str, Any] = {"time_limit_s": time_limit}
    if max_train_rows is not None:
        budget["max_train_rows"] = max_train_rows
    with st.client() as api:
        job = api.fit_representation(teacher_id, layer, dataset=dataset, n_components=k, target_share=share,
                                     transfer=transfer, solver={"mean": mean}, device=device, seed=seed,
                                     budget=budget)
        _after_create(api, st, job, wait)


@app.command()
@handle_errors
def distill(
    ctx: typer.Context,
    teacher_id: str = typer.Argument(..., help="A ready teacher's id."),
    representation: Optional[str] = typer.Option(None, "--representation", "-r", help="A succeeded representation job."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Or: distill through this layer directly."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Components (with --layer)."),
    dataset: str = typer.Option("digits", "--dataset", "-d"),
    arch: str = typer.Option("mlp", "--arch", help="Student architecture (model registry name)."),
    hidden: Optional[str] = typer.Option(None, "--hidden", help="Student hidden widths, e.g. 64,32."),
    method: list[str] = typer.Option(["bregman"], "--method", "-m",
                                     help=f"{' | '.join(get_args(DistillationMethod))}; repeat to compare; the first is the student."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", help="Train on fewer rows."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option key=value (repeatable)."),
    transfer: str = typer.Option("auto", "--transfer", help="auto | listed | softmax (with --layer)."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Also export the student as ONNX."),
    device: str = typer.Option("cpu", "--device"),
    seed: int = typer.Option(0, "--seed"),
    time_limit: int = typer.Option(600, "--time-limit", help="Seconds."),
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
        job = api.distill(teacher_id, dataset=dataset, representation_job_id=representation, layer=layer,
                          n_components=k, student=student, methods=list(method), epochs=epochs,
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
    final = wait_with_progress(api, job.id)
    _finish(api, st, final)


def wait_with_progress(api: BregkdClient, job_id: str, *, console: Console | None = None) -> JobOut:
    """Wait for a job showing a live bar: phase, fraction, time elapsed and the service's ETA."""
    console = console or _err()
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[eta]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=1.0, eta="")

        def update(job: JobOut) -> None:
            p = job.progress
            phase = p.phase or job.state.value
            eta = f"~{_duration(p.eta_s)} left" if p.eta_s is not None and job.state.value == "running" else ""
            done = 1.0 if job.state.value == "succeeded" else p.fraction
            bar.update(task, completed=done, description=f"{job.id} {phase}", eta=eta)

        return api.wait_job(job_id, on_update=update)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


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


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and len(value) > 8:
        out.append((prefix, f"[{len(value)} values]"))
    else:
        out.append((prefix, value))


def _show_job(api: BregkdClient, job: JobOut) -> None:
    out = _out()
    p = job.progress
    out.print(f"job {job.id}  kind={job.kind.value}  state={job.state.value}", markup=False)
    out.print(f"  progress  {p.fraction:.0%}  phase={p.phase or '-'}"
              + (f"  eta={_duration(p.eta_s)}" if p.eta_s is not None and job.state.value == "running" else ""),
              markup=False)
    spec = job.spec
    source = (f"representation={spec['representation_job_id']}" if spec.get("representation_job_id")
              else f"layer={spec.get('layer') or '-'}")
    out.print(f"  teacher   {spec.get('teacher_id')}  dataset={spec.get('dataset')}  {source}", markup=False)
    if job.error:
        out.print(f"  error     {job.error}", markup=False)
    if job.metrics:
        flat: list[tuple[str, Any]] = []
        _flatten("", job.metrics, flat)
        out.print(_table("metrics", ["name", "value"], [[k, v] for k, v in flat]))
    if job.state.value == "succeeded":
        artifacts = api.list_artifacts(job.id).items
        if artifacts:
            rows = [[a.name, a.size, a.media_type, api.artifact_url(job.id, a.name)] for a in artifacts]
            out.print(_table("artifacts", ["name", "bytes", "type", "url"], rows))
            plots = [a.name for a in artifacts if a.name.endswith(".png")]
            if plots:
                out.print("  plots: " + ", ".join(plots), markup=False)
            out.print(f"  download: bregkd download {job.id} --out ./{job.id}", markup=False)


@jobs_app.command("list")
@handle_errors
def jobs_list(
    ctx: typer.Context,
    state: Optional[str] = typer.Option(None, "--state", help="queued | running | succeeded | failed | cancelled"),
    kind: Optional[str] = typer.Option(None, "--kind", help="representation | distillation"),
    limit: int = typer.Option(50, "--limit"),
    offset: int = typer.Option(0, "--offset"),
) -> None:
    """List jobs, newest first."""
    st = _state(ctx)
    with st.client() as api:
        page = api.list_jobs(state=state, kind=kind, limit=limit, offset=offset)
    if st.json_output:
        return _print_json(page)
    rows = [[j.id, j.kind, j.state, f"{j.progress.fraction:.0%}", j.progress.phase, j.spec.get("teacher_id"),
             j.created_at.strftime("%Y-%m-%d %H:%M:%S")] for j in page.items]
    _out().print(_table(f"jobs ({len(page.items)} of {page.total})",
                        ["id", "kind", "state", "progress", "phase", "teacher", "created"], rows))


@jobs_app.command("show")
@handle_errors
def jobs_show(ctx: typer.Context, job_id: str) -> None:
    """Show a job: state, progress, metrics, and its artifacts (plots, student) with URLs."""
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
def jobs_wait(ctx: typer.Context, job_id: str) -> None:
    """Follow a job with a progress bar until it ends; non-zero exit unless it succeeded."""
    st = _state(ctx)
    with st.client() as api:
        job = api.get_job(job_id)
        if job.state not in TERMINAL_STATES:
            job = wait_with_progress(api, job_id)
        _finish(api, st, job)


@jobs_app.command("cancel")
@handle_errors
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
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
    job_id: str = typer.Argument(...),
    names: Optional[list[str]] = typer.Argument(None, help="Artifact names (default: all)."),
    out: Path = typer.Option(None, "--out", "-o", help="Directory [default: ./<job id>]."),
) -> None:
    """Download a job's artifacts (resumes interrupted downloads, checks SHA-256)."""
    st = _state(ctx)
    dest = out or Path(job_id)
    with st.client() as api:
        paths = api.download_artifacts(job_id, dest, names=names or None)
    if st.json_output:
        return _print_json([str(p) for p in paths])
    rows = [[p.name, p.stat().st_size, str(p)] for p in paths]
    _out().print(_table(f"downloaded {len(paths)} file(s) to {dest}", ["name", "bytes", "path"], rows))


def main() -> None:
    """Console-script entry point (``bregkd``)."""
    app()


if __name__ == "__main__":  # python -m client.cli
    main()
