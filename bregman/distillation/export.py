"""Artifacts of a trained student that run without this project's code.

- ``student.safetensors`` + ``student.json``: the student network's weights and a manifest
  (architecture, its arguments, method, k, layer, transfer, metrics) from which
  :func:`load_student` rebuilds it with the model registry.
- ``student.pt2``: a ``torch.export`` program of the whole pipeline (inputs → teacher's output
  space; for ``bregman``: student → imported layer → teacher head). ``torch.export.load`` runs
  it with torch alone.
- ``student.onnx``: the same pipeline in ONNX, where the exporter handles it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _example_batch(example: Tensor) -> Tensor:
    # two rows: with one row torch.export would specialize the batch dimension to 1. A copy, never
    # a view: torch.export.save keeps the example inputs, and a view of the transfer set would
    # carry its whole storage into the .pt2 (586 MiB, every training image, at 50,000 images)
    example = example.detach().cpu()
    if example.shape[0] >= 2:
        return example[:2].clone(memory_format=torch.contiguous_format)
    return torch.cat([example[:1], example[:1]]).contiguous()


def export_program(model: nn.Module, example: Tensor, path: str | os.PathLike) -> Path:
    """Write a ``torch.export`` program of ``model`` (CPU, eval mode, dynamic batch size) to ``path``."""
    path = Path(path)
    cpu_model = _cpu_eval_copy(model)
    x = _example_batch(example)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(cpu_model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``model`` as ONNX (dynamic batch size) if the exporter can; returns a status record.

    Tries the dynamo exporter first and the legacy TorchScript exporter second; the file is
    checked with ``onnx.checker``. When onnxruntime is installed the file is also run and
    compared with the PyTorch outputs. Returns ``{"written": bool, "exporter": ..., "checked":
    bool, "max_abs_error": float | None, "error": str | None}``; never raises for an
    architecture the exporters cannot handle (the error is recorded instead).
    """
    path = Path(path)
    status: dict[str, Any] = {"written": False, "exporter": None, "checked": False,
                              "max_abs_error": None, "error": None}
    try:
        import onnx  # noqa: F401  (the ONNX extras are optional for the library)
    except ImportError as exc:
        status["error"] = f"onnx is not installed ({exc}); install the 'worker' extras for ONNX export"
        return status
    cpu_model = _cpu_eval_copy(model)
    x = _example_batch(example)
    errors = []
    for exporter in ("dynamo", "legacy"):
        try:
            _onnx_export(cpu_model, x, path, dynamo=exporter == "dynamo")
            status["exporter"] = exporter
            break
        except Exception as exc:  # the exporters raise many kinds; record and try the next one
            errors.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            logger.info("ONNX export with the %s exporter failed: %s", exporter, exc)
            if path.exists():
                path.unlink()
    if status["exporter"] is None:
        status["error"] = "; ".join(errors)
        return status
    status["written"] = True
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
        status["checked"] = True
    except Exception as exc:  # a checker failure is reported, the file is kept for inspection
        status["error"] = f"onnx.checker: {exc}"
        return status
    try:
        import onnxruntime as ort
    except ImportError:
        status["runtime"] = "onnxruntime not installed: checked with onnx.checker only"
        return status
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    with torch.no_grad():
        want = cpu_model(x)
    status["max_abs_error"] = float((got - want).abs().max())
    status["runtime"] = "onnxruntime"
    return status


def _onnx_export(model: nn.Module, x: Tensor, path: Path, *, dynamo: bool) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"],
                              output_names=["output"], dynamic_shapes=({0: batch},), verbose=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cpu().eval()


def save_weights(module: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """A module's state (parameters and buffers) as safetensors, shared tensors stored once."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in module.state_dict().items():
        key = (tensor.data_ptr(), tensor.numel())
        if tensor.numel() and key in seen:
            continue  # tied weights: load_student restores them through the architecture
        seen.add(key)
        state[name] = tensor.detach().cpu().contiguous()
    save_file(state, str(path), metadata=metadata)
    return path


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
