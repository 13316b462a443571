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


def validate_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Check a manifest and return it normalized (``args`` present, ``input_shape`` filled in).

    Raises
    ------
    TeacherFormatError
        Unknown keys, unknown architecture (the message lists the known ones), bad arguments,
        missing or malformed ``input_shape``.
    """
    if not isinstance(manifest, Mapping):
        raise TeacherFormatError(f"the manifest must be a JSON object, got {type(manifest).__name__}")
    extra = sorted(set(manifest) - _MANIFEST_KEYS)
    if extra:
        raise TeacherFormatError(f"manifest has unknown key(s) {extra}; allowed keys: {sorted(_MANIFEST_KEYS)}")
    arch = manifest.get("arch")
    if arch is None:
        raise TeacherFormatError(f"manifest needs 'arch', one of the known architectures: {sorted(ARCHITECTURES)}")
    if arch not in ARCHITECTURES:
        raise TeacherFormatError(f"manifest 'arch' {arch!r} is unknown; known architectures: {sorted(ARCHITECTURES)}")
    args = manifest.get("args", {})
    if not isinstance(args, dict):
        raise TeacherFormatError(f"manifest 'args' must be a JSON object, got {type(args).__name__}")
    shape = manifest.get("input_shape")
    if shape is None:
        shape = default_input_shape(arch, args)
        if shape is None:
            raise TeacherFormatError(
                f"manifest needs 'input_shape' (per-example, without the batch dimension) for arch {arch!r}, "
                "e.g. [3, 32, 32]"
            )
    out = dict(manifest)
    out["args"] = dict(args)
    out["input_shape"] = list(_check_input_shape(shape))
    return out


def _read_manifest(manifest: Any) -> dict[str, Any] | None:
    if manifest is None or isinstance(manifest, Mapping):
        return None if manifest is None else dict(manifest)
    if isinstance(manifest, str) and not manifest.strip():
        return None
    if isinstance(manifest, str) and manifest.lstrip().startswith("{"):
        text = manifest
    else:
        path = Path(manifest)
        if not path.is_file():
            raise TeacherFormatError(f"manifest file {str(path)!r} does not exist")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TeacherFormatError(f"the manifest is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TeacherFormatError("the manifest must be a JSON object")
    return value


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


def _check_state_dict(model: nn.Module, weights: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Match weights to the model's state dict, naming missing/extra keys and shape mismatches."""
    bad = sorted(k for k, v in weights.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise TeacherFormatError(f"the weights hold non-tensor entries: {bad[:10]}")
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(weights) - optional)
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing weights {missing}")
        if extra:
            parts.append(f"unexpected weights {extra}")
        raise TeacherFormatError(
            "the weights do not match the manifest's architecture: " + "; ".join(parts)
            + f" (the architecture expects {len(expected)} tensors)"
        )
    for key, value in weights.items():
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            raise TeacherFormatError(
                f"weight {key!r} has shape {tuple(value.shape)} but the architecture expects {want}"
            )
        if not (value.is_floating_point() or key in optional):
            raise TeacherFormatError(f"weight {key!r} has dtype {value.dtype}; expected a floating-point tensor")
    return dict(weights)


def _from_manifest(manifest: dict[str, Any], weights: Mapping[str, Any], fmt: str) -> Teacher:
    manifest = validate_manifest(manifest)
    try:
        model = build_model_from_manifest(manifest)
    except ManifestError as exc:
        raise TeacherFormatError(str(exc)) from exc
    model.load_state_dict(_check_state_dict(model, weights), strict=False)
    model.eval()
    shape = tuple(manifest["input_shape"])
    try:
        with torch.no_grad():
            model(torch.zeros((2, *shape)))
    except RuntimeError as exc:
        raise TeacherFormatError(
            f"arch {manifest['arch']!r} with args {manifest['args']} does not accept inputs of input_shape "
            f"{list(shape)}: {exc}"
        ) from exc
    return Teacher(model, fmt, shape, manifest, count_parameters(model))


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


def load_teacher(path: str | os.PathLike, manifest: Any = None) -> Teacher:
    """Load a teacher from a ``.pt2`` program, safetensors weights or a ``torch.save`` state_dict.

    Parameters
    ----------
    path : str or PathLike
        The teacher file; its format is detected from its content.
    manifest : dict, JSON text, path to a JSON file, or None
        Required for weights (safetensors / state_dict), unless a safetensors file carries it in
        its metadata under ``"manifest"``. Ignored for ``.pt2`` programs except ``name``.

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
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
            weights = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise TeacherFormatError(f"cannot read the safetensors file: {exc}") from exc
        if man is None and "manifest" in metadata:
            man = _read_manifest(metadata["manifest"])
    else:
        weights = _load_state_dict_file(path)
    if man is None:
        raise TeacherFormatError(
            f"a {fmt} teacher needs a manifest naming its architecture, e.g. "
            '{"arch": "mlp", "args": {"in_features": 64, "hidden": [32], "num_classes": 10}, "input_shape": [64]}; '
            f"known architectures: {sorted(ARCHITECTURES)}"
        )
    return _from_manifest(man, weights, fmt)


def save_pt2(teacher: Teacher | nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> Path:
    """Export a teacher (or module with ``input_shape``) to ``path`` as a dynamic-batch ``.pt2``."""
    if not isinstance(teacher, Teacher):
        if input_shape is None:
            raise TeacherFormatError("save_pt2 of a module needs its per-example input_shape")
        teacher = Teacher.from_module(teacher, input_shape)
    path = Path(path)
    torch.export.save(teacher.exported_program(), str(path))
    return path

