"""The training settings of a distillation, in one place.

:class:`TrainSettings` holds the optimizer, the budget, the loss weights of every method and the
transfer-set augmentation. ``bregman.distill(..., lr=..., epochs=...)`` builds one from its
keywords; a distillation job builds one from its spec's ``options`` and ``budget``
(:meth:`TrainSettings.from_options`), so the library and the service fill the same defaults.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Mapping

from bregman.distillation.methods import COEFFICIENT_LOSSES, LossSettings

#: default number of optimizer steps the epoch count aims at (see :func:`default_budget`)
DEFAULT_TARGET_STEPS = 1500
AUGMENTS = ("noise", "mixup")
#: ``augment_copies=None`` (the default): teacher-labelled copies of every row of a flat transfer
#: set by its number of examples n, ``(below, copies)`` — the first row with n < below; none from
#: :data:`DEFAULT_COPIES_BELOW` on (and none for image inputs, whose views are
#: ``augment_views``); see :meth:`TrainSettings.with_copies`. Measured (distill_table, 5 seeds,
#: session 13): 30 copies against 10 lifted every teacher-driven student on 12-180 examples —
#: bregman +1.9 / +1.0 (digits 1 / 2 %), +7.6 / +2.5 / +0.4 (classif20 1 / 2 / 5 %), +11.8 /
#: +16.9 / +4.8 (digits-hard 1 / 2 / 5 %), hint +2.6 / +1.4, +6.6 / +3.0 / +1.0, +6.8 / +6.4 /
#: +1.5 — and on 115 (digits-hard 10 %) bregman +1.3, hint +0.5; on 360 (classif20 10 %) about
#: nothing (bregman +0.16, hint −0.08) for twice the fit's time, so 10 copies from 200 examples
#: on (every comparison paired, seeds 0-4). 60 against 30 on 12-72 examples (eight cells):
#: bregman +0.95, hint +1.35 on average (digits-hard 1 / 2 / 5 %: bregman +4.7 / +3.4 / −0.95,
#: the last within its std of 2.4; hint +2.6 / +4.6 / +2.1).
DEFAULT_COPIES_BY_SIZE = ((100, 60), (200, 30), (500, 10))
DEFAULT_COPIES_BELOW = DEFAULT_COPIES_BY_SIZE[-1][0]


def default_copies(n: int) -> int:
    """The default number of copies of every row of a flat transfer set of ``n`` examples."""
    return next((copies for below, copies in DEFAULT_COPIES_BY_SIZE if n < below), 0)


#: ``label_weight=None`` (the default) for a bregman student that predicts a coefficient map
#: (the channels layout): this much per coefficient value of an example (k × H × W of them), so
#: the label term keeps its share of a loss that sums over the whole map; 0 otherwise. Measured
#: in benchmarks/image_flow (resnet8 and cnn students, 3 seeds; see the README's image table).
MAP_LABEL_WEIGHT_PER_VALUE = 0.1
#: ``lr=None`` (the default), decided by :meth:`TrainSettings.with_lr_for`: flat inputs (MLP
#: students) train at :data:`FLAT_LR`, a bregman student with the Huber coefficient loss (the
#: default with teacher-labelled copies) at :data:`FLAT_HUBER_BREGMAN_LR`, image inputs at
#: :data:`IMAGE_LR`. Measured in benchmarks/distill_table (flat, 5 and 20 seeds) and
#: benchmarks/image_flow (images); the README's distillation section has the numbers.
FLAT_LR = 1e-2
FLAT_HUBER_BREGMAN_LR = 3e-2
IMAGE_LR = 3e-3


def default_budget(n: int, batch_size: int | None = None, epochs: int | None = None) -> tuple[int, int]:
    """Default batch size and epochs for a transfer set of ``n`` examples.

    batch size: ``min(64, max(16, n // 4))`` (small sets get several steps per epoch);
    epochs: enough for about 1500 optimizer steps, clamped to [10, 300].
    """
    if batch_size is None:
        batch_size = int(min(64, max(16, n // 4)))
    if epochs is None:
        steps_per_epoch = math.ceil(n / batch_size)
        epochs = int(min(300, max(10, math.ceil(DEFAULT_TARGET_STEPS / steps_per_epoch))))
    return int(batch_size), int(epochs)


@dataclass(frozen=True)
class TrainSettings(LossSettings):
    """How a student is trained (every method reads the fields it uses): the loss fields of
    :class:`~bregman.distillation.methods.LossSettings`, and the optimizer, budget and data below.

    Parameters
    ----------
    epochs, batch_size : int, optional
        Default from :func:`default_budget` on the rows trained on (copies included).
    lr : float, optional
        Peak learning rate, cosine-decayed to 0 (``schedule="cosine"``). Default
        (:meth:`with_lr_for`): 1e-2 for flat inputs, 3e-2 for a bregman student with the Huber
        coefficient loss on flat inputs, 3e-3 for images.
    weight_decay : float, default 1e-4
    optimizer : {"adamw", "sgd"}, default "adamw"
    schedule : {"cosine", "constant"}, default "cosine"
    temperature, alpha : kd's temperature (4.0) and soft-label weight (0.9).
    coefficient_weight, divergence_weight, soft_label_weight : bregman's loss weights.
    label_weight : float, optional
        bregman's and hint's weight of the label loss through the frozen part. Default (None):
        decided by :meth:`with_label_weight_for` once the targets are known —
        :data:`MAP_LABEL_WEIGHT_PER_VALUE` per coefficient value for a bregman student that
        predicts a coefficient map (102.4 for a 16-channel 8x8 map), 0 otherwise.
    coefficient_scaling : bregman's per-direction weights (see
        :class:`bregman.distillation.methods.LossSettings`).
    coefficient_loss : {"auto", "huber", "squared"}, default "auto"
        bregman's coefficient loss. ``"auto"``: the Huber loss (``huber_delta``, default 1) when
        the transfer set has teacher-labelled copies (``augment_copies`` > 0: by default, fewer
        than 500 flat examples) or views (``augment_views``), or when the student predicts a
        coefficient map (the channels layout of a conv map); the squared loss otherwise.
        Measured (benchmarks/distill_table, session 7): with the default copies Huber was ahead
        of squared in all six classif20 / digits-hard cells at 2-10 % (3 seeds, +1.58 points on
        average); without copies it was not (−0.05 on average over four cells at 5-10 %; at
        100 %, digits-hard −2.33, classif20 +0.32, 5 seeds). On coefficient maps (image_flow,
        resnet8 students, session 8) it was ahead at 2, 5 and 10 % of the images.
    augment_copies : int, optional
        Teacher-labelled copies of every transfer row (see :mod:`bregman.distillation.augment`).
        Default (flat inputs): 60 below 100 examples, 30 below 200, 10 below
        :data:`DEFAULT_COPIES_BELOW` (500), else 0 (:func:`default_copies`); 0 turns them off.
    augment_noise : float, default 0.3
        The noisy copies' noise, in units of the inputs' standard deviation.
    augment : {"noise", "mixup"}, default "noise"
        What a copy is: the row plus Gaussian noise, or a mix of the row with another one.
    augment_views, augment_padding, augment_flip : int, int, bool; default 0, 4, True
        Image inputs (N, C, H, W): this many augmented views of every transfer image (random
        crop after zero padding, horizontal flip), labelled by the teacher once with the rest
        (:mod:`bregman.distillation.image_augment`).
    layout : {"auto", "flat", "channels"}, default "auto"
        How a conv map is represented (:mod:`bregman.layouts`): ``"channels"`` fits one row per
        position (d = C), exports a 1x1 convolution, and the student (a conv architecture with a
        1x1 head) predicts a k-channel coefficient map; ``"auto"``: channels for a conv map with
        an element-wise transfer and a conv student, else flat.
    fit_rows : int, optional
        Channels layout: fit on at most this many (example, position) rows, a seeded random
        choice (default :data:`bregman.layouts.DEFAULT_FIT_ROWS`); coefficients are computed at
        every position.
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # decided by with_lr_for()
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    augment_copies: int | None = None
    augment_noise: float = 0.3
    augment: str = "noise"
    augment_views: int = 0
    augment_padding: int = 4
    augment_flip: bool = True
    layout: str | None = "auto"
    fit_rows: int | None = None
    coefficient_loss: str = "auto"  # LossSettings' field, resolved by loss_settings()
    label_weight: float | None = None  # LossSettings' field, decided by with_label_weight_for()

    _coefficient_loss_choices: ClassVar[tuple[str, ...]] = COEFFICIENT_LOSSES + ("auto",)
    _undecided_weights: ClassVar[tuple[str, ...]] = ("label_weight",)

    def __post_init__(self) -> None:
        super().__post_init__()  # validates the loss weights
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, base: "TrainSettings | None" = None,
                     **more: Any) -> "TrainSettings":
        """Settings from a mapping (a job's ``options``); ``None`` values keep the defaults.

        An unknown name is a ``ValueError`` that lists the known ones.
        """
        given = {k: v for k, v in {**dict(options or {}), **more}.items() if v is not None}
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {', '.join(cls.names())}")
        return replace(base or cls(), **given)

    def loss_settings(self, map_targets: bool = False) -> LossSettings:
        """The loss fields alone (what :func:`~bregman.distillation.methods.make_batch_loss` reads),
        with ``coefficient_loss="auto"`` resolved: Huber with teacher-labelled copies or views,
        or when the student predicts a coefficient map (``map_targets``: the channels layout),
        else squared."""
        values = {f.name: getattr(self, f.name) for f in fields(LossSettings)}
        if values["label_weight"] is None:  # not decided for a map (with_label_weight_for): none
            values["label_weight"] = 0.0
        if values["coefficient_loss"] == "auto":
            robust = (self.augment_copies or 0) > 0 or self.augment_views > 0 or map_targets
            values["coefficient_loss"] = "huber" if robust else "squared"
        return LossSettings(**values)

    def with_loss_for(self, map_targets: bool) -> "TrainSettings":
        """These settings with ``coefficient_loss="auto"`` decided (see :meth:`loss_settings`)
        for targets that are coefficient maps (``map_targets``) or vectors."""
        if self.coefficient_loss != "auto":
            return self
        return replace(self, coefficient_loss=self.loss_settings(map_targets).coefficient_loss)

    def with_label_weight_for(self, method: str, map_values: int | None) -> "TrainSettings":
        """These settings with ``label_weight`` decided (kept when given): for ``bregman`` with
        coefficient-map targets of ``map_values`` values per example (k × H × W),
        :data:`MAP_LABEL_WEIGHT_PER_VALUE` × ``map_values``; else 0.

        Why per value: the coefficient loss sums over every value of the map (1,024 for 16
        channels of 8x8), so a label term of fixed weight is lost in it on large maps and
        dominates on small ones."""
        if self.label_weight is not None:
            return self
        weight = MAP_LABEL_WEIGHT_PER_VALUE * map_values if method == "bregman" and map_values else 0.0
        return replace(self, label_weight=float(weight))

    def with_copies(self, n: int, flat: bool = True) -> "TrainSettings":
        """These settings with ``augment_copies`` decided for a transfer set of ``n`` examples
        (``flat``: (N, features) inputs, not images): kept when given, else the default rule."""
        if self.augment_copies is not None:
            return self
        copies = default_copies(n) if flat else 0
        return replace(self, augment_copies=copies)

    def with_lr_for(self, method: str, flat: bool) -> "TrainSettings":
        """These settings with ``lr`` decided (kept when given) for ``method`` on ``flat``
        ((N, features)) inputs or images; call after :meth:`with_copies` (the copies decide
        bregman's coefficient loss, and with it its step size).

        Why: the Huber loss bounds each coefficient error's gradient at ``huber_delta``, so the
        same step moves a bregman student less than a squared loss moves hint's. On flat tasks
        at 1–10 % (5 seeds), bregman at 3e-2 against 1e-2 gained 2–4.5 points on digits-hard
        where hint at 3e-2 lost 1.4–1.9, and 3e-3 (the earlier default) lost up to 6 points for
        both; image students were measured at 3e-3."""
        if self.lr is not None:
            return self
        if not flat:
            return replace(self, lr=IMAGE_LR)
        huber = self.with_loss_for(map_targets=False).coefficient_loss == "huber"
        return replace(self, lr=FLAT_HUBER_BREGMAN_LR if method == "bregman" and huber else FLAT_LR)

    def with_budget(self, n: int) -> "TrainSettings":
        """These settings with the batch size and epochs filled in for ``n`` training rows."""
        batch_size, epochs = default_budget(n, self.batch_size, self.epochs)
        return replace(self, batch_size=batch_size, epochs=epochs)

    def record(self, method: str) -> dict[str, Any]:
        """What the manifest and the report keep: the common settings and ``method``'s loss terms."""
        common = {k: v for k, v in asdict(self).items()
                  if k in ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "augment_copies",
                           "augment_views", "layout")}
        if self.augment_copies:
            common.update(augment=self.augment, augment_noise=self.augment_noise)
        else:
            common["augment_noise"] = None
        return {**common, **self.loss_settings().for_method(method)}
