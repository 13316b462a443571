"""The exported layer ``g(c) = f(m + V c)`` (method.md §3): a frozen ``nn.Module``.

Files written by :meth:`ExportedLayer.save` (readable without this project's code):

- ``layer.safetensors``: ``mean`` (d), ``components`` (k, d), and each numeric transfer
  parameter as a 0-d tensor named ``transfer.<param>`` (e.g. ``transfer.negative_slope``);
- ``layer.json``: ``format_version``, ``kind``, the transfer (name and parameters), k, d,
  dtype, the divergence report, ridge, Hessian floor, ``layout`` and (channels) ``spatial_shape``,
  plus any metadata.

Layouts (see :mod:`bregman.layouts`): ``"flat"`` maps coefficients ``(B, k)`` to ``(B, d)``;
``"channels"`` is a 1x1 convolution followed by the transfer at every position: a coefficient
map ``(B, k, H, W)`` to the layer's map ``(B, d, H, W)`` with d = C, the same ``m`` and ``V`` at
every position. The files are the same; only ``layout`` and ``spatial_shape`` differ.

Examples
--------
>>> import torch
>>> from bregman.transfers import get_transfer
>>> layer = ExportedLayer(torch.zeros(3), torch.eye(2, 3), get_transfer("softmax"))
>>> layer(torch.zeros(1, 2)).shape
torch.Size([1, 3])
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bregman.transfers import Transfer, get_transfer

__all__ = [
    "ExportedLayer", "ExportedLayerError", "FORMAT_VERSION", "READABLE_VERSIONS", "WEIGHTS_FILE", "MANIFEST_FILE",
]

#: ``layer.json``'s format. 2: ``layout`` ("flat" or "channels") and, for channels,
#: ``spatial_shape`` are always written. 1: written before the channels layout, no ``layout``
#: (flat); still read (a version-1 file that does carry ``layout`` is read as it says).
FORMAT_VERSION = 2
#: the versions :meth:`ExportedLayer.load` reads
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "layer.safetensors"
MANIFEST_FILE = "layer.json"
_KIND = "bregman_exported_layer"


class ExportedLayerError(ValueError):
    """An exported layer cannot be built or loaded; the message says why."""


class ExportedLayer(nn.Module):
    """Frozen layer ``forward(c) = f(mean + c @ components)``.

    Parameters
    ----------
    mean : Tensor of shape (d,)
    components : Tensor of shape (k, d)
        Directions as rows.
    transfer : str or Transfer
        The layer's transfer function (with its parameters).
    manifest : dict or None
        Extra JSON-able description (divergence report, ridge, ...), kept in :attr:`manifest`.
    layout : {"flat", "channels"}, default "flat"
        ``"channels"``: a 1x1 convolution over a coefficient map ``(B, k, H, W)``.
    spatial_shape : (H, W), optional
        The map's spatial size (``layout="channels"`` only; recorded, and checked on input).

    Attributes
    ----------
    transfer : Transfer
    k : int
        Number of coefficients the layer takes.
    d : int
        Width of its output.
    manifest : dict
        Everything ``layer.json`` holds.

    Notes
    -----
    ``mean`` and ``components`` are buffers: the layer has no trainable parameters, moves with
    ``.to(device)`` and survives ``torch.export.export``.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, transfer: str | Transfer,
                 manifest: dict[str, Any] | None = None, *, layout: str | None = None,
                 spatial_shape: tuple[int, int] | list[int] | None = None) -> None:
        super().__init__()
        if not isinstance(mean, torch.Tensor) or not isinstance(components, torch.Tensor):
            raise ExportedLayerError("mean and components must be torch tensors")
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ExportedLayerError(
                f"mean must be (d,) and components (k, d) with the same d, got {tuple(mean.shape)} and "
                f"{tuple(components.shape)}"
            )
        if mean.dtype != components.dtype or not mean.is_floating_point():
            raise ExportedLayerError(
                f"mean and components must share one floating dtype, got {mean.dtype} and {components.dtype}"
            )
        self.transfer: Transfer = get_transfer(transfer)
        layout = layout or (manifest or {}).get("layout") or "flat"
        spatial = spatial_shape if spatial_shape is not None else (manifest or {}).get("spatial_shape")
        if layout not in ("flat", "channels"):
            raise ExportedLayerError(f"layout must be 'flat' or 'channels', got {layout!r}")
        if layout == "channels":
            if spatial is None or len(spatial) != 2 or any(int(s) < 1 for s in spatial):
                raise ExportedLayerError(f"a channels layer needs spatial_shape (H, W), got {spatial!r}")
            if not self.transfer.elementwise:
                raise ExportedLayerError(f"the {self.transfer.name} transfer couples units: it has no channels layout")
            spatial = [int(s) for s in spatial]
        else:
            spatial = None
        self.layout: str = layout
        self.spatial_shape: tuple[int, int] | None = tuple(spatial) if spatial else None
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("components", components.detach().clone())
        self.k = int(components.shape[0])
        self.d = int(components.shape[1])
        base = dict(manifest or {})
        base.update({
            "format_version": FORMAT_VERSION,
            "kind": _KIND,
            "transfer": self.transfer.to_dict(),
            "k": self.k,
            "d": self.d,
            "dtype": str(mean.dtype).replace("torch.", ""),
            "layout": self.layout,
        })
        if self.spatial_shape is not None:
            base["spatial_shape"] = list(self.spatial_shape)
        else:
            base.pop("spatial_shape", None)
        base.setdefault("hessian_floor", float(self.transfer.hessian_floor))
        self.manifest: dict[str, Any] = base

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """Layer outputs ``f(mean + c @ components)``: (B, k) -> (B, d), or for the channels
        layout the same at every position, (B, k, H, W) -> (B, d, H, W)."""
        return self.transfer.f(self.preactivation(c))

    def preactivation(self, c: torch.Tensor) -> torch.Tensor:
        """Reconstructed pre-activations ``mean + c @ components`` (B, d), or (B, d, H, W)."""
        if self.layout == "flat":
            return self.mean + c @ self.components
        # a 1x1 convolution, written as the flat layer's matmul over channel-last positions so
        # that every position computes exactly what the flat rows of the fit computed
        return (self.mean + c.movedim(1, -1) @ self.components).movedim(-1, 1)

    def extra_repr(self) -> str:
        where = f", layout=channels, spatial_shape={self.spatial_shape}" if self.layout == "channels" else ""
        return f"k={self.k}, d={self.d}, transfer={self.transfer!r}{where}"

    def with_layout(self, layout: str, spatial_shape: tuple[int, int] | list[int] | None = None) -> "ExportedLayer":
        """The same representation (m, V, transfer, manifest) used in another layout."""
        manifest = dict(self.manifest)
        manifest.pop("spatial_shape", None)
        return type(self)(self.mean, self.components, self.transfer, manifest=manifest, layout=layout,
                          spatial_shape=spatial_shape)

    # --- files ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``layer.safetensors`` and ``layer.json`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "mean": self.mean.detach().cpu().contiguous(),
            "components": self.components.detach().cpu().contiguous(),
        }
        for name, value in self.transfer.params.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tensors[f"transfer.{name}"] = torch.tensor(float(value), dtype=torch.float64)
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION), "kind": _KIND})
        (out / MANIFEST_FILE).write_text(json.dumps(_jsonable(self.manifest), indent=2, sort_keys=True))
        return out

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = None) -> "ExportedLayer":
        """Load a layer written by :meth:`save` (bit-exact)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        src = Path(directory)
        weights, manifest_path = src / WEIGHTS_FILE, src / MANIFEST_FILE
        missing = [p.name for p in (weights, manifest_path) if not p.is_file()]
        if missing:
            raise ExportedLayerError(
                f"{src} is not an exported layer: missing {', '.join(missing)} (expected {WEIGHTS_FILE} "
                f"and {MANIFEST_FILE}, as written by ExportedLayer.save)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportedLayerError(f"{manifest_path} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
            raise ExportedLayerError(f"{manifest_path} does not describe an exported Bregman layer")
        manifest = _upgrade_manifest(manifest, manifest_path)
        try:
            tensors = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ExportedLayerError(f"{weights} is not a readable safetensors file: {exc}") from None
        for key in ("mean", "components"):
            if key not in tensors:
                raise ExportedLayerError(f"{weights} lacks the tensor {key!r}")
        transfer = Transfer.from_dict(manifest["transfer"])
        for name, value in transfer.params.items():
            stored = tensors.get(f"transfer.{name}")
            if stored is not None and float(stored) != float(value):
                raise ExportedLayerError(
                    f"transfer parameter {name} differs between {WEIGHTS_FILE} ({float(stored)}) and "
                    f"{MANIFEST_FILE} ({value}); the files do not belong together"
                )
        layer = cls(tensors["mean"], tensors["components"], transfer, manifest=manifest)
        if layer.k != manifest.get("k", layer.k) or layer.d != manifest.get("d", layer.d):
            raise ExportedLayerError(
                f"{weights} holds k={layer.k}, d={layer.d} but {MANIFEST_FILE} says k={manifest.get('k')}, "
                f"d={manifest.get('d')}"
            )
        return layer.to(device) if device is not None else layer


def _upgrade_manifest(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """A ``layer.json`` of a readable version as the current version reads it; a clear error
    for a newer (or unknown) version."""
    version = manifest.get("format_version")
    readable = f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}"
    if isinstance(version, bool) or not isinstance(version, int):
        raise ExportedLayerError(f"{path} has format_version {version!r}; this library reads versions {readable}")
    if version > FORMAT_VERSION:
        raise ExportedLayerError(
            f"{path} has format_version {version}, newer than this library reads ({readable}): it was written by "
            "a newer version of the bregman package; upgrade the package to load it"
        )
    if version not in READABLE_VERSIONS:
        raise ExportedLayerError(f"{path} has format_version {version}; this library reads versions {readable}")
    manifest = dict(manifest)
    if version == 1:
        manifest.setdefault("layout", "flat")  # version 1 predates the channels layout
    elif "layout" not in manifest:
        raise ExportedLayerError(f"{path} (format_version {version}) lacks 'layout': the file is damaged")
    return manifest


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)
