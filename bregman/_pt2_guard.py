"""Read ``.pt2`` programs and ``torch.save`` archives from untrusted files: torch sees only vetted bytes.

``torch.export.load`` (torch 2.13) is not safe on untrusted files. Reading its source
(``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``,
``torch/export/_unlift.py``) shows these ways a crafted archive runs code:

1. EVERY member under ``models/`` is loaded as a program (name = member name minus ``models/``
   and the last 5 characters), each with its own weights config, constants, legacy weight files
   and sample inputs, so checking ``models/model.json`` alone checks nothing;
2. weights or tensor constants marked ``use_pickle`` are read with ``torch.load(weights_only=False)``;
3. ``opaque_obj_*`` constants are read with ``pickle.loads``, ``custom_obj_*`` with the TorchScript
   unpickler;
4. sample inputs (and legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` files) go
   through ``deserialize_torch_artifact``, which falls back to ``torch.load(weights_only=False)``
   when the weights-only load fails;
5. symbolic shape expressions (``expr_str``) are parsed with ``sympy.sympify``, i.e. ``eval``;
6. ``guards_code`` strings are ``exec``-uted when ``ExportedProgram.module()`` builds its guards;
7. node targets are resolved as attribute paths under ``torch`` / ``_operator`` / ``math``
   (``torch.os.system`` resolves) and run when the program runs; aten itself has operators that
   read or write files (``aten::from_file``, ``aten::save``) or return uninitialized memory;
8. ``data/aotinductor/`` holds shared libraries that ``load_pt2`` loads; ``extra/`` files are read;
9. a weight record of 0 bytes is materialized as ``torch.zeros(sizes)`` (an allocation bomb);
10. ``torch.export.load`` falls back to a legacy reader (a second zip parser) on any error.

:func:`read_pt2` therefore accepts exactly the members that ``torch.export.save`` writes for one
program named ``model`` (:data:`PT2_MEMBERS`, plus the ``weight_<n>`` / ``tensor_<n>`` records
its configs reference), each read with :class:`bregman._safe_zip.SafeZip` under size limits, and
checks every JSON document, config entry and operator. :func:`load_pt2_safely` then builds a
fresh in-memory archive from those checked bytes only (the program JSON re-serialized, the sample
inputs reloaded weights-only and re-saved by us) and hands that to ``load_pt2``, never the user's
file and never ``torch.export.load``.

:func:`load_torch_save_safely` does the same for ``torch.save`` zip archives (state dicts, the
sample inputs inside a ``.pt2``): allowlisted member names, bounded reads, a rebuilt archive,
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from typing import Any, Iterator

import torch

from bregman._safe_zip import SafeZip, UnsafeArchiveError, ZipLimits

__all__ = [
    "UnsafeArchiveError",
    "ALLOWED_OPERATORS",
    "PT2_MEMBERS",
    "check_pt2_archive",
    "read_pt2",
    "load_pt2_safely",
    "load_torch_save_safely",
]

PROGRAM = "model"  # the one program name torch.export.save writes

# member -> largest accepted size in bytes (None: bounded by the per-file limits only)
PT2_MEMBERS: dict[str, int | None] = {
    "archive_format": 16,
    "archive_version": 16,
    ".data/version": 16,
    "byteorder": 16,
    ".data/serialization_id": 128,
    f"models/{PROGRAM}.json": 256 << 20,
    f"data/sample_inputs/{PROGRAM}.pt": 256 << 20,
    f"data/weights/{PROGRAM}_weights_config.json": 64 << 20,
    f"data/constants/{PROGRAM}_constants_config.json": 64 << 20,
}
_REQUIRED = ("archive_format", "archive_version", f"models/{PROGRAM}.json", f"data/sample_inputs/{PROGRAM}.pt",
             f"data/weights/{PROGRAM}_weights_config.json", f"data/constants/{PROGRAM}_constants_config.json")
_RECORD = {"weights": re.compile(r"^weight_(0|[1-9][0-9]{0,8})$"), "constants": re.compile(r"^tensor_(0|[1-9][0-9]{0,8})$")}

# torch.save zip members (relative to the archive's root folder)
_TORCH_SAVE_MEMBERS = {"data.pkl": None, "byteorder": 16, "version": 16, ".data/version": 16,
                       ".format_version": 16, ".storage_alignment": 16, ".data/serialization_id": 128}
_TORCH_SAVE_DATA = re.compile(r"^data/(0|[1-9][0-9]{0,8})$")

# ------------------------------------------------------------------------------ operators
# The aten operators a served network may call (``aten::<name>``, any overload except out=
# variants). Collected by exporting every registry model of bregman.models (mlp with each
# activation and output activation, cnn with and without batch norm, every resnet / wrn) and a
# user network with conv1d/2d, linear, batch/layer/group/instance norm, GELU, SiLU, hardswish,
# ELU, SELU, mish, softplus, softmax, log_softmax, max/avg/adaptive pools, interpolate
# (nearest, bilinear), pad, dropout, attention-style matmuls, cat/stack/split/chunk, views and
# reductions - both as torch.export.export writes them and after run_decompositions() - then
# adding the obvious arithmetic, comparison and shape neighbours of what was found.
# Deliberately absent: anything touching files, the network or the process (from_file, save,
# _pin_memory and pinned/shared-memory ops, storage and set_/resize_ ops), ops returning
# uninitialized memory (empty*, new_empty*: they would leak other tenants' data from the heap),
# raw pointer / strided views over storage (as_strided, _local_scalar_dense), fused optimizer
# kernels (_fused_*: they update tensors in place and no inference graph needs them), random
# and printing ops, every prims:: and higher-order operator (cond, map, while_loop, wrap: they
# carry subgraphs and callables), and out= overloads (they write into arbitrary tensors).
ALLOWED_OPERATORS: frozenset[str] = frozenset({
    # linear algebra and convolution
    "linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "einsum", "t",
    "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
    # normalization
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
    "_native_batch_norm_legit_functional",
    "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "rms_norm",
    "_fused_rms_norm",  # the one fused kernel admitted: a pure function that rms_norm lowers to
    # activations
    "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid", "hardtanh",
    "elu", "selu", "celu", "mish", "softplus", "prelu", "_prelu_kernel", "glu", "log_sigmoid", "log_sigmoid_forward",
    "softmax", "_softmax", "log_softmax", "_log_softmax", "threshold",
    # pooling and resampling
    "max_pool1d", "max_pool2d", "max_pool2d_with_indices", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "_upsample_nearest_exact2d",
    "pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "pixel_shuffle",
    # dropout (identity in eval mode)
    "dropout", "native_dropout", "feature_dropout", "alpha_dropout",
    # elementwise arithmetic and maths
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "pow", "sqrt", "rsqrt", "exp", "log", "log1p", "log2", "expm1",
    "reciprocal", "sign", "floor", "ceil", "round", "trunc", "remainder", "fmod", "clamp", "clamp_min", "clamp_max",
    "minimum", "maximum", "where", "sin", "cos", "erf", "square", "lerp", "addcmul", "addcdiv", "floor_divide",
    "logical_not", "logical_and", "logical_or", "bitwise_not", "masked_fill", "nan_to_num",
    "eq", "ne", "lt", "le", "gt", "ge", "isnan",
    # reductions
    "sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "var", "std", "var_mean", "prod",
    "logsumexp", "norm", "linalg_vector_norm", "cumsum", "any", "all", "topk",
    # shapes, views and copies
    "view", "_unsafe_view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze",
    "expand", "expand_as", "repeat", "contiguous", "clone", "alias", "detach", "slice", "select", "narrow",
    "index_select", "gather", "index", "cat", "stack", "split", "split_with_sizes", "chunk", "unbind", "flip",
    "roll", "tile", "movedim", "view_as", "reshape_as", "unfold", "im2col", "col2im",
    # dtypes and constants (filled, never uninitialized)
    "to", "_to_copy", "type_as", "zeros_like", "ones_like", "full_like", "zeros", "ones", "full", "arange",
    "scalar_tensor", "lift_fresh_copy", "detach_", "one_hot",  # detach_: export emits it on torch.tensor([...]) constants
    # symbolic sizes and export's own checks
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "sym_constrain_range_for_size",
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async",
})

_OPERATOR_NAMES = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift",
}
_TORCH_SYM = {"sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_sum"}
_MATH = {"trunc", "ceil", "floor", "sqrt"}

# ------------------------------------------------------------------------ shape expressions
# names sympy may see in a shape expression: torch's sympy functions, sympy's own, assumptions,
# and symbols such as s0 / u3 (also the exponent part of 1e10)
_SYMPY_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    "Max", "Min", "Abs", "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "oo", "zoo", "nan", "True", "False",
    "positive", "negative", "integer", "nonnegative", "nonpositive", "real", "finite", "zero",
}
_EXPR_CHARS = re.compile(r"^[A-Za-z0-9_ +\-*/%(),<>=!'.]*$")
_SYMBOL = re.compile(r"^[a-z]{1,4}\d+$")
_QUOTED = re.compile(r"'[A-Za-z0-9_]*'")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BAD_DOT = re.compile(r"(?<![0-9])\.|\.(?![0-9])")
_MAX_EXPR = 4096

# a guard such as  L['x'].size()[0] >= 2
_GUARD = re.compile(
    r"^L\['[A-Za-z0-9_]+'\](?:\.(?:size|stride)\(\)\[\d+\]|\[\d+\])* *(?:==|!=|>=|<=|<|>) *-?\d+$"
)

_DTYPES = {1, 2, 3, 4, 5, 6, 7, 8, 12, 13}  # schema.ScalarType: u8 i8 i16 i32 i64 f16 f32 f64 bool bf16
_STRIDED = 7  # schema.Layout.Strided
_META_KEYS = {"path_name", "is_param", "use_pickle", "tensor_meta"}
_TENSOR_META_KEYS = {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"}


def _refuse(what: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refused .pt2 file: {what}. torch.export.load would run code, read files or exhaust memory with it. "
        "Re-export the model with torch.export.export and save it with torch.export.save (one program, plain "
        "tensors only), or upload safetensors weights with a manifest."
    )


def _check_expr(expr: str) -> None:
    if len(expr) > _MAX_EXPR or not _EXPR_CHARS.match(expr) or "__" in expr:
        raise _refuse(f"a symbolic shape expression contains disallowed characters: {expr[:80]!r}")
    bare = _QUOTED.sub("''", expr)
    if _BAD_DOT.search(bare):
        raise _refuse(f"a symbolic shape expression uses attribute access: {expr[:80]!r}")
    for name in _IDENT.findall(bare):
        if name not in _SYMPY_NAMES and not _SYMBOL.match(name):
            raise _refuse(f"a symbolic shape expression names {name!r}, which is not a shape function")


def _check_target(target: Any) -> None:
    """Require a node target to resolve, as torch's deserializer resolves it, to an allowed operator."""
    if not isinstance(target, str):
        raise _refuse(f"a graph node has a non-string target {str(target)[:80]!r}")
    parts = target.split(".")
    if parts[0] == "_operator" and len(parts) == 2 and parts[1] in _OPERATOR_NAMES:
        return
    if parts[0] == "math" and len(parts) == 2 and parts[1] in _MATH:
        return
    if parts[0] == "torch" and len(parts) == 2 and parts[1] in _TORCH_SYM:
        return
    if len(parts) == 5 and parts[:3] == ["torch", "ops", "aten"]:
        name, overload = parts[3], parts[4]
        if name not in ALLOWED_OPERATORS:
            raise _refuse(f"the graph calls the operator aten::{name} ({target!r}), which is not on the allowlist "
                          "of operators a served network needs")
        if overload == "out" or overload.endswith("_out"):
            raise _refuse(f"the graph calls {target!r}, an out= overload (it writes into a given tensor)")
        packet = getattr(torch.ops.aten, name, None)
        op = getattr(packet, overload, None) if packet is not None and overload in packet.overloads() else None
        if isinstance(op, torch._ops.OpOverload) and op._schema.name == f"aten::{name}":
            return
        raise _refuse(f"the graph calls {target!r}, which is not a registered aten operator overload")
    raise _refuse(f"the graph calls {target[:120]!r}, which is not an allowed PyTorch operator")


