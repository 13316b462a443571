"""Jobs: the two kinds of work (a layer's representation, a student's distillation) and their state."""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from api_schemas.common import Page, example


class JobKind(str, Enum):
    representation = "representation"
    distillation = "distillation"


class JobState(str, Enum):
    """``queued → running → succeeded | failed | cancelled``."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})

#: ``auto`` runs on a GPU worker when the job asks for no device and none is needed; jobs are
#: routed to the ``gpu`` queue for ``cuda`` and to the ``cpu`` queue otherwise.
Device = Literal["cpu", "cuda"]

#: ``bregman``: predict the layer's Bregman coefficients; ``kd``: soft labels (Hinton et al.);
#: ``hint``: regress the layer's pre-activations (FitNets-style); ``labels``: labels alone;
#: ``auto``: train those on a validation split of the transfer set and keep the best.
DistillationMethod = Literal["auto", "bregman", "kd", "hint", "labels"]

#: ``auto``: softmax at the teacher's output layer (its logits), else the transfer listed after the
#: layer; ``listed``: always the listed one; ``softmax``: only at the output layer. The name of the
#: listed transfer itself (e.g. ``leaky_relu``) is accepted too and means ``listed``; any other name
#: is refused (422): a layer's divergence is defined by the transfer that actually follows it.
TransferChoice = str

#: how a conv map (C, H, W) becomes rows: ``channels`` (one row of C values per position: d = C, a
#: 1x1 exported layer, a coefficient-map student) or ``flat`` (one row of C*H*W values per
#: example); ``auto``: the layer listing's default (channels for conv maps; a distillation with
#: an mlp student stays flat).
Layout = Literal["auto", "flat", "channels"]
_LAYOUT_FIELD = dict(description="auto, flat or channels (conv maps): how the layer's map becomes rows.")
_FIT_ROWS_FIELD = dict(ge=1, description=(
    "Channels layout: fit on at most this many (example, position) rows, a seeded random choice (default "
    "65536); coefficients are computed at every position."))


class Budget(BaseModel):
    """Limits of one job. ``time_limit_s`` becomes the worker's time limit for the job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{"time_limit_s": 600, "epochs": 20}]})

    time_limit_s: int = Field(600, ge=1, le=7 * 24 * 3600, description="Wall-clock limit of the job.")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Training epochs (distillation).")
    max_train_rows: int | None = Field(
        None, ge=1, le=1_000_000_000,
        description="Use at most this many training rows (the first ones, after a seeded shuffle).",
    )


class SolverOptions(BaseModel):
    """Options of the Bregman PCA solver; unset fields keep the library's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{"max_iter": 50, "tol": 1e-6}]})

    mean: Literal["joint", "centroid"] = Field("joint", description="Optimize the mean jointly or fix the centroid.")
    max_iter: int | None = Field(None, ge=1, le=10_000)
    tol: float | None = Field(None, gt=0)
    ridge: float | None = Field(None, ge=0, description="Ridge on the coefficients (λ).")


#: the largest seed (seeds are 32-bit: numpy's generators refuse more)
MAX_SEED = 2**32 - 1
#: identifiers are short (``tch_`` + 12 hex digits); 64 is the database column's width
ID_LENGTH = 64


class _SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    teacher_id: str = Field(max_length=ID_LENGTH, description="An uploaded teacher in status ready.",
                            examples=["tch_3c9d8e7f"])
    dataset: str = Field(
        max_length=ID_LENGTH, description="A data set id, or a built-in data set's name (e.g. `digits`).",
        examples=["digits"],
    )
    device: Device = Field("cpu", description="Where to run: routes the job to the cpu or gpu queue.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of every random choice (0 .. 2^32-1).")
    budget: Budget = Field(default_factory=Budget)


class RepresentationSpec(_SpecBase):
    """Fit the Bregman representation of one teacher layer on a data set's training inputs.

    Give ``n_components`` (k) or ``target_share`` (the smallest k whose explained share of the
    divergence reaches it), not both; neither means k = min(8, d).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "representation",
                    "teacher_id": "tch_3c9d8e7f",
                    "dataset": "digits",
                    "layer": "2",
                    "transfer": "auto",
                    "n_components": 8,
                    "solver": {"mean": "joint", "max_iter": 30},
                    "budget": {"time_limit_s": 300},
                }
            ]
        },
    )

    kind: Literal["representation"] = "representation"
    layer: str = Field(max_length=255, description="A tappable layer path from GET /v1/teachers/{id}/layers.",
                       examples=["2"])
    transfer: TransferChoice = Field(
        "auto", max_length=32,
        description="auto, listed, softmax (output layer only), or the name of the transfer after the layer.",
    )
    n_components: int | None = Field(None, ge=1, le=1_000_000, description="k, the number of directions (k < d).")
    target_share: float | None = Field(
        None, gt=0, le=1, description="Pick the smallest k explaining this share of the divergence."
    )
    solver: SolverOptions = Field(default_factory=SolverOptions)
    layout: Layout = Field("auto", **_LAYOUT_FIELD)
    fit_rows: int | None = Field(None, **_FIT_ROWS_FIELD)

    @model_validator(mode="after")
    def _one_of_k_or_share(self) -> "RepresentationSpec":
        if self.n_components is not None and self.target_share is not None:
            raise ValueError("give n_components or target_share, not both")
        return self


