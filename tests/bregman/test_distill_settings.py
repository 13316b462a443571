"""The training settings' one home, the mixed copies and the recipe variants of the coefficient loss."""
from __future__ import annotations

import pytest
import torch

from bregman.distillation import TrainSettings, default_budget
from bregman.distillation.api import _coefficient_weights
from bregman.distillation.augment import augmented_copies, mixed_copies, noisy_copies
from bregman.distillation.losses import coefficient_loss, weighted_coefficient_loss
from bregman.distillation.methods import LossSettings, MethodError


def test_settings_from_a_jobs_options_keep_defaults_for_none_and_refuse_unknown_names():
    s = TrainSettings.from_options({"lr": 0.01, "temperature": None, "label_weight": 0.5}, epochs=7)
    assert (s.lr, s.temperature, s.label_weight, s.epochs, s.batch_size) == (0.01, 4.0, 0.5, 7, None)
    assert TrainSettings.from_options(None) == TrainSettings()
    with pytest.raises(ValueError, match="unknown training setting.*learning_rate"):
        TrainSettings.from_options({"learning_rate": 0.1})
    with pytest.raises(MethodError, match="alpha"):
        TrainSettings(alpha=2.0)
    with pytest.raises(MethodError, match="huber_delta must be positive"):
        TrainSettings(huber_delta=0.0)
    with pytest.raises(ValueError, match="augment must be"):
        TrainSettings(augment="rotate")
    filled = s.with_budget(100)
    assert (filled.batch_size, filled.epochs) == (default_budget(100, None, 7)) == (25, 7)
    assert TrainSettings().with_budget(100).epochs == default_budget(100)[1]
    record = s.record("kd")
    assert record["temperature"] == 4.0 and "label_weight" not in record and record["augment_noise"] is None
    assert "coefficient_loss" in s.record("bregman") and "temperature" not in s.record("bregman")
    assert s.record("bregman")["huber_delta"] == 1.0 and "huber_delta" not in s.record("hint")


def test_auto_coefficient_loss_is_huber_with_copies_and_squared_without():
    from bregman.distillation.methods import make_batch_loss

    auto = TrainSettings()
    assert auto.coefficient_loss == "auto" and LossSettings().coefficient_loss == "squared"
    assert auto.with_copies(100).loss_settings().coefficient_loss == "huber"  # default copies below 500 examples
    assert auto.with_copies(600).loss_settings().coefficient_loss == "squared"
    assert TrainSettings(augment_copies=3).loss_settings().coefficient_loss == "huber"
    assert TrainSettings(augment_copies=0).with_copies(100).loss_settings().coefficient_loss == "squared"
    assert TrainSettings(coefficient_loss="squared", augment_copies=5).loss_settings().coefficient_loss == "squared"
    assert TrainSettings(coefficient_loss="huber").loss_settings().coefficient_loss == "huber"
    assert auto.with_copies(100).record("bregman")["coefficient_loss"] == "huber"  # what the manifest keeps
    # coefficient maps (the channels layout) and image views: Huber too (image_flow, session 8)
    assert auto.with_copies(100, flat=False).loss_settings(map_targets=True).coefficient_loss == "huber"
    assert auto.with_copies(100, flat=False).loss_settings().coefficient_loss == "squared"
    assert TrainSettings(augment_views=2).with_copies(100, flat=False).loss_settings().coefficient_loss == "huber"
    decided = auto.with_copies(600).with_loss_for(map_targets=True)
    assert decided.coefficient_loss == "huber" and decided.record("bregman")["coefficient_loss"] == "huber"
    assert auto.with_copies(600).with_loss_for(map_targets=False).coefficient_loss == "squared"
    assert TrainSettings(coefficient_loss="squared").with_loss_for(map_targets=True).coefficient_loss == "squared"
    with pytest.raises(MethodError, match="coefficient_loss must be one of"):
        LossSettings(coefficient_loss="auto")  # a loss, not a rule
    with pytest.raises(MethodError, match="coefficient_loss must be one of"):
        TrainSettings(coefficient_loss="l1")
    with pytest.raises(MethodError, match="loss_settings"):
        make_batch_loss("bregman", auto, has_labels=False)


def test_label_weight_is_decided_per_value_of_a_coefficient_map_and_none_elsewhere():
    from bregman.distillation.methods import make_batch_loss
    from bregman.distillation.settings import MAP_LABEL_WEIGHT_PER_VALUE

    auto = TrainSettings()
    assert auto.label_weight is None and LossSettings().label_weight == 0.0
    # bregman predicting a 16-channel 8x8 coefficient map: 0.1 per value
    decided = auto.with_label_weight_for("bregman", 16 * 8 * 8)
    assert decided.label_weight == pytest.approx(MAP_LABEL_WEIGHT_PER_VALUE * 1024) == pytest.approx(102.4)
    assert decided.record("bregman")["label_weight"] == pytest.approx(102.4)  # what the manifest keeps
    assert decided.loss_settings().label_weight == pytest.approx(102.4)
    # a map twice the size: twice the weight (the coefficient term sums over the map)
    assert auto.with_label_weight_for("bregman", 2048).label_weight == pytest.approx(2 * decided.label_weight)
    # vectors, hint and the methods without a layer: none
    assert auto.with_label_weight_for("bregman", None).label_weight == 0.0
    assert auto.with_label_weight_for("hint", 1024).label_weight == 0.0
    assert auto.with_label_weight_for("kd", 1024).label_weight == 0.0
    # a given weight is kept, 0 too
    assert TrainSettings(label_weight=0.0).with_label_weight_for("bregman", 1024).label_weight == 0.0
    assert TrainSettings(label_weight=3.0).with_label_weight_for("bregman", 1024).label_weight == 3.0
    assert auto.loss_settings().label_weight == 0.0  # undecided: no label term
    with pytest.raises(MethodError, match="label_weight must be non-negative"):
        TrainSettings(label_weight=-1.0)
    with pytest.raises(MethodError, match="with_label_weight_for"):
        make_batch_loss("bregman", TrainSettings(coefficient_loss="huber"), has_labels=True)