def _walk(value: Any) -> Iterator[tuple[Any, Any]]:
    """Yield (key, value) for every value of a JSON tree (key None for list items and the root)."""
    stack: list[tuple[Any, Any]] = [(None, value)]
    while stack:
        key, item = stack.pop()
        yield key, item
        if isinstance(item, dict):
            stack.extend(item.items())
        elif isinstance(item, list):
            stack.extend((None, v) for v in item)


def _parse_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UnsafeArchiveError(f"refused .pt2 file: {name} is not valid JSON ({str(exc)[:120]})") from None


def _schema_mismatch(cls: Any, data: Any, depth: int = 0) -> str | None:
    """Where ``data`` breaks torch's export schema (the dataclass ``cls``), or None.

    torch's own ``_dict_to_dataclass`` checks no types and skips unknown keys, so a crafted
    program could carry an int where a name belongs (and silently drop an argument); this walks
    the same type hints strictly: exact keys, exact JSON types, valid enum values.
    """
    import dataclasses
    import enum
    import types
    import typing

    from torch._export.serde import schema
    from torch._export.serde.union import _Union

    if depth > 200:
        return "nests too deeply"
    if isinstance(cls, str):
        cls = getattr(schema, cls)
    if isinstance(cls, typing.ForwardRef):
        cls = getattr(schema, cls.__forward_arg__)
    origin = typing.get_origin(cls)
    if origin is typing.Annotated:
        return _schema_mismatch(typing.get_args(cls)[0], data, depth + 1)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if data is None and len(args) < len(typing.get_args(cls)):
            return None
        return _schema_mismatch(args[0], data, depth + 1) if len(args) == 1 else "is an unexpected union"
    if origin is list:
        if not isinstance(data, list):
            return f"should be a list, not {type(data).__name__}"
        (item,) = typing.get_args(cls)
        for i, v in enumerate(data):
            if (why := _schema_mismatch(item, v, depth + 1)) is not None:
                return f"[{i}] {why}"
        return None
    if origin is dict:
        if not isinstance(data, dict):
            return f"should be an object, not {type(data).__name__}"
        _, value = typing.get_args(cls)
        for k, v in data.items():
            if (why := _schema_mismatch(value, v, depth + 1)) is not None:
                return f"[{str(k)[:40]!r}] {why}"
        return None
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            return f"should be a {cls.__name__} object, not {type(data).__name__}"
        hints = typing.get_type_hints(cls, globalns=vars(schema), include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if issubclass(cls, _Union):
            if len(data) != 1 or next(iter(data)) not in fields:
                return f"should be one of {sorted(fields)[:8]}"
            key = next(iter(data))
            why = _schema_mismatch(hints[key], data[key], depth + 1)
            return None if why is None else f".{key} {why}"
        unknown = sorted(set(data) - set(fields))
        if unknown:
            return f"has unknown fields {unknown[:5]} for {cls.__name__}"
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    return f"lacks the field {name!r} of {cls.__name__}"
                continue
            if (why := _schema_mismatch(hints[name], data[name], depth + 1)) is not None:
                return f".{name} {why}"
        return None
    if isinstance(cls, type) and issubclass(cls, enum.IntEnum):
        ok = type(data) is int and data in {m.value for m in cls}
        return None if ok else f"is not a valid {cls.__name__}"
    if cls is bool:
        return None if type(data) is bool else f"should be a boolean, not {type(data).__name__}"
    if cls is int:
        return None if type(data) is int else f"should be an integer, not {type(data).__name__}"
    if cls is float:
        ok = type(data) in (int, float) or data in ("Infinity", "-Infinity", "NaN")
        return None if ok else f"should be a number, not {type(data).__name__}"
    if cls is str:
        return None if type(data) is str else f"should be a string, not {type(data).__name__}"
    return f"has a type the reader does not know ({cls})"


def _check_program(doc: Any) -> None:
    """The program JSON: only allowed operators, plain shape expressions and guards, no objects."""
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise UnsafeArchiveError("refused .pt2 file: models/model.json is not an exported program")
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list):
        raise _refuse("its guards_code is not a list")
    for guard in guards:
        if not isinstance(guard, str) or not _GUARD.match(guard):
            raise _refuse(f"it carries guard code that is not a plain shape check: {str(guard)[:80]!r}")
    for name in (doc.get("range_constraints") or {}):
        _check_expr(str(name))
    for key, value in _walk(doc):
        if key == "expr_str":
            if not isinstance(value, str):
                raise _refuse("a symbolic shape expression is not a string")
            _check_expr(value)
        elif key in ("target", "as_operator"):
            _check_target(value)
        elif key in ("as_custom_obj", "custom_obj") or key == "custom_obj_values" and value:
            raise _refuse("its graph uses a custom (TorchScript / opaque) object")
        elif key == "as_graph":
            raise _refuse("its graph calls a higher-order operator with a subgraph (cond, map, wrap...)")
        elif key == "use_pickle" and value:
            raise _refuse("its program marks a payload use_pickle")
    from torch._export.serde import schema

    why = _schema_mismatch(schema.ExportedProgram, doc)
    if why is not None:
        raise UnsafeArchiveError(f"refused .pt2 file: its program does not follow torch's export schema: "
                                 f"the program{why[:300]}")