class DistillOptions(BaseModel):
    """Training settings and loss weights; unset fields keep the library's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{"lr": 0.003, "temperature": 4.0}]})

    batch_size: int | None = Field(None, ge=1, le=65536)
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0)
    optimizer: Literal["adamw", "sgd"] | None = None
    schedule: Literal["cosine", "constant"] | None = None
    temperature: float | None = Field(None, gt=0, description="kd's temperature.")
    alpha: float | None = Field(None, ge=0, le=1, description="kd's weight of the soft-label term.")
    coefficient_weight: float | None = Field(None, ge=0)
    divergence_weight: float | None = Field(None, ge=0)
    label_weight: float | None = Field(None, ge=0, le=1e6, description=(
        "bregman and hint: weight of the label cross-entropy on the deployed model's output (used when the "
        "transfer set has labels). Default: for a bregman student that predicts a coefficient map (channels "
        "layout) 0.1 per value of the map (102.4 for 16 channels of 8x8), else 0."))
    soft_label_weight: float | None = Field(None, ge=0, description=(
        "bregman: weight of kd's soft-label term on the deployed model's output (through the imported layer and head)."))
    coefficient_loss: Literal["auto", "huber", "squared"] | None = Field(None, description=(
        "bregman: the loss on the coefficients. auto (default): Huber where the transfer set has "
        "teacher-labelled copies or image views or the student predicts a coefficient map (channels layout), "
        "squared otherwise (the quality benchmarks' measured choice)."))
    huber_delta: float | None = Field(None, gt=0, le=1e6, description=(
        "The Huber loss's threshold, in coefficient units (default 1)."))
    augment_copies: int | None = Field(None, ge=0, le=100, description=(
        "Copies of every transfer row, labelled by the teacher (default: 60 below 100 flat examples, "
        "30 below 200, 10 below 500, else none; 0 turns them off)."))
    augment_noise: float | None = Field(None, ge=0, le=10, description=(
        "The copies' noise, in units of the inputs' standard deviation (default 0.3)."))
    augment_views: int | None = Field(None, ge=0, le=50, description=(
        "Images: augmented views of every transfer image (random crop after padding, horizontal flip), "
        "labelled by the teacher once."))
    augment_padding: int | None = Field(None, ge=0, le=64, description="Zero padding before the crop (default 4).")
    augment_flip: bool | None = Field(None, description="Flip half of the views horizontally (default true).")


Width = Annotated[int, Field(ge=1, le=65_536)]
ActivationName = Literal["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu"]


class StudentArgs(BaseModel):
    """The builder arguments of the registry architectures (``bregman/models.py``), each bounded.

    Which ones an architecture takes is :data:`api_schemas.param_count.ARCH_ARGUMENTS`; the
    input size (``in_features`` / ``in_channels``) and ``num_classes`` are filled in by the
    worker from the teacher and the method (give them only to assert them).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"examples": [{"hidden": [32], "activation": "relu"}]})

    hidden: list[Width] | Width | None = Field(
        None, description="mlp: hidden widths (a list, at most 64); cnn: the hidden Linear's width (one integer).")
    activation: ActivationName | list[ActivationName] | None = Field(
        None, description="mlp: one name or one per hidden layer; cnn: one name.")
    negative_slope: float | None = Field(None, ge=0, le=1, description="Slope of leaky_relu below zero.")
    output_activation: Literal["softmax", "log_softmax"] | None = Field(None, description="mlp only.")
    channels: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None, min_length=1, max_length=16, description="cnn: output channels of each convolution.")
    batch_norm: bool | None = Field(None, description="cnn: BatchNorm after each convolution.")
    depth: int | None = Field(None, ge=8, le=1000, description="resnet: 6n+2; wrn: 6n+4.")
    width: int | None = Field(None, ge=1, le=64, description="resnet: stage width multiplier.")
    widen_factor: int | None = Field(None, ge=1, le=64, description="wrn: width multiplier k.")
    base_width: int | None = Field(None, ge=1, le=1024, description="ResNets and WRNs: channels of the first stage.")
    dropout: float | None = Field(None, ge=0, lt=1, description="WRNs: dropout inside blocks.")
    in_features: int | None = Field(None, ge=1, le=100_000_000, description="mlp: must equal the inputs' size.")
    in_channels: int | None = Field(None, ge=1, le=4096, description="Convolutional nets: must equal the inputs' channels.")
    num_classes: int | None = Field(None, ge=1, le=1_000_000, description="Must equal the width the method needs.")

    @model_validator(mode="after")
    def _hidden_list_length(self) -> "StudentArgs":
        if isinstance(self.hidden, list) and len(self.hidden) > 64:
            raise ValueError(f"hidden lists {len(self.hidden)} layers; at most 64")
        if isinstance(self.activation, list) and len(self.activation) > 64:
            raise ValueError("activation lists more than 64 names")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):  # the stored spec lists only what was given
        return {k: v for k, v in handler(self).items() if v is not None}

    def given(self) -> dict[str, Any]:
        """The arguments that were set (None means the builder's default)."""
        return {k: v for k, v in self.__dict__.items() if k in StudentArgs.model_fields and v is not None}


