"""The one-call distillation API: ``distill(teacher, (x, y), layer, method, student, ...)``.

One engine for every method (see :mod:`bregman.distillation.methods`): the teacher's targets are
computed once (cached), the student trains with :func:`bregman.training.train_loop`, and the
result is evaluated against the teacher and can be saved as deployable artifacts.
"""
from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bregman.distillation.augment import augmented_copies
from bregman.distillation.image_augment import image_views
from bregman.distillation.cut import Cut, resolve_cut
from bregman.distillation.evaluate import cost_metrics, parameter_count, quality_metrics
from bregman.distillation.methods import (
    LAYER_METHODS,
    METHOD_CHOICES,
    DistilledModel,
    MethodError,
    TransferLayer,
    check_method,
    frozen_copy,
    make_batch_loss,
    student_width,
)
from bregman.distillation.settings import DEFAULT_TARGET_STEPS, TrainSettings, default_budget  # noqa: F401
from bregman.distillation.students import build_student
from bregman.distillation.targets import TargetCache, TeacherTargets, coefficients, compute_targets
from bregman.training import ProgressFn, check_labels, default_device, predict, train_loop

logger = logging.getLogger(__name__)

#: ``n_components=None`` at an element-wise layer: the smallest k whose directions explain this
#: share of the divergence. 0.95 was too little (digits: k=2 at the logits, students at 0.62).
#: At a softmax layer (the logits) the default is every direction, k = d − 1: there k = 4
#: already reproduces the teacher's predictions, yet students learn the coefficients better with
#: each added direction (digits, 10 % of the data: 87.4 % at k=4, 93.2 % at 6, 96.0 % at 9).
DEFAULT_EXPLAINED_DIVERGENCE = 0.999
#: ... and at most ``max(DEFAULT_K_FLOOR, n // DEFAULT_ROWS_PER_K)`` for n transfer examples:
#: with few rows the share rule asks for more coefficients than the rows can teach a student
#: (distill_table, classif20 at 1-2 %: k = 25-43 from 36-72 rows, and k = 16 gained 6.1 / 1.9
#: points). A floor of 8 lost to 16 wherever it bit (3 seeds: classif20 1 % 34.0 vs 36.7, its
#: ceiling 73.7 vs 89.0; digits 2 % 89.2 vs 90.1; digits-hard 2 % 28.5 vs 29.4). None: no cap.
DEFAULT_ROWS_PER_K: int | None = 4
DEFAULT_K_FLOOR = 16


