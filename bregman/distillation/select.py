"""``method="auto"``: train the candidate methods, keep the one that validates best.

The transfer set is split once (stratified by label, or by the teacher's prediction without
labels; seeded): every candidate trains on the same training part with the same budget (the
same batch size and number of optimizer steps) and is scored on the validation part — by
accuracy where there are labels, else by agreement with the teacher; ties go to the higher
agreement, then the lower KL to the teacher, then the earlier candidate; and the first
candidate (bregman at the default k) is displaced only by a score higher by more than
:data:`SELECTION_MARGIN_Z` standard errors (:func:`choose`). The winner is then
trained again, alone, on the whole transfer set exactly as ``distill(method=<winner>)`` would
train it, so a user loses no row to the choice. The test split is read only after the choice:
to fill the table's test column and the final student's metrics.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bregman.distillation.evaluate import quality_metrics
from bregman.distillation.settings import TrainSettings
from bregman.distillation.targets import compute_targets
from bregman.training import ProgressFn, default_device, predict

#: A validation split smaller than this does not choose: at 1 % of the quality benchmark's
#: tasks (3-9 validation rows) auto ended 7.6 / 2.6 / 0.8 points below the best single method
#: (distill_table, 5 seeds), while bregman at the default k, which it then returns, ended
#: 0 / 1.6 / 1.0 below; at 15 rows (digits-hard, 5 %) auto lost 3.3 points to it.
MIN_VALIDATION_ROWS = 20

#: Another candidate displaces the first one (bregman at the default k) only when its validation
#: score beats the first one's by more than this many binomial standard errors of that score,
#: ``sqrt(p (1 − p) / n)`` (at least ``1 / n``). Measured on auto's stored selection tables
#: (distill_table, 5 seeds, the seven cells with >= 20 validation rows of digits / classif20 /
#: digits-hard at 5-100 %): the plain argmax ended 0.58 points below the best single method on
#: average (worst −2.27), a margin of one standard error 0.44 (−2.09), of two 0.21 (−1.06): the
#: differences between candidates are mostly smaller than what a few hundred rows resolve.
SELECTION_MARGIN_Z = 2.0

#: bregman candidates' k at an element-wise layer besides the default share rule (a k that the
#: layer or the training rows cannot hold is left out; one the default already chose, too)
EXTRA_K = (16,)


def stratified_split(strata: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices): about ``fraction`` of every stratum held out.

    Each class gives ``floor(fraction · n_c)`` rows; the rows still missing from
    ``round(fraction · N)`` come from the classes with the largest remainders (seeded ties).
    A class never gives its last row, so every class seen stays in the training part; at least
    one row is held out when ``N >= 2``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction}")
    strata = torch.as_tensor(strata).long().cpu()
    n = int(strata.numel())
    if n < 2:
        raise ValueError(f"method='auto' holds out a validation split and needs at least 2 rows, got {n}")
    g = torch.Generator().manual_seed(90_000 + int(seed))
    classes = torch.unique(strata)
    members = {int(c): torch.nonzero(strata == c).flatten() for c in classes}
    members = {c: idx[torch.randperm(idx.numel(), generator=g)] for c, idx in members.items()}
    quota = {c: min(math.floor(fraction * idx.numel()), idx.numel() - 1) for c, idx in members.items()}
    want = max(1, round(fraction * n))
    jitter = torch.rand(len(members), generator=g).tolist()
    order = sorted(members, key=lambda c: (-(fraction * members[c].numel() - quota[c]), jitter[list(members).index(c)]))
    while sum(quota.values()) < want:
        grown = False
        for c in order:
            if sum(quota.values()) >= want:
                break
            if quota[c] < members[c].numel() - 1:
                quota[c] += 1
                grown = True
        if not grown:  # every class is down to one training row
            break
    val = torch.cat([members[c][:quota[c]] for c in members]) if any(quota.values()) else torch.empty(0, dtype=torch.long)
    if val.numel() == 0:
        raise ValueError(f"a validation split of {n} rows in {len(members)} classes would take the last row of a "
                         "class: pass more rows, or choose a method")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val.sort().values


def default_candidates(*, has_labels: bool, n_components: Any = None, representation: Any = None,
                       softmax_layer: bool = False) -> list[dict[str, Any]]:
    """bregman at the default k (and :data:`EXTRA_K` at an element-wise layer), hint, kd, labels.

    A given ``n_components`` or ``representation`` is the only bregman candidate.
    """
    if representation is not None or n_components is not None:
        bregman = [{"method": "bregman", "n_components": n_components}]
    else:
        bregman = [{"method": "bregman", "n_components": None}]
        if not softmax_layer:
            bregman += [{"method": "bregman", "n_components": k} for k in EXTRA_K]
    rest = [{"method": "hint"}, {"method": "kd"}] + ([{"method": "labels"}] if has_labels else [])
    return bregman + rest


def candidate_name(method: str, k: Any) -> str:
    """``"bregman k=12"`` (``k=default`` before the default rule has chosen), or the method."""
    if method != "bregman":
        return method
    return f"bregman k={'default' if k is None else k}"


def choose(rows: list[dict[str, Any]], n_validation: int, z: float = SELECTION_MARGIN_Z) -> tuple[int, float]:
    """(index of the chosen row, the margin): the best validation score — ties to the higher
    agreement, then the lower KL, then the earlier row — unless it beats the first row's score
    by no more than ``z`` binomial standard errors of that score, in which case the first row."""
    best = max(range(len(rows)), key=lambda j: (rows[j]["validation_score"], rows[j]["validation_agreement"],
                                                 -rows[j]["validation_kl_to_teacher"], -j))
    p, n = float(rows[0]["validation_score"]), max(1, int(n_validation))
    margin = z * math.sqrt(max(p * (1.0 - p), 1.0 / n) / n)
    if best != 0 and rows[best]["validation_score"] <= p + margin:
        return 0, margin
    return best, margin


def _score(metrics: dict[str, float], has_labels: bool) -> float:
    return float(metrics["test_accuracy"] if has_labels else metrics["test_agreement"])


def auto_distill(teacher: Any, data: tuple[Any, Any], *, layer: str | None, student: dict[str, Any] | None,
                 n_components: Any, seed: int, test: Any, settings: TrainSettings, transfer: str | None,
                 representation: Any, pca_options: dict[str, Any] | None, cache: Any, measure_latency: bool,
                 device: Any, progress: ProgressFn | None, validation_fraction: float,
                 candidates: list[dict[str, Any]] | None, min_validation_rows: int | None = None) -> Any:
    """Pick the method on a validation split; returns the winner's ``DistillResult``.

    ``result.metrics["selection"]`` is a list with one dict per candidate, in training order::

        {"candidate": "bregman k=12", "method": "bregman", "layer": "2", "k": 12,
         "n_components": None,               # what the candidate asked for (None: the default rule)
         "validation_accuracy": 0.95 | None, # None without labels
         "validation_agreement": 0.97, "validation_kl_to_teacher": 0.08,
         "validation_score": 0.95,           # the accuracy, or the agreement without labels
         "test_accuracy": 0.94 | None, "test_agreement": 0.96 | None,   # None without a test split
         "chosen": True}

    and ``metrics`` also holds ``selection_metric`` ("accuracy" or "agreement"),
    ``selection_validation_rows``, ``selection_margin`` (the score by which another candidate
    must beat the first, see :func:`choose`; the first row then says so in ``"reason"``),
    ``selection_training_rows`` and ``selection_steps`` (the optimizer steps every candidate got).

    With fewer than ``min_validation_rows`` validation rows (default :data:`MIN_VALIDATION_ROWS`)
    a choice would be noise: the first candidate is trained on every row and returned, the
    table holds that one row with ``"chosen": True`` and ``"reason"``, and
    ``metrics["selection_skipped"]`` says why (no candidate is trained on a split).
    """
    from bregman.distillation.api import (
        TargetCache,
        _distill_one,
        _probabilities,
        _split_data,
        _teacher_parts,
        _to_logits_fn,
    )
    from bregman.distillation.cut import resolve_cut

    report = progress or (lambda phase, fraction, metrics: None)
    _, teacher_module, _ = _teacher_parts(teacher)
    x, y = _split_data(data, "data")
    has_labels = y is not None
    # the teacher runs through its cut (a loaded .pt2 program cannot be switched to eval mode)
    cut = resolve_cut(teacher, layer, x[:2].to(default_device(teacher_module)), transfer)
    dev = torch.device(device) if device is not None else default_device(teacher_module)

    def teacher_logits(inputs: Tensor) -> Tensor:
        outputs = compute_targets(inputs, cut=cut, device=dev).outputs
        return _to_logits_fn(_probabilities(outputs))(outputs)

    if has_labels:
        strata = y
    else:  # stratify by what the teacher says
        strata = teacher_logits(x).argmax(1)
    train_idx, val_idx = stratified_split(strata, validation_fraction, seed)
    floor = MIN_VALIDATION_ROWS if min_validation_rows is None else int(min_validation_rows)
    x_tr, y_tr = x[train_idx], (y[train_idx] if has_labels else None)
    x_val, y_val = x[val_idx], (y[val_idx] if has_labels else None)
    cache = cache if cache is not None else TargetCache()
    if candidates is None:
        candidates = default_candidates(has_labels=has_labels, n_components=n_components,
                                        representation=representation,
                                        softmax_layer=cut.transfer.name == "softmax")
    if not has_labels:
        candidates = [c for c in candidates if c.get("method") != "labels"]
    if not candidates:
        raise ValueError("method='auto' has no candidate to train")
    # every candidate: the same rows, batch size and epochs (copies counted as distill counts them)
    split_settings = settings.with_copies(int(x_tr.shape[0]), flat=x.dim() == 2)
    n_trained = int(x_tr.shape[0]) * (split_settings.augment_copies + 1)
    budget = split_settings.with_budget(n_trained)
    steps = math.ceil(n_trained / budget.batch_size) * budget.epochs

    if int(val_idx.numel()) < floor:
        return _without_choice(candidates[0], int(val_idx.numel()), floor, teacher=teacher, data=data, layer=layer,
                               student=student, seed=seed, test=test, settings=settings, transfer=transfer,
                               representation=representation, pca_options=pca_options, cache=cache,
                               measure_latency=measure_latency, device=device, report=report,
                               metric="accuracy" if has_labels else "agreement")

    rows: list[dict[str, Any]] = []
    results: list[Any] = []
    seen_k: set[int] = set()
    usable = [c for c in candidates if not _k_unusable(c, cut.d, int(x_tr.shape[0]))]
    for i, cand in enumerate(usable):
        method = cand["method"]
        k_asked = cand.get("n_components")
        label = candidate_name(method, k_asked)
        if method == "bregman" and isinstance(k_asked, int) and k_asked in seen_k:
            continue  # the default rule already chose this k

        def sub(phase: str, fraction: float, metrics: dict, _label: str = label, _i: int = i) -> None:
            report(f"{_label}:{phase}", fraction, {**(metrics or {}), "candidate_index": _i,
                                                   "candidate_count": len(usable) + 1})

        result = _distill_one(teacher, (x_tr, y_tr), cand.get("layer", layer), method, student, k_asked, seed,
                              test=(x_val, y_val), settings=budget, transfer=transfer,
                              representation=representation if method == "bregman" else None,
                              pca_options=pca_options, cache=cache, measure_latency=False, device=device,
                              progress=sub)
        if method == "bregman":
            seen_k.add(int(result.k))
        m = result.metrics
        rows.append({"candidate": candidate_name(method, result.k), "method": method, "layer": result.layer,
                     "k": result.k, "n_components": k_asked,
                     "validation_accuracy": m.get("test_accuracy") if has_labels else None,
                     "validation_agreement": m["test_agreement"], "validation_kl_to_teacher": m["test_kl_to_teacher"],
                     "validation_score": _score(m, has_labels), "test_accuracy": None, "test_agreement": None,
                     "chosen": False})
        results.append(result)
    best, margin = choose(rows, int(val_idx.numel()))
    rows[best]["chosen"] = True
    if best == 0 and max(row["validation_score"] for row in rows) > rows[0]["validation_score"]:
        rows[0]["reason"] = (f"kept: no candidate beat its validation score by more than {margin:.3f} "
                             f"({SELECTION_MARGIN_Z:g} standard errors on {int(val_idx.numel())} rows)")
    winner = rows[best]

    # --- the choice is made: train the winner on every row, then read the test split -------------
    out = _train_on_every_row(winner["candidate"], winner["method"],
                              winner["layer"] if winner["method"] in ("bregman", "hint") else layer,
                              winner["n_components"], len(usable), len(usable) + 1, teacher=teacher, data=data,
                              student=student, seed=seed, test=test, settings=settings, transfer=transfer,
                              representation=representation, pca_options=pca_options, cache=cache,
                              measure_latency=measure_latency, device=device, report=report)
    if test is not None:
        test_x, test_y = _split_data(test, "test")
        reference = teacher_logits(test_x)
        for row, result in zip(rows, results):
            outputs = predict(result.model, test_x)
            q = quality_metrics(_to_logits_fn(result.outputs_are_probabilities)(outputs), test_y, reference)
            row["test_accuracy"] = q.get("accuracy")
            row["test_agreement"] = q["agreement"]
    out.metrics.update({"selection": rows, "selection_metric": "accuracy" if has_labels else "agreement",
                        "selection_validation_rows": float(val_idx.numel()), "selection_margin": margin,
                        "selection_training_rows": float(train_idx.numel()), "selection_steps": float(steps)})
    out.settings["selected_by"] = "auto"
    return out


def _train_on_every_row(label: str, method: str, layer: Any, n_components: Any, index: int, count: int, *,
                        teacher: Any, data: Any, student: Any, seed: int, test: Any, settings: TrainSettings,
                        transfer: Any, representation: Any, pca_options: Any, cache: Any, measure_latency: bool,
                        device: Any, report: Any) -> Any:
    """``method`` trained on every transfer row, as ``distill(method=...)`` trains it; its progress
    is reported as candidate ``index`` of ``count``, phases prefixed by ``final <label>:``."""
    from bregman.distillation.api import _distill_one

    def final(phase: str, fraction: float, metrics: dict) -> None:
        report(f"final {label}:{phase}", fraction, {**(metrics or {}), "candidate_index": index,
                                                    "candidate_count": count})

    return _distill_one(teacher, data, layer, method, student, n_components, seed, test=test, settings=settings,
                        transfer=transfer, representation=representation if method == "bregman" else None,
                        pca_options=pca_options, cache=cache, measure_latency=measure_latency, device=device,
                        progress=final)


def _without_choice(cand: dict[str, Any], n_val: int, floor: int, *, layer: Any, metric: str,
                    **train: Any) -> Any:
    """The first candidate trained on every row, as ``distill(method=...)`` trains it."""
    method, label = cand["method"], candidate_name(cand["method"], cand.get("n_components"))
    reason = (f"a validation split of {n_val} rows (fewer than {floor}) cannot tell the candidates apart: "
              f"{label} is returned without a choice")
    out = _train_on_every_row(label, method, cand.get("layer", layer), cand.get("n_components"), 0, 1, **train)
    m = out.metrics
    row = {"candidate": candidate_name(method, out.k), "method": method, "layer": out.layer, "k": out.k,
           "n_components": cand.get("n_components"), "validation_accuracy": None, "validation_agreement": None,
           "validation_kl_to_teacher": None, "validation_score": None, "test_accuracy": m.get("test_accuracy"),
           "test_agreement": m.get("test_agreement"), "chosen": True, "reason": reason}
    out.metrics.update({"selection": [row], "selection_metric": metric, "selection_validation_rows": float(n_val),
                        "selection_training_rows": 0.0, "selection_steps": 0.0, "selection_skipped": reason})
    out.settings["selected_by"] = "auto"
    return out


def _k_unusable(cand: dict[str, Any], d: int | None, n_train: int) -> bool:
    """An integer k the layer (d units) or the training rows cannot hold."""
    k = cand.get("n_components")
    if cand.get("method") != "bregman" or not isinstance(k, int):
        return False
    return (d is not None and k >= d) or k >= n_train