class StudentSpec(StudentArgs):
    """The student's architecture: a model-registry name and its arguments, inline
    (``{"arch": "mlp", "hidden": [32]}``) or under ``args`` (``{"arch": "mlp", "args": {"hidden": [32]}}``).

    Unknown keys, and arguments the architecture does not take, are refused (422); the
    student's parameter count is bounded by the server (``BREGKD_MAX_STUDENT_PARAMETERS``).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"examples": [{"arch": "mlp", "hidden": [32]}]})

    arch: str = Field("mlp", max_length=32, description="Model registry name, e.g. mlp, cnn, resnet8, wrn_16_1.")
    args: StudentArgs | None = Field(None, description="The arguments, as an alternative to giving them inline.")

    @model_validator(mode="after")
    def _arguments_fit_the_arch(self) -> "StudentSpec":
        from api_schemas.param_count import ARCH_ARGUMENTS

        if self.arch not in ARCH_ARGUMENTS:
            raise ValueError(f"unknown student architecture {self.arch!r}; choose one of {', '.join(ARCH_ARGUMENTS)}")
        inline, nested = StudentArgs.given(self), (self.args.given() if self.args is not None else {})
        both = sorted(set(inline) & set(nested))
        if both:
            raise ValueError(f"student argument(s) {both} given both inline and under 'args': give them once")
        args = {**inline, **nested}
        wrong = sorted(set(args) - ARCH_ARGUMENTS[self.arch])
        if wrong:
            raise ValueError(f"architecture {self.arch!r} takes no argument(s) {wrong}; it takes "
                             f"{', '.join(sorted(ARCH_ARGUMENTS[self.arch]))}")
        if self.arch == "mlp" and isinstance(args.get("hidden"), int):
            raise ValueError("mlp's hidden is a list of widths, e.g. [64, 32]")
        if self.arch == "cnn" and isinstance(args.get("hidden"), list):
            raise ValueError("cnn's hidden is one width (an integer), e.g. 64")
        if self.arch == "cnn" and isinstance(args.get("activation"), list):
            raise ValueError("cnn's activation is one name")
        acts, hidden = args.get("activation"), args.get("hidden")
        if isinstance(acts, list) and isinstance(hidden, list) and len(acts) != len(hidden):
            raise ValueError(f"activation lists {len(acts)} names but hidden has {len(hidden)} layers; "
                             "give one name or one per layer")
        return self

    def arguments(self) -> dict[str, Any]:
        """The builder arguments given, inline and under ``args`` merged."""
        return {**StudentArgs.given(self), **(self.args.given() if self.args is not None else {})}



class DistillationSpec(_SpecBase):
    """Train a student through a teacher layer's Bregman representation (and baselines).

    Name either a finished representation job (its layer, transfer and k are reused) or a
    ``layer`` (with optional ``n_components``), not both.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "distillation",
                    "teacher_id": "tch_3c9d8e7f",
                    "dataset": "digits",
                    "representation_job_id": "job_91ab02cd",
                    "student": {"arch": "mlp", "hidden": [32]},
                    "methods": ["bregman", "kd", "labels"],
                    "budget": {"epochs": 10, "time_limit_s": 600},
                }
            ]
        },
    )

    kind: Literal["distillation"] = "distillation"
    representation_job_id: str | None = Field(None, max_length=ID_LENGTH, description="A succeeded representation job.")
    layer: str | None = Field(None, max_length=255,
                              description="Teacher layer to distill through (without a representation job).")
    transfer: TransferChoice = Field("auto", max_length=32, description="As in a representation job.")
    n_components: int | None = Field(None, ge=1, le=1_000_000, description=(
        "k (default: every direction, d − 1 up to 64, at a softmax layer; elsewhere the smallest k explaining "
        "99.9 % of the divergence)."))
    student: StudentSpec = Field(default_factory=StudentSpec)
    methods: list[DistillationMethod] = Field(
        default_factory=lambda: ["auto"],
        min_length=1,
        description="The first method's student is the job's `student.*` artifact; the others are compared.",
    )
    options: DistillOptions = Field(default_factory=lambda: DistillOptions())
    layout: Layout = Field("auto", **_LAYOUT_FIELD)
    fit_rows: int | None = Field(None, **_FIT_ROWS_FIELD)
    onnx: bool = Field(True, description="Also export the student as ONNX (where the exporter can).")

    @model_validator(mode="after")
    def _layer_source(self) -> "DistillationSpec":
        if self.representation_job_id is None and self.layer is None:
            raise ValueError("name a representation_job_id or a layer")
        if self.representation_job_id is not None and self.layer is not None:
            raise ValueError("name a representation_job_id or a layer, not both")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods must not repeat")
        return self