def default_k_cap(n_examples: int) -> int | None:
    """The most directions the default share rule may choose for ``n_examples`` transfer rows."""
    if DEFAULT_ROWS_PER_K is None:
        return None
    return max(DEFAULT_K_FLOOR, int(n_examples) // DEFAULT_ROWS_PER_K)


@dataclass
class DistillResult:
    """A distilled student and what was measured about it.

    Attributes
    ----------
    model : DistilledModel
        Inputs → the teacher's output space (for ``bregman``: student → imported layer →
        teacher head; for ``hint``: student → transfer → head; otherwise the student alone).
    student : nn.Module
        The trained network alone (``model.student``).
    method : str
    layer : str or None
        The teacher layer used (``bregman`` / ``hint``).
    transfer : dict or None
        The layer's transfer ``{"name", "params"}``.
    k : int or None
        Number of Bregman coefficients (``bregman``).
    representation : ExportedLayer or None
        The imported layer (``bregman``), frozen.
    metrics : dict
        Quality (``test_accuracy``, ``test_agreement``, ``test_kl_to_teacher``,
        ``test_teacher_accuracy``, the same on the transfer set with prefix ``transfer_``; for
        ``bregman`` also ``test_representation_accuracy`` / ``_agreement`` / ``_kl_to_teacher``:
        the teacher's own coefficients through the imported layer and head, the ceiling of any
        student of this representation) and cost
        (``parameters``, ``student_parameters``, ``teacher_parameters``, ``latency_ms``,
        ``teacher_latency_ms``), plus the representation's ``explained_divergence`` and times.
    history : dict of lists
        Per epoch: ``loss``, the method's loss terms, ``lr``, ``time_s``.
    student_manifest : dict
        ``{"arch", "args", "flatten_input"}``: rebuilds the student with the model registry.
    settings : dict
        The training settings and loss weights used (every default filled in).
    input_shape : tuple of int
        Shape of one input example.
    """

    model: DistilledModel
    student: nn.Module
    method: str
    layer: str | None
    transfer: dict[str, Any] | None
    k: int | None
    representation: nn.Module | None
    metrics: dict[str, float]
    history: dict[str, list[float]]
    student_manifest: dict[str, Any]
    settings: dict[str, Any]
    input_shape: tuple[int, ...]
    outputs_are_probabilities: bool = False
    example_input: Tensor | None = field(default=None, repr=False)

    def manifest(self) -> dict[str, Any]:
        """The ``student.json`` manifest."""
        return {
            "format_version": STUDENT_FORMAT_VERSION,
            "kind": "bregman_student",
            "arch": self.student_manifest["arch"],
            "args": self.student_manifest["args"],
            "flatten_input": bool(self.student_manifest.get("flatten_input", False)),
            **({"map_head": self.student_manifest["map_head"]} if self.student_manifest.get("map_head") else {}),
            "method": self.method,
            "k": self.k,
            "layer": self.layer,
            "transfer": self.transfer,
            "input_shape": list(self.input_shape),
            "settings": self.settings,
            "metrics": self.metrics,
        }

    def save(self, directory: str | Path, *, onnx: bool = True) -> dict[str, Any]:
        """Write the student's artifacts into ``directory`` (created if needed).

        Files: ``student.safetensors`` (the student network's weights), ``student.json`` (the
        manifest: arch, args, method, k, layer, transfer, metrics, settings), ``student.pt2``
        (``torch.export`` program of the whole pipeline, batch size dynamic), ``student.onnx``
        (when the ONNX exporter handles the pipeline and ``onnx`` is true), ``metrics.json``,
        and for ``bregman`` the imported layer in ``layer/`` (``layer.safetensors``,
        ``layer.json``). Returns ``{"files": [...], "onnx": status}``.
        """
        from bregman.distillation.export import export_onnx, export_program, save_weights, write_json

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        example = self.example_input if self.example_input is not None else torch.zeros(2, *self.input_shape)
        files = [save_weights(self.student, out / "student.safetensors", metadata={"kind": "bregman_student"})]
        files.append(export_program(self.model, example, out / "student.pt2"))
        onnx_status: dict[str, Any] = {"written": False, "error": "not requested"}
        if onnx:
            onnx_status = export_onnx(self.model, example, out / "student.onnx")
            if onnx_status["written"]:
                files.append(out / "student.onnx")
        if self.representation is not None:
            self.representation.save(out / "layer")
            files += [out / "layer" / "layer.safetensors", out / "layer" / "layer.json"]
        manifest = self.manifest()
        manifest["onnx"] = onnx_status
        manifest["files"] = sorted(str(Path(f).relative_to(out)) for f in files) + ["metrics.json", "student.json"]
        write_json(out / "metrics.json", {"metrics": self.metrics, "history": self.history})
        files.append(write_json(out / "student.json", manifest))
        files.append(out / "metrics.json")
        return {"files": [str(f) for f in files], "onnx": onnx_status}


#: ``student.json``'s format: 2 since map students (the channels layout) add the architecture's
#: own classifier at every position; version-1 map students hold no weights for it
STUDENT_FORMAT_VERSION = 2


def _check_student_version(manifest: Any, path: Path) -> None:
    """A manifest this version can load, else a ValueError that says what to do."""
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a student manifest (a JSON object)")
    version = manifest.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > STUDENT_FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}; this package reads up to "
                         f"{STUDENT_FORMAT_VERSION}: upgrade the package to load it")
    if version < 2 and manifest.get("map_head"):
        raise ValueError(f"{path} is a map student saved in format 1, before map students carried the "
                         "architecture's classifier term: its weights cannot be loaded; run the distillation "
                         "again (the student.pt2 of that run still works on its own)")


