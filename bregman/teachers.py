"""Load a user's trained teacher network safely, from one of three formats; never unpickle.

1. ``torch.export`` programs (``.pt2``): any architecture, no code of ours needed. Recommended.
   A user makes one with three lines (the batch dimension must be dynamic)::

       import torch
       ep = torch.export.export(model.eval(), (example_batch,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
       torch.export.save(ep, "teacher.pt2")

   ``torch.export.load`` itself runs pickles, ``eval`` and ``exec`` found in a crafted archive
   (see :mod:`bregman._pt2_guard`); we inspect the archive first and refuse those.
2. Weights in safetensors plus a JSON manifest naming a registry architecture
   (:mod:`bregman.models`). The manifest may also be stored in the safetensors metadata under the
   key ``"manifest"``.
3. A ``state_dict`` saved with ``torch.save`` (zip format, the default since torch 1.6), loaded
   only with ``weights_only=True`` from a vetted, rebuilt copy of the archive, plus the same
   manifest. Legacy (pre-zip) ``torch.save`` streams are bare pickles and are refused. A whole pickled model, or any pickle that needs to import code, is refused
   (:class:`UnsafeTeacherError`) and its payload never runs.

The manifest::

    {"arch": "mlp", "args": {"in_features": 64, "hidden": [32], "num_classes": 10},
     "input_shape": [64], "name": "digits-mlp"}

``arch`` and ``args`` are required (``args`` may be empty), ``input_shape`` is the per-example
input shape (optional for an MLP, whose ``in_features`` implies it), ``name``, ``description``,
``num_classes`` and ``dataset`` are optional and informational. Format is detected from the
content (:func:`detect_format`), never from the file name.

A manifest costs nothing until it has been checked: its model is first built on the meta device
(shapes only) to count its parameters against ``max_parameters`` (``BREGKD_MAX_TEACHER_PARAMETERS``,
200 M by default) and to run its input shape through it; then its state dict's names, shapes and
dtypes are compared with the weights' (for safetensors, from the header vetted by
:mod:`bregman._safetensors_guard`, before any tensor is read); only then is memory allocated for the
model and filled one weight at a time.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from bregman._pt2_guard import UnsafeArchiveError, load_pt2_safely, load_torch_save_safely
from bregman._safetensors_guard import SafetensorsHeader, SafetensorsHeaderError, iter_tensors, read_header
from bregman._sniff import sniff
from bregman.models import (
    ARCHITECTURES,
    ManifestError,
    build_model_from_manifest,
    count_parameters,
    default_input_shape,
)

__all__ = [
    "Teacher",
    "TeacherFormatError",
    "UnsafeTeacherError",
    "detect_format",
    "load_teacher",
    "validate_manifest",
    "max_teacher_parameters",
    "DEFAULT_MAX_PARAMETERS",
    "FORMATS",
    "PT2_RECIPE",
    "save_pt2",
]

log = logging.getLogger(__name__)

FORMATS = ("pt2", "safetensors", "state_dict")

PT2_RECIPE = (
    "import torch\n"
    "ep = torch.export.export(model.eval(), (example_batch,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))\n"
    'torch.export.save(ep, "teacher.pt2")'
)

_RESAVE_HELP = (
    "Re-save the teacher in a format that holds only data: either as a torch.export program\n"
    f"{PT2_RECIPE}\n"
    "or as weights in safetensors (safetensors.torch.save_file(model.state_dict(), 'teacher.safetensors')) "
    "with a JSON manifest naming a registry architecture, e.g. "
    '{"arch": "mlp", "args": {"in_features": 64, "hidden": [32], "num_classes": 10}}.'
)

_MANIFEST_KEYS = {"arch", "args", "input_shape", "name", "description", "num_classes", "dataset"}

#: default bound on the parameters of a manifest's model (``BREGKD_MAX_TEACHER_PARAMETERS``).
#: The largest registry network, WRN-28-10, has 36.5 M; 200 M leaves five times that and keeps
#: the built model at 800 MB of float32, a third of the default 2 GiB upload limit's worth of
#: weights, so a 10 KB manifest can never ask for more memory than a real upload could bring.
DEFAULT_MAX_PARAMETERS = 200_000_000
#: values of one input example (3 x 2048 x 2048 fits); the meta forward pass checks the rest
MAX_INPUT_VALUES = 2**24
#: values all layers of the model output for one example (the forward pass's working set)
MAX_ACTIVATION_VALUES = 2**28
#: largest manifest text accepted (a real one is a few hundred bytes)
MAX_MANIFEST_CHARS = 1024 * 1024



class TeacherFormatError(ValueError):
    """The teacher file or its manifest cannot be used; the message says what to change."""


class UnsafeTeacherError(TeacherFormatError):
    """Loading the file would execute code from it (a pickle that is not weights only)."""


@dataclass
class Teacher:
    """A trained network ready to be tapped.

    Attributes
    ----------
    module : nn.Module
        The network in eval mode; maps a ``(B, *input_shape)`` batch to ``(B, ...)`` outputs.
    format : str
        ``"pt2"``, ``"safetensors"``, ``"state_dict"`` or ``"module"`` (built in memory).
    input_shape : tuple of int
        Shape of one input example, without the batch dimension.
    manifest : dict
        The validated manifest (for ``.pt2`` files: ``{"input_shape": [...]}``).
    parameter_count : int
        Number of scalar parameters.
    program : torch.export.ExportedProgram or None
        The exported program; for registry models it is built on first use by
        :meth:`exported_program`.
    """

    module: nn.Module
    format: str
    input_shape: tuple[int, ...]
    manifest: dict[str, Any]
    parameter_count: int
    program: Any = field(default=None, repr=False)
    _graph: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_module(
        cls, module: nn.Module, input_shape: tuple[int, ...] | list[int], manifest: dict[str, Any] | None = None
    ) -> "Teacher":
        """Wrap an in-memory module (e.g. one just trained) as a teacher, in eval mode."""
        shape = _check_input_shape(input_shape)
        man = dict(manifest or {})
        man.setdefault("input_shape", list(shape))
        return cls(module.eval(), "module", shape, man, count_parameters(module))

    def example_input(self, batch_size: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A deterministic batch of the teacher's input shape, on the teacher's device."""
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((batch_size, *self.input_shape), generator=gen, dtype=dtype)
        return x.to(self.device)

    @property
    def device(self) -> torch.device:
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            return t.device
        return torch.device("cpu")

    def exported_program(self) -> torch.export.ExportedProgram:
        """The teacher as a ``torch.export`` program with a dynamic batch dimension (cached)."""
        if self.program is None:
            from bregman._graph import export_module

            self.program = export_module(self.module, self.example_input())
        return self.program

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _check_input_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not shape:
        raise TeacherFormatError(f"input_shape must be a non-empty list of positive integers, got {shape!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise TeacherFormatError(f"input_shape must be a list of positive integers, got {list(shape)!r}")
    return tuple(int(s) for s in shape)


def max_teacher_parameters() -> int:
    """The parameter limit of manifest models: ``BREGKD_MAX_TEACHER_PARAMETERS`` or 200 M."""
    raw = os.environ.get("BREGKD_MAX_TEACHER_PARAMETERS", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_MAX_PARAMETERS
    except ValueError:
        log.warning("BREGKD_MAX_TEACHER_PARAMETERS=%r is not an integer; using %d", raw, DEFAULT_MAX_PARAMETERS)
        return DEFAULT_MAX_PARAMETERS
    return max(1, value)


def _names(names: list[str], limit: int = 10) -> str:
    shown = [n[:80] for n in names[:limit]]
    return f"{shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _normalize_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(manifest, Mapping):
        raise TeacherFormatError(f"the manifest must be a JSON object, got {type(manifest).__name__}")
    extra = sorted(str(k) for k in set(manifest) - _MANIFEST_KEYS)
    if extra:
        raise TeacherFormatError(f"manifest has unknown key(s) {_names(extra)}; allowed keys: {sorted(_MANIFEST_KEYS)}")
    arch = manifest.get("arch")
    if arch is None:
        raise TeacherFormatError(f"manifest needs 'arch', one of the known architectures: {sorted(ARCHITECTURES)}")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise TeacherFormatError(
            f"manifest 'arch' {str(arch)[:80]!r} is unknown; known architectures: {sorted(ARCHITECTURES)}")
    args = manifest.get("args", {})
    if not isinstance(args, dict):
        raise TeacherFormatError(f"manifest 'args' must be a JSON object, got {type(args).__name__}")
    shape = manifest.get("input_shape")
    if shape is None:
        try:
            shape = default_input_shape(arch, args)
        except (TypeError, ValueError):
            shape = None
        if shape is None:
            raise TeacherFormatError(
                f"manifest needs 'input_shape' (per-example, without the batch dimension) for arch {arch!r}, "
                "e.g. [3, 32, 32]"
            )
    shape = _check_input_shape(shape)
    values = 1
    for s in shape:
        values *= s
    if values > MAX_INPUT_VALUES:
        raise TeacherFormatError(
            f"input_shape {list(shape)[:8]} has {values} values per example; at most {MAX_INPUT_VALUES} are accepted")
    out = dict(manifest)
    out["args"] = dict(args)
    out["input_shape"] = list(shape)
    return out


def _meta_model(manifest: dict[str, Any], max_parameters: int | None) -> tuple[nn.Module, int]:
    """The manifest's model on the meta device (no memory), its parameter count checked against the
    limit and a forward pass of its input shape (also on meta) checked for shape errors and size."""
    limit = max_teacher_parameters() if max_parameters is None else int(max_parameters)
    try:
        model = build_model_from_manifest(manifest, device="meta")
    except ManifestError as exc:
        raise TeacherFormatError(str(exc)) from None
    n_params = count_parameters(model)
    if n_params > limit:
        raise TeacherFormatError(
            f"arch {manifest['arch']!r} with these args has {n_params:,} parameters, more than the limit of "
            f"{limit:,} (BREGKD_MAX_TEACHER_PARAMETERS); use a smaller architecture"
        )
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() // 2 if isinstance(out, torch.Tensor) else 0))
             for m in model.modules() if not list(m.children())]
    shape = tuple(manifest["input_shape"])
    try:
        with torch.no_grad():
            model(torch.empty((2, *shape), device="meta"))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise TeacherFormatError(
            f"arch {manifest['arch']!r} with args {str(manifest['args'])[:200]} does not accept inputs of input_shape "
            f"{list(shape)}: {first}"
        ) from None
    finally:
        for h in hooks:
            h.remove()
    if sum(sizes) > MAX_ACTIVATION_VALUES:
        raise TeacherFormatError(
            f"one input example of shape {list(shape)} makes the layers output {sum(sizes):,} values, more than the "
            f"limit of {MAX_ACTIVATION_VALUES:,}; use smaller inputs or a smaller architecture"
        )
    return model, n_params


def validate_manifest(manifest: Mapping[str, Any], max_parameters: int | None = None) -> dict[str, Any]:
    """Check a manifest and return it normalized (``args`` present, ``input_shape`` filled in).

    Costs no memory: the model is built on the meta device (shapes only) to count its parameters
    and to run its input shape through it.

    Parameters
    ----------
    max_parameters : int or None
        Most parameters the model may have; None reads :func:`max_teacher_parameters`.

    Raises
    ------
    TeacherFormatError
        Unknown keys, unknown architecture (the message lists the known ones), bad arguments,
        missing or malformed ``input_shape``, more parameters than the limit, an input shape the
        model does not accept.
    """
    out = _normalize_manifest(manifest)
    _meta_model(out, max_parameters)
    return out


def _parse_manifest_text(text: str) -> dict[str, Any]:
    if len(text) > MAX_MANIFEST_CHARS:
        raise TeacherFormatError(f"the manifest has {len(text)} characters; at most {MAX_MANIFEST_CHARS} are accepted")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TeacherFormatError(f"the manifest is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except (ValueError, RecursionError) as exc:
        raise TeacherFormatError(f"the manifest is not usable JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise TeacherFormatError("the manifest must be a JSON object")
    return value


def _read_manifest(manifest: Any) -> dict[str, Any] | None:
    """A manifest given as a dict, as JSON text or as the path of a JSON file (caller's own files
    only: text that comes with an upload is parsed by :func:`_parse_manifest_text`, never opened)."""
    if manifest is None or isinstance(manifest, Mapping):
        return None if manifest is None else dict(manifest)
    if isinstance(manifest, str) and not manifest.strip():
        return None
    if isinstance(manifest, str) and manifest.lstrip().startswith("{"):
        return _parse_manifest_text(manifest)
    path = Path(manifest)
    if not path.is_file():
        raise TeacherFormatError(f"manifest file {str(path)!r} does not exist")
    if path.stat().st_size > MAX_MANIFEST_CHARS * 4:
        raise TeacherFormatError(f"the manifest file has {path.stat().st_size} bytes; a manifest is a small JSON object")
    return _parse_manifest_text(path.read_text())


def detect_format(path: str | os.PathLike) -> str:
    """Tell the format of a teacher file from its content (not its name).

    Returns
    -------
    str
        ``"pt2"`` (a ``torch.export.save`` archive), ``"safetensors"``, ``"state_dict"`` (a
        ``torch.save`` zip), ``"torchscript"`` (a ``torch.jit.save`` archive) or ``"pickle"`` (a
        bare pickle stream: ``pickle.dump`` or a legacy, pre-zip ``torch.save``). The last two
        cannot be loaded without running code.

    Raises
    ------
    TeacherFormatError
        The content is none of these; :class:`UnsafeTeacherError` for a zip that breaks the
        archive limits (bomb, link, traversal name).
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherFormatError(f"teacher file {str(path)!r} does not exist")
    try:
        kind = sniff(path).kind
    except UnsafeArchiveError as exc:
        raise UnsafeTeacherError(str(exc)) from None
    if kind in ("pt2", "safetensors", "state_dict", "torchscript", "pickle"):
        return kind
    if kind in ("npz", "zip"):
        raise TeacherFormatError(
            "teacher file is a zip archive but neither a torch.export program (.pt2) nor a torch.save file"
        )
    raise TeacherFormatError(
        "unrecognised teacher file: expected a torch.export program (.pt2), safetensors weights, "
        "or a torch.save state_dict" + (" (the file is empty)" if kind == "empty" else "")
    )


# one weight as the checks see it: (shape, is floating point, dtype name)
_Spec = tuple[tuple[int, ...], bool, str]


def _weight_specs(weights: SafetensorsHeader | Mapping[str, Any]) -> dict[str, _Spec]:
    """Names, shapes and dtypes of the weights, from a vetted safetensors header or a state dict."""
    if isinstance(weights, SafetensorsHeader):
        return {n: (e.shape, e.is_floating_point, e.dtype) for n, e in weights.tensors.items()}
    bad = sorted(str(k) for k, v in weights.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise TeacherFormatError(f"the weights hold non-tensor entries: {_names(bad)}")
    return {str(k): (tuple(v.shape), v.is_floating_point(), str(v.dtype)) for k, v in weights.items()}


def _check_state_dict(model: nn.Module, weights: SafetensorsHeader | Mapping[str, Any]) -> dict[str, _Spec]:
    """Match the weights' names, shapes and dtypes to the model's state dict (``model`` may live on
    the meta device: only shapes are compared), naming missing/extra keys and mismatches."""
    specs = _weight_specs(weights)
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(specs) - optional)
    extra = sorted(set(specs) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing weights {_names(missing)}")
        if extra:
            parts.append(f"unexpected weights {_names(extra)}")
        raise TeacherFormatError(
            "the weights do not match the manifest's architecture: " + "; ".join(parts)
            + f" (the architecture expects {len(expected)} tensors)"
        )
    for key in (k for k in expected if k in specs):  # in the model's order: the first layer first
        shape, is_float, dtype = specs[key]
        want = tuple(expected[key].shape)
        if shape != want:
            raise TeacherFormatError(
                f"weight {key!r} has shape {shape} but the architecture expects {want}"
            )
        if not (is_float or key in optional):
            raise TeacherFormatError(f"weight {key!r} has dtype {dtype}; expected a floating-point tensor")
    return specs


def _weight_items(weights: SafetensorsHeader | Mapping[str, Any]):
    if isinstance(weights, SafetensorsHeader):
        return iter_tensors(weights, framework="pt")
    return iter(weights.items())


def _from_manifest(manifest: dict[str, Any], weights: SafetensorsHeader | Mapping[str, Any], fmt: str,
                   max_parameters: int | None = None) -> Teacher:
    """Build a registry teacher from checked weights, paying for the model only after every cheap check.

    Order: the manifest (keys, arch, input shape); the model on the meta device (parameter count
    against the limit, a meta forward pass of the input shape); the weights' names, shapes and
    dtypes against the meta model's state dict (from the safetensors header: no tensor read yet);
    then memory for the model, filled one weight at a time.
    """
    manifest = _normalize_manifest(manifest)
    model, n_params = _meta_model(manifest, max_parameters)
    specs = _check_state_dict(model, weights)
    model = model.to_empty(device="cpu")
    state = model.state_dict()
    try:
        with torch.no_grad():
            for name, tensor in _weight_items(weights):
                state[name].copy_(tensor)
                del tensor
            for name in set(state) - set(specs):  # only num_batches_tracked may be absent
                state[name].zero_()
    except TeacherFormatError:
        raise
    except Exception as exc:  # safetensors' own reader, an exotic dtype
        raise TeacherFormatError(f"cannot read the weights: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from None
    model.eval()
    shape = tuple(manifest["input_shape"])
    return Teacher(model, fmt, shape, manifest, n_params)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    # the zip is vetted and rebuilt (bounded reads, allowlisted members) before torch.load sees it
    try:
        obj = load_torch_save_safely(path)
    except UnsafeArchiveError as exc:
        raise UnsafeTeacherError(str(exc) + ". " + _RESAVE_HELP) from None
    except Exception as exc:  # UnpicklingError, RuntimeError from a foreign pickle, ...
        raise UnsafeTeacherError(
            "this torch.save file cannot be loaded with weights_only=True: it holds more than tensors "
            "(e.g. a whole pickled model or objects that import code), and it was not unpickled. "
            + _RESAVE_HELP
        ) from exc
    # a checkpoint dict such as {"state_dict": {...}, "epoch": 3}
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise TeacherFormatError(
            f"the torch.save file holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors). "
            + _RESAVE_HELP
        )
    return dict(obj)


def _pt2_input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    user_inputs = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if len(user_inputs) != 1:
        raise TeacherFormatError(
            f"the exported program takes {len(user_inputs)} inputs; a teacher must take exactly one input tensor"
        )
    val = placeholders[user_inputs[0]].meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        raise TeacherFormatError("the exported program's input must be a batch tensor of shape (B, ...)")
    if isinstance(val.shape[0], int):
        raise TeacherFormatError(
            f"the exported program was exported with a fixed batch size of {val.shape[0]}; re-export it with a "
            "dynamic batch dimension:\n" + PT2_RECIPE
        )
    rest = []
    for s in val.shape[1:]:
        if not isinstance(s, int):
            raise TeacherFormatError("only the batch dimension of the program's input may be dynamic")
        rest.append(s)
    outputs = list(program.graph_signature.user_outputs)
    if len(outputs) != 1:
        raise TeacherFormatError(f"the exported program returns {len(outputs)} outputs; a teacher must return one tensor")
    return tuple(rest)


def _load_pt2(path: Path) -> Teacher:
    try:
        program = load_pt2_safely(path)
    except UnsafeArchiveError as exc:
        raise UnsafeTeacherError(str(exc)) from exc
    except Exception as exc:  # torch's deserializer raises many kinds
        raise TeacherFormatError(f"cannot read the torch.export program: {str(exc)[:500]}") from exc
    shape = _pt2_input_shape(program)
    module = program.module()
    return Teacher(module, "pt2", shape, {"input_shape": list(shape)}, count_parameters(module), program=program)


def load_teacher(path: str | os.PathLike, manifest: Any = None, max_parameters: int | None = None) -> Teacher:
    """Load a teacher from a ``.pt2`` program, safetensors weights or a ``torch.save`` state_dict.

    Parameters
    ----------
    path : str or PathLike
        The teacher file; its format is detected from its content.
    manifest : dict, JSON text, path to a JSON file, or None
        Required for weights (safetensors / state_dict), unless a safetensors file carries it in
        its metadata under ``"manifest"``. Ignored for ``.pt2`` programs except ``name``.
    max_parameters : int or None
        Most parameters a manifest's model may have (None: :func:`max_teacher_parameters`);
        checked before any memory is spent on the model.

    Returns
    -------
    Teacher

    Raises
    ------
    UnsafeTeacherError
        The file would run code when loaded (whole pickled model, pickle importing code, TorchScript,
        a crafted ``.pt2``); nothing of it was executed.
    TeacherFormatError
        Unknown format, bad manifest, weights that do not fit the architecture.
    """
    path = Path(path)
    fmt = detect_format(path)
    man = _read_manifest(manifest)
    if fmt in ("pickle", "torchscript"):
        kind = "a Python pickle (pickle.dump or a legacy torch.save)" if fmt == "pickle" else "a TorchScript archive"
        raise UnsafeTeacherError(f"the teacher file is {kind}, which can run code when loaded; it was not loaded. " + _RESAVE_HELP)
    if fmt == "pt2":
        teacher = _load_pt2(path)
        if man and "name" in man:
            teacher.manifest["name"] = man["name"]
        return teacher
    if fmt == "safetensors":
        try:
            weights = read_header(path)
        except SafetensorsHeaderError as exc:
            raise TeacherFormatError(f"the safetensors file cannot be used: {exc}") from None
        if man is None and "manifest" in weights.metadata:
            man = _parse_manifest_text(weights.metadata["manifest"])  # text, never a path
    else:
        weights = _load_state_dict_file(path)
    if man is None:
        raise TeacherFormatError(
            f"a {fmt} teacher needs a manifest naming its architecture, e.g. "
            '{"arch": "mlp", "args": {"in_features": 64, "hidden": [32], "num_classes": 10}, "input_shape": [64]}; '
            f"known architectures: {sorted(ARCHITECTURES)}"
        )
    return _from_manifest(man, weights, fmt, max_parameters)


def save_pt2(teacher: Teacher | nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> Path:
    """Export a teacher (or module with ``input_shape``) to ``path`` as a dynamic-batch ``.pt2``."""
    if not isinstance(teacher, Teacher):
        if input_shape is None:
            raise TeacherFormatError("save_pt2 of a module needs its per-example input_shape")
        teacher = Teacher.from_module(teacher, input_shape)
    path = Path(path)
    torch.export.save(teacher.exported_program(), str(path))
    return path