JobSpec = Annotated[Union[RepresentationSpec, DistillationSpec], Field(discriminator="kind")]


#: ``POST /v1/jobs`` body: the spec itself, a union discriminated by ``kind``.
JobCreate = JobSpec


class JobProgress(BaseModel):
    """How far a job is: a fraction in [0, 1], the phase it is in and an estimate of time left."""

    model_config = example(fraction=0.42, phase="train:bregman", eta_s=31.5)

    fraction: float = Field(0.0, ge=0, le=1)
    phase: str | None = None
    eta_s: float | None = Field(None, description="Estimated seconds left (from the rate so far).")


class JobOut(BaseModel):
    """A job record."""

    model_config = example(
        id="job_91ab02cd",
        kind="representation",
        state="running",
        spec=RepresentationSpec.model_config["json_schema_extra"]["examples"][0],
        progress={"fraction": 0.42, "phase": "fit", "eta_s": 12.0},
        metrics={"divergence": 0.21},
        error=None,
        attempts=1,
        created_at="2026-11-25T15:00:00Z",
        started_at="2026-11-25T15:00:01Z",
        finished_at=None,
        cancel_requested=False,
    )

    id: str
    kind: JobKind
    state: JobState
    spec: dict[str, Any]
    progress: JobProgress
    metrics: dict[str, Any] = Field(default_factory=dict, description="Metrics so far; the final ones when done.")
    error: str | None = Field(None, description="Why it failed, in words a user can act on.")
    attempts: int = Field(0, description="How many times a worker started it.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False


class JobList(Page[JobOut]):
    model_config = example(items=[JobOut.model_config["json_schema_extra"]["examples"][0]], total=1, limit=50, offset=0)


class JobEvent(BaseModel):
    """One server-sent event of ``GET /v1/jobs/{id}/events`` (``event: progress`` or ``event: end``)."""

    model_config = example(event="progress", job=JobOut.model_config["json_schema_extra"]["examples"][0])

    event: Literal["progress", "end"]
    job: JobOut
