"""``distill(method="auto")``: the split, the table, equal budgets, and a test split it never reads."""
from __future__ import annotations

import math

import pytest
import torch

from bregman.distillation import distill
from bregman.distillation.select import default_candidates, stratified_split
from tests.bregman._distill_fixtures import digits, digits_teacher_wrapped, one_thread, transfer_subset


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


#: 10 copies, not the default 60 of so few rows: these tests count epochs, and 61 x 80 rows
#: would make each candidate 12,000 steps; the copies are not what they are about
FAST = {"epochs": 40, "batch_size": 16, "measure_latency": False, "lr": 1e-2, "augment_copies": 10}
#: a short list (one bregman k, hint, kd, labels) keeps these tests to seconds
CANDIDATES = [{"method": "bregman", "n_components": 8}, {"method": "hint"}, {"method": "kd"}, {"method": "labels"}]


def test_stratified_split_holds_out_each_class_in_proportion_and_is_seeded():
    y = torch.tensor([0] * 40 + [1] * 20 + [2] * 8 + [3] * 1)
    train, val = stratified_split(y, 0.25, seed=3)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(y)))  # a partition
    assert len(val) == round(0.25 * len(y))
    counts = torch.bincount(y[val], minlength=4).tolist()
    assert counts[:3] == [10, 5, 2] and counts[3] == 0  # a class of one row stays in training
    assert set(y[train].tolist()) == {0, 1, 2, 3}
    again_train, again_val = stratified_split(y, 0.25, seed=3)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(stratified_split(y, 0.25, seed=4)[1], val)
    with pytest.raises(ValueError, match="validation_fraction"):
        stratified_split(y, 1.0, seed=0)


def test_default_candidates_are_bregman_at_several_k_hint_kd_and_labels():
    names = [(c["method"], c.get("n_components")) for c in default_candidates(has_labels=True)]
    assert names == [("bregman", None), ("bregman", 16), ("hint", None), ("kd", None),
                     ("labels", None)]
    assert [c["method"] for c in default_candidates(has_labels=False, softmax_layer=True)] == ["bregman", "hint", "kd"]
    assert default_candidates(has_labels=True, n_components=5)[0] == {"method": "bregman", "n_components": 5}


def _auto(x, y, test, progress=None, **kw):
    # 60-row transfer sets hold out 15 rows: below the default floor of 20 for choosing at all
    kw.setdefault("min_validation_rows", 10)
    return distill(digits_teacher_wrapped(), (x, y), method="auto", test=test, candidates=CANDIDATES, seed=0,
                   progress=progress, **{**FAST, **kw})


def test_a_validation_split_too_small_to_choose_returns_the_first_candidate_trained_on_every_row():
    """40 rows hold out 10 (< 20): no candidate is trained on a split; the returned student is
    exactly distill(method="bregman") on all rows (the same accuracy on the same test), and the
    table says why."""
    from bregman.distillation.select import MIN_VALIDATION_ROWS

    assert MIN_VALIDATION_ROWS == 20
    ds = digits()
    x, y = transfer_subset(40, seed=3)
    phases = []
    auto = distill(digits_teacher_wrapped(), (x, y), method="auto", test=(ds.x_test, ds.y_test), seed=0,
                   progress=lambda p, f, m: phases.append(p), **FAST)  # the default candidates and floor
    direct = distill(digits_teacher_wrapped(), (x, y), method="bregman", test=(ds.x_test, ds.y_test), seed=0,
                     **FAST)
    assert auto.method == "bregman" and auto.k == direct.k and auto.settings["n_components"] is None
    # the same student to the last bit: the share search behind the default k is reproducible
    # within a process (it once differed by a digit in full-suite runs: torch.linalg.lstsq in
    # its warm start answered differently with where its inputs lay in memory)
    assert torch.equal(auto.model(ds.x_test), direct.model(ds.x_test))
    assert auto.metrics["test_accuracy"] == direct.metrics["test_accuracy"]
    (row,) = auto.metrics["selection"]
    assert row["chosen"] and row["validation_score"] is None and "10 rows" in row["reason"]
    assert auto.metrics["selection_validation_rows"] == 10 and "cannot tell" in auto.metrics["selection_skipped"]
    assert not any(":" in p and not p.startswith("final ") for p in phases), phases  # no candidate trained
    # a lower floor brings the choice back on the same rows
    chosen = _auto(x, y, (ds.x_test, ds.y_test), min_validation_rows=5)
    assert len(chosen.metrics["selection"]) > 1 and "selection_skipped" not in chosen.metrics


