"""Refuse ``.pt2`` archives that would run code when loaded, before ``torch`` reads them.

``torch.export.load`` (torch 2.13) is not safe on untrusted files. Reading its source
(``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``,
``torch/export/_unlift.py``) shows these ways a crafted archive runs code:

1. weights or tensor constants marked ``use_pickle`` are read with ``torch.load(weights_only=False)``;
2. ``opaque_obj_*`` constants are read with ``pickle.loads``, ``custom_obj_*`` with the TorchScript
   unpickler;
3. the sample inputs (and legacy ``data/weights/<model>.pt`` state dicts) go through
   ``deserialize_torch_artifact``, which falls back to ``torch.load(weights_only=False)`` when the
   weights-only load fails;
4. symbolic shape expressions (``expr_str``) are parsed with ``sympy.sympify``, i.e. ``eval``;
5. ``guards_code`` strings are ``exec``-uted when ``ExportedProgram.module()`` builds its guards;
6. node targets are resolved as attribute paths under ``torch`` / ``_operator`` / ``math``
   (``torch.os.system`` resolves), and run when the program runs;
7. ``data/aotinductor/`` holds compiled shared libraries that ``load_pt2`` loads;
8. ``torch.export.load`` falls back to a legacy reader (a second zip parser) on any error.

:func:`check_pt2_archive` inspects the archive with torch's own archive reader (the parser that
will read it next) and refuses each of these. :func:`load_pt2_safely` reads the file once into
memory (no time-of-check/time-of-use window), checks it, then calls ``load_pt2`` directly, without
``torch.export.load``'s legacy fallback.
"""
from __future__ import annotations

import io
import json
import operator
import re
from typing import Any, Iterator

import torch

__all__ = ["UnsafeArchiveError", "check_pt2_archive", "load_pt2_safely"]


class UnsafeArchiveError(ValueError):
    """The archive holds something that loading it would execute."""


_FORBIDDEN_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")

# names sympy may see in a shape expression: torch's sympy functions, sympy's own, assumptions,
# and symbols such as s0 / u3 (also the exponent part of 1e10)
_SYMPY_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    "Max", "Min", "Abs", "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
    "Symbol", "Integer", "Rational", "Float", "oo", "zoo", "nan", "True", "False",
    "positive", "negative", "integer", "nonnegative", "nonpositive", "real", "finite", "zero",
}
_EXPR_CHARS = re.compile(r"^[A-Za-z0-9_ +\-*/%(),<>=!'.]*$")
_SYMBOL = re.compile(r"^[a-z]{1,4}\d+$")
_QUOTED = re.compile(r"'[A-Za-z0-9_]*'")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BAD_DOT = re.compile(r"(?<![0-9])\.|\.(?![0-9])")

# a guard such as  L['x'].size()[0] >= 2
_GUARD = re.compile(
    r"^L\['[A-Za-z0-9_]+'\](?:\.(?:size|stride)\(\)\[\d+\]|\[\d+\])* *(?:==|!=|>=|<=|<|>) *-?\d+$"
)

_OPERATOR_NAMES = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift",
}
_OP_NAMESPACES = {"aten", "prims", "higher_order"}


def _refuse(what: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refused .pt2 file: {what}. Loading it would execute code from the file. Re-export the "
        "model with torch.export.export and save it with torch.export.save (plain tensors only), "
        "or upload safetensors weights with a manifest."
    )


def _check_expr(expr: str) -> None:
    if not _EXPR_CHARS.match(expr) or "__" in expr:
        raise _refuse(f"a symbolic shape expression contains disallowed characters: {expr[:80]!r}")
    bare = _QUOTED.sub("''", expr)
    if _BAD_DOT.search(bare):
        raise _refuse(f"a symbolic shape expression uses attribute access: {expr[:80]!r}")
    for name in _IDENT.findall(bare):
        if name not in _SYMPY_NAMES and not _SYMBOL.match(name):
            raise _refuse(f"a symbolic shape expression names {name!r}, which is not a shape function")


def _check_target(target: str) -> None:
    """Resolve a node target as torch's deserializer does and require a PyTorch operator."""
    if target.startswith("_operator."):
        name = target.split(".", 1)[1]
        if name in _OPERATOR_NAMES and hasattr(operator, name):
            return
        raise _refuse(f"the graph calls {target!r}, which is not an arithmetic operator")
    if target.startswith("math."):
        name = target.split(".", 1)[1]
        if "." not in name and not name.startswith("_"):
            return
        raise _refuse(f"the graph calls {target!r}")
    if target.startswith("torch.sym_") or target.startswith("torch._sym_"):
        if target.count(".") == 1:
            return
    if target.startswith("torch.ops."):
        obj: Any = torch
        for part in target.split(".")[1:]:
            if part.startswith("__") or not hasattr(obj, part):
                raise _refuse(f"the graph calls {target!r}, which is not a registered operator")
            obj = getattr(obj, part)
        ops = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
        namespace = target.split(".")[2]
        if isinstance(obj, ops) and namespace in _OP_NAMESPACES:
            return
    raise _refuse(f"the graph calls {target!r}, which is not a PyTorch aten/prims operator")


