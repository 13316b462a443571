"""Layerwise Bregman representations of neural network layers, and distillation through them.

The library needs only torch, numpy and safetensors. Public names are loaded on first use,
so that ``import bregman`` stays cheap and a worker that only inspects teachers never pays
for the distillation engine.

Method: Amid, Anil, Fifty, Warmuth, "Layerwise Bregman Representation Learning of Neural
Networks with Applications to Knowledge Distillation", TMLR 2023.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # transfer functions and their divergences
    "Transfer": "bregman.transfers",
    "get_transfer": "bregman.transfers",
    "NonMonotoneTransferError": "bregman.transfers",
    # the estimator and the exported layer
    "BregmanPCA": "bregman.pca",
    "ExportedLayer": "bregman.exported",
    "project_coefficients": "bregman.pca",
    # teachers, their layers, activations and data sets
    "build_model": "bregman.models",
    "ARCHITECTURES": "bregman.models",
    "Teacher": "bregman.teachers",
    "load_teacher": "bregman.teachers",
    "detect_format": "bregman.teachers",
    "TeacherFormatError": "bregman.teachers",
    "UnsafeTeacherError": "bregman.teachers",
    "list_layers": "bregman.layers",
    "split_at": "bregman.layers",
    "LayerError": "bregman.layers",
    "capture_preactivations": "bregman.capture",
    "Dataset": "bregman.datasets",
    "load_builtin": "bregman.datasets",
    "load_dataset_file": "bregman.datasets",
    "DatasetError": "bregman.datasets",
    # training and distillation
    "train_classifier": "bregman.training",
    "distill": "bregman.distillation",
    "DistillResult": "bregman.distillation",
    "TargetCache": "bregman.distillation",
    "load_student": "bregman.distillation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bregman' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
