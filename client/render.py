"""What the ``bregkd`` commands print: tables and job reports, rendered onto a rich Console.

Kept apart from the commands so that the rendering can be tested at a given width with records
built in the test (``Console(width=80)``). Ids never wrap: their columns are ``no_wrap`` and as
wide as the longest id, so the other columns fold first.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from api_schemas import ArtifactOut, DatasetList, JobOut, LayerList, TeacherList
from client.progress import duration

#: metrics keys shown in their own sections of ``jobs show``, not in the metrics table
WARNINGS_KEY = "warnings"
SELECTION_KEY = "selection"


def value_text(v: Any) -> str:
    """One cell: numbers to 4 significant digits, int lists as ``8x8``, None as ``-``."""
    v = getattr(v, "value", v)
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(i) for i in v) if v and all(isinstance(i, int) for i in v) else json.dumps(v)
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          ids: Sequence[str] = (), whole: Sequence[str] = (), listing: bool = False) -> Table:
    """A table whose ``ids`` columns never wrap (they are as wide as their longest value).

    ``whole``: short columns (states, kinds) kept whole too, as long as the ids leave room.
    ``listing``: a list of records, drawn without vertical rules so that more fits in a line.
    """
    cells = [[value_text(v) for v in r] for r in rows]
    if listing:
        out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    else:
        out = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        if c in ids or c in whole:
            width = max([len(c), *(len(r[i]) for r in cells)])
            out.add_column(c, no_wrap=True, min_width=width)
        else:
            out.add_column(c, overflow="fold", min_width=min(len(c), 8))  # a header folds last
    for r in cells:
        out.add_row(*r)
    return out


def _when(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") if dt is not None else "-"


def _short_when(dt: Any) -> str:
    return dt.strftime("%m-%d %H:%M") if dt is not None else "-"


def _state(job: Any) -> str:
    state = job.state.value
    return f"{state} {job.progress.fraction:.0%}" if state in ("running", "queued") else state


def teachers_table(page: TeacherList) -> Table:
    rows = [[t.id, t.name, t.format, t.status, t.parameter_count, t.input_shape, _when(t.created_at)]
            for t in page.items]
    return table(f"teachers ({page.total})", ["id", "name", "format", "status", "params", "input", "created"],
                 rows, ids=["id"], whole=["format", "status"], listing=True)


def datasets_table(page: DatasetList) -> Table:
    rows = [[d.id, d.name, d.builtin, d.status, d.input_shape, d.num_classes, d.n_train, d.n_test]
            for d in page.items]
    return table(f"data sets ({page.total})", ["id", "name", "builtin", "status", "input", "classes", "train",
                                                "test"], rows, ids=["id"], listing=True)


def jobs_table(page: Any) -> Table:
    rows = [[j.id, j.kind, _state(j), j.progress.phase, j.spec.get("teacher_id"), _short_when(j.created_at)]
            for j in page.items]
    return table(f"jobs ({len(page.items)} of {page.total})", ["id", "kind", "state", "phase", "teacher", "created"],
                 rows, ids=["id", "teacher"], whole=["kind", "state"], listing=True)


def layer_transfer(layer: Any) -> str:
    """The listed transfer, and what ``--transfer auto`` fits when that differs (the logits: softmax)."""
    auto = getattr(layer, "auto_transfer", None)
    listed = layer.transfer or "-"
    return f"{listed} (auto: {auto})" if auto and auto != layer.transfer else listed


def layer_note(layer: Any) -> str | None:
    """Why a layer cannot be tapped; else how it is represented, when that is not obvious."""
    if layer.reason:
        return layer.reason
    notes = []
    if getattr(layer, "auto_transfer", None) == "softmax" and layer.transfer != "softmax":
        notes.append("output layer: auto fits the softmax of the logits")
    shape = list(layer.output_shape)
    if len(shape) > 1:
        # the listing's "representation" is the layout: "flat" fits a C x H x W map as one vector of
        # d = C*H*W values per example; "channels" fits C-value rows, one per position
        if getattr(layer, "representation", None) == "channels":
            notes.append(f"{'x'.join(map(str, shape))} map fitted as {shape[0]}-channel rows at each position")
        else:
            notes.append(f"{'x'.join(map(str, shape))} map fitted as one vector of {layer.d}")
    return "; ".join(notes) or None


def layers_table(layers: LayerList) -> Table:
    rows = [[l.path, l.op, l.output_shape, l.d, layer_transfer(l), l.tappable, layer_note(l)] for l in layers.items]
    return table(f"layers of {layers.teacher_id}", ["layer", "op", "shape", "d", "transfer", "tappable", "note"],
                 rows, ids=["layer"], listing=True)


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and len(value) > 8:
        out.append((prefix, f"[{len(value)} values]"))
    else:
        out.append((prefix, value))


def warnings_of(metrics: dict[str, Any]) -> list[str]:
    raw = metrics.get(WARNINGS_KEY)
    if isinstance(raw, str):
        return [raw]
    return [str(w) for w in raw] if isinstance(raw, list) else []


def selection_table(rows: Any) -> Table | None:
    """``metrics["selection"]`` (a list of dicts, e.g. method, k, accuracies, selected) as a table:
    the columns are the rows' keys in the order first seen; the selected row is marked."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    columns: list[str] = []
    for r in rows:
        columns += [str(k) for k in r if str(k) not in columns]
    out = table("selection (chosen on validation)", columns, [[r.get(c) for c in columns] for r in rows])
    for i, r in enumerate(rows):
        if r.get("selected") is True:
            out.rows[i].style = "bold"
    return out