def load_student(directory: str | Path, *, device: torch.device | str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained student network (not the pipeline) from ``student.safetensors`` + ``student.json``.

    The whole pipeline runs without this project from ``student.pt2``
    (``torch.export.load(path).module()``).
    """
    import json

    from safetensors.torch import load_file

    from bregman.distillation.students import student_from_manifest

    src = Path(directory)
    manifest_path, weights_path = src / "student.json", src / "student.safetensors"
    missing = [p.name for p in (manifest_path, weights_path) if not p.is_file()]
    if missing:
        raise ValueError(f"{src} is not a saved student: missing {', '.join(missing)}")
    manifest = json.loads(manifest_path.read_text())
    _check_student_version(manifest, manifest_path)
    module = student_from_manifest(manifest)
    state = load_file(str(weights_path), device="cpu")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path} does not hold the weights of the {manifest['arch']} student its "
                         f"manifest describes: {exc}") from None
    module.eval()
    return (module.to(device) if device is not None else module), manifest


def _as_inputs(x: Any, name: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise ValueError(f"{name} must be a batch (N, *input_shape), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: pass at least one example")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point (scale integer images yourself), got {x.dtype}")
    return x.float()


def _split_data(data: Any, name: str) -> tuple[Tensor, Tensor | None]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{name} must be a pair (x, y) with y None when there are no labels")
    x = _as_inputs(data[0], f"{name}[0] (x)")
    y = data[1]
    if y is not None:
        y = torch.as_tensor(y)
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"{name}: x has {x.shape[0]} rows but y has {y.shape[0] if y.dim() else 'no'} rows")
        y = check_labels(y)
    return x, y


def _check_n_components(n_components: Any) -> int | float | None:
    if n_components is None:
        return None
    if isinstance(n_components, bool) or not isinstance(n_components, numbers.Real):
        raise ValueError(f"n_components must be None, an int >= 1 or a float in (0, 1), got {n_components!r}")
    if isinstance(n_components, numbers.Integral):
        if n_components < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}")
        return int(n_components)
    if not 0.0 < float(n_components) < 1.0:
        raise ValueError(f"a float n_components is a share of the divergence in (0, 1), got {n_components}")
    return float(n_components)


def _representation_parts(representation: Any) -> tuple[nn.Module, Any]:
    """(exported layer, object whose coefficients define the targets) from a fitted estimator or a layer."""
    if hasattr(representation, "export_layer"):  # a BregmanPCA
        if not hasattr(representation, "n_components_"):
            raise ValueError("the representation is a BregmanPCA that is not fitted: fit it first or pass None")
        return representation.export_layer(), representation
    if isinstance(representation, nn.Module) and hasattr(representation, "components"):
        return representation, representation
    raise ValueError(f"representation must be a fitted BregmanPCA or an ExportedLayer, got "
                     f"{type(representation).__name__}")


def _teacher_parts(teacher: Any) -> tuple[Any, nn.Module, tuple[int, ...] | None]:
    if hasattr(teacher, "module") and hasattr(teacher, "input_shape"):  # bregman.teachers.Teacher
        return teacher, teacher.module, tuple(teacher.input_shape)
    if isinstance(teacher, nn.Module):
        return teacher, teacher, None
    raise ValueError(f"teacher must be an nn.Module or a loaded Teacher, got {type(teacher).__name__}")


def _probabilities(outputs: Tensor) -> bool:
    """Whether the teacher's outputs are probabilities (non-negative rows summing to 1)."""
    return bool((outputs >= 0).all()) and bool(torch.allclose(outputs.sum(1), torch.ones(outputs.shape[0]), atol=1e-4))


def _to_logits_fn(probabilities: bool) -> Callable[[Tensor], Tensor]:
    if not probabilities:
        return lambda out: out
    return lambda p: torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def distill(
    teacher: Any,
    data: tuple[Any, Any],
    layer: str | None = None,
    method: str = "bregman",
    student: dict[str, Any] | None = None,
    n_components: int | float | None = None,
    seed: int = 0,
    *,
    test: tuple[Any, Any] | None = None,
    settings: TrainSettings | None = None,
    transfer: str | None = "auto",
    representation: Any = None,
    pca_options: dict[str, Any] | None = None,
    cache: TargetCache | None = None,
    measure_latency: bool = True,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    validation_fraction: float = 0.25,
    candidates: list[dict[str, Any]] | None = None,
    min_validation_rows: int | None = None,
    **training: Any,
) -> DistillResult:
    """Distill ``teacher`` into a small student on the transfer set ``data``.

    Parameters
    ----------
    teacher : nn.Module or Teacher
        The trained network (a :class:`bregman.teachers.Teacher` from ``load_teacher`` or any
        module mapping (B, *input_shape) to outputs). It is never modified.
    data : (x, y)
        The transfer set: inputs (N, *input_shape), floating point, and integer labels (N,) or
        None. ``labels`` needs labels; the other methods use them when given (``kd`` through
        ``alpha``, ``bregman``/``hint`` through ``label_weight``).
    layer : str, optional
        The teacher layer as :func:`bregman.layers.list_layers` names it (for an
        ``nn.Sequential`` the index of the module computing the pre-activation, e.g. ``"2"``).
        Default: the last tappable layer below the output layer (the penultimate; the logits
        when there is none), see :func:`bregman.distillation.cut.default_layer`. Used by
        ``bregman`` and ``hint``.
    method : {"bregman", "kd", "hint", "labels", "auto"}, default "bregman"
        ``bregman``: predict the layer's Bregman coefficients, pass them through the imported
        layer and the teacher's frozen head. ``kd``: soft labels (Hinton et al.). ``hint``:
        regress the layer's pre-activations, then the head (FitNets-style). ``labels``:
        cross-entropy on the labels alone. ``auto``: hold out a stratified validation split of
        the transfer set, train every candidate (bregman at two or three k, hint, kd, labels)
        with the same budget on the rest, keep the best on validation (accuracy; agreement with
        the teacher without labels) and train it again on the whole transfer set; ``test`` is
        never read before the choice is made. ``metrics["selection"]`` holds the table (see
        :func:`bregman.distillation.select.auto_distill`).
    student : dict, default {"arch": "mlp", "hidden": [32]}
        A registry architecture and its arguments; the input size and the output width (k,
        the layer width d, or the number of teacher outputs) are filled in.
    n_components : int, float or None, default None
        ``bregman``'s k: an int, a share of the divergence in (0, 1), or None: at a softmax
        layer every direction (k = d − 1, at most 64 and below the number of rows), elsewhere
        the smallest k explaining 99.9 % of the mean-only model's divergence on the transfer
        set (see :func:`default_components`). Under ``auto`` a given k is the only bregman
        candidate.
    seed : int, default 0
        Seeds the student's initial weights, the example order, the representation fit and
        ``auto``'s validation split.
    test : (x_test, y_test), optional
        Evaluation data (y_test may be None); without it the metrics cover the transfer set only.
    settings : TrainSettings, optional
        The training settings in one object; keywords (``**training``) override its fields.
    **training
        Any :class:`~bregman.distillation.settings.TrainSettings` field: ``epochs``,
        ``batch_size`` (default from :func:`default_budget`: batch ``min(64, max(16, N // 4))``
        and about 1500 steps), ``lr`` (1e-2 for flat inputs, 3e-2 for bregman with the Huber loss there,
        3e-3 for images), ``weight_decay`` (1e-4), ``optimizer``
        ("adamw"), ``schedule`` ("cosine"), ``temperature`` (kd, 4.0), ``alpha`` (kd, 0.9),
        ``coefficient_weight`` (1.0), ``divergence_weight`` (0.0), ``label_weight`` (bregman with a
        coefficient map: 0.1 per value of the map, e.g. 102.4 for 16 channels of 8x8; else 0),
        ``soft_label_weight`` (0.0), ``coefficient_scaling`` ("none"), ``coefficient_loss``
        ("auto": Huber with teacher-labelled copies or views or a coefficient map, else squared;
        or "huber", "squared"),
        ``huber_delta`` (1.0),
        ``augment_copies`` (teacher-labelled copies of each row of a flat transfer set; default
        from :func:`~bregman.distillation.settings.default_copies`: 60 below 100 examples, 30
        below 200, 10 below 500, else 0; the default budget counts them), ``augment_noise`` (0.3), ``augment`` ("noise" or "mixup"),
        ``augment_views`` / ``augment_padding`` / ``augment_flip`` (image views, 0 / 4 / True),
        ``layout`` ("auto", "flat" or "channels" for a conv map) and ``fit_rows`` (channels:
        rows sampled for the fit).
    transfer : {"auto", "listed", "softmax"}, default "auto"
        At the teacher's output layer, ``"auto"`` uses the softmax transfer (the paper's choice;
        the head becomes ``log``); elsewhere the layer's listed transfer.
    representation : BregmanPCA or ExportedLayer, optional
        A representation fitted earlier on this layer (e.g. by a representation job): reused
        instead of fitting one; ``n_components`` is then ignored.
    pca_options : dict, optional
        Extra :class:`bregman.pca.BregmanPCA` arguments (``mean``, ``ridge``, ``max_iter``, ...).
    cache : TargetCache, optional
        Shares teacher targets and representation fits between calls on the same teacher.
    measure_latency : bool, default True
        Time CPU forwards of the model and the teacher (median of 30 batches).
    device : torch device, optional
        Where the student trains and the teacher runs; default: the teacher's device. The teacher
        itself is not moved (its cut is a copy).
    progress : callable, optional
        ``progress(phase, fraction, metrics)`` with phases ``"targets"``, ``"representation"``,
        ``"train"``, ``"evaluate"`` (under ``auto``: ``"<candidate>:<phase>"`` for each
        candidate, then ``"final <candidate>:<phase>"``); an exception raised inside aborts the
        run and propagates.
    validation_fraction : float, default 0.25
        ``auto``: the share of the transfer set held out for the choice.
    candidates : list of dict, optional
        ``auto``: the candidates (``{"method": ..., "n_components": ...}``) instead of the
        default list (:func:`bregman.distillation.select.default_candidates`).
    min_validation_rows : int, optional
        ``auto``: with a validation split smaller than this (default
        :data:`bregman.distillation.select.MIN_VALIDATION_ROWS`, 20) nothing is selected: the
        first candidate (bregman at the default k) is trained on every row, and the selection
        table says why.

    Returns
    -------
    DistillResult

    Raises
    ------
    ValueError
        Bad inputs: unknown method or training setting, labels missing for ``labels``, inputs
        that do not match the teacher, an untappable layer (:class:`bregman.layers.LayerError`),
        a representation of another layer, ...
    """
    method = check_method(method, METHOD_CHOICES)
    train = TrainSettings.from_options(training, base=settings)
    if method == "auto":
        from bregman.distillation.select import auto_distill

        return auto_distill(teacher, data, layer=layer, student=student, n_components=n_components, seed=seed,
                            test=test, settings=train, transfer=transfer, representation=representation,
                            pca_options=pca_options, cache=cache, measure_latency=measure_latency, device=device,
                            progress=progress, validation_fraction=validation_fraction, candidates=candidates,
                            min_validation_rows=min_validation_rows)
    if candidates is not None or min_validation_rows is not None:
        raise ValueError("candidates and min_validation_rows belong to method='auto'; pass method='auto' or leave "
                         "them out")
    return _distill_one(teacher, data, layer, method, student, n_components, seed, test=test, settings=train,
                        transfer=transfer, representation=representation, pca_options=pca_options, cache=cache,
                        measure_latency=measure_latency, device=device, progress=progress)


@dataclass
class _Problem:
    """What every method of one distillation shares: the data, the cut and the teacher's targets."""

    x: Tensor
    y: Tensor | None
    n_rows: int
    test_x: Tensor | None
    test_y: Tensor | None
    input_shape: tuple[int, ...]
    cut: Cut
    targets: TeacherTargets
    targets_of: Callable[[Tensor], TeacherTargets]
    to_logits: Callable[[Tensor], Tensor]
    teacher_logits: Tensor
    probabilities: bool
    num_outputs: int
    device: torch.device
    teacher_module: nn.Module
    settings: TrainSettings  # the given settings with augment_copies decided for these examples


def _prepare(teacher: Any, data: Any, test: Any, layer: str | None, method: str, transfer: str | None,
             settings: TrainSettings, seed: int, cache: TargetCache | None, device: Any,
             student: dict[str, Any] | None = None) -> _Problem:
    """Check the inputs, add the copies, cut the teacher and compute its targets once."""
    graph_source, teacher_module, input_shape = _teacher_parts(teacher)
    x, y = _split_data(data, "data")
    if input_shape is not None and tuple(x.shape[1:]) != input_shape:
        raise ValueError(f"the inputs have per-example shape {tuple(x.shape[1:])} but the teacher expects "
                         f"{input_shape}: reshape them (e.g. x.reshape(len(x), *{input_shape}))")
    input_shape = tuple(int(s) for s in x.shape[1:])
    if method == "labels" and y is None:
        raise MethodError("method 'labels' trains on labels alone and needs them: pass (x, y) with y not None, "
                          "or choose 'bregman', 'kd' or 'hint', which learn from the teacher")
    test_x = test_y = None
    if test is not None:
        test_x, test_y = _split_data(test, "test")
        if tuple(test_x.shape[1:]) != input_shape:
            raise ValueError(f"test inputs have per-example shape {tuple(test_x.shape[1:])}, the transfer set "
                             f"{input_shape}: they must match")
    n_rows = int(x.shape[0])
    flat = x.dim() == 2
    settings = settings.with_copies(n_rows, flat=flat).with_lr_for(method, flat=flat)
    # before the budget: it counts the copies
    x, y = augmented_copies(x, y, settings.augment, settings.augment_copies, settings.augment_noise, seed)
    x, y = image_views(x, y, settings.augment_views, settings.augment_padding, settings.augment_flip, seed)
    dev = torch.device(device) if device is not None else default_device(teacher_module)
    example = x[:2].to(default_device(teacher_module))
    layout = settings.layout
    if layout in (None, "auto") and (student or {}).get("arch", "mlp") == "mlp":
        layout = "flat"  # an mlp student cannot predict a coefficient map
    cut: Cut = resolve_cut(graph_source, layer, example, transfer, layout)
    settings = settings.with_loss_for(map_targets=cut.map_shape is not None)
    cut.body.to(dev)
    cut.head.to(dev)
    if cache is not None:
        cache.bind(teacher_module)
    target_key = ("cut", cut.layer, cut.transfer.name, tuple(sorted(cut.transfer.params.items())))

    def targets_of(inputs: Tensor) -> TeacherTargets:
        compute = lambda: compute_targets(inputs, cut=cut, device=dev)  # noqa: E731
        return cache.targets(inputs, target_key, compute) if cache is not None else compute()

    targets = targets_of(x)
    probabilities = _probabilities(targets.outputs)
    to_logits = _to_logits_fn(probabilities)
    num_outputs = int(targets.outputs.shape[1])
    if y is not None:
        check_labels(y, num_outputs)
    return _Problem(x=x, y=y, n_rows=n_rows, test_x=test_x, test_y=test_y, input_shape=input_shape, cut=cut,
                    targets=targets, targets_of=targets_of, to_logits=to_logits,
                    teacher_logits=to_logits(targets.outputs), probabilities=probabilities,
                    num_outputs=num_outputs, device=dev, teacher_module=teacher_module, settings=settings)


def _coefficient_weights(coef: Tensor, scaling: str, model: nn.Module | None = None,
                         to_logits: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
    """``whiten``: direction j weighed by ``mean E[c²] / E[c_j²]`` (the overall scale kept).
    ``head``: by the mean squared sensitivity of the deployed model's logits to c_j at the
    teacher's coefficients, ``E‖∂ logits / ∂c_j‖²``, over its mean, clamped to [0.1, 10]."""
    if scaling == "none":
        return None
    if scaling == "head":
        return _head_weights(coef, model, to_logits)
    second = coef.double().pow(2).mean(0).clamp_min(1e-12)
    return (second.mean() / second).float()


def _head_weights(coef: Tensor, model: nn.Module, to_logits: Callable[[Tensor], Tensor]) -> Tensor:
    """Per-direction ``E‖∂ logits/∂c_j‖²`` through the imported layer and the frozen head, on up
    to 2,048 evenly spaced rows of the teacher's coefficients (flat layers only)."""
    if coef.ndim != 2:
        raise MethodError('coefficient_scaling="head" is for flat layers; a map layout has no per-row '
                          "coefficient vector: use \"none\"")
    dev = next(model.parameters()).device
    rows = coef[:: max(1, coef.shape[0] // 2048)].to(dev).float().requires_grad_(True)
    logits = to_logits(model.above_student(rows))
    sens = torch.zeros(coef.shape[1], dtype=torch.float64, device=dev)
    for i in range(logits.shape[1]):
        (g,) = torch.autograd.grad(logits[:, i].sum(), rows, retain_graph=i + 1 < logits.shape[1])
        sens += g.double().pow(2).sum(0)
    sens = sens / sens.mean().clamp_min(1e-300)
    return sens.clamp(0.1, 10.0).float().cpu()


def _distill_one(teacher: Any, data: Any, layer: str | None, method: str, student: dict[str, Any] | None,
                 n_components: Any, seed: int, *, test: Any, settings: TrainSettings, transfer: str | None,
                 representation: Any, pca_options: dict[str, Any] | None, cache: TargetCache | None,
                 measure_latency: bool, device: Any, progress: ProgressFn | None) -> DistillResult:
    """One method, one student (every method but ``auto``)."""
    t_start = time.perf_counter()
    n_components = _check_n_components(n_components)
    report = progress or (lambda phase, fraction, metrics: None)
    report("targets", 0.0, {})
    prob = _prepare(teacher, data, test, layer, method, transfer, settings, seed, cache, device, student)
    x, y, cut, dev = prob.x, prob.y, prob.cut, prob.device
    settings = prob.settings.with_budget(int(x.shape[0]))
    if method == "hint" or (method == "bregman" and settings.divergence_weight > 0):
        # the loss reads the layer's map: held now, in the targets phase (a channels map: one more pass)
        prob.targets.preactivations  # noqa: B018
    report("targets", 1.0, {"n": int(x.shape[0])})

    # --- the representation (bregman) ----------------------------------------------------------
    exported: nn.Module | None = None
    coef_targets: Tensor | None = None
    rep_metrics: dict[str, float] = {}
    if method == "bregman":
        report("representation", 0.0, {})
        exported, coef_source = _fit_or_check_representation(
            representation, prob.targets, cut, n_components, seed, pca_options, cache, x, settings.fit_rows,
            n_examples=prob.n_rows)
        report("representation", 0.8, {})
        coef_targets = coefficients(prob.targets, coef_source, cut.map_shape)
        rep_metrics = _representation_metrics(coef_source, exported)
        report("representation", 1.0, dict(rep_metrics))

    # --- the student and its deployed pipeline ---------------------------------------------------
    k = int(exported.k) if exported is not None else None
    # the label term's weight, once the size of the targets is known (a map's k x H x W values)
    map_values = k * math.prod(cut.map_shape[1:]) if k is not None and cut.map_shape is not None else None
    settings = settings.with_label_weight_for(method, map_values)
    losses = settings.loss_settings()
    width = student_width(method, num_outputs=prob.num_outputs, d=cut.d, k=k)
    map_head = None
    if cut.map_shape is not None and method in LAYER_METHODS:  # the channels layout: a map student
        # bregman predicts the k-channel coefficient map; hint the layer's map, flattened as the head reads it
        map_head = {"channels": width, "size": list(cut.map_shape[1:]), "flatten": method == "hint"}
    student_module, student_manifest = build_student(student, prob.input_shape, width, seed=seed, device=dev,
                                                     map_head=map_head)
    head = frozen_copy(cut.head).to(dev)
    if method == "bregman":
        frozen_layer = frozen_copy(exported).float().to(dev)
        if cut.map_shape is not None:  # the layer's (B, C, H, W) map, in the (B, C*H*W) order the head reads
            head = nn.Sequential(nn.Flatten(), head)
        model = DistilledModel(student_module, frozen_layer, head)
    elif method == "hint":
        model = DistilledModel(student_module, TransferLayer(cut.transfer), head)
    else:
        model = DistilledModel(student_module, output=nn.Softmax(dim=-1) if prob.probabilities else None)

    weights = (_coefficient_weights(coef_targets, losses.coefficient_scaling, model, prob.to_logits)
               if coef_targets is not None else None)
    batch_loss, names = make_batch_loss(method, losses, has_labels=y is not None, transfer=cut.transfer,
                                        outputs_to_logits=prob.to_logits,
                                        coefficient_weights=None if weights is None else weights.to(dev))
    available = {"x": x, "y": y, "teacher_logits": prob.teacher_logits, "coefficients": coef_targets}
    # the layer's map is held only when the loss reads it (hint, bregman's divergence term)
    tensors = [prob.targets.preactivations if name == "preactivations" else available[name] for name in names]

    # --- training: no teacher call from here on ----------------------------------------------------
    t_train = time.perf_counter()
    history = train_loop(model, tensors, batch_loss, epochs=settings.epochs, batch_size=settings.batch_size,
                         lr=settings.lr, weight_decay=settings.weight_decay, optimizer=settings.optimizer,
                         schedule=settings.schedule, seed=seed, device=dev, progress=progress, phase="train",
                         params=list(student_module.parameters()))
    train_time = time.perf_counter() - t_train

    # --- evaluation -------------------------------------------------------------------------------
    report("evaluate", 0.0, {})
    metrics = _evaluate(prob, model, method, coef_source if method == "bregman" else None)
    if measure_latency:
        metrics.update(cost_metrics(model, prob.teacher_module, x[: min(64, x.shape[0])], student=student_module))
    else:
        metrics.update({"parameters": float(parameter_count(model)),
                        "student_parameters": float(parameter_count(student_module)),
                        "teacher_parameters": float(parameter_count(prob.teacher_module))})
    metrics.update(rep_metrics)
    metrics.update({"n_transfer": float(prob.n_rows), "n_trained_on": float(x.shape[0]),
                    "epochs": float(settings.epochs), "train_time_s": train_time,
                    "augment_views": float(settings.augment_views), "layout": cut.layout,
                    "total_time_s": time.perf_counter() - t_start})
    report("evaluate", 1.0, dict(metrics))

    uses_layer = method in LAYER_METHODS
    return DistillResult(
        model=model, student=student_module, method=method,
        layer=cut.layer if uses_layer else None,
        transfer=cut.transfer.to_dict() if uses_layer else None,
        k=k, representation=exported, metrics=metrics, history=history, student_manifest=student_manifest,
        settings={**settings.record(method), "seed": seed, "n_components": n_components, "layout": cut.layout},
        input_shape=prob.input_shape, outputs_are_probabilities=prob.probabilities,
        example_input=x[:2].detach().cpu().clone(),  # not a view: it would hold the whole transfer set
    )


def _evaluate(prob: _Problem, model: nn.Module, method: str, coef_source: Any) -> dict[str, float]:
    """Quality on the transfer set and, with a test split, on it (and bregman's ceiling there)."""
    dev, to_logits = prob.device, prob.to_logits
    metrics: dict[str, float] = {}
    metrics.update(quality_metrics(to_logits(predict(model, prob.x, device=dev)), prob.y, prob.teacher_logits,
                                   prefix="transfer_"))
    if prob.test_x is None:
        return metrics
    test_targets = prob.targets_of(prob.test_x)
    metrics.update(quality_metrics(to_logits(predict(model, prob.test_x, device=dev)), prob.test_y,
                                   to_logits(test_targets.outputs), prefix="test_"))
    if method == "bregman":
        # The ceiling of any student of this representation: the teacher's own coefficients
        # of the test inputs through the imported layer and the head.
        ideal = coefficients(test_targets, coef_source, prob.cut.map_shape).to(dev)
        with torch.no_grad():
            ideal_out = to_logits(model.above_student(ideal))
        metrics.update(quality_metrics(ideal_out, prob.test_y, to_logits(test_targets.outputs),
                                       prefix="test_representation_"))
        metrics.pop("test_representation_teacher_accuracy", None)
    return metrics


#: Largest default k at a softmax layer: each row's coefficient step solves a k×k system, so
#: "every direction" of a 1000-class output would cost ~k³ per row; measured only up to d = 10.
MAX_DEFAULT_SOFTMAX_COMPONENTS = 64


def default_components(cut: Cut, n_rows: int) -> int | float:
    """``n_components=None``: at a softmax layer every direction, ``k = d − 1`` (at most
    :data:`MAX_DEFAULT_SOFTMAX_COMPONENTS`, and fewer than the ``n_rows`` transfer rows); else
    the smallest k explaining :data:`DEFAULT_EXPLAINED_DIVERGENCE` of the divergence, capped at
    :func:`default_k_cap` of the transfer examples when the fit is made."""
    if cut.transfer.name == "softmax":
        return max(1, min(cut.d - 1, MAX_DEFAULT_SOFTMAX_COMPONENTS, n_rows - 1))
    return DEFAULT_EXPLAINED_DIVERGENCE


def _fit_or_check_representation(representation: Any, targets: TeacherTargets, cut: Cut,
                                  n_components: int | float | None, seed: int,
                                  pca_options: dict[str, Any] | None, cache: TargetCache | None,
                                  x: Tensor, fit_rows: int | None = None, *,
                                  n_examples: int | None = None) -> tuple[nn.Module, Any]:
    """The exported layer and the object whose projections are the targets (x: the rows the
    fit reads, copies included; ``n_examples``: the transfer examples, which cap the default k)."""
    if representation is not None:
        exported, source = _representation_parts(representation)
        if cut.map_shape is not None and getattr(exported, "layout", "flat") != "channels":
            exported = exported.with_layout("channels", cut.map_shape[1:])
        if int(exported.d) != cut.d:
            raise ValueError(f"the representation has d={exported.d} units but layer {cut.layer!r} has "
                             f"{cut.d}: it was fitted on another layer")
        if exported.transfer.name != cut.transfer.name:
            raise ValueError(f"the representation uses the {exported.transfer.name!r} transfer but layer "
                             f"{cut.layer!r} is distilled with {cut.transfer.name!r}")
        return exported, source
    from bregman.pca import BregmanPCA

    a = targets.preactivations if cut.map_shape is None else targets.source  # channels: sampled from the stream
    if cut.map_shape is not None:  # the channels layout: one row per (example, position), maybe subsampled
        from bregman.layouts import DEFAULT_FIT_ROWS, sample_rows

        fit_rows = DEFAULT_FIT_ROWS if fit_rows is None else int(fit_rows)
        a = sample_rows(a, cut.map_shape, fit_rows, seed)
    share_or_k = default_components(cut, int(a.shape[0])) if n_components is None else n_components
    options = dict(pca_options or {})
    # float64 where it is cheap: the fit's normalization and projections are then exact to round-off
    a_fit = a.double() if a.numel() <= 20_000_000 else a

    # the cap counts the transfer examples, not their copies (which lie between them)
    n_cap = int(x.shape[0]) if n_examples is None else int(n_examples)
    cap = default_k_cap(n_cap) if n_components is None and isinstance(share_or_k, float) else None

    def fit() -> Any:
        # the share rule searches no further than the cap (a search past it, then a refit at the
        # cap, spent 75 of 88 s of a 115-row distillation on fits that were thrown away)
        return BregmanPCA(cut.transfer, n_components=share_or_k, random_state=seed,
                          **{"max_components": cap, **options}).fit(a_fit)

    key = ("bregman_pca", cut.layer, cut.transfer.name, share_or_k, cap, seed, tuple(sorted(options.items())),
           cut.layout, fit_rows)
    estimator = cache.representation(x, key, fit) if cache is not None else fit()
    exported = estimator.export_layer(layer=cut.layer)
    if cut.map_shape is not None:
        exported = exported.with_layout("channels", cut.map_shape[1:])
    return exported, estimator


def _representation_metrics(source: Any, exported: nn.Module) -> dict[str, float]:
    metrics = {"k": float(exported.k), "d": float(exported.d)}
    ratio = getattr(source, "explained_divergence_ratio_", None)
    if ratio is None:
        ratio = exported.manifest.get("divergence", {}).get("explained_divergence_ratio")
    if ratio is not None and len(ratio):
        metrics["explained_divergence"] = float(ratio[-1])
    divergence = getattr(source, "divergence_", None)
    if divergence is None:
        divergence = exported.manifest.get("divergence", {}).get("fit")
    if divergence is not None:
        metrics["representation_divergence"] = float(divergence)
    return metrics