def _as_int(value: Any, what: str) -> int:
    if not (isinstance(value, dict) and set(value) == {"as_int"} and type(value["as_int"]) is int and value["as_int"] >= 0):
        raise _refuse(f"{what} is not a non-negative integer ({str(value)[:60]})")
    return value["as_int"]


def _check_payload_config(doc: Any, base: str, records: dict[str, int]) -> set[str]:
    """Check a weights / constants config; return the record names it references."""
    if not isinstance(doc, dict) or set(doc) != {"config"} or not isinstance(doc["config"], dict):
        raise _refuse(f"its {base} config is not {{'config': {{...}}}}")
    used: set[str] = set()
    for fqn, meta in doc["config"].items():
        where = f"its {base} entry {str(fqn)[:80]!r}"
        if not isinstance(meta, dict) or not set(meta) <= _META_KEYS:
            raise _refuse(f"{where} has unknown fields")
        if meta.get("use_pickle") is not False:
            raise _refuse(f"{where} is stored as a pickle (use_pickle), which torch reads with weights_only=False")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not _RECORD[base].match(path_name):
            raise _refuse(f"{where} points at {str(path_name)[:80]!r}, which is not a plain tensor record "
                          "(custom or opaque objects are unpickled)")
        if path_name not in records:
            raise UnsafeArchiveError(f"refused .pt2 file: {where} points at a missing record {path_name!r}")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict) or set(tm) != _TENSOR_META_KEYS:
            raise _refuse(f"{where} has no plain tensor metadata")
        if type(tm["dtype"]) is not int or tm["dtype"] not in _DTYPES or type(tm["layout"]) is not int or tm["layout"] != _STRIDED:
            raise _refuse(f"{where} has dtype {tm['dtype']!r} / layout {tm['layout']!r}; plain strided tensors only")
        if type(meta.get("is_param")) is not bool or type(tm["requires_grad"]) is not bool:
            raise _refuse(f"{where} has malformed flags")
        device = tm["device"]
        if not (isinstance(device, dict) and device.get("type") in ("cpu", "cuda") and set(device) <= {"type", "index"}):
            raise _refuse(f"{where} lives on device {str(device)[:60]}; cpu or cuda only")
        sizes, strides = tm["sizes"], tm["strides"]
        if not isinstance(sizes, list) or not isinstance(strides, list) or len(sizes) != len(strides) or len(sizes) > 32:
            raise _refuse(f"{where} has malformed sizes / strides")
        sizes = [_as_int(s, f"{where}: a size") for s in sizes]
        strides = [_as_int(s, f"{where}: a stride") for s in strides]
        offset = _as_int(tm["storage_offset"], f"{where}: the storage offset")
        element = torch._utils._element_size(torch._export.serde.serialize.deserialize_scalar_type(
            torch._export.serde.schema.ScalarType(tm["dtype"])))
        nbytes = records[path_name]
        if nbytes % element:
            raise UnsafeArchiveError(f"refused .pt2 file: record {path_name!r} of {nbytes} bytes does not hold whole elements")
        numel = math.prod(sizes)
        span = 0 if numel == 0 else offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
        # an empty record is materialized as torch.zeros(sizes): it may only stand for an empty tensor
        if span > nbytes // element or (nbytes == 0 and numel != 0):
            raise _refuse(f"{where} of shape {sizes} reaches past its record {path_name!r} of {nbytes} bytes")
        used.add(path_name)
    return used


