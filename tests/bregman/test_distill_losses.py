"""Each method's loss against values worked out by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from bregman.distillation.losses import (
    bregman_divergence_loss,
    coefficient_loss,
    hint_loss,
    kd_loss,
    kl_to_teacher,
    label_loss,
    soft_label_loss,
)
from bregman.transfers import get_transfer


def test_coefficient_loss_is_half_squared_norm_batch_mean():
    c_hat = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    # rows: ½(1 + 4) = 2.5 and ½·9 = 4.5; mean 3.5
    assert coefficient_loss(c_hat, c).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="shape"):
        coefficient_loss(c_hat, c[:, :1])


def test_bregman_divergence_loss_identity_and_softmax():
    a_hat = torch.tensor([[1.0, 0.0]])
    a = torch.tensor([[0.0, 2.0]])
    # identity: ½‖â − a‖² = ½(1 + 4) = 2.5
    assert bregman_divergence_loss(a_hat, a, get_transfer("identity")).item() == pytest.approx(2.5)
    # softmax: KL(softmax(a) ‖ softmax(â)); softmax([0, 2]) = (1, e²)/(1 + e²), softmax([1, 0]) = (e, 1)/(1 + e)
    p = torch.tensor([1.0, math.e**2]) / (1 + math.e**2)
    q = torch.tensor([math.e, 1.0]) / (1 + math.e)
    expected = float((p * (p / q).log()).sum())
    assert bregman_divergence_loss(a_hat, a, get_transfer("softmax")).item() == pytest.approx(expected, rel=1e-5)
    # leaky ReLU with slope s: F(a) = ½ a f(a); â = -1, a = 1: F(â) = s/2, F(a) = 1/2, f(a)(â − a) = -2
    # D = s/2 − 1/2 + 2 = 1.5 + s/2
    s = 0.1
    d = bregman_divergence_loss(torch.tensor([[-1.0]]), torch.tensor([[1.0]]), get_transfer("leaky_relu", negative_slope=s))
    assert d.item() == pytest.approx(1.5 + s / 2)


def test_soft_label_loss_hand_value_and_temperature_scaling():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probabilities (3/4, 1/4) at T = 1
    # KL((3/4, 1/4) ‖ (1/2, 1/2)) = 3/4 log(3/2) + 1/4 log(1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_label_loss(s, t, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # at T = 2 the teacher's logits halve: p = (√3, 1)/(√3 + 1); times T² = 4
    p1 = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p1 * math.log(2 * p1) + (1 - p1) * math.log(2 * (1 - p1)))
    assert soft_label_loss(s, t, temperature=2.0).item() == pytest.approx(expected_t2, rel=1e-6)
    assert soft_label_loss(t, t, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        soft_label_loss(s, t, temperature=0.0)


def test_kd_loss_mixes_soft_and_label_terms():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([1])
    soft = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    ce = math.log(2.0)  # uniform student, either label
    assert kd_loss(s, t, y, temperature=1.0, alpha=0.25).item() == pytest.approx(0.25 * soft + 0.75 * ce, rel=1e-6)
    assert kd_loss(s, t, None, temperature=1.0, alpha=0.25).item() == pytest.approx(soft, rel=1e-6)
    assert label_loss(s, y).item() == pytest.approx(ce)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, alpha=1.5)


def test_hint_loss_and_kl_to_teacher():
    pred = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    # squared errors 1, 4, 0, 4 -> mean 9/4
    assert hint_loss(pred, target).item() == pytest.approx(2.25)
    kl = kl_to_teacher(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert kl.shape == (1,) and kl.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)


def test_coefficient_loss_gradient_is_the_residual():
    c_hat = torch.tensor([[1.0, -2.0]], requires_grad=True)
    coefficient_loss(c_hat, torch.zeros(1, 2)).backward()
    assert torch.allclose(c_hat.grad, torch.tensor([[1.0, -2.0]]))