def test_the_table_equal_budgets_and_the_winner_retrained_on_every_row():
    ds = digits()
    x, y = transfer_subset(80)
    steps: dict[str, int] = {}

    def progress(phase, fraction, metrics):
        if phase.endswith(":train") and "step" in metrics:
            steps[phase] = max(steps.get(phase, 0), int(metrics["step"]))

    result = _auto(x, y, (ds.x_test, ds.y_test), progress=progress)
    table = result.metrics["selection"]
    assert [row["candidate"] for row in table] == ["bregman k=8", "hint", "kd", "labels"]
    chosen = [row for row in table if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["method"] == result.method
    # the best score, or the first candidate when nothing beats it by more than the margin
    best = max(row["validation_score"] for row in table)
    margin = result.metrics["selection_margin"]
    assert margin == pytest.approx(2 * math.sqrt(max(table[0]["validation_score"] * (1 - table[0]["validation_score"]),
                                                     1 / 20) / 20))
    if best > table[0]["validation_score"] + margin:
        assert chosen[0]["validation_score"] == best
    else:
        assert chosen[0] is table[0] and (best == table[0]["validation_score"] or "kept" in table[0]["reason"])
    assert all(row["validation_score"] == row["validation_accuracy"] for row in table)  # labels: accuracy
    assert result.metrics["selection_metric"] == "accuracy"
    assert result.metrics["selection_validation_rows"] == 20 and result.metrics["selection_training_rows"] == 60
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in table)
    # equal budgets: every candidate ran the same number of optimizer steps on the 60 training
    # rows and their 10 copies (batch 16, 40 epochs)
    candidate_steps = {p: s for p, s in steps.items() if not p.startswith("final ")}
    assert len(candidate_steps) == 4 and len(set(candidate_steps.values())) == 1
    per_epoch = -(-60 * (FAST["augment_copies"] + 1) // 16)
    assert set(candidate_steps.values()) == {int(result.metrics["selection_steps"])} == {40 * per_epoch}
    # the returned student is distill(method=<winner>) on every row, nothing else
    again = distill(digits_teacher_wrapped(), (x, y), method=result.method, n_components=chosen[0]["n_components"],
                    test=(ds.x_test, ds.y_test), seed=0, **FAST)
    assert torch.equal(result.model(ds.x_test), again.model(ds.x_test))
    assert result.metrics["test_accuracy"] == again.metrics["test_accuracy"]
    # the table's validation score is what that candidate scores when trained alone on the split
    train_idx, val_idx = stratified_split(y, 0.25, seed=0)
    row = table[2]  # kd
    alone = distill(digits_teacher_wrapped(), (x[train_idx], y[train_idx]), method="kd",
                    test=(x[val_idx], y[val_idx]), seed=0, **FAST)
    assert alone.metrics["test_accuracy"] == pytest.approx(row["validation_accuracy"])


def test_auto_never_reads_the_test_split():
    """Poisoned test labels change the test column and nothing auto selects or trains."""
    ds = digits()
    x, y = transfer_subset(60, seed=1)
    clean = _auto(x, y, (ds.x_test, ds.y_test))
    poisoned = _auto(x, y, (ds.x_test, (ds.y_test + 1 + torch.arange(len(ds.y_test)) % 9) % 10))
    for a, b in zip(clean.metrics["selection"], poisoned.metrics["selection"]):
        assert {k: v for k, v in a.items() if not k.startswith("test_")} == \
               {k: v for k, v in b.items() if not k.startswith("test_")}
    assert torch.equal(clean.model(ds.x_test), poisoned.model(ds.x_test))
    # the poison is real: every label is wrong, so the test accuracies collapse
    assert poisoned.metrics["test_accuracy"] < 0.2 < clean.metrics["test_accuracy"]
    assert all(p["test_accuracy"] < c["test_accuracy"]
               for c, p in zip(clean.metrics["selection"], poisoned.metrics["selection"]))


def test_without_labels_auto_scores_agreement_and_drops_the_labels_candidate():
    x, _ = transfer_subset(60, seed=2)
    result = _auto(x, None, None)
    table = result.metrics["selection"]
    assert [row["method"] for row in table] == ["bregman", "hint", "kd"]
    assert result.metrics["selection_metric"] == "agreement"
    assert all(row["validation_accuracy"] is None and row["test_accuracy"] is None for row in table)
    assert all(row["validation_score"] == row["validation_agreement"] for row in table)
    assert result.metrics["transfer_agreement"] >= max(row["validation_agreement"] for row in table) - 0.2


def test_auto_rejects_what_it_cannot_split():
    x, y = transfer_subset(60)
    with pytest.raises(ValueError, match="validation_fraction"):
        distill(digits_teacher_wrapped(), (x, y), method="auto", validation_fraction=0.0, **FAST)
    with pytest.raises(ValueError, match="candidates"):
        distill(digits_teacher_wrapped(), (x, y), method="kd", candidates=CANDIDATES, **FAST)


def test_choose_keeps_the_first_candidate_unless_another_beats_it_by_the_margin():
    from bregman.distillation.select import choose

    def rows(*scores, agreement=None):
        return [{"validation_score": sc, "validation_agreement": (agreement or scores)[j],
                 "validation_kl_to_teacher": 0.1} for j, sc in enumerate(scores)]

    # 100 rows, first at 0.80: one standard error is 0.04, the margin 0.08
    index, margin = choose(rows(0.80, 0.87, 0.85), 100)
    assert index == 0 and margin == pytest.approx(0.08)
    assert choose(rows(0.80, 0.89, 0.85), 100)[0] == 1  # 0.09 > 0.08: displaced
    assert choose(rows(0.80, 0.87, 0.85), 100, z=1.0)[0] == 1  # a smaller margin
    assert choose(rows(0.80, 0.87, 0.85), 100, z=0.0)[0] == 1  # z = 0: the plain argmax
    # a perfect first score still has a margin (1/n floor), and ties go by agreement
    assert choose(rows(1.0, 1.0), 50)[1] == pytest.approx(2 * math.sqrt(1 / 50 / 50))
    assert choose(rows(0.5, 0.9, 0.9, agreement=(0.5, 0.8, 0.95)), 400)[0] == 2