def _walk(value: Any) -> Iterator[tuple[str | None, Any, dict | None]]:
    """Yield (key, value, parent dict) for every value of a JSON tree."""
    stack: list[tuple[str | None, Any, dict | None]] = [(None, value, None)]
    while stack:
        key, item, parent = stack.pop()
        yield key, item, parent
        if isinstance(item, dict):
            stack.extend((k, v, item) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((key, v, parent) for v in item)


def _check_program_json(text: str) -> None:
    try:
        program = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnsafeArchiveError(f"refused .pt2 file: its program is not valid JSON ({exc})") from exc
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not _GUARD.match(guard):
            raise _refuse(f"it carries guard code that is not a plain shape check: {str(guard)[:80]!r}")
    for key, value, parent in _walk(program):
        if key == "expr_str" and isinstance(value, str):
            _check_expr(value)
        elif key == "target" and isinstance(value, str) and parent is not None and "inputs" in parent:
            _check_target(value)


def _weights_only_loadable(data: bytes) -> bool:
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # any failure means torch would fall back to full unpickling
        return False
    return True


def check_pt2_archive(data: bytes) -> None:
    """Raise :class:`UnsafeArchiveError` unless the ``.pt2`` bytes hold only data.

    Parameters
    ----------
    data : bytes
        The whole archive, as it will be handed to ``load_pt2``.
    """
    from torch.export.pt2_archive import constants as C
    from torch.export.pt2_archive._package import PT2ArchiveReader

    try:
        reader = PT2ArchiveReader(io.BytesIO(data))
    except Exception as exc:  # torch raises RuntimeError for a broken zip
        raise UnsafeArchiveError(f"refused .pt2 file: torch cannot read it as a PT2 archive ({exc})") from exc
    with reader as archive:
        names = set(archive.get_file_names())
        if C.ARCHIVE_VERSION_PATH not in names or archive.read_string(C.ARCHIVE_VERSION_PATH) != C.ARCHIVE_VERSION_VALUE:
            raise UnsafeArchiveError(
                "refused .pt2 file: it is not a PT2 archive of the current version (an older torch.export.save "
                "format is read through full unpickling); re-save it with torch.export.save from torch 2.13"
            )
        for name in names:
            if name.startswith(_FORBIDDEN_DIRS):
                raise _refuse(f"it contains compiled code ({name})")
        models = [n[len(C.MODELS_DIR):-len(".json")] for n in names if n.startswith(C.MODELS_DIR) and n.endswith(".json")]
        if "model" not in models:
            raise UnsafeArchiveError("refused .pt2 file: it holds no exported program named 'model'")
        for model in models:
            _check_program_json(archive.read_string(C.MODELS_FILENAME_FORMAT.format(model)))
            for legacy in (f"{C.WEIGHTS_DIR}{model}.pt", f"{C.CONSTANTS_DIR}{model}.pt"):
                if legacy in names and not _weights_only_loadable(archive.read_bytes(legacy)):
                    raise _refuse(f"{legacy} is a pickle that is not weights-only loadable")
            sample = C.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
            if sample in names and not _weights_only_loadable(archive.read_bytes(sample)):
                raise _refuse(f"its sample inputs ({sample}) are a pickle that is not weights-only loadable")
            for config_name, base in (
                (C.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), "weights"),
                (C.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model), "constants"),
            ):
                if config_name not in names:
                    continue
                config = json.loads(archive.read_string(config_name)).get("config", {})
                for fqn, meta in config.items():
                    if meta.get("use_pickle"):
                        raise _refuse(f"its {base} entry {fqn!r} is stored as a pickle")
                    path_name = str(meta.get("path_name", ""))
                    if base == "constants" and not path_name.startswith(C.TENSOR_CONSTANT_FILENAME_PREFIX):
                        raise _refuse(f"its constant {fqn!r} is a serialized Python object ({path_name})")


def load_pt2_safely(data: bytes) -> torch.export.ExportedProgram:
    """Check the archive bytes, then deserialize the program named ``model``."""
    from torch.export.pt2_archive._package import load_pt2

    check_pt2_archive(data)
    contents = load_pt2(io.BytesIO(data))
    return contents.exported_programs["model"]
