"""The training loop: it learns, it is reproducible, it validates, and progress can abort it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bregman.training import (
    TrainingError,
    accuracy,
    check_labels,
    predict,
    seeded,
    train_classifier,
    train_loop,
)


def _blobs(n: int = 240, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.randint(0, 3, (n,), generator=g)
    x = centers[y] + 0.5 * torch.randn(n, 2, generator=g)
    return x, y


def _mlp(seed: int = 0) -> nn.Module:
    with seeded(seed):
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_train_classifier_learns_separable_blobs():
    x, y = _blobs()
    model = _mlp()
    before = accuracy(model, x, y)
    hist = train_classifier(model, x, y, epochs=15, batch_size=32, lr=1e-2, seed=0, test=(x, y))
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["test_accuracy"][-1] > 0.95 > before
    assert len(hist["time_s"]) == 15 and all(t >= 0 for t in hist["time_s"])
    assert not model.training  # left in eval mode
    assert hist["lr"][-1] < 1e-2 * 0.05  # cosine decays towards 0


def test_same_seed_same_weights_and_caller_rng_untouched():
    x, y = _blobs()
    results = []
    for _ in range(2):
        model = _mlp(1)
        torch.manual_seed(123)
        train_classifier(model, x, y, epochs=2, batch_size=16, lr=1e-2, seed=7)
        after = torch.rand(1)  # the loop must restore the caller's RNG state
        results.append((torch.cat([p.flatten() for p in model.parameters()]), after))
    assert torch.equal(results[0][0], results[1][0])
    torch.manual_seed(123)
    assert torch.equal(results[0][1], torch.rand(1))
    other = _mlp(1)
    train_classifier(other, x, y, epochs=2, batch_size=16, lr=1e-2, seed=8)
    assert not torch.equal(results[0][0], torch.cat([p.flatten() for p in other.parameters()]))


def test_progress_is_called_and_an_exception_aborts():
    x, y = _blobs(64)
    calls = []

    def progress(phase, fraction, metrics):
        calls.append((phase, fraction, dict(metrics)))

    train_classifier(_mlp(), x, y, epochs=2, batch_size=16, lr=1e-2, progress=progress)
    fractions = [c[1] for c in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("loss" in c[2] for c in calls) and all(c[0] == "train" for c in calls)

    class Cancelled(Exception):
        pass

    seen = []

    def cancel(phase, fraction, metrics):
        seen.append(fraction)
        if len(seen) == 3:
            raise Cancelled()

    model = _mlp()
    with pytest.raises(Cancelled):
        train_classifier(model, x, y, epochs=5, batch_size=16, lr=1e-2, progress=cancel)
    assert len(seen) == 3 and not model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"optimizer": "adagrad"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    x, y = _blobs(32)
    with pytest.raises(ValueError, match=message):
        train_classifier(_mlp(), x, y, **{"epochs": 1, **kwargs})


def test_bad_labels_raise_clear_errors():
    x, y = _blobs(32)
    with pytest.raises(ValueError, match="out of range"):
        train_classifier(_mlp(), x, y + 3, epochs=1)
    with pytest.raises(ValueError, match="must match"):
        train_classifier(_mlp(), x, y[:-1], epochs=1)
    with pytest.raises(ValueError, match="needs labels"):
        train_classifier(_mlp(), x, None, epochs=1)
    with pytest.raises(ValueError, match="integer"):
        check_labels(torch.tensor([0.5, 1.0]))
    assert check_labels(torch.tensor([0.0, 2.0])).dtype == torch.long


def test_train_loop_generic_loss_and_nan_detection():
    # least squares: the generic loop with a custom batch loss recovers w
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    t = x @ w
    lin = nn.Linear(3, 1, bias=False)

    def mse(model, batch):
        xb, tb = batch
        err = (model(xb) - tb).pow(2).mean()
        return err, {"rmse": err.detach().sqrt()}

    hist = train_loop(lin, [x, t], mse, epochs=60, batch_size=32, lr=5e-2, schedule="constant")
    assert torch.allclose(lin.weight.detach().T, w, atol=2e-2)
    assert "rmse" in hist and hist["rmse"][-1] < 0.05
    with pytest.raises(ValueError, match="aligned"):
        train_loop(lin, [x, t[:-1]], mse, epochs=1, batch_size=8, lr=1e-2)

    def nan_loss(model, batch):
        return model(batch[0]).sum() * float("nan"), {}

    with pytest.raises(TrainingError, match="lower the learning rate"):
        train_loop(lin, [x], nan_loss, epochs=1, batch_size=32, lr=1e-2)


def test_predict_batches_and_restores_mode():
    model = _mlp()
    model.train()
    x, _ = _blobs(50)
    out = predict(model, x, batch_size=7)
    assert out.shape == (50, 3) and model.training
    model.eval()
    assert torch.allclose(out, model(x).detach(), atol=1e-6)