def _plain_tensors(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if isinstance(value, (tuple, list)):
        return all(_plain_tensors(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_tensors(v, depth + 1) for k, v in value.items())
    return (type(value) is torch.Tensor and value.layout == torch.strided) or value is None or type(value) in (int, float, bool)


def _rebuild_zip(members: dict[str, bytes], root: str = "archive") -> bytes:
    """A fresh archive of already-checked bytes, written by us (stored, one root folder)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)
    return out.getvalue()


def _root(names: list[str], kind: str) -> str:
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise UnsafeArchiveError(f"refused {kind}: its members are not all in one top-level folder, as torch writes them")
    return roots.pop() + "/"


def load_torch_save_safely(source: str | os.PathLike | bytes | SafeZip, limits: ZipLimits | None = None,
                           *, kind: str = "torch.save file") -> Any:
    """``torch.load(weights_only=True)`` of a ``torch.save`` zip archive, on a rebuilt copy of it.

    Only the members torch.save writes (``data.pkl``, ``data/<n>``, version and byte-order
    records) are accepted, each read under ``limits``; the rebuilt archive holds only those.

    Raises
    ------
    UnsafeArchiveError
        A zip check fails or a member is not one torch.save writes.
    pickle.UnpicklingError, RuntimeError
        ``torch.load(weights_only=True)`` refuses the pickle (it imports code, e.g. a whole model).
    """
    own = not isinstance(source, SafeZip)
    zf = SafeZip(source, limits, kind=kind) if own else source
    try:
        prefix = _root(zf.names, kind)
        members: dict[str, bytes] = {}
        for name in zf.names:
            rel = name[len(prefix):]
            if rel in _TORCH_SAVE_MEMBERS:
                members[rel] = zf.read(name, _TORCH_SAVE_MEMBERS[rel])
            elif _TORCH_SAVE_DATA.match(rel):
                members[rel] = zf.read(name)
            else:
                raise UnsafeArchiveError(f"refused {kind}: member {rel!r} is not one that torch.save writes")
        if "data.pkl" not in members:
            raise UnsafeArchiveError(f"refused {kind}: it has no data.pkl, so it is not a torch.save archive")
        if members.get("byteorder", b"little") != b"little":
            raise UnsafeArchiveError(f"refused {kind}: only little-endian torch.save files are accepted")
    finally:
        if own:
            zf.close()
    return torch.load(io.BytesIO(_rebuild_zip(members)), map_location="cpu", weights_only=True)


def read_pt2(source: str | os.PathLike | bytes, max_bytes: int | None = None) -> dict[str, bytes]:
    """Check a ``.pt2`` archive and return the members to hand torch, keyed by name without root folder.

    Parameters
    ----------
    source : path or bytes
        The archive.
    max_bytes : int, optional
        The upload limit the size limits derive from (see :func:`bregman._safe_zip.upload_limit`).

    Returns
    -------
    dict of str to bytes
        Exactly the allowlisted members, with the program and config JSON re-serialized by us and
        the sample inputs loaded weights-only and re-saved by us.

    Raises
    ------
    UnsafeArchiveError
        Any member outside the allowlist, a pickle anywhere, an operator outside
        :data:`ALLOWED_OPERATORS`, code in expressions or guards, a size limit passed; the message
        says which.
    """
    limits = ZipLimits.for_upload(max_bytes)
    with SafeZip(source, limits, kind=".pt2 file") as zf:
        prefix = _root(zf.names, ".pt2 file")
        rel_names = {n[len(prefix):]: n for n in zf.names}
        records: dict[str, dict[str, int]] = {"weights": {}, "constants": {}}
        for rel in rel_names:
            if rel in PT2_MEMBERS:
                continue
            base, _, leaf = rel.rpartition("/")
            if base == "data/weights" and _RECORD["weights"].match(leaf):
                records["weights"][leaf] = zf.size(rel_names[rel])
            elif base == "data/constants" and _RECORD["constants"].match(leaf):
                records["constants"][leaf] = zf.size(rel_names[rel])
            elif rel.startswith("models/"):
                raise _refuse(f"it holds a second program member {rel!r}; torch.export.load loads every member under "
                              "models/ as a program, with its own unvetted weights, constants and sample inputs")
            elif rel in (f"data/weights/{PROGRAM}.pt", f"data/constants/{PROGRAM}.pt") or rel.endswith(".pt"):
                raise _refuse(f"it holds a legacy pickled payload {rel!r}, which torch reads with weights_only=False")
            elif leaf.startswith(("custom_obj_", "opaque_obj_")):
                raise _refuse(f"it holds a serialized Python object {rel!r}, which torch unpickles")
            elif rel.startswith(("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")):
                raise _refuse(f"it contains compiled code ({rel})")
            elif rel.startswith("extra/"):
                raise _refuse(f"it holds an extra file {rel!r}; only what torch.export.save writes for one program is accepted")
            else:
                raise _refuse(f"member {rel!r} is not one that torch.export.save writes for one program named 'model'")
        missing = [m for m in _REQUIRED if m not in rel_names]
        if missing:
            raise UnsafeArchiveError(
                f"refused .pt2 file: it lacks {missing}; save the program with torch.export.save from torch 2.13"
            )

        def small(rel: str) -> bytes:
            return zf.read(rel_names[rel], PT2_MEMBERS[rel]).strip()

        if small("archive_format") != b"pt2" or small("archive_version") != b"0":
            raise UnsafeArchiveError(
                "refused .pt2 file: it is not a PT2 archive of the current version (archive_format 'pt2', "
                "archive_version '0'); older torch.export.save formats are read through full unpickling. "
                "Re-save it with torch.export.save from torch 2.13"
            )
        if "byteorder" in rel_names and small("byteorder") != b"little":
            raise UnsafeArchiveError("refused .pt2 file: only little-endian archives are accepted")

        program = _parse_json(zf.read(rel_names[f"models/{PROGRAM}.json"], PT2_MEMBERS[f"models/{PROGRAM}.json"]),
                              f"models/{PROGRAM}.json")
        _check_program(program)
        out: dict[str, bytes] = {"archive_format": b"pt2", "archive_version": b"0", ".data/version": b"6\n",
                                 "byteorder": b"little"}
        for base in ("weights", "constants"):
            rel = f"data/{base}/{PROGRAM}_{base}_config.json"
            config = _parse_json(zf.read(rel_names[rel], PT2_MEMBERS[rel]), rel)
            used = _check_payload_config(config, base, records[base])
            unused = sorted(set(records[base]) - used)
            if unused:
                raise _refuse(f"its {base} records {unused[:5]} are referenced by no config entry")
            for leaf in sorted(used):
                out[f"data/{base}/{leaf}"] = zf.read(rel_names[f"data/{base}/{leaf}"])
            out[rel] = json.dumps(config).encode()
        out[f"models/{PROGRAM}.json"] = json.dumps(program).encode()

        sample_rel = f"data/sample_inputs/{PROGRAM}.pt"
        sample = zf.read(rel_names[sample_rel], PT2_MEMBERS[sample_rel])
    if sample:
        try:
            inputs = load_torch_save_safely(sample, ZipLimits.for_upload(max_bytes, max_members=1000),
                                            kind="sample inputs of the .pt2 file")
        except UnsafeArchiveError:
            raise
        except Exception as exc:  # weights_only refused it: torch would retry with weights_only=False
            raise _refuse(f"its sample inputs ({sample_rel}) are a pickle that is not weights-only loadable "
                          f"({type(exc).__name__})") from None
        if not (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], dict) and _plain_tensors(inputs)):
            raise _refuse(f"its sample inputs ({sample_rel}) are not (args, kwargs) of plain tensors")
        buf = io.BytesIO()
        torch.save(inputs, buf)
        sample = buf.getvalue()
    out[sample_rel] = sample
    return out


def check_pt2_archive(data: str | os.PathLike | bytes, max_bytes: int | None = None) -> None:
    """Raise :class:`UnsafeArchiveError` unless the ``.pt2`` file passes :func:`read_pt2`."""
    read_pt2(data, max_bytes)


def load_pt2_safely(source: str | os.PathLike | bytes, max_bytes: int | None = None) -> torch.export.ExportedProgram:
    """Check a ``.pt2`` file, then deserialize its program from a rebuilt archive of the checked bytes.

    Calls ``load_pt2`` directly (no legacy fallback) on an in-memory archive holding exactly the
    members :func:`read_pt2` returned.
    """
    from torch.export.pt2_archive._package import load_pt2

    members = read_pt2(source, max_bytes)
    contents = load_pt2(io.BytesIO(_rebuild_zip(members)))
    if set(contents.exported_programs) != {PROGRAM} or contents.aoti_runners or contents.extra_files:
        raise _refuse("the rebuilt archive yielded more than one program")  # cannot happen: we wrote it
    return contents.exported_programs[PROGRAM]