def test_mixed_copies_lie_nearer_their_own_row_and_keep_its_label():
    x = torch.randn(9, 5)
    y = torch.arange(9)
    xa, ya = mixed_copies(x, y, 3, seed=1)
    assert xa.shape == (36, 5) and torch.equal(xa[:9], x) and torch.equal(ya, y.repeat(4))
    for copy in xa[9:].reshape(3, 9, 5):
        for i in range(9):
            # (1 − λ) x_i + λ x_j for some other row j and λ in [0, 1/2]: on a segment from x_i
            found = []
            for j in range(9):
                if j == i:
                    continue
                step = x[j] - x[i]
                lam = float((copy[i] - x[i]) @ step / (step @ step))
                if torch.allclose(x[i] + lam * step, copy[i], atol=1e-5):
                    found.append(lam)
            assert found and all(-1e-6 <= lam <= 0.5 + 1e-6 for lam in found), (i, found)
        assert not torch.allclose(copy, x)
    assert torch.equal(mixed_copies(x, y, 3, seed=1)[0], xa)
    assert torch.equal(augmented_copies(x, y, "mixup", 3, 0.3, 1)[0], xa)
    assert torch.equal(augmented_copies(x, y, "noise", 2, 0.3, 1)[0], noisy_copies(x, y, 2, 0.3, 1)[0])
    with pytest.raises(ValueError, match="augment_copies"):
        mixed_copies(x, y, -1, seed=0)


def test_weighted_and_robust_coefficient_losses():
    c = torch.randn(6, 4)
    c_hat = c + torch.tensor([0.1, -0.2, 3.0, 0.5])
    assert torch.allclose(weighted_coefficient_loss(c_hat, c), coefficient_loss(c_hat, c))
    w = torch.tensor([1.0, 2.0, 0.0, 1.0])
    expected = (0.5 * (c_hat - c) ** 2 * w).sum() / 6
    assert torch.allclose(weighted_coefficient_loss(c_hat, c, w), expected)
    # Huber: ½e² up to |e| = 1, |e| − ½ beyond (3.0 → 2.5 instead of 4.5)
    per_row = 0.5 * (0.1**2 + 0.2**2 + 0.5**2) + 2.5
    assert weighted_coefficient_loss(c_hat, c, robust=True).item() == pytest.approx(per_row, rel=1e-5)
    # delta 0.3: δ(|e| − δ/2) beyond 0.3 (0.5 → 0.105, 3.0 → 0.855); delta 4: all quadratic
    per_row = 0.5 * (0.1**2 + 0.2**2) + 0.3 * (0.5 - 0.15) + 0.3 * (3.0 - 0.15)
    assert weighted_coefficient_loss(c_hat, c, robust=True, delta=0.3).item() == pytest.approx(per_row, rel=1e-5)
    assert torch.allclose(weighted_coefficient_loss(c_hat, c, robust=True, delta=4.0), coefficient_loss(c_hat, c))
    coef = torch.tensor([[3.0, 1.0, 0.1], [-3.0, -1.0, 0.1]])
    weights = _coefficient_weights(coef, "whiten")
    second = torch.tensor([9.0, 1.0, 0.01])
    assert torch.allclose(weights, second.mean() / second)
    assert _coefficient_weights(coef, "none") is None


def test_head_weights_are_the_logits_sensitivity_to_each_direction():
    """``coefficient_scaling="head"``: E‖∂ logits/∂c_j‖² over its mean, clamped to [0.1, 10].
    With a linear head the sensitivity is the squared column norm of its weight, whatever c."""
    from torch import nn

    from bregman.distillation.methods import DistilledModel

    head = nn.Linear(3, 2, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 1.0, 0.01], [0.0, 1.0, 0.0]]))
    model = DistilledModel(nn.Linear(4, 3), None, head)
    coef = torch.randn(50, 3)
    weights = _coefficient_weights(coef, "head", model, lambda z: z)
    sens = torch.tensor([9.0, 2.0, 1e-4])
    expected = (sens / sens.mean()).clamp(0.1, 10.0)
    assert torch.allclose(weights, expected, rtol=1e-5)
    assert float(weights[2]) == pytest.approx(0.1)  # the floor: a direction the head barely reads