def show_job(console: Console, job: JobOut, artifacts: list[ArtifactOut] | None = None,
             artifact_url: str | None = None) -> None:
    """A job's state, warnings, metrics, selection table and artifacts.

    ``artifact_url`` is the download URL of an artifact with ``{name}`` in place of its name;
    it is printed once below the table rather than in a column (URLs would fill the terminal).
    """
    p = job.progress
    say = lambda text: console.print(text, markup=False)  # noqa: E731 - one-line helper
    say(f"job {job.id}  kind={job.kind.value}  state={job.state.value}")
    say(f"  progress  {p.fraction:.0%}  phase={p.phase or '-'}"
        + (f"  eta={duration(p.eta_s)}" if p.eta_s is not None and job.state.value == "running" else ""))
    spec = job.spec
    source = (f"representation={spec['representation_job_id']}" if spec.get("representation_job_id")
              else f"layer={spec.get('layer') or '-'}")
    say(f"  teacher   {spec.get('teacher_id')}  dataset={spec.get('dataset')}  {source}")
    if job.error:
        say(f"  error     {job.error}")
    metrics = dict(job.metrics or {})
    for warning in warnings_of(metrics):
        console.print(Text.assemble(("warning: ", "bold yellow"), warning))
    rest = {k: v for k, v in metrics.items() if k not in (WARNINGS_KEY, SELECTION_KEY)}
    if rest:
        flat: list[tuple[str, Any]] = []
        _flatten("", rest, flat)
        console.print(table("metrics", ["name", "value"], flat))
    selection = selection_table(metrics.get(SELECTION_KEY))
    if selection is not None:
        console.print(selection)
    if artifacts:
        console.print(table("artifacts", ["name", "bytes", "type"], [[a.name, a.size, a.media_type] for a in artifacts],
                            ids=["name"]))
        if artifact_url:  # one line even where the terminal is narrower: it is copied, not read
            console.print(f"  URL of each: {artifact_url}", markup=False, soft_wrap=True)
        plots = [a.name for a in artifacts if a.name.endswith(".png")]
        if plots:
            say("  plots: " + ", ".join(plots))
        say(f"  download: bregkd download {job.id} --out ./{job.id}")
