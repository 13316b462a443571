"""Students from the registry, the target cache, the projection onto a loaded layer, the metrics."""
from __future__ import annotations

import pytest
import torch

from bregman.distillation.evaluate import cpu_latency_ms, parameter_count, quality_metrics
from bregman.distillation.methods import DistilledModel, LossSettings, MethodError, frozen_copy, make_batch_loss
from bregman.distillation.students import StudentSpecError, build_student, normalize_spec
from bregman.distillation.targets import TargetCache, coefficients, compute_targets, fingerprint, project_onto_layer
from bregman.pca import BregmanPCA


def test_student_width_inputs_and_seed():
    s, manifest = build_student({"arch": "mlp", "hidden": [8]}, (64,), 5, seed=3)
    assert s(torch.zeros(2, 64)).shape == (2, 5)
    assert manifest == {"arch": "mlp", "args": {"hidden": [8], "num_classes": 5, "in_features": 64},
                        "flatten_input": False}
    again, _ = build_student({"arch": "mlp", "args": {"hidden": [8]}}, (64,), 5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), again.parameters()))
    image_mlp, m = build_student(None, (1, 8, 8), 3)
    assert m["flatten_input"] and image_mlp(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    cnn, _ = build_student({"arch": "cnn", "channels": [4, 8], "hidden": 8}, (1, 8, 8), 7)
    assert cnn(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def test_student_spec_errors():
    with pytest.raises(StudentSpecError, match="unknown student architecture"):
        normalize_spec({"arch": "transformer"})
    with pytest.raises(StudentSpecError, match="no 'arch'"):
        normalize_spec({"hidden": [3]})
    with pytest.raises(StudentSpecError, match="both inline"):
        normalize_spec({"arch": "mlp", "hidden": [3], "args": {"hidden": [4]}})
    with pytest.raises(StudentSpecError, match="in_features"):
        build_student({"arch": "mlp", "in_features": 10}, (64,), 3)
    with pytest.raises(StudentSpecError, match="reads images"):
        build_student({"arch": "cnn"}, (64,), 3)
    with pytest.raises(StudentSpecError, match="cannot build"):
        build_student({"arch": "mlp", "hidden": [0]}, (64,), 3)


class _Cut:
    def __init__(self):
        self.body = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, 3)
        from bregman.transfers import get_transfer

        self.transfer = get_transfer("tanh")


def test_compute_targets_and_cache_keys():
    cut = _Cut()
    x = torch.randn(10, 4)
    t = compute_targets(x, cut=cut, batch_size=3)
    with torch.no_grad():
        a = cut.body(x)
        assert torch.allclose(t.preactivations, a, atol=1e-6)
        assert torch.allclose(t.outputs, cut.head(torch.tanh(a)), atol=1e-6)
    cache = TargetCache()
    calls = []

    def compute():
        calls.append(1)
        return compute_targets(x, cut=cut)

    first = cache.targets(x, "L", compute)
    assert cache.targets(x.clone(), "L", compute) is first  # content, not identity, is the key
    cache.targets(x, "other layer", compute)
    cache.targets(x + 1, "L", compute)
    assert len(calls) == cache.teacher_passes == 3
    assert fingerprint(x) != fingerprint(x.double()) and fingerprint(x) == fingerprint(x.clone())
    with pytest.raises(ValueError, match="exactly one"):
        compute_targets(x)


def test_coefficients_memoized_and_loaded_layer_projection_matches_transform():
    cut = _Cut()
    x = torch.randn(200, 4)
    t = compute_targets(x, cut=cut)
    est = BregmanPCA("tanh", n_components=2).fit(t.preactivations.double())
    c = coefficients(t, est)
    assert c.shape == (200, 2) and coefficients(t, est) is c
    layer = est.export_layer()
    assert torch.allclose(project_onto_layer(layer, t.preactivations), est.transform(t.preactivations.double()))
    with pytest.raises(ValueError, match="another layer"):
        project_onto_layer(layer, torch.zeros(3, 5))


def test_distilled_model_keeps_frozen_parts_in_eval_and_settings_validate():
    head = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    model = DistilledModel(torch.nn.Linear(2, 3), head=frozen_copy(head))
    model.train()
    assert model.student.training and not model.head.training
    assert not any(p.requires_grad for p in model.head.parameters())
    assert all(p.requires_grad for p in head.parameters())  # the original is untouched
    with pytest.raises(MethodError, match="alpha"):
        LossSettings(alpha=2.0)
    with pytest.raises(MethodError, match="weight 0"):
        make_batch_loss("bregman", LossSettings(coefficient_weight=0.0), has_labels=False)
    with pytest.raises(MethodError, match="unknown method"):
        make_batch_loss("distill", LossSettings(), has_labels=True)


def test_bregman_soft_label_term_is_kd_through_the_imported_layer_and_head():
    from bregman.distillation.losses import coefficient_loss, soft_label_loss

    torch.manual_seed(0)
    student, layer, head = torch.nn.Linear(5, 3), torch.nn.Linear(3, 4), torch.nn.Linear(4, 6)
    model = DistilledModel(student, layer=frozen_copy(layer), head=frozen_copy(head))
    x, c, t = torch.randn(8, 5), torch.randn(8, 3), torch.randn(8, 6)
    settings = LossSettings(soft_label_weight=0.7, temperature=2.5)
    loss_fn, names = make_batch_loss("bregman", settings, has_labels=False)
    assert names == ("x", "coefficients", "teacher_logits")
    loss, metrics = loss_fn(model, (x, c, t))
    expected_soft = soft_label_loss(head(layer(student(x))), t, 2.5)
    assert float(metrics["soft_label_loss"]) == pytest.approx(float(expected_soft), rel=1e-6)
    assert float(loss) == pytest.approx(float(coefficient_loss(student(x), c) + 0.7 * expected_soft), rel=1e-6)
    # the term alone is a loss (coefficient weight 0), and its gradient reaches the student only
    alone, _ = make_batch_loss("bregman", LossSettings(coefficient_weight=0.0, soft_label_weight=1.0),
                               has_labels=False)
    alone(model, (x, c, t))[0].backward()
    assert student.weight.grad is not None and float(student.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.head.parameters())
    with pytest.raises(MethodError, match="soft_label_weight must be non-negative"):
        LossSettings(soft_label_weight=-1.0)
    assert "soft_label_weight" in LossSettings().for_method("bregman")
    assert "soft_label_weight" not in LossSettings().for_method("hint")


def test_quality_and_cost_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    m = quality_metrics(logits, torch.tensor([0, 1, 1]), teacher, prefix="t_")
    assert m["t_accuracy"] == pytest.approx(2 / 3) and m["t_agreement"] == pytest.approx(2 / 3)
    assert m["t_teacher_accuracy"] == pytest.approx(1 / 3) and m["t_kl_to_teacher"] > 0
    lin = torch.nn.Linear(3, 2)
    assert parameter_count(lin, lin) == 8
    assert cpu_latency_ms(lin, torch.zeros(4, 3), repeats=5) > 0


def test_default_k_is_every_softmax_direction_within_bounds_else_the_share_rule():
    from types import SimpleNamespace

    from bregman.distillation.api import DEFAULT_EXPLAINED_DIVERGENCE, default_components
    from bregman.transfers import get_transfer

    def cut(name, d):
        return SimpleNamespace(transfer=get_transfer(name), d=d)

    assert default_components(cut("softmax", 10), 500) == 9
    assert default_components(cut("softmax", 1000), 50_000) == 64  # k x k solves per row stay cheap
    assert default_components(cut("softmax", 10), 6) == 5  # fewer components than rows
    assert default_components(cut("relu", 128), 500) == DEFAULT_EXPLAINED_DIVERGENCE


def test_noisy_copies_repeat_labels_deterministically_and_check_their_arguments():
    from bregman.distillation.augment import noisy_copies

    x, y = torch.rand(6, 4), torch.arange(6)
    assert noisy_copies(x, y, 0, 0.3, seed=0)[0] is x
    xa, ya = noisy_copies(x, y, 3, 0.5, seed=1)
    assert xa.shape == (24, 4) and torch.equal(xa[:6], x) and torch.equal(ya, y.repeat(4))
    noise = xa[6:] - x.repeat(3, 1)
    assert abs(float(noise.std()) / (0.5 * float(x.std())) - 1) < 0.35  # the documented scale
    assert torch.equal(noisy_copies(x, y, 3, 0.5, seed=1)[0], xa)  # deterministic per seed
    assert not torch.equal(noisy_copies(x, y, 3, 0.5, seed=2)[0], xa)
    assert noisy_copies(x, None, 2, 0.3, seed=0)[1] is None
    for bad in ({"copies": -1}, {"copies": 1.5}, {"noise": -0.1}, {"noise": float("nan")}):
        args = {"copies": 2, "noise": 0.3, **bad}
        with pytest.raises(ValueError, match="augment_"):
            noisy_copies(x, y, args["copies"], args["noise"], seed=0)
